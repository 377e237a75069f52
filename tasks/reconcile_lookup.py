"""The decisions of a reconciliation run (tasks/reconcile.py) before they are compared with what is recorded:
lookups of a provider's batches, each answer matched to a row, and what the match means for the row."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import polars as pl

from smscast.account_limit import account_bucket
from smscast.campaign import CampaignSpec
from smscast.delivery import DELIVERY_SCHEMA, SETTLED_SCHEMA, DeliveryStatus, FactSource, conform
from smscast.errors import CampaignStopError, ConfigError, RateLimitedError, SmscastError
from smscast.providers.base import BatchNotFoundError, Provider, StatusLookup
from smscast.providers.registry import make_provider
from smscast.ratelimit import TokenBucket
from smscast.status import Status
from smscast.tasks.reconcile_summary import NO_BATCH_REF, ReconcileSummary
from smscast.tasks.reports_fold import KEYS

Logger = logging.Logger | logging.LoggerAdapter[logging.Logger]
Key = tuple[int, int]
MAX_THROTTLED = 10  # 429s in a row before a batch's lookup counts as failed


class Work:
    """What one run decided, before it is compared with what is recorded."""

    def __init__(self, now: datetime) -> None:
        self.now = now
        self.facts: list[dict[str, Any]] = []
        self.settled: list[dict[str, Any]] = []
        self.fact_frames: list[pl.DataFrame] = []
        self.settled_frames: list[pl.DataFrame] = []
        self.reasons: dict[Key, str] = {}
        self.errored: set[Key] = set()  # rows whose lookup failed: left exactly as they were

    def note(self, rows: pl.DataFrame, reason: str, *, errored: bool = False) -> None:
        for key in rows.select(KEYS).iter_rows():
            self.reasons[key] = reason
            if errored:
                self.errored.add(key)

    def settle(
        self, row: dict[str, Any], status: Status, code: str | None, message: str | None, mid: str | None
    ) -> None:
        self.settled.append(
            {
                "campaign_id": row["campaign_id"],
                "attempt": row["attempt"],
                "row_index": row["row_index"],
                "status": status.value,
                "error_code": code,
                "error_message": message,
                "provider_message_id": mid,
                "settled_at": self.now,
            }
        )

    def fact(self, row: dict[str, Any], found: StatusLookup, delivery: DeliveryStatus) -> None:
        failed = delivery is DeliveryStatus.UNDELIVERED
        self.facts.append(
            {
                **{k: row[k] for k in ("campaign_id", "attempt", "row_index", "recipient_id", "provider")},
                "provider_message_id": found.provider_message_id or row["provider_message_id"],
                "provider_batch_ref": row["provider_batch_ref"],
                "delivery_status": delivery.value,
                "error_code": found.error_code if failed else None,
                "error_message": found.error_message if failed else None,
                "reported_at": found.reported_at or self.now,
                "source": FactSource.LOOKUP.value,
            }
        )

    def fact_frame(self) -> pl.DataFrame:
        own = pl.DataFrame(self.facts, schema=DELIVERY_SCHEMA)
        return pl.concat([own, *(conform(f, DELIVERY_SCHEMA) for f in self.fact_frames)])

    def settled_frame(self) -> pl.DataFrame:
        own = pl.DataFrame(self.settled, schema=SETTLED_SCHEMA)
        return pl.concat([own, *(conform(f, SETTLED_SCHEMA) for f in self.settled_frames)])


# ---- lookups ------------------------------------------------------------------------------------------


async def look_up_provider(
    name: str,
    rows: pl.DataFrame,
    spec: CampaignSpec | None,
    only: str | None,
    base_url: str | None,
    http: httpx.AsyncClient,
    work: Work,
    summary: ReconcileSummary,
    log: Logger,
) -> None:
    recorded = spec is not None and spec.provider == name
    # An explicit endpoint is for the provider asked for, else the campaign's own (or, unrecorded, any).
    url: str | None = spec.base_url if spec is not None and recorded else None
    if base_url and (only == name or (only is None and (recorded or spec is None))):
        url = base_url
    try:
        prov = make_provider(name, base_url=url)
    except ConfigError as exc:
        log.warning("reconcile: cannot look up %s's batches: %s", name, exc)
        batches = rows.get_column("provider_batch_ref").drop_nulls().n_unique()
        summary.lookup_errors["config"] = summary.lookup_errors.get("config", 0) + batches
        work.note(rows, "lookup_error:config", errored=True)
        return
    # The same limit sending draws on: a provider that counts lookups (Postman) counts them against it.
    bucket = account_bucket(prov, spec if recorded else None)
    work.note(rows.filter(pl.col("provider_batch_ref").is_null()), NO_BATCH_REF)
    groups = rows.filter(pl.col("provider_batch_ref").is_not_null()).partition_by(
        "provider_batch_ref", as_dict=True, maintain_order=True
    )
    gate = asyncio.Semaphore(max(1, prov.caps.concurrency))
    stopped: list[SmscastError] = []

    async def one(ref: str) -> list[StatusLookup] | SmscastError:
        async with gate:
            if stopped:  # credentials refused or no such endpoint: every other lookup would meet it too
                return stopped[0]
            try:
                return await _lookup(prov, http, ref, bucket)
            except CampaignStopError as exc:
                stopped.append(exc)
                return exc
            except SmscastError as exc:
                return exc

    refs = [str(k[0]) for k in groups]
    answers = await asyncio.gather(*(one(ref) for ref in refs))
    for ref, answer in zip(refs, answers, strict=True):
        _apply_batch(name, groups[(ref,)], answer, work, summary)


async def _lookup(
    prov: Provider, http: httpx.AsyncClient, ref: str, bucket: TokenBucket
) -> list[StatusLookup]:
    for _ in range(MAX_THROTTLED):
        try:
            found = await prov.lookup_status(http, ref, pace=bucket.acquire)
        except RateLimitedError as exc:
            bucket.penalise(exc.retry_after)  # pauses sending in this process too: one account, one limit
            continue
        bucket.reward()
        return found
    raise RateLimitedError(f"{prov.caps.name}: the lookup of {ref} stayed rate limited", code="http_429")


def _apply_batch(
    name: str,
    rows: pl.DataFrame,
    answer: list[StatusLookup] | SmscastError,
    work: Work,
    summary: ReconcileSummary,
) -> None:
    if isinstance(answer, BatchNotFoundError):
        # The provider's own word that it holds no such batch: an `unknown` row of it was never accepted.
        for row in rows.iter_rows(named=True):
            if row["status"] == Status.UNKNOWN.value:
                work.settle(row, Status.FAILED, answer.code, str(answer), None)
            else:
                work.reasons[(row["attempt"], row["row_index"])] = "batch_not_found"
        return
    if isinstance(answer, SmscastError):
        code = str(getattr(answer, "code", type(answer).__name__))
        summary.lookup_errors[code] = summary.lookup_errors.get(code, 0) + 1
        work.note(rows, f"lookup_error:{code}", errored=True)
        return
    summary.batches += 1
    for row, found in _match(rows, answer):
        key = (row["attempt"], row["row_index"])
        if isinstance(found, str):
            work.reasons[key] = found
        elif found.refused:
            if row["status"] != found.status.value:
                reason = found.error_message or f"{name}'s job did not send it ({found.provider_status})"
                work.settle(row, found.status, found.error_code, reason, None)
        elif found.delivery_status is None and found.status is not Status.ACCEPTED:
            work.reasons[key] = f"state_unreadable:{found.provider_status or '?'}"
        else:
            if row["status"] == Status.UNKNOWN.value:
                work.settle(row, Status.ACCEPTED, None, None, found.provider_message_id)
            if found.delivery_status is not None:
                work.fact(row, found, found.delivery_status)


def _match(
    rows: pl.DataFrame, answers: list[StatusLookup]
) -> Iterator[tuple[dict[str, Any], StatusLookup | str]]:
    """Each row with its recipient in the answer: by message id, else by our key, else by phone. A reason
    instead when none (or more than one) is found."""
    by_id: dict[str, list[StatusLookup]] = {}
    by_key: dict[str, list[StatusLookup]] = {}
    by_phone: dict[str, list[StatusLookup]] = {}
    for a in answers:
        if a.provider_message_id:
            by_id.setdefault(a.provider_message_id, []).append(a)
        if a.client_ref:
            by_key.setdefault(a.client_ref, []).append(a)
        by_phone.setdefault(a.phone, []).append(a)
    for row in rows.iter_rows(named=True):
        found: list[StatusLookup] = []
        for table, value in (
            (by_id, row["provider_message_id"]),
            (by_key, row["idempotency_key"]),
            (by_phone, row["phone"]),
        ):
            found = table.get(value, []) if value else []
            if found:
                break
        yield row, ("not_in_batch" if not found else "ambiguous_match" if len(found) > 1 else found[0])
