"""Which delivery facts are news, and the receiver's reports matched to a campaign's rows (tasks/reconcile.py).

Reconciliation appends a fact only when it changes the row's latest one, so that running it again writes
nothing. "Latest" is smscast.delivery's one total order over a row's facts (`latest_facts`).
A fact "changes" the row when its (delivery status,
error code) differs from the latest one's: a second `pending`, or the same final word reported again, is not
news.

The receiver's inbox (REPORT_SCHEMA parts under smscast.results.dlr_inbox) holds reports for every campaign
under a results location, unmatched. A report belongs to a row of this campaign when it comes from the row's
provider and names the row's message id, or, failing that, carries the row's idempotency key as its
`client_ref` (Instasent echoes our clientId) and no other message id than the row's. Reports whose provider
state had no delivery status (the receiver keeps them with a null one) say nothing and are passed over.
"""

from __future__ import annotations

from datetime import datetime

import polars as pl

from smscast.delivery import (
    DELIVERY_SCHEMA,
    SETTLED_SCHEMA,
    DeliveryStatus,
    FactSource,
    conform,
    latest_facts,
)
from smscast.status import Status

KEYS = ["attempt", "row_index"]


def is_final(facts: pl.DataFrame) -> pl.Series:
    return facts.get_column("delivery_status") != DeliveryStatus.PENDING.value


def news(existing: pl.DataFrame, candidates: pl.DataFrame) -> pl.DataFrame:
    """The candidates to append: per row, the latest of existing and candidate facts together, when it is a
    candidate and its (delivery status, error code) is not the existing latest one's. In DELIVERY_SCHEMA."""
    if candidates.is_empty():
        return pl.DataFrame(schema=DELIVERY_SCHEMA)
    old = conform(latest_facts(existing), DELIVERY_SCHEMA).with_columns(_new=pl.lit(False))
    new = conform(latest_facts(conform(candidates, DELIVERY_SCHEMA)), DELIVERY_SCHEMA).with_columns(
        _new=pl.lit(True)
    )
    both = latest_facts(pl.concat([old, new], how="vertical"))
    was = old.select(*KEYS, _was_status=pl.col("delivery_status"), _was_code=pl.col("error_code"))
    same = (pl.col("delivery_status") == pl.col("_was_status")) & pl.col("error_code").eq_missing(
        pl.col("_was_code")
    )
    return (
        both.filter(pl.col("_new"))
        .join(was, on=KEYS, how="left")
        .filter(~same.fill_null(False))
        .select(list(DELIVERY_SCHEMA))
    )


def fold_reports(rows: pl.DataFrame, inbox: pl.DataFrame, now: datetime) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(candidate facts, settlements) from the inbox's reports about `rows` (current results rows of
    providers that report by webhook). A report about an `unknown` row proves the provider holds its message:
    the row is settled `accepted` with the report's message id."""
    empty = (pl.DataFrame(schema=DELIVERY_SCHEMA), pl.DataFrame(schema=SETTLED_SCHEMA))
    if rows.is_empty() or inbox.is_empty():
        return empty
    reports = inbox.filter(
        pl.col("delivery_status").is_not_null()
        & pl.col("provider").is_in(rows["provider"].unique().to_list())
    ).with_columns(pl.col("reported_at").fill_null(pl.col("received_at")).fill_null(pl.lit(now)))
    if reports.is_empty():
        return empty
    cols = ["campaign_id", *KEYS, "recipient_id", "provider", "provider_batch_ref", "status"]
    by_id = reports.join(
        rows.filter(pl.col("provider_message_id").is_not_null()).select(
            *cols, pl.col("provider_message_id").alias("_row_id")
        ),
        left_on=["provider", "provider_message_id"],
        right_on=["provider", "_row_id"],
        how="inner",
    ).with_columns(_row_id=pl.col("provider_message_id"))
    by_ref = (
        reports.join(by_id.select("report_id"), on="report_id", how="anti")
        .filter(pl.col("client_ref").is_not_null())
        .join(
            rows.filter(pl.col("idempotency_key").is_not_null()).select(
                *cols, "idempotency_key", pl.col("provider_message_id").alias("_row_id")
            ),
            left_on=["provider", "client_ref"],
            right_on=["provider", "idempotency_key"],
            how="inner",
        )
        # Our key with another message's id is not this row's message (a re-send under a new id).
        .filter(
            pl.col("_row_id").is_null()
            | pl.col("provider_message_id").is_null()
            | (pl.col("_row_id") == pl.col("provider_message_id"))
        )
    )
    matched = pl.concat([by_id.select(sorted(by_id.columns)), by_ref.select(sorted(by_id.columns))])
    message_id = pl.coalesce("provider_message_id", "_row_id")
    facts = matched.select(
        "campaign_id",
        *KEYS,
        "recipient_id",
        "provider",
        message_id.alias("provider_message_id"),
        "provider_batch_ref",
        "delivery_status",
        "error_code",
        "error_message",
        "reported_at",
        source=pl.lit(FactSource.WEBHOOK.value),
    )
    settled = (
        matched.filter(pl.col("status") == Status.UNKNOWN.value)
        .sort("reported_at")
        .group_by(KEYS, maintain_order=True)
        .first()
        .select(
            "campaign_id",
            *KEYS,
            status=pl.lit(Status.ACCEPTED.value),
            error_code=pl.lit(None, pl.String),
            error_message=pl.lit(None, pl.String),
            provider_message_id=message_id,
            settled_at=pl.lit(now),
        )
    )
    return conform(facts, DELIVERY_SCHEMA), conform(settled, SETTLED_SCHEMA)
