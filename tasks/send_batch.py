"""How the send engine sends one request's worth of rows, and what it records of it (`ShardSender`; the
shard around it is tasks/send_engine.py `send_rows`).

The rules, which depend only on the exception tree (smscast/errors.py) and the provider's capabilities:

* 429          -> wait Retry-After (the shared bucket pauses everyone and halves its rate), then again.
* never sent   -> (connect errors) retry with exponential backoff and full jitter.
* 5xx          -> the provider says it failed: retry likewise.
* maybe sent   -> (read timeout, dropped connection) retry with the same keys only if the provider's
                  idempotency makes that harmless; otherwise record `unknown` for reconciliation.
* whole batch refused for a bad row -> bisect to isolate the bad rows, send the rest.
* campaign-stopping refusal (credentials, quota, credit) -> every batch not yet sent is `failed` (never sent,
  retriable once the account is fixed).
* spend cap (`runtime.budget`) -> each request reserves its rows' cost right before it is posted; the first
  that does not fit, and every one after it, is `failed` (`over_budget`: never sent, a retry with a higher
  cap sends it). Only the cost of rows the provider certainly did not take is given back.
* circuit breaker (smscast/breaker.py) -> every row settled counts in the run's window; when too many failed or
  were refused, the campaign's stop is set (`circuit_open`) and every batch not yet sent is `failed` with it.

Out of retries, a batch is `failed` if no attempt could have been accepted, `unknown` if one could.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

import httpx
import polars as pl

from smscast import transport
from smscast.breaker import CircuitBreaker, not_sent
from smscast.errors import (
    AmbiguousError,
    BatchRejectedError,
    CampaignStopError,
    RateLimitedError,
    SendError,
    TransientError,
)
from smscast.pricing import COST, COST_KEPT, OVER_BUDGET, SPENT, units_of
from smscast.providers.base import Batch, Outcomes, Provider, Rejection, RowOutcome
from smscast.ratelimit import TokenBucket
from smscast.runtime import Budget, Reservation, Stop
from smscast.status import Status
from smscast.tasks.outcomes import SentBatch


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 5  # per batch, for transient failures other than 429
    max_throttled: int = 50  # 429s tolerated for one batch before it is recorded as failed
    backoff_base: float = 0.5
    backoff_cap: float = 30.0

    def backoff(self, attempt: int) -> float:
        return random.uniform(0, min(self.backoff_cap, self.backoff_base * 2**attempt))


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
        policy: RetryPolicy,
        stop: Stop | None = None,
        on_progress: ProgressFn | None = None,
        journal: BatchJournal | None = None,
        budget: Budget | None = None,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self.provider = provider
        self.caps = provider.caps
        self.client = client
        self.bucket = bucket
        self.sem = asyncio.Semaphore(max(1, concurrency))
        self.policy = policy
        self.stop = stop or Stop()
        self.on_progress = on_progress
        self.journal = journal
        self.budget = budget
        self.breaker = breaker
        self.requests: dict[str, int] = {}  # what happened to each HTTP request, for the summary

    async def run(self, batches: list[Batch]) -> list[SentBatch]:
        async def one(batch: Batch) -> list[SentBatch]:
            parts = await self.send_batch(batch, top=True)
            if self.journal is not None:
                self.journal.record(batch, parts)  # only queued: it never holds up a request
            if self.on_progress is not None:
                counts: Counter[str] = Counter()
                for part in parts:
                    counts.update(Outcomes.of(part.outcomes).counts())
                self.on_progress(len(batch), dict(counts))
            return parts

        done = await asyncio.gather(*(one(b) for b in batches))
        return [part for parts in done for part in parts]

    def _count(self, key: str) -> None:
        self.requests[key] = self.requests.get(key, 0) + 1

    async def send_batch(self, batch: Batch, *, top: bool = False) -> list[SentBatch]:
        if self.budget is None:
            return await self._send_batch(batch, None, top=top)
        hold = Reservation(self.budget, *_costs(batch))
        parts = await self._send_batch(batch, hold, top=top)
        hold.settle(
            (i, s in SPENT)
            for p in parts
            for i, s in zip(p.row_index, Outcomes.of(p.outcomes).status, strict=True)
        )
        return parts

    async def _send_batch(self, batch: Batch, hold: Reservation | None, *, top: bool) -> list[SentBatch]:
        attempt = throttled = 0
        maybe_accepted = False
        journalled = False  # whether this run put the batch's intent on record (top-level, write-ahead)
        ahead = self.journal if top and self.journal is not None and self.journal.write_ahead else None
        while True:
            submitted = datetime.now(UTC)
            try:
                # Before waiting for a rate slot: once the cap is reached, what is left fails at once rather
                # than at the provider's pace (5 requests a minute for textingline).
                if hold is not None and not hold.take():
                    return self._all(
                        batch,
                        Status.FAILED,
                        OVER_BUDGET,
                        "not sent: it would take the campaign past its spend cap (--max-cost)",
                    )
                request = self.provider.build_request(batch)
                await self.bucket.acquire()
                async with self.sem:
                    if ahead is not None and not journalled and not self.stop.is_set():
                        # The moment before it may reach the provider, not when it was queued.
                        try:
                            await asyncio.to_thread(ahead.intend, batch)
                            journalled = True
                        except Exception:
                            # Without its intent on record the batch must not go out. A run that lost its
                            # lock meanwhile (its heir may have removed the journal) stops below; otherwise
                            # the storage error fails the run loudly.
                            if not self.stop.is_set():
                                raise
                    # Checked last, right before the request: batches queued behind a campaign stop must not
                    # go out, nor may a run that was frozen past its lease (a lost worker) on waking up.
                    if self.stop.is_set():
                        if journalled:  # the intent went on record, the request did not go out
                            await self._withdraw(batch)
                        return self._stopped(batch, maybe_accepted, *not_sent(self.stop))
                    response = await transport.send(self.client, request, self.caps.name)
                outcomes = Outcomes.of(self.provider.parse_response(batch, response))
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
                self.stop.set(exc.code, self.provider.redact(str(exc)))
                return self._stopped(batch, maybe_accepted, exc.code, str(exc))
            except BatchRejectedError as exc:
                self._count("batch_rejected")
                if hold is not None:
                    hold.refund_all()  # refused whole, not taken: the parts it is split into reserve their own
                if exc.retryable_split and (isolated := await self._isolate(batch, exc)) is not None:
                    return isolated
                message = str(exc)
                if exc.retryable_split and len(batch) > 1:
                    minimum = f"{self.caps.name} needs {self.caps.min_rows}+ per request"
                    message += f" (the refused rows could not be isolated: {minimum})"
                return self._all(batch, Status.REJECTED, exc.code, message)
            except AmbiguousError as exc:
                self._count(exc.code)
                maybe_accepted = True
                if hold is not None:
                    hold.keep()  # it may have been accepted: its cost stays spent, whatever comes next
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
                if self.breaker is not None:
                    # An answer whose rows all share a status and code (most are all accepted) is counted as
                    # one outcome times its rows: the same count, without a tuple per row.
                    same = outcomes.uniform()
                    if same is not None:
                        self.breaker.watch(self.stop, [same], answer=True, times=len(outcomes))
                    else:
                        self.breaker.watch(self.stop, outcomes, answer=True)
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

    async def _isolate(self, batch: Batch, exc: BatchRejectedError) -> list[SentBatch] | None:
        """A whole-request refusal that a smaller request can avoid, handled as the provider refuses rows
        (`caps.rejection`): a PER_ROW provider that names the rows loses only those, and the rest go at once in
        one request; otherwise halves are sent until the cause stands alone. None: it cannot be isolated."""
        named = sorted({i for i in exc.rows if 0 <= i < len(batch)})
        if self.caps.rejection is Rejection.PER_ROW and named and len(named) < len(batch):
            refused = batch.subset(named, "X")
            others = [i for i in range(len(batch)) if i not in set(named)]
            return [
                *self._all(refused, Status.REJECTED, exc.code, str(exc)),
                *await self.send_batch(batch.subset(others, "K")),
            ]
        if self.caps.bisects(len(batch)):
            return await self._bisect(batch)
        return None

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

    def _stopped(self, batch: Batch, maybe_accepted: bool, code: str, message: str) -> list[SentBatch]:
        """A batch the campaign's stop keeps from going (again): `failed`, never sent, unless an earlier try of
        it may have been accepted (a lost answer) — then `unknown`, which no retry or fallback sends blindly."""
        if maybe_accepted:
            return self._all(
                batch, Status.UNKNOWN, code, f"{message}; an earlier attempt may have been accepted"
            )
        return self._all(batch, Status.FAILED, code, message)

    def _all(self, batch: Batch, status: Status, code: str, message: str) -> list[SentBatch]:
        # Messages here may quote the provider's error text; that text never reaches results unredacted.
        outcome = RowOutcome(status=status, error_code=code, error_message=self.provider.redact(message))
        rows = batch.rows.get_column("row_index").to_list()
        if self.breaker is not None:  # every whole-request outcome ends here: refusals, give-ups, stops
            self.breaker.watch(self.stop, [outcome], answer=False, times=len(rows))
        return [SentBatch(batch.batch_id, rows, Outcomes.same(len(rows), outcome), datetime.now(UTC))]


def _costs(batch: Batch) -> tuple[dict[int, int], frozenset[int]]:
    """row_index -> the row's planned cost in budget units (0 where the plan has none); and the rows whose
    cost stays spent whatever comes of them (an earlier attempt left them `unknown`)."""
    if COST not in batch.rows.columns:
        return {}, frozenset()
    frame = batch.rows.select("row_index", units_of())
    costs = dict(zip(frame.get_column("row_index").to_list(), frame.get_column(COST).to_list(), strict=True))
    if COST_KEPT not in batch.rows.columns:
        return costs, frozenset()
    return costs, frozenset(
        batch.rows.filter(pl.col(COST_KEPT).fill_null(False)).get_column("row_index").to_list()
    )
