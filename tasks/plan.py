"""Plan: provider-sized batches with deterministic ids and idempotency keys, grouped into shards.

Everything here is a pure function of (input order, campaign id, provider, batch size), so re-planning after
a crash gives the same batches and keys and the provider's idempotency can recognise a re-send.

* Row key: stable for (campaign, recipient) across attempts (docs/design.md), ≤ 40 chars (Instasent's clientId).
* Batch key: derived from the row keys it carries, so a batch of different composition never reuses a key
  (sent.dm keys the whole request by its header; re-using a key for other recipients would be refused or,
  worse, answered with the first request's cached response).
* Shards: many batches per mapped task run; a task run per batch costs 4–7 ms of orchestration (docs/design.md).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any

import polars as pl

from smscast.campaign import CampaignSpec
from smscast.providers.base import Capabilities, Provider
from smscast.status import Status

ROWS_PER_SHARD = 100_000
# Optional input column: the request key a row's batch must carry (see plan_campaign). Rows sharing a pinned
# key must be grouped into one batch by the caller (extra_groups).
PINNED_KEY = "_pinned_batch_key"

# Optional input column: a row re-sent as a NEW message (its earlier one was accepted but not delivered) names
# the attempt it is re-sent in, and gets a key of that attempt's own: with the old key the provider would take
# it for the message it already has and send nothing (flows/retry.py, --include-undelivered).
RESEND_ATTEMPT = "_resend_attempt"


@dataclass(frozen=True)
class ShardRef:
    shard: int
    batches: int
    rows: int


@dataclass(frozen=True)
class PlannedCampaign:
    rows: pl.DataFrame  # every input row; valid ones carry batch_seq, batch_id, batch_key and shard
    shards: list[ShardRef]
    batch_size: int


def row_keys(campaign_id: str, recipient_ids: pl.Series) -> pl.Series:
    # blake2b in a comprehension: ~1 µs a row. Polars' own hash is not stable across versions, and a key
    # that changes between a crash and its resume would defeat the provider's idempotency.
    prefix = campaign_id.encode() + b"\x1f"
    return pl.Series(
        [
            "sc-" + hashlib.blake2b(prefix + rid.encode(), digest_size=12).hexdigest()
            for rid in recipient_ids.cast(pl.String).fill_null("").to_list()
        ],
        dtype=pl.String,
    )


def batch_key(campaign_id: str, provider: str, keys: list[str], attempt: int = 1) -> str:
    # A retry's request gets a key of its own attempt: its rows were never accepted (`failed`; `unknown` ones
    # carry the key of the request that left them so, PINNED_KEY), and the same rows under the old key would
    # be answered with the earlier request's result (textingline returns the old job for a repeated key, even
    # when that job later failed the rows). Attempt 1 keeps the form its keys always had.
    scope = campaign_id if attempt == 1 else f"{campaign_id}\x1fa{attempt}"
    h = hashlib.blake2b(f"{scope}\x1f{provider}\x1f".encode(), digest_size=12)
    h.update("\x1f".join(keys).encode())
    return "scb-" + h.hexdigest()


def batch_size_for(spec: CampaignSpec, caps: Capabilities) -> int:
    size = min(spec.batch_size or caps.max_rows, caps.max_rows)
    return max(size, caps.min_rows)


def _warn_batch_size(spec: CampaignSpec, caps: Capabilities, size: int) -> None:
    """Say so when --batch-size was not used as given: a user who asked for 100,000 rows per request and
    got 1,000 should see why the campaign takes 100 times the requests."""
    if spec.batch_size is None or spec.batch_size == size:
        return
    bound = "maximum" if spec.batch_size > size else "minimum"
    _logger().warning(
        "--batch-size %d is %s than %s's %s of %d rows per request: using %d",
        spec.batch_size,
        "more" if bound == "maximum" else "less",
        caps.name,
        bound,
        size,
        size,
    )


def _logger() -> logging.Logger | logging.LoggerAdapter[Any]:
    """The flow or task run's logger (shown with the run in Prefect), or a plain one outside a run."""
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("smscast.plan")


