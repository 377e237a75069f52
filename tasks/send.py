"""Send: one mapped Prefect task run per shard. Inside it, async httpx sends the shard's batches under the
provider's concurrency and the process-wide rate limit (tasks/send_engine.py `send_rows` does the work,
without Prefect); this module resumes, journals and records each shard, and keeps the spend cap's accounts:
what an attempt may still spend when it starts or resumes (the budget its shards reserve from). A shard runs
in the flow's process (threads) or on a Dask worker (smscast/dask_runner.py); it is the same task either way."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import polars as pl
from prefect import get_run_logger, task
from prefect.cache_policies import NONE
from prefect.task_runners import ThreadPoolTaskRunner

from smscast import storage
from smscast.breaker import CIRCUIT_OPEN, park
from smscast.campaign import CampaignSpec
from smscast.dask_runner import RunLink, joined_run
from smscast.errors import ConfigError, SourceError
from smscast.pricing import (
    COMMITTED,
    COST,
    SPENT,
    PriceTable,
    estimate,
    load_prices,
    priced,
    units,
    units_of,
    unpriced_labels,
    with_costs,
)
from smscast.providers.registry import make_provider, provider_class
from smscast.results import AttemptPaths
from smscast.runtime import Runtime
from smscast.runtime import lookup as lookup_runtime
from smscast.s3_block import use_s3_block
from smscast.status import Status
from smscast.tasks.journal import Journal
from smscast.tasks.persist import result_rows
from smscast.tasks.plan import ShardRef
from smscast.tasks.send_engine import SHARD_WORKERS, batches_of, send_rows


def shard_runner() -> Any:
    """The flows' task runner: threads, so that shards share the process-wide rate limiter. A Dask run
    (`spec.runner`) sends its shards through a DaskTaskRunner of its own instead (smscast/dask_runner.py), so
    that the runner follows each run's spec, whichever flow or deployment runs it. (Typed Any:
    ThreadPoolTaskRunner's generic parameter does not line up with the flow decorator's in prefect 3.8.)"""
    return ThreadPoolTaskRunner(max_workers=SHARD_WORKERS)


@dataclass(frozen=True)
class ShardReport:
    shard: int
    rows: int
    counts: dict[str, int]
    requests: dict[str, int]
    resumed: bool = False


@task(name="send-shard", cache_policy=NONE, persist_result=False, task_run_name="send-shard-{shard.shard}")
def send_shard(
    spec: CampaignSpec, shard: ShardRef, runtime_key: str, link: RunLink | None = None
) -> ShardReport:
    """`runtime_key` finds the run's Runtime in this process (threads); a shard on a Dask worker finds none
    and joins its run through `link` instead (its stop and lock, through the results storage)."""
    logger = get_run_logger()
    paths = AttemptPaths.of(spec)
    part = paths.part(shard.shard)
    if storage.exists(part):
        # A resumed run: this shard finished before the interruption. Its record stands; never re-send.
        done = storage.read_parquet(part)
        logger.info("shard %d already sent (%d rows); skipping", shard.shard, done.height)
        # What a crash between writing the part and removing the journal left behind.
        shard_journal(paths, shard.shard, write_ahead=False).discard()
        return ShardReport(shard.shard, done.height, _counts(done), {}, resumed=True)
    runtime = lookup_runtime(runtime_key)
    if runtime is None and link is not None:
        if storage.is_s3(spec.results):
            # A Dask worker whose environment names no S3 credentials takes the block, as deployed flows do.
            use_s3_block()
        with joined_run(link, shard.rows, logger) as joined:
            return _send_shard(spec, shard, paths, joined, logger)
    return _send_shard(spec, shard, paths, runtime, logger, runtime_key)


def _send_shard(
    spec: CampaignSpec,
    shard: ShardRef,
    paths: AttemptPaths,
    runtime: Runtime | None,
    logger: logging.Logger | logging.LoggerAdapter[logging.Logger],
    runtime_key: str | None = None,
) -> ShardReport:
    part = paths.part(shard.shard)
    memory = _memory(runtime_key)
    planned = memory.shard_plan(shard.shard) if memory is not None else None
    if planned is None:
        planned = storage.read_parquet(paths.plan_shard(shard.shard))
    provider = make_provider(spec.provider, base_url=spec.base_url)
    if runtime is not None and runtime.budget is not None and COST not in planned.columns and spec.prices:
        # Planned before the campaign had a price list: its rows are priced now, or the cap would see them free.
        planned = with_costs(planned, load_prices(spec.prices), spec.provider)
    # Every batch's outcome is journalled as it comes back, so that a resumed shard sends only the batches
    # that were in flight. Providers without idempotency also record each batch's intent before sending it:
    # there, a batch in flight at a crash is `unknown`, never re-sent blindly.
    journal = shard_journal(paths, shard.shard, write_ahead=not provider.caps.resend_safe)
    outcomes, requests = asyncio.run(send_rows(provider, planned, spec, runtime=runtime, journal=journal))
    if runtime is not None and runtime.stop.code == "lock_lost":
        logger.warning(
            "shard %d: another run owns the campaign now; not recording this run's view", shard.shard
        )
        return ShardReport(shard.shard, outcomes.height, _counts(outcomes), requests)
    if runtime is not None and runtime.stop.code == CIRCUIT_OPEN:
        # Paused: no results part, so that running the campaign again resumes this shard from its journal;
        # its rows as they stand go to the paused summary (smscast/breaker.py).
        park(spec, shard.shard, planned, outcomes)
        logger.warning("shard %d paused: the campaign's circuit breaker opened", shard.shard)
        return ShardReport(shard.shard, outcomes.height, _counts(outcomes), requests)
    if not storage.write_parquet_once(result_rows(spec, planned, outcomes), part):
        # Another run recorded this shard first (we stalled past our lease). Its record stands.
        logger.warning("shard %d was recorded by another run; keeping that record", shard.shard)
    journal.discard()  # only now: the part is on record (a crash before this leaves a harmless journal)
    counts = _counts(outcomes)
    logger.info(
        "shard %d: %d rows in %d batches · %s",
        shard.shard,
        outcomes.height,
        shard.batches,
        " ".join(f"{k} {v}" for k, v in sorted(counts.items())),
    )
    return ShardReport(shard.shard, outcomes.height, counts, requests)


class RunMemory:
    """The plan a run has just written, kept in memory so that its shards on the flow's threads take their rows
    from it rather than reading back what was written a moment ago (for a million rows, about 0.4 CPU-s of
    Parquet decoding, and the GETs). The very frame the plan files were written from, under the run's lock,
    and held by the run anyway. A resumed run, and a shard in another process (Dask), read the recorded plan.

    (The results parts are not kept likewise for the summary: holding them through the send raised the peak
    memory of a million-row campaign by half a GiB, to save half a second of reading them back.)"""

    def __init__(self, plan: pl.DataFrame | None) -> None:
        self.plan = plan  # every planned row, with its `shard`; None when the run resumed a recorded plan

    def shard_plan(self, shard: int) -> pl.DataFrame | None:
        if self.plan is None:
            return None
        # Lazily: on a plan of many chunks, the eager filter took ~150 MB per shard at a million rows (Polars
        # 2.1); the lazy one shares the plan's buffers.
        return self.plan.lazy().filter(pl.col("shard") == shard).collect()


_MEMORIES: dict[str, RunMemory] = {}
_MEMORIES_LOCK = threading.Lock()


@contextmanager
def remembered(runtime_key: str, memory: RunMemory) -> Iterator[RunMemory]:
    """`memory` is the run's, for its shards in this process to find by the run's key, while the block runs."""
    with _MEMORIES_LOCK:
        _MEMORIES[runtime_key] = memory
    try:
        yield memory
    finally:
        with _MEMORIES_LOCK:
            _MEMORIES.pop(runtime_key, None)


def _memory(runtime_key: str | None) -> RunMemory | None:
    with _MEMORIES_LOCK:
        return _MEMORIES.get(runtime_key) if runtime_key is not None else None


def spent_rows(spec: CampaignSpec, shard: ShardRef, *, write_ahead: bool) -> pl.Series:
    """For resuming an attempt under a spend cap: the rows of `shard` that its interrupted run recorded as
    accepted or unknown (its results part, else its journal, read as `send_rows` will resume it: a batch with
    only its intent on record is `unknown`). Those are spent; what the journal lacks is sent again, and
    reserves again."""
    paths = AttemptPaths.of(spec)
    if storage.exists(paths.part(shard.shard)):
        done = storage.read_parquet(paths.part(shard.shard)).select("row_index", "status")
    else:
        planned = storage.read_parquet(paths.plan_shard(shard.shard))
        found = shard_journal(paths, shard.shard, write_ahead=write_ahead).recover(batches_of(planned, spec))
        uncertain = [i for part in found.uncertain for i in part.row_index]
        done = pl.concat(
            [
                *(f.select("row_index", "status") for f in found.done),
                pl.DataFrame(
                    {"row_index": uncertain, "status": ["unknown"] * len(uncertain)},
                    schema={"row_index": pl.Int64, "status": pl.String},
                ),
            ]
        )
    return done.filter(pl.col("status").is_in(sorted(SPENT))).get_column("row_index").cast(pl.Int64)


# At most one journal write per shard in this many seconds where the provider de-duplicates on our keys. Each
# write is a Parquet file and a PUT, about 4 ms of CPU: at the journal's default of 0.1 s, two shards at full
# speed spent some 8 % of a core on them. An outcome lost to a crash in that window costs a re-send with the
# same keys, which the provider answers from its record; answers slower than this are still written one by
# one (tests/reliability/test_immediate_resume.py bounds what a kill re-sends at 7 requests/s). Without
# idempotency every outcome is written at once (the journal's own default).
JOURNAL_LINGER = 0.25


def shard_journal(paths: AttemptPaths, shard: int, *, write_ahead: bool) -> Journal:
    return Journal(
        paths.journal(shard), write_ahead=write_ahead, linger=None if write_ahead else JOURNAL_LINGER
    )


def _counts(outcomes: pl.DataFrame) -> dict[str, int]:
    return {str(s): int(n) for s, n in outcomes.group_by("status").len().iter_rows()}


# -- the spend cap's accounting (smscast/pricing.py prices the rows) -------------------------------------------

_EMPTY_ROWS = pl.Series("row_index", [], pl.Int64)
_NOTHING_COMMITTED = pl.DataFrame(
    schema={
        "row_index": pl.Int64,
        COST: pl.Float64,
        "_price": pl.Float64,
        "_where": pl.String,
        "_p3": pl.String,
    }
)


def committed_rows(spec: CampaignSpec, table: PriceTable, mine: pl.Series) -> tuple[pl.DataFrame, pl.Series]:
    """The rows earlier attempts left accepted, unknown or held (each row's latest result) other than this
    attempt's own (`mine`), priced at the provider that sent them (`cost`, `_where`); and those of `mine` an
    earlier attempt left `unknown`: re-sent now, their cost is committed whatever this attempt makes of them."""
    from smscast.tasks.current import current_results

    if spec.attempt <= 1:
        return _NOTHING_COMMITTED, _EMPTY_ROWS
    try:
        current = current_results(spec.results, spec.campaign_id)
    except SourceError:  # a campaign with no results yet has spent nothing
        return _NOTHING_COMMITTED, _EMPTY_ROWS
    ours = pl.col("row_index").is_in(mine.implode())
    unknown = current.filter(ours & (pl.col("status") == Status.UNKNOWN.value)).get_column("row_index")
    df = priced(current.filter(pl.col("status").is_in(list(COMMITTED)) & ~ours), table, None)
    df = df.with_columns(
        (pl.col("_price") * pl.col("segments").cast(pl.Float64)).alias(COST),
        _p3=pl.col("phone").cast(pl.String).str.extract(r"^\+(\d{1,3})"),
    )
    return df, unknown.cast(pl.Int64)


@dataclass(frozen=True)
class Commitments:
    """In units: the cap, what earlier attempts committed, and what this attempt committed before sending
    (its held rows; on a resume, also what its interrupted run may have had accepted)."""

    cap: int
    earlier: int
    this_attempt: int
    # Rows of this attempt an earlier one left unknown.
    unknown_before: pl.Series = field(default_factory=lambda: _EMPTY_ROWS.clone())

    @property
    def spent(self) -> int:
        return self.earlier + self.this_attempt


def start_budget(planned: pl.DataFrame, spec: CampaignSpec, table: PriceTable) -> Commitments:
    """The check before an attempt starts (its planned rows): ConfigError, before anything is written or
    sent, if some row that counts has no price or if the campaign's committed spend would exceed
    `max_cost`."""
    assert spec.max_cost is not None
    est = estimate(planned, table, spec.provider, max_cost=spec.max_cost)
    earlier, unknown = committed_rows(spec, table, planned.get_column("row_index"))
    missing = est.unpriced
    no_price = earlier.filter(pl.col("_price").is_null())
    if no_price.height:
        for row in unpriced_labels(no_price).group_by("_where").agg(rows=pl.len()).iter_rows():
            missing = [*missing, {"country": f"{row[0]} (sent earlier)", "rows": int(row[1])}]
    if missing:
        listed = ", ".join(f"{u['country']} ({u['rows']:,} rows)" for u in missing)
        raise ConfigError(
            f"campaign {spec.campaign_id}: --max-cost needs a price for every row it may send, and the price "
            f"list {table.source} has none for {spec.provider} in {listed}. Add those prices, or leave "
            "--max-cost out (the summary then estimates what it can); nothing was sent"
        )
    spent = int(earlier.select(units_of()).to_series().sum())
    cap = units(spec.max_cost)
    need = est.estimate + est.held + spent
    if need > cap:
        parts = [f"this attempt's rows {est.money(est.estimate)}"]
        parts += [f"held rows, sent when released, {est.money(est.held)}"] if est.held else []
        parts += [f"committed by earlier attempts {est.money(spent)}"] if spent else []
        raise ConfigError(
            f"campaign {spec.campaign_id} attempt {spec.attempt}: the estimated cost {est.money(need)} "
            f"({'; '.join(parts)}) exceeds the spend cap --max-cost {est.money(cap)}. Nothing was sent; raise "
            "--max-cost, or send fewer rows"
        )
    return Commitments(cap, spent, est.held, unknown)


def resume_budget(spec: CampaignSpec, shards: list[ShardRef], table: PriceTable) -> Commitments:
    """A resumed attempt's commitments, from its recorded plan: earlier attempts', its held rows, and the rows
    its interrupted run recorded as (maybe) accepted. No start check: what the running budget cannot cover
    ends `over_budget`."""
    assert spec.max_cost is not None
    paths = AttemptPaths.of(spec)
    plan = pl.concat(
        [storage.read_parquet(f) for f in [*paths.plan_shards(), paths.plan_unsent]], how="diagonal_relaxed"
    )
    write_ahead = not provider_class(spec.provider).caps.resend_safe
    spent = pl.concat([_EMPTY_ROWS, *(spent_rows(spec, s, write_ahead=write_ahead) for s in shards)])
    costed = with_costs(plan, table, spec.provider)
    mine = (pl.col("status") == Status.HELD.value).fill_null(False) | pl.col("row_index").is_in(
        spent.implode()
    )
    this_attempt = int(costed.filter(mine).select(units_of()).to_series().sum())
    earlier, _ = committed_rows(spec, table, plan.get_column("row_index"))  # the plan has COST_KEPT
    return Commitments(units(spec.max_cost), int(earlier.select(units_of()).to_series().sum()), this_attempt)
