"""Send: one mapped Prefect task run per shard. Inside it, async httpx sends the shard's batches under the
provider's concurrency and the process-wide rate limit (tasks/send_engine.py does the work)."""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from typing import Any

import httpx
import polars as pl
from prefect import get_run_logger, task
from prefect.cache_policies import NONE
from prefect.task_runners import ThreadPoolTaskRunner

from providers.base import Batch, Provider
from providers.registry import make_provider
from smscast import progress, storage
from smscast.campaign import CampaignSpec
from smscast.ratelimit import shared_bucket
from tasks.journal import Journal
from tasks.persist import result_rows, shard_part
from tasks.plan import ShardRef
from tasks.send_engine import RetryPolicy, ShardSender, outcomes_frame
from tasks.work import WorkDir

SHARD_WORKERS = 2  # shard task runs in flight at once (the flow's thread pool)


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


def batches_of(rows: pl.DataFrame, spec: CampaignSpec) -> list[Batch]:
    return [
        Batch(
            campaign_id=spec.campaign_id,
            batch_id=str(part.item(0, "batch_id")),
            batch_key=str(part.item(0, "batch_key")),
            rows=part,
            spec=spec,
        )
        for part in rows.sort("batch_seq", "row_index").partition_by("batch_seq", maintain_order=True)
    ]


def http_client(
    provider: Provider, concurrency: int, request_timeout: float | None = None
) -> httpx.AsyncClient:
    timeout = httpx.Timeout(request_timeout or provider.caps.request_timeout, connect=10.0)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    return httpx.AsyncClient(timeout=timeout, limits=limits)


def per_shard_concurrency(spec: CampaignSpec, provider: Provider) -> int:
    # The provider's concurrency is for the whole campaign; SHARD_WORKERS shards run side by side.
    total = spec.concurrency or provider.caps.concurrency
    return max(1, math.ceil(total / SHARD_WORKERS))


async def send_rows(
    provider: Provider,
    rows: pl.DataFrame,
    spec: CampaignSpec,
    *,
    runtime: progress.Runtime | None = None,
    policy: RetryPolicy | None = None,
    client: httpx.AsyncClient | None = None,
    journal: Journal | None = None,
) -> tuple[pl.DataFrame, dict[str, int]]:
    """Send planned rows (with batch_seq/batch_id/batch_key) and return their outcomes. Usable without
    Prefect, which is how the unit tests drive it with httpx.MockTransport. With a journal, each batch's
    outcome is recorded as it comes back, and batches recorded by an interrupted earlier run are not sent
    again (their recorded outcomes are returned); the journal is closed (its writes flushed) on return."""
    caps = provider.caps
    concurrency = per_shard_concurrency(spec, provider)
    bucket = shared_bucket(
        caps.name, provider.settings.base_url, spec.rate or caps.rate_per_second, caps.burst
    )
    batches = batches_of(rows, spec)
    recovered = journal.recover(batches) if journal is not None else None
    if recovered is not None:
        batches = recovered.todo
    own_client = client is None
    http = client or http_client(provider, concurrency, spec.request_timeout)
    try:
        sender = ShardSender(
            provider,
            http,
            bucket,
            concurrency=concurrency,
            policy=policy,
            abort=runtime.abort if runtime else None,
            on_progress=runtime.progress.update if runtime else None,
            journal=journal,
        )
        sent = await sender.run(batches)
    finally:
        if own_client:
            await http.aclose()
        if journal is not None:
            # Even when sending failed: what was answered is recorded for the next run.
            await asyncio.to_thread(journal.close)
    # The journal has built this run's outcomes frame as it went; without one (or if it failed), build it now.
    built = journal.outcomes() if journal is not None else None
    outcomes = built if built is not None else outcomes_frame(sent)
    if recovered is not None and (recovered.done or recovered.uncertain):
        outcomes = pl.concat([outcomes, *recovered.done, outcomes_frame(recovered.uncertain)])
    return outcomes, sender.requests


@task(name="send-shard", cache_policy=NONE, task_run_name="send-shard-{shard.shard}")
def send_shard(spec: CampaignSpec, work_root: str, shard: ShardRef, runtime_key: str) -> ShardReport:
    logger = get_run_logger()
    part = shard_part(spec, shard.shard)
    if storage.exists(part):
        # A resumed run: this shard finished before the interruption. Its record stands; never re-send.
        done = storage.read_parquet(part)
        logger.info("shard %d already sent (%d rows); skipping", shard.shard, done.height)
        # What a crash between writing the part and removing the journal left behind.
        shard_journal(work_root, shard.shard, write_ahead=False).discard()
        return ShardReport(shard.shard, done.height, _counts(done), {}, resumed=True)
    planned = storage.read_parquet(WorkDir(work_root).plan_shard(shard.shard))
    provider = make_provider(spec.provider, base_url=spec.base_url)
    runtime = progress.lookup(runtime_key)
    # Every batch's outcome is journalled as it comes back, so that a resumed shard sends only the batches
    # that were in flight. Providers without idempotency also record each batch's intent before sending it:
    # there, a batch in flight at a crash is `unknown`, never re-sent blindly.
    journal = shard_journal(work_root, shard.shard, write_ahead=not provider.caps.resend_safe)
    outcomes, requests = asyncio.run(send_rows(provider, planned, spec, runtime=runtime, journal=journal))
    if runtime is not None and runtime.abort.code == "lock_lost":
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


def shard_journal(work_root: str, shard: int, *, write_ahead: bool) -> Journal:
    return Journal(f"{work_root}/journal/shard={shard:05d}", write_ahead=write_ahead)


def _counts(outcomes: pl.DataFrame) -> dict[str, int]:
    return {str(s): int(n) for s, n in outcomes.group_by("status").len().iter_rows()}
