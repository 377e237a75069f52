"""A campaign's current state: for each input row, its latest attempt's result, and which rows may be re-sent.

Attempt 1 has a row for every input row; a retry attempt n+1 has a row for each row it re-sent. So the
current result of a row is the one with the highest attempt, and every input row has exactly one.
Reconciliation never rewrites an attempt's parts: it appends settlements (smscast/delivery.py), which apply
here to the attempt they name, and delivery facts, which `current_view` joins on. Everything is joins on
(attempt, row_index): a campaign of millions of rows costs a few vectorised passes, no Python per row.
"""

from __future__ import annotations

import polars as pl

from smscast import storage
from smscast.delivery import (
    DELIVERY_SCHEMA,
    SETTLED_SCHEMA,
    DeliveryStatus,
    latest_facts,
    latest_settlements,
    read_all,
)
from smscast.errors import SourceError
from smscast.pricing import OVER_BUDGET
from smscast.results import AttemptPaths, CampaignPaths
from smscast.status import RETRIABLE, Status

KEYS = ("attempt", "row_index")

# `failed` rows a fallback does not take: the spend cap held them back, and it is the campaign's, whichever
# provider sends.
NOT_FAILED_OVER: frozenset[str] = frozenset({OVER_BUDGET})

# The columns current_view adds, from the row's latest delivery fact (null where there is none).
DELIVERY_COLUMNS: dict[str, str] = {
    "delivery_status": "delivery_status",
    "delivery_error_code": "error_code",
    "delivery_error_message": "error_message",
    "delivery_reported_at": "reported_at",
    "delivery_source": "source",
}


def current_results(results: str, campaign_id: str) -> pl.DataFrame:
    """One row per input row: its latest attempt's result, with that attempt's settlement applied."""
    campaign = CampaignPaths(results, campaign_id)
    files = campaign.result_parts()
    if 1 not in files:
        raise SourceError(f"no results for campaign {campaign_id!r} under {results} (attempt 1 is missing)")
    frames = [storage.read_parquet(f) for n in sorted(files) for f in files[n]]
    all_attempts = pl.concat(frames, how="diagonal_relaxed")
    latest = (
        all_attempts.sort("row_index", "attempt")
        .group_by("row_index", maintain_order=True)
        .last()
        .select(all_attempts.columns)  # group_by puts its key first: keep the results' column order
    )
    return apply_settlements(latest, latest_settlements(read_all(campaign.settled, SETTLED_SCHEMA)))


def send_tries(results: str, campaign_id: str) -> pl.DataFrame:
    """row_index -> `tries`, how many attempts set out to send the row (it was in one of their shards),
    whatever came of it. `--max-attempts` is counted per row on this, so that an attempt that sent other rows
    (a release of held rows, a fallback's leg) costs a row nothing. Rows never sent are absent."""
    files = CampaignPaths(results, campaign_id).shard_parts()
    if not files:
        return pl.DataFrame(schema={"row_index": pl.Int64(), "tries": pl.UInt32()})
    rows = pl.concat([storage.read_parquet(f, columns=["row_index"]) for f in files])
    return rows.group_by("row_index").len("tries").with_columns(pl.col("tries").cast(pl.UInt32))


def apply_settlements(latest: pl.DataFrame, settled: pl.DataFrame) -> pl.DataFrame:
    """A settlement replaces the send outcome of the attempt it names (status, error code and message, and
    the provider's message id when it gives one). Keyed on the attempt, so a row re-sent since keeps its
    newer attempt's outcome: that re-send is another message, which the settlement knows nothing about."""
    if settled.is_empty():
        return latest
    found = settled.filter(pl.col("status").is_not_null()).select(
        *_keys_like(latest),
        _s_status=pl.col("status"),
        _s_code=pl.col("error_code"),
        _s_message=pl.col("error_message"),
        _s_id=pl.col("provider_message_id"),
    )
    joined = latest.join(found, on=list(KEYS), how="left", validate="m:1", maintain_order="left")
    hit = pl.col("_s_status").is_not_null()
    return joined.with_columns(
        status=pl.when(hit).then(pl.col("_s_status")).otherwise(pl.col("status")),
        error_code=pl.when(hit).then(pl.col("_s_code")).otherwise(pl.col("error_code")),
        error_message=pl.when(hit).then(pl.col("_s_message")).otherwise(pl.col("error_message")),
        provider_message_id=pl.coalesce(pl.col("_s_id"), pl.col("provider_message_id")),
    ).drop("_s_status", "_s_code", "_s_message", "_s_id")


