"""One attempt of a campaign, start to end: done marker → manifest → plan → save → send → seal → report.

Every flow that sends runs its attempts through `run_attempt`; a flow says only how it chooses the attempt's
rows (the campaign flow loads, validates and plans its source; the retry flow re-plans what may be re-sent).
An attempt already complete is reported, never re-sent; one with a recorded plan is resumed from it. While
it sends, `ProgressBoard` shows how far it got; once it is done, tasks/next_steps.py says what becomes of
the rows that are not settled (a scheduled retry, or the command to run).

With a price list, the planned rows carry their `cost`, and the summary the estimate; with a spend cap, an
attempt whose estimate (with what the campaign committed before) exceeds it does not start, and one that
runs reserves each request's cost from a shared budget before posting it (smscast/pricing.py).
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from dataclasses import replace

import polars as pl
from prefect.futures import as_completed

from smscast import runtime as shared
from smscast import storage
from smscast.breaker import CIRCUIT_OPEN, pause_attempt
from smscast.campaign import CampaignSpec
from smscast.dask_runner import shard_runs
from smscast.errors import CampaignStopError, ConfigError
from smscast.lock import CampaignLock, CampaignLockedError
from smscast.pricing import COST_KEPT, estimate_for, load_prices, money, with_costs
from smscast.results import AttemptPaths
from smscast.status import STATUSES
from smscast.step_log import stage
from smscast.tasks.frequency import counting_alone
from smscast.tasks.manifest import Manifest, read_manifest, save_spec
from smscast.tasks.next_steps import next_steps
from smscast.tasks.persist import persist_results, save_plan
from smscast.tasks.plan import PlannedCampaign
from smscast.tasks.report import (
    SUMMARY_COLUMNS,
    CampaignSummary,
    publish_artifact,
    report,
    share,
    status_table,
    tell,
    update_artifacts,
)
from smscast.tasks.send import (
    Commitments,
    RunMemory,
    ShardReport,
    remembered,
    resume_budget,
    send_shard,
    start_budget,
)

Logger = logging.Logger | logging.LoggerAdapter[logging.Logger]


def run_attempt(
    spec: CampaignSpec,
    choose_rows: Callable[[], PlannedCampaign] | None,
    logger: Logger,
    *,
    lock: CampaignLock,
    seconds: dict[str, float] | None = None,
) -> CampaignSummary:
    """Run attempt `spec.attempt` under the campaign's `lock`. `choose_rows` plans the attempt when it has no
    recorded plan (None: the attempt may only be resumed). `seconds` collects the stages' wall times."""
    seconds = {} if seconds is None else seconds
    if spec.runner == "dask" and spec.max_cost is not None:
        # The spend cap's budget is one account in the flow's memory, which shards on other machines cannot
        # reserve from; refused before anything is written or sent.
        raise ConfigError("--max-cost works with the thread runner only: leave out --runner dask, or the cap")
    paths = AttemptPaths.of(spec)
    table = load_prices(spec.prices) if spec.prices else None  # a bad price list stops it before any work
    if storage.exists(paths.done):
        logger.info(
            "campaign %s attempt %d is already complete; nothing to send", spec.campaign_id, spec.attempt
        )
        done = storage.read_parquet(paths.dir)
        estimate = estimate_for(done, spec, table=table)
        summary = report(done, spec, logger, results_uri=paths.dir, estimate=estimate)
        for line in next_steps(summary, spec, completed=False):
            tell(logger, logging.WARNING, line)
        _release_held(spec, done, logger)
        return summary
    manifest = read_manifest(paths)
    commitments: Commitments | None = None
    memory = RunMemory(None)  # the plan, when this run writes it (its shards then need not read it back)
    if manifest is None:
        if choose_rows is None:
            raise RuntimeError(f"campaign {spec.campaign_id} attempt {spec.attempt} has no plan to resume")
        # With a frequency cap, no other campaign under these results counts between this one's counting
        # and its manifest, which is what makes its rows count for them.
        with counting_alone(spec, logger):
            planned = choose_rows()
            if table is not None:
                planned = replace(planned, rows=with_costs(planned.rows, table, spec.provider))
                if spec.max_cost is not None:
                    commitments = start_budget(
                        planned.rows, spec, table
                    )  # ConfigError: nothing written or sent
                    kept = pl.col("row_index").is_in(commitments.unknown_before.implode())
                    planned = replace(planned, rows=planned.rows.with_columns(kept.alias(COST_KEPT)))
            with stage(seconds, "write-plan"):
                if spec.attempt == 1:
                    save_spec(spec)  # before the plan: a re-run meets it whether or not the plan was finished
                manifest = save_plan(paths, planned)
        memory = RunMemory(planned.rows)
        del planned  # the memory holds the rows until the shards are done; nothing else should
    else:
        logger.info("resuming campaign %s attempt %d from its recorded plan", spec.campaign_id, spec.attempt)
        if table is not None and spec.max_cost is not None:
            commitments = resume_budget(spec, manifest.shards, table)
    tell(
        logger,
        logging.INFO,
        f"campaign {spec.campaign_id} attempt {spec.attempt}: {manifest.rows_to_send:,} of "
        f"{manifest.rows:,} rows to send",
    )
    budget = None if commitments is None else shared.Budget(commitments.cap, commitments.spent)
    if commitments is not None:
        currency = table.currencies.get(spec.provider) if table is not None else None
        logger.info(
            "campaign %s: spend cap %s, of which %s is committed before this attempt sends",
            spec.campaign_id,
            money(commitments.cap, currency),
            money(commitments.spent, currency),
        )
    stop, reports = _send(spec, manifest, logger, seconds, lock, budget, memory)
    # The shards are done with the plan: from here on the recorded results are read. (At ten million rows the
    # plan is some 3 GiB, which reading the summary's columns would otherwise come on top of.)
    memory.plan = None
    if stop.code == CIRCUIT_OPEN:  # paused, not sealed: running the campaign again resumes it
        pause_attempt(spec, manifest, stop, reports, logger, seconds)
    with stage(seconds, "persist"):
        uri = persist_results(spec, manifest.shards)
    requests: dict[str, int] = {}
    for r in reports:
        for k, v in r.requests.items():
            requests[k] = requests.get(k, 0) + v
    # The summary reads back only what it counts, unless a price list needs the phones and prices too.
    rows = storage.read_parquet(uri, columns=SUMMARY_COLUMNS if spec.prices is None else None)
    earlier = commitments.earlier if commitments is not None else 0
    summary = report(
        rows,
        spec,
        logger,
        results_uri=uri,
        seconds=seconds,
        requests=requests,
        completed=True,
        estimate=estimate_for(rows, spec, table=table, spent_before=earlier),
    )
    for line in next_steps(summary, spec, completed=True):
        tell(logger, logging.WARNING, line)
    _release_held(spec, rows, logger)
    if stop.is_set():
        # Results are written first, so that every row has its record; then the run fails loudly.
        raise CampaignStopError(
            f"campaign {spec.campaign_id} stopped: {stop.reason}. Rows not sent are recorded as "
            "failed; fix the cause, then `smscast retry` sends them.",
            code=stop.code or "stopped",
        )
    return summary


