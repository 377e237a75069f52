"""Delivery truth (docs/contracts.md, "Delivery"): what became of a message after the provider accepted it.

The send statuses (smscast/status.py) say what the provider did with our request. This second, closed vocabulary
says what happened next. Three append-only datasets hold it, each a folder of write-once Parquet parts (paths in
smscast/results.py):

    <results>/campaign=<id>/delivery/   delivery facts, one row per report about one sent row (DELIVERY_SCHEMA)
    <results>/campaign=<id>/settled/    send statuses that reconciliation settled (SETTLED_SCHEMA): an `unknown`
                                        row found at the provider becomes `accepted`, one proven absent `failed`
    <results>/_dlr/                     reports the receiver (`smscast dlr serve`) took, not yet matched to a
                                        campaign's rows (REPORT_SCHEMA); `smscast reconcile` folds them in

Attempt parts stay write-once: nothing here rewrites them. The current view of a campaign (tasks/current.py) is
each row's latest attempt, with its settlement applied, joined with its latest delivery fact (`latest_facts`).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum

import polars as pl

from smscast import storage


class DeliveryStatus(StrEnum):
    PENDING = "pending"  # accepted, no final word yet
    DELIVERED = "delivered"  # the handset has it
    UNDELIVERED = "undelivered"  # a final failure, with the provider's code
    EXPIRED = "expired"  # no final word within the provider's reporting window


DELIVERY_STATUSES: tuple[str, ...] = tuple(s.value for s in DeliveryStatus)
FINAL: frozenset[DeliveryStatus] = frozenset(
    {DeliveryStatus.DELIVERED, DeliveryStatus.UNDELIVERED, DeliveryStatus.EXPIRED}
)


class FactSource(StrEnum):
    LOOKUP = "lookup"  # we asked the provider (smscast reconcile)
    WEBHOOK = "webhook"  # the provider told the receiver (smscast dlr serve)
    WINDOW = "window"  # nobody said anything within the provider's reporting window: `expired`


_TIME = pl.Datetime("us", "UTC")

DELIVERY_SCHEMA: dict[str, pl.DataType] = {
    "campaign_id": pl.String(),
    "attempt": pl.Int32(),  # the attempt whose message this is: a re-send is a new message
    "row_index": pl.Int64(),
    "recipient_id": pl.String(),
    "provider": pl.String(),
    "provider_message_id": pl.String(),
    "provider_batch_ref": pl.String(),
    "delivery_status": pl.String(),
    "error_code": pl.String(),
    "error_message": pl.String(),
    "reported_at": _TIME,  # when the provider says the state was reached (else when we learned it)
    "source": pl.String(),
}

SETTLED_SCHEMA: dict[str, pl.DataType] = {
    "campaign_id": pl.String(),
    "attempt": pl.Int32(),  # settles this attempt's row only: a later attempt supersedes it
    "row_index": pl.Int64(),
    "status": pl.String(),
    "error_code": pl.String(),
    "error_message": pl.String(),
    "provider_message_id": pl.String(),
    "settled_at": _TIME,
}

REPORT_SCHEMA: dict[str, pl.DataType] = {
    "report_id": pl.String(),  # a digest of the report's content: the same report twice is one report
    "provider": pl.String(),
    "provider_message_id": pl.String(),
    "client_ref": pl.String(),  # our per-row key, where the provider echoes it (Instasent's clientId)
    "delivery_status": pl.String(),
    "provider_status": pl.String(),
    "error_code": pl.String(),
    "error_message": pl.String(),
    "reported_at": _TIME,
    "received_at": _TIME,
}


def conform(df: pl.DataFrame, schema: dict[str, pl.DataType]) -> pl.DataFrame:
    """Select and cast to `schema`, filling absent columns with nulls."""
    return df.select(
        [
            (pl.col(name) if name in df.columns else pl.lit(None)).cast(dtype).alias(name)
            for name, dtype in schema.items()
        ]
    )


def part_name(now: datetime | None = None) -> str:
    """A new part's file name: sortable by time, unique across processes and machines."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%S%fZ")
    return f"part-{stamp}-{uuid.uuid4().hex[:12]}.parquet"


def append(folder: str, df: pl.DataFrame, schema: dict[str, pl.DataType]) -> str | None:
    """Write `df` as a new part under `folder` (nothing when it is empty). Parts are never rewritten."""
    if df.is_empty():
        return None
    uri = f"{folder.rstrip('/')}/{part_name()}"
    storage.write_parquet(conform(df, schema), uri)
    return uri


def read_all(folder: str, schema: dict[str, pl.DataType]) -> pl.DataFrame:
    """Every part under `folder`, in the schema (empty with the schema's columns when there is none)."""
    parts = storage.list_files(f"{folder.rstrip('/')}/", suffix=".parquet")
    if not parts:
        return pl.DataFrame(schema=schema)
    return pl.concat([conform(storage.read_parquet(p), schema) for p in sorted(parts)], how="vertical")


# One total order over a row's facts, fixed by their content alone (never by the order parts are read in): a
# provider's final word (delivered, undelivered, or an expiry it reports itself) beats our own expiry of a silent
# row (source `window`: a late report still wins), which beats `pending`; then the later `reported_at`; then the
# content itself, so that ties always break the same way.
_FACT_KEYS = ["attempt", "row_index"]
_FACT_ORDER = [
    *_FACT_KEYS,
    "_rank",
    "reported_at",
    "delivery_status",
    "error_code",
    "source",
    "provider_message_id",
]


def _fact_rank() -> pl.Expr:
    status, source = pl.col("delivery_status"), pl.col("source")
    return (
        pl.when(status == DeliveryStatus.PENDING.value)
        .then(0)
        .when(source == FactSource.WINDOW.value)
        .then(1)
        .otherwise(2)
        .alias("_rank")
    )


def latest_facts(facts: pl.DataFrame) -> pl.DataFrame:
    """One fact per (attempt, row_index), the greatest in the order above: a final word beats `pending`
    whatever arrives later (reports come out of order). Duplicates count once. Columns as given."""
    if facts.is_empty():
        return facts
    return (
        facts.with_columns(_fact_rank())
        .sort(_FACT_ORDER, nulls_last=False, maintain_order=True)
        .group_by(_FACT_KEYS, maintain_order=True)
        .last()
        .select(facts.columns)
    )


def latest_settlements(settled: pl.DataFrame) -> pl.DataFrame:
    """One settlement per (attempt, row_index): the latest."""
    if settled.is_empty():
        return settled
    return settled.sort("attempt", "row_index", "settled_at").group_by("attempt", "row_index").last()
