"""Send a shard's batches with asyncio and one shared httpx connection pool.

The rules, which depend only on the exception tree (smscast/errors.py) and the provider's capabilities:

* 429          -> wait Retry-After (the shared bucket pauses everyone and halves its rate), then again.
* never sent   -> (connect errors) retry with exponential backoff and full jitter.
* 5xx          -> the provider says it failed: retry likewise.
* maybe sent   -> (read timeout, dropped connection) retry with the same keys only if the provider's
                  idempotency makes that harmless; otherwise record `unknown` for reconciliation.
* whole batch refused for a bad row -> bisect to isolate the bad rows, send the rest.
* campaign-stopping refusal (credentials, quota, credit) -> every batch not yet sent is `failed` (never sent,
  retriable once the account is fixed).

Out of retries, a batch is `failed` if no attempt could have been accepted, `unknown` if one could.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

import httpx
import polars as pl

from providers.base import Batch, Provider, RowOutcome
from smscast import transport
from smscast.errors import (
    AmbiguousError,
    BatchRejectedError,
    CampaignStopError,
    RateLimitedError,
    SendError,
    TransientError,
)
from smscast.progress import Stop
from smscast.ratelimit import TokenBucket
from smscast.results import OUTCOME_SCHEMA
from smscast.status import Status


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 5  # per batch, for transient failures other than 429
    max_throttled: int = 50  # 429s tolerated for one batch before it is recorded as failed
    backoff_base: float = 0.5
    backoff_cap: float = 30.0

    def backoff(self, attempt: int) -> float:
        return random.uniform(0, min(self.backoff_cap, self.backoff_base * 2**attempt))


@dataclass(frozen=True, slots=True)
class SentBatch:
    """The outcome of one request (a batch, or a part of one after bisection), kept per batch rather than
    per row: a shard of 25,000 rows makes 25 of these, not 25,000 objects."""

    batch_id: str
    row_index: list[int]
    outcomes: list[RowOutcome]
    submitted_at: datetime


ProgressFn = Callable[[int, dict[str, int]], None]


class BatchJournal(Protocol):
    """tasks/journal.py: every batch's outcome after its last request, and where `write_ahead` (providers
    without idempotency) its intent before its first."""

    @property
    def write_ahead(self) -> bool: ...

    def intend(self, batch: Batch) -> None: ...

    def forget(self, batch: Batch) -> None: ...

    def record(self, batch: Batch, parts: list[SentBatch]) -> None: ...


class ShardSender:
    def __init__(
        self,
        provider: Provider,
        client: httpx.AsyncClient,
        bucket: TokenBucket,
        *,
        concurrency: int,
        policy: RetryPolicy | None = None,
        abort: Stop | None = None,
        on_progress: ProgressFn | None = None,
        journal: BatchJournal | None = None,
    ) -> None:
        self.provider = provider
        self.caps = provider.caps
        self.client = client
        self.bucket = bucket
        self.sem = asyncio.Semaphore(max(1, concurrency))
        self.policy = policy or RetryPolicy()
        self.abort = abort or Stop()
        self.on_progress = on_progress
        self.journal = journal
        self.requests: dict[str, int] = {}  # what happened to each HTTP request, for the summary

    async def run(self, batches: list[Batch]) -> list[SentBatch]:
        async def one(batch: Batch) -> list[SentBatch]:
            parts = await self.send_batch(batch, top=True)
            if self.journal is not None:
                self.journal.record(batch, parts)  # only queued: it never holds up a request
            if self.on_progress is not None:
                counts: dict[str, int] = {}
                for part in parts:
                    for o in part.outcomes:
                        counts[o.status] = counts.get(o.status, 0) + 1
                self.on_progress(len(batch), counts)
            return parts

        done = await asyncio.gather(*(one(b) for b in batches))
        return [part for parts in done for part in parts]

    def _count(self, key: str) -> None:
        self.requests[key] = self.requests.get(key, 0) + 1

    async def send_batch(self, batch: Batch, *, top: bool = False) -> list[SentBatch]:
        attempt = throttled = 0
        maybe_accepted = False
        journalled = False  # whether this run put the batch's intent on record (top-level, write-ahead)
        ahead = self.journal if top and self.journal is not None and self.journal.write_ahead else None
        while True:
            submitted = datetime.now(UTC)
            try:
                request = self.provider.build_request(batch)
                await self.bucket.acquire()
                async with self.sem:
                    if ahead is not None and not journalled and not self.abort.is_set():
                        # The moment before it may reach the provider, not when it was queued.
                        try:
                            await asyncio.to_thread(ahead.intend, batch)
                            journalled = True
                        except Exception:
                            # Without its intent on record the batch must not go out. A run that lost its
                            # lock meanwhile (its heir may have removed the journal) stops below; otherwise
                            # the storage error fails the run loudly.
                            if not self.abort.is_set():
                                raise
                    # Checked last, right before the request: batches queued behind a campaign stop must not
                    # go out, nor may a run that was frozen past its lease (a lost worker) on waking up.
                    if self.abort.is_set():
                        if journalled:  # the intent went on record, the request did not go out
                            await self._withdraw(batch)
                        return self._all(
                            batch,
                            Status.FAILED,
                            "aborted",
                            f"not sent: campaign stopped ({self.abort.reason})",
                        )
                    response = await transport.send(self.client, request, self.caps.name)
                outcomes = self.provider.parse_response(batch, response)
            except RateLimitedError as exc:
                if journalled:
                    await self._withdraw(batch)
                    journalled = False
                self._count("429")
                throttled += 1
                self.bucket.penalise(exc.retry_after)
                if throttled > self.policy.max_throttled:
                    return self._give_up(batch, exc, maybe_accepted)
                continue
            except CampaignStopError as exc:
                if journalled:  # refused credentials, quota or credit: the request was not processed
                    await self._withdraw(batch)
                self._count(exc.code)
                self.abort.set(exc.code, self.provider.redact(str(exc)))
                return self._all(batch, Status.FAILED, exc.code, str(exc))
            except BatchRejectedError as exc:
                self._count("batch_rejected")
                if exc.retryable_split and self._splittable(batch):
                    return await self._bisect(batch)
                message = str(exc)
                if exc.retryable_split and len(batch) > 1:
                    minimum = f"{self.caps.name} needs {self.caps.min_rows}+ per request"
                    message += f" (the refused rows could not be isolated: {minimum})"
                return self._all(batch, Status.REJECTED, exc.code, message)
            except AmbiguousError as exc:
                self._count(exc.code)
                maybe_accepted = True
                if not self.caps.resend_safe:
                    return self._all(batch, Status.UNKNOWN, exc.code, f"{exc}; reconcile before re-sending")
                attempt += 1
                if attempt >= self.policy.max_attempts:
                    return self._give_up(batch, exc, maybe_accepted)
                await asyncio.sleep(self.policy.backoff(attempt))
            except TransientError as exc:  # never sent, or a 5xx: the provider did not take it
                if journalled:
                    await self._withdraw(batch)
                    journalled = False
                self._count(exc.code)
                attempt += 1
                if attempt >= self.policy.max_attempts:
                    return self._give_up(batch, exc, maybe_accepted)
                await asyncio.sleep(self.policy.backoff(attempt))
            else:
                self._count(str(response.status_code))
                self.bucket.reward()
                if len(outcomes) != len(batch):  # a provider module bug must not lose or invent rows
                    raise RuntimeError(f"{self.caps.name}: {len(outcomes)} outcomes for {len(batch)} rows")
                return [
                    SentBatch(
                        batch.batch_id, batch.rows.get_column("row_index").to_list(), outcomes, submitted
                    )
                ]

    async def _withdraw(self, batch: Batch) -> None:
        """After an answer that proves the request was not processed, withdraw the journal's intent, so that a
        crash during the backoff leaves the batch to be sent rather than in doubt."""
        if self.journal is not None:
            await asyncio.to_thread(self.journal.forget, batch)

    def _splittable(self, batch: Batch) -> bool:
        return len(batch) >= max(2, 2 * self.caps.min_rows)

    async def _bisect(self, batch: Batch) -> list[SentBatch]:
        """A whole-batch refusal caused by some row: send each half on its own, recursively, until the
        refused rows stand alone (or the provider's minimum batch size stops the split)."""
        mid = len(batch) // 2
        left = batch.subset(range(mid), "L")
        right = batch.subset(range(mid, len(batch)), "R")
        return [*await self.send_batch(left), *await self.send_batch(right)]

    def _give_up(self, batch: Batch, exc: SendError, maybe_accepted: bool) -> list[SentBatch]:
        if maybe_accepted:
            return self._all(
                batch, Status.UNKNOWN, exc.code, f"{exc}; an earlier attempt may have been accepted"
            )
        return self._all(batch, Status.FAILED, exc.code, f"{exc}; gave up after retries")

    def _all(self, batch: Batch, status: Status, code: str, message: str) -> list[SentBatch]:
        # Messages here may quote the provider's error text; that text never reaches results unredacted.
        outcome = RowOutcome(status=status, error_code=code, error_message=self.provider.redact(message))
        rows = batch.rows.get_column("row_index").to_list()
        return [SentBatch(batch.batch_id, rows, [outcome] * len(rows), datetime.now(UTC))]


def outcomes_frame(parts: list[SentBatch]) -> pl.DataFrame:
    """Columnar outcomes (the shard's durable record), one row per sent row."""
    schema = {**OUTCOME_SCHEMA, "batch_id": pl.String()}
    outcomes = [o for p in parts for o in p.outcomes]
    if not outcomes:
        return pl.DataFrame(schema=schema)
    status, code, message, message_id, batch_ref = zip(*outcomes, strict=True)  # transposed in C
    per_row = _per_row(parts)
    return pl.DataFrame(
        {
            "row_index": [i for p in parts for i in p.row_index],
            "batch_id": per_row.get_column("batch_id"),
            "status": [str(s) for s in status],
            "error_code": code,
            "error_message": message,
            "provider_message_id": message_id,
            "provider_batch_ref": batch_ref,
            "submitted_at": per_row.get_column("submitted_at"),
        },
        schema=schema,
    )


def _per_row(parts: list[SentBatch]) -> pl.DataFrame:
    """batch_id and submitted_at repeated once per row each part holds."""
    per_part = pl.DataFrame(
        {
            "batch_id": [p.batch_id for p in parts],
            "submitted_at": [p.submitted_at for p in parts],
            "n": [len(p.row_index) for p in parts],
        },
        schema={"batch_id": pl.String(), "submitted_at": OUTCOME_SCHEMA["submitted_at"], "n": pl.Int64()},
    )
    return per_part.select(pl.col("batch_id", "submitted_at").repeat_by("n").explode())