def _release_held(spec: CampaignSpec, rows: pl.DataFrame, logger: Logger) -> None:
    """Rows the contact policy held: their release is scheduled (under a Prefect server with the release
    deployment), or the user is told when and how to send them."""
    from smscast.flows.release import release_steps  # the release flow runs its attempts through this module

    for line in release_steps(spec, rows, logger):
        tell(logger, logging.INFO, line)


def _send(
    spec: CampaignSpec,
    manifest: Manifest,
    logger: Logger,
    seconds: dict[str, float],
    lock: CampaignLock,
    budget: shared.Budget | None = None,
    memory: RunMemory | None = None,
) -> tuple[shared.Stop, list[ShardReport]]:
    """The manifest's shards as mapped task runs, on the flow's threads or a Dask cluster (`spec.runner`),
    sharing one stop signal (which a lost lock also sets) and the spend cap's budget. `memory`: the plan the run
    has just written, which its shards in this process take from memory."""
    key = f"{spec.campaign_id}-{uuid.uuid4().hex[:8]}"
    board = ProgressBoard(spec, manifest)
    runs = shard_runs(spec, key, lock, logger)
    stop = runs.stop
    progress = shared.Progress(manifest.rows_to_send, logger, publish=board.percent)
    reports: list[ShardReport] = []
    try:
        with stage(seconds, "send"), runs, remembered(key, memory or RunMemory(None)):
            shared.register(key, shared.Runtime(progress, stop, budget, shards_at_once=runs.shards_at_once))
            for future in as_completed(runs.map(send_shard, spec, manifest.shards)):
                reports.append(future.result())
                board.shard_done(reports[-1])
    except BaseException as exc:
        board.finish(f"{type(exc).__name__} in a shard's task run (its logs say more)")
        raise
    finally:
        shared.unregister(key)
    board.finish(stop.reason if stop.is_set() else None)
    if stop.code == "lock_lost":
        # Another run owns the campaign now: write nothing (its record stands), send nothing, fail loudly.
        raise CampaignLockedError(
            f"campaign {spec.campaign_id}: {stop.reason}; this run stopped and wrote nothing"
        )
    return stop, sorted(reports, key=lambda r: r.shard)


