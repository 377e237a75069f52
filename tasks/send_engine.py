"""Send a shard's rows with asyncio and one shared httpx connection pool, without Prefect (`send_rows`; the
Prefect task around it is tasks/send.py). How each request is sent, retried, split or given up, and the rules
for it, are tasks/send_batch.py's (`ShardSender`); this module resumes the shard from its journal, runs its
batches and assembles their outcomes.
"""

from __future__ import annotations

import asyncio
import gc
import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

import httpx
import polars as pl

from smscast.account_limit import account_bucket
from smscast.breaker import breaker_for
from smscast.campaign import CampaignSpec
from smscast.providers.base import Batch, Provider
from smscast.runtime import Runtime
from smscast.tasks.outcomes import Recovered, outcomes_frame
from smscast.tasks.send_batch import BatchJournal, RetryPolicy, ShardSender
from smscast.transport import tls_context

SHARD_WORKERS = 2  # shard task runs in flight at once (the flows' thread pool, tasks/send.py)


class ShardJournal(BatchJournal, Protocol):
    """A BatchJournal that also resumes a shard (`send_rows`): what an interrupted run left, its writes
    flushed on close, and the outcomes it built as it went (None if some are missing)."""

    def recover(self, batches: list[Batch]) -> Recovered: ...

    def close(self) -> None: ...

    def outcomes(self) -> pl.DataFrame | None: ...


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
    return httpx.AsyncClient(timeout=timeout, limits=limits, verify=tls_context())


def per_shard_concurrency(spec: CampaignSpec, provider: Provider, shards_at_once: int | None = None) -> int:
    # The provider's concurrency is for the whole campaign, split over the shards that run side by side:
    # SHARD_WORKERS threads here, or as many as a Dask cluster's worker threads (Runtime.shards_at_once).
    total = spec.concurrency or provider.caps.concurrency
    return max(1, math.ceil(total / (shards_at_once or SHARD_WORKERS)))


# While shards send: young collections every 50,000 allocations instead of 700, and what existed before
# sending (Prefect, the plan, every imported module: some 400,000 objects) out of the collector's sight. Each
# request in flight holds a chain of coroutines and each answer a thousand short-lived dicts, which at
# Python's defaults survived into older generations, so that full collections (~0.2 s each over that heap)
# came every few seconds. The same measure as the DLR receiver's (smscast/dlr/cli.py), scoped to sending:
# the first shard to start takes it, the last to finish gives it back (a process that froze objects itself
# keeps them frozen).
_GC_THRESHOLDS = (50_000, 20, 20)
_gc_lock = threading.Lock()
_gc_holders = 0
_gc_restore: tuple[tuple[int, int, int], bool] = (gc.get_threshold(), False)


@contextmanager
def fewer_collections() -> Iterator[None]:
    global _gc_holders, _gc_restore
    with _gc_lock:
        _gc_holders += 1
        if _gc_holders == 1:
            froze = gc.get_freeze_count() == 0
            _gc_restore = (gc.get_threshold(), froze)
            if froze:
                gc.freeze()
            gc.set_threshold(*_GC_THRESHOLDS)
    try:
        yield
    finally:
        with _gc_lock:
            _gc_holders -= 1
            if _gc_holders == 0:
                thresholds, froze = _gc_restore
                gc.set_threshold(*thresholds)
                if froze:
                    gc.unfreeze()  # into the oldest generation: collected as usual from now on


async def send_rows(
    provider: Provider,
    rows: pl.DataFrame,
    spec: CampaignSpec,
    *,
    runtime: Runtime | None = None,
    policy: RetryPolicy | None = None,
    client: httpx.AsyncClient | None = None,
    journal: ShardJournal | None = None,
) -> tuple[pl.DataFrame, dict[str, int]]:
    """Send planned rows (with batch_seq/batch_id/batch_key) and return their outcomes. Usable without
    Prefect, which is how the unit tests drive it with httpx.MockTransport. With a journal, each batch's
    outcome is recorded as it comes back, and batches recorded by an interrupted earlier run are not sent
    again (their recorded outcomes are returned); the journal is closed (its writes flushed) on return."""
    concurrency = per_shard_concurrency(spec, provider, runtime.shards_at_once if runtime else None)
    # The account's limit, shared with every run on the same account where Prefect holds it; the stop lets
    # a stopped campaign give up its turn at it.
    bucket = account_bucket(provider, spec, stop=runtime.stop if runtime else None)
    batches = batches_of(rows, spec)
    recovered = journal.recover(batches) if journal is not None else None
    if recovered is not None:
        batches = recovered.todo
    own_client = client is None
    http = client or http_client(provider, concurrency, spec.request_timeout)
    with fewer_collections():
        try:
            sender = ShardSender(
                provider,
                http,
                bucket,
                concurrency=concurrency,
                # Looked up here, so that a test replacing this module's RetryPolicy changes the default.
                policy=policy or RetryPolicy(),
                stop=runtime.stop if runtime else None,
                on_progress=runtime.progress.update if runtime else None,
                journal=journal,
                budget=runtime.budget if runtime else None,
                breaker=breaker_for(runtime, spec) if runtime else None,
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
