"""Send: one mapped Prefect task run per shard. Inside it, async httpx sends the shard's batches under the
provider's concurrency and the process-wide rate limit (tasks/send_engine.py `send_rows` does the work,
without Prefect); this module resumes, journals and records each shard."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import polars as pl
from prefect import get_run_logger, task
from prefect.cache_policies import NONE
from prefect.task_runners import ThreadPoolTaskRunner

from smscast import storage
from smscast.campaign import CampaignSpec
from smscast.providers.registry import make_provider
from smscast.results import AttemptPaths
from smscast.runtime import lookup as lookup_runtime
from smscast.tasks.journal import Journal
from smscast.tasks.persist import result_rows
from smscast.tasks.plan import ShardRef
from smscast.tasks.send_engine import SHARD_WORKERS, send_rows


def shard_runner() -> Any:
    """The flows' task runner: threads, so that shards share the process-wide rate limiter. (Typed Any:
    ThreadPoolTaskRunner's generic parameter does not line up with the flow decorator's in prefect 3.8.)"""
    return ThreadPoolTaskRunner(max_workers=SHARD_WORKERS)


@dataclass(frozen=True)
class ShardReport:
    shard: int
    rows: int
    counts: dict[str, int]
    requests: dict[str, int]
    resumed: bool = False


@task(name="send-shard", cache_policy=NONE, task_run_name="send-shard-{shard.shard}")
def send_shard(spec: CampaignSpec, shard: ShardRef, runtime_key: str) -> ShardReport:
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
    planned = storage.read_parquet(paths.plan_shard(shard.shard))
    provider = make_provider(spec.provider, base_url=spec.base_url)
    runtime = lookup_runtime(runtime_key)
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


def shard_journal(paths: AttemptPaths, shard: int, *, write_ahead: bool) -> Journal:
    return Journal(paths.journal(shard), write_ahead=write_ahead)


def _counts(outcomes: pl.DataFrame) -> dict[str, int]:
    return {str(s): int(n) for s, n in outcomes.group_by("status").len().iter_rows()}