class ProgressBoard:
    """What a run shows while it sends, on its own page and on the run the user started: Prefect's progress
    bar, moved as rows go out (smscast.runtime.Progress calls `percent` from the shard threads, throttled),
    and beside it a markdown table of rows per status, updated in the flow's thread as each shard finishes
    (a shard's counts are exact only once it is done)."""

    def __init__(self, spec: CampaignSpec, manifest: Manifest) -> None:
        self._title = f"{spec.campaign_id} · attempt {spec.attempt}"
        self._manifest = manifest
        self._lock = threading.Lock()
        self._pct = 0.0
        self._rows = 0
        self._shards = 0
        self._counts: dict[str, int] = {}
        self._bar = publish_artifact("progress", 0.0, description=self._line())
        self._table = publish_artifact(
            "markdown", self.markdown(), description=f"Sending {self._title}: rows per status"
        )

    def percent(self, pct: float) -> None:
        with self._lock:
            if pct <= self._pct:  # shard reports may have moved the bar further already: never go back
                return
            self._pct = pct
        update_artifacts(self._bar, pct)

    def shard_done(self, shard: ShardReport) -> None:
        self._rows += shard.rows
        self._shards += 1
        for status, n in shard.counts.items():
            self._counts[status] = self._counts.get(status, 0) + n
        total = self._manifest.rows_to_send
        with self._lock:
            self._pct = max(self._pct, 100.0 * self._rows / total if total else 100.0)
            pct = self._pct
        update_artifacts(self._bar, pct, self._line())
        update_artifacts(self._table, self.markdown())

    def finish(self, stopped: str | None) -> None:
        """The last word: sent, or stopped and why (the bar stays where sending stopped)."""
        if stopped is None:
            with self._lock:
                self._pct = 100.0
            update_artifacts(self._bar, 100.0, self._line())
        update_artifacts(self._table, self.markdown(stopped=stopped))

    def _line(self) -> str:
        m = self._manifest
        return (
            f"{self._title}: {self._rows:,} of {m.rows_to_send:,} rows sent · "
            f"{self._shards} of {len(m.shards)} shards done"
        )

    def markdown(self, *, stopped: str | None = None) -> str:
        m = self._manifest
        done = self._shards == len(m.shards)
        state = f"stopped: {stopped}" if stopped else "sent" if done else "sending"
        lines = [
            f"### {self._title}: {state}",
            "",
            f"**{self._rows:,} of {m.rows_to_send:,} rows** "
            f"({share(self._rows, m.rows_to_send)}) · {self._shards} of {len(m.shards)} shards done"
            + (
                f" · {m.rows - m.rows_to_send:,} rows not to send (the summary says why)"
                if m.rows > m.rows_to_send
                else ""
            ),
            "",
        ]
        if self._counts:
            ordered = {s: self._counts[s] for s in (*STATUSES, *sorted(self._counts)) if s in self._counts}
            lines += ["Rows sent so far, by status:", ""]
            lines += status_table(ordered, self._rows)
        else:
            lines.append("No shard has finished yet.")
        return "\n".join(lines)