def current_view(results: str, campaign_id: str) -> pl.DataFrame:
    """current_results with each row's latest delivery fact (DELIVERY_COLUMNS): what reports and people read.
    SourceError when the campaign has no results."""
    current = current_results(results, campaign_id)
    facts = read_all(CampaignPaths(results, campaign_id).delivery, DELIVERY_SCHEMA)
    return with_delivery(current, latest_facts(facts))


def with_delivery(current: pl.DataFrame, latest: pl.DataFrame) -> pl.DataFrame:
    """Join one fact per (attempt, row_index) onto the current rows. A fact about an older attempt stays out:
    the row's current message is the newer attempt's."""
    facts = latest.select(
        *_keys_like(current), *(pl.col(src).alias(name) for name, src in DELIVERY_COLUMNS.items())
    )
    return current.join(facts, on=list(KEYS), how="left", validate="m:1", maintain_order="left")


def resendable(
    current: pl.DataFrame, *, resend_safe: bool, undelivered_codes: frozenset[str] = frozenset()
) -> pl.DataFrame:
    """The rows a retry may re-send: RETRIABLE ones (`failed`: never accepted), and `unknown` ones only where
    the provider's idempotency makes a re-send harmless (`resend_safe`: it recognises the same keys and
    answers the first message). `rejected`, `invalid` and `accepted` are final, except, when
    `undelivered_codes` are given (`current` is then a `current_view`), accepted rows whose delivery failed
    with one of those codes: they go again as new messages (flows/retry.py gives them new keys)."""
    statuses = (RETRIABLE | {Status.UNKNOWN}) if resend_safe else RETRIABLE
    chosen = pl.col("status").is_in([s.value for s in statuses])
    if undelivered_codes:
        chosen = chosen | undelivered(current, undelivered_codes)
    return current.filter(chosen)


def never_accepted(current: pl.DataFrame, provider: str, sealed: set[int] | None = None) -> pl.DataFrame:
    """The current rows a fallback takes from `provider` (flows/failover.py): `failed` by it (never accepted)
    in an attempt that is complete (`sealed`; None: any), other than NOT_FAILED_OVER. Never `unknown` rows:
    the provider may hold them."""
    chosen = (
        (pl.col("provider") == provider)
        & (pl.col("status") == Status.FAILED.value)
        & ~pl.col("error_code").fill_null("").is_in(sorted(NOT_FAILED_OVER))
    )
    if sealed is not None:
        chosen = chosen & pl.col("attempt").is_in(sorted(sealed))
    return current.filter(chosen)


def undelivered(view: pl.DataFrame, codes: frozenset[str]) -> pl.Expr:
    """Accepted rows of a `current_view` whose delivery failed with one of `codes`."""
    if "delivery_status" not in view.columns:
        raise ValueError(
            "re-sending undelivered rows needs the current view (current_view), not current_results"
        )
    return (
        (pl.col("status") == Status.ACCEPTED.value)
        & (pl.col("delivery_status") == DeliveryStatus.UNDELIVERED.value)
        & pl.col("delivery_error_code").is_in(sorted(codes))
    )


def planned_provider(paths: AttemptPaths) -> str | None:
    """The provider an attempt was planned for, from its plan's `provider` column; None for a plan that does
    not name one (attempt 1, or a plan written before plans named their provider: the campaign's)."""
    for uri in (paths.plan_unsent, *paths.plan_shards()):
        if not storage.exists(uri):
            continue
        scan = pl.scan_parquet(
            uri, storage_options=storage.storage_options(uri), hive_partitioning=False, glob=False
        )
        if "provider" not in scan.collect_schema().names():
            return None
        found = scan.select(pl.col("provider").drop_nulls().first()).collect().item()
        if found is not None:
            return str(found)
    return None


def _keys_like(frame: pl.DataFrame) -> list[pl.Expr]:
    """The join keys cast to `frame`'s types: parts written by other versions may widen them."""
    return [pl.col(k).cast(frame.schema[k]) for k in KEYS]