def plan_campaign(
    validated: pl.DataFrame,
    spec: CampaignSpec,
    caps: Capabilities,
    provider: Provider,
    extra_groups: list[pl.Expr] | None = None,
) -> PlannedCampaign:
    size = batch_size_for(spec, caps)
    _warn_batch_size(spec, caps, size)
    df = validated.with_columns(
        idempotency_key=row_keys(spec.campaign_id, validated.get_column("recipient_id"))
    )
    if RESEND_ATTEMPT in df.columns:
        resent = pl.col(RESEND_ATTEMPT).is_not_null()
        fresh = row_keys(f"{spec.campaign_id}\x1fresend-{spec.attempt}", df.get_column("recipient_id"))
        df = df.with_columns(
            idempotency_key=pl.when(resent).then(pl.lit(fresh)).otherwise(pl.col("idempotency_key"))
        )
    groups = [*provider.batch_group_keys(spec), *(extra_groups or [])]
    group_cols = [f"_g{i}" for i in range(len(groups))]
    df = df.with_columns([g.alias(n) for g, n in zip(groups, group_cols, strict=True)])
    valid = pl.col("status").is_null()

    sendable = df.filter(valid).sort([*group_cols, "row_index"])
    if group_cols:
        n_in_group = pl.len().over(group_cols)
        pos = pl.int_range(pl.len()).over(group_cols)
    else:
        n_in_group, pos = pl.len(), pl.int_range(pl.len())
    # Balanced split: ceil(n / size) batches of nearly equal size, so that the last one does not fall
    # under a provider's minimum (textingline needs 10) when the group as a whole has enough rows.
    n_batches = (n_in_group + size - 1) // size
    sendable = sendable.with_columns(_n=n_in_group, _b=(pos * n_batches) // n_in_group)
    too_small = pl.col("_n") < caps.min_rows
    # In a campaign's first attempt such rows cannot be sent to this provider at all. In a retry they were
    # valid and sendable, and only too few remain to fill a request: still `failed`, never final.
    unsendable = Status.INVALID if spec.attempt == 1 else Status.FAILED
    below = sendable.filter(too_small).with_columns(
        status=pl.lit(unsendable.value),
        error_code=pl.lit("batch_below_minimum"),
        error_message=pl.format(
            "{} needs at least {} recipients per request; only {} rows can share this request",
            pl.lit(caps.name),
            pl.lit(caps.min_rows),
            pl.col("_n"),
        ),
    )
    sendable = sendable.filter(~too_small)
    sendable = sendable.with_columns(
        batch_seq=pl.struct([*group_cols, "_b"]).rank("dense").cast(pl.Int64) - 1
    )
    sendable = sendable.sort("batch_seq", "row_index")
    bps = spec.shard_batches or max(1, round(ROWS_PER_SHARD / size))
    sendable = sendable.with_columns(
        batch_id=pl.format(
            "{}-a{}-b{}",
            pl.lit(spec.campaign_id),
            pl.lit(spec.attempt),
            pl.col("batch_seq").cast(pl.String).str.zfill(6),
        ),
        shard=(pl.col("batch_seq") // bps).cast(pl.Int64),
    )
    keys = sendable.group_by("batch_seq", maintain_order=True).agg(pl.col("idempotency_key"))
    keys = keys.with_columns(
        batch_key=pl.Series(
            [
                batch_key(spec.campaign_id, caps.name, k, spec.attempt)
                for k in keys.get_column("idempotency_key").to_list()
            ],
            dtype=pl.String,
        )
    ).select("batch_seq", "batch_key")
    sendable = sendable.join(keys, on="batch_seq", how="left", maintain_order="left")
    if PINNED_KEY in sendable.columns:
        # A retry re-sending a request whose outcome is unknown must present the key that request carried
        # (a bisected half's is its parent's key plus "-L"/"-R"), or a provider keying whole requests
        # (sent.dm) would take it for a new one and send it twice.
        sendable = sendable.with_columns(batch_key=pl.coalesce(PINNED_KEY, "batch_key")).drop(PINNED_KEY)

    rest = pl.concat([df.filter(~valid), below], how="diagonal_relaxed")
    rows = pl.concat([sendable, rest], how="diagonal_relaxed").drop(
        ["_n", "_b", PINNED_KEY, RESEND_ATTEMPT, *group_cols], strict=False
    )
    rows = rows.sort("row_index")
    shard_stats = (
        sendable.group_by("shard").agg(batches=pl.col("batch_seq").n_unique(), rows=pl.len()).sort("shard")
    )
    shards = [ShardRef(int(s), int(b), int(r)) for s, b, r in shard_stats.iter_rows()]
    return PlannedCampaign(rows=rows, shards=shards, batch_size=size)
