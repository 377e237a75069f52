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

import functools
import hashlib
import itertools
import logging
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import polars as pl
import pyarrow as pa

from smscast.campaign import CampaignSpec
from smscast.providers.base import Capabilities, Provider
from smscast.status import Status
from smscast.step_log import step_logger

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
    """`sc-` + BLAKE2b (12-byte digest, hex) of campaign id, 0x1F, recipient id (a missing id as "").

    Polars' own hash is not stable across versions, and a key that changed between a crash and its resume
    would defeat the provider's idempotency; no columnar engine here offers BLAKE2b with a 12-byte digest (a
    different digest size is a different function, not a truncation).
    """
    ids = recipient_ids.cast(pl.String).fill_null("")
    return _hex_keys((campaign_id + "\x1f").encode(), ids, None, b"sc-").alias(recipient_ids.name)


def batch_key(campaign_id: str, provider: str, keys: list[str], attempt: int = 1) -> str:
    h = hashlib.blake2b(_batch_scope(campaign_id, provider, attempt), digest_size=_DIGEST)
    h.update("\x1f".join(keys).encode())
    return "scb-" + h.hexdigest()


def batch_keys(
    campaign_id: str, provider: str, keys: pl.Series, rows: pl.Series, attempt: int = 1
) -> pl.Series:
    """batch_key of each batch, the batches being consecutive runs of `keys` (`rows` keys each, in order),
    without making the joined texts that batch_key hashes."""
    scope = _batch_scope(campaign_id, provider, attempt)
    return _hex_keys(scope, keys, rows, b"scb-").alias("batch_key")


def _batch_scope(campaign_id: str, provider: str, attempt: int) -> bytes:
    # A retry's request gets a key of its own attempt: its rows were never accepted (`failed`; `unknown` ones
    # carry the key of the request that left them so, PINNED_KEY), and the same rows under the old key would
    # be answered with the earlier request's result (textingline returns the old job for a repeated key, even
    # when that job later failed the rows). Attempt 1 keeps the form its keys always had.
    scope = campaign_id if attempt == 1 else f"{campaign_id}\x1fa{attempt}"
    return f"{scope}\x1f{provider}\x1f".encode()


# From this many texts to hash on, smscast.blake2b_kernel hashes them all in one compiled call straight from
# Arrow's buffers, on every core; below, hashlib hashes each in turn (0.3-0.4 µs a row, the hasher primed
# with the prefix and copied). Importing numba and loading the compiled kernel costs about 0.6 s of CPU,
# which the kernel wins back at about a million rows. (The first run on a machine also compiles the kernel,
# 5-10 s, cached on disk for the runs after.)
KERNEL_MIN_ROWS = 1_000_000
_DIGEST = 12


def _hex_keys(prefix: bytes, items: pl.Series, runs: pl.Series | None, lead: bytes) -> pl.Series:
    """`lead` + hex BLAKE2b-12 of `prefix` + each run of `items` joined with 0x1F (`runs`: the runs' lengths,
    in order; None: each item alone). Both ways give hashlib's digests; neither makes a Python str a row."""
    n = items.len() if runs is None else runs.len()
    kernel = _kernel(items.len())
    if kernel is not None:
        arr = items.to_arrow()  # large_string: the bytes and offsets, as flat buffers
        if isinstance(arr, pa.ChunkedArray):
            arr = arr.combine_chunks()
        _, offsets, data = arr.buffers()
        assert offsets is not None
        offsets = offsets.slice(arr.offset * 8, (len(arr) + 1) * 8)
        bounds = None  # each item alone
        if runs is not None:
            ends = runs.cast(pl.Int64).cum_sum()
            bounds = pl.concat([pl.Series([0], dtype=pl.Int64), ends]).to_arrow().buffers()[1]
        flat = kernel.hex_digests(prefix, data or b"", offsets, lead, bounds)
        return _fixed_width_texts(flat, n, len(lead) + 2 * _DIGEST)
    if runs is None:
        messages: list[bytes] = items.cast(pl.Binary).to_list()
    else:
        texts = items.to_list()
        bounds_ = itertools.pairwise(itertools.accumulate(runs.to_list(), initial=0))
        messages = ["\x1f".join(texts[lo:hi]).encode() for lo, hi in bounds_]
    digest = functools.partial(_digest_after, hashlib.blake2b(prefix, digest_size=_DIGEST))
    hexed = _fixed_width_texts(b"".join(map(digest, messages)).hex().encode(), n, 2 * _DIGEST)
    return pl.select(pl.concat_str(pl.lit(lead.decode()), pl.lit(hexed))).to_series()


def _digest_after(base: hashlib.blake2b, text: bytes) -> bytes:
    h = base.copy()
    h.update(text)
    return h.digest()


def _kernel(rows: int) -> ModuleType | None:
    if rows < KERNEL_MIN_ROWS:
        return None
    try:
        from smscast import blake2b_kernel
    except ImportError:  # numba missing, or a machine the kernel does not serve: hashlib gives the same keys
        return None
    return blake2b_kernel


def _fixed_width_texts(flat: Any, n: int, width: int) -> pl.Series:
    """A String column of n ASCII texts of `width` bytes each, laid end to end in `flat`: Arrow makes the
    column from the one buffer, with no Python str per row."""
    offsets = pl.int_range(0, (n + 1) * width, width, dtype=pl.Int64, eager=True).to_arrow().buffers()[1]
    arr = pa.LargeStringArray.from_buffers(n, offsets, pa.py_buffer(flat))
    return pl.Series("", _ArrowCArray(arr))


@dataclass(frozen=True)
class _ArrowCArray:
    """Hands an Arrow array to Polars through the Arrow C data interface: given a pyarrow array itself,
    Polars first imports pyarrow.compute, half a second on a busy machine."""

    array: pa.Array

    def __arrow_c_array__(self, requested_schema: object = None) -> tuple[object, object]:
        return self.array.__arrow_c_array__(requested_schema)  # type: ignore[no-any-return]


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
    return step_logger("smscast.plan")


def plan_campaign(
    validated: pl.DataFrame,
    spec: CampaignSpec,
    caps: Capabilities,
    provider: Provider,
    extra_groups: list[pl.Expr] | None = None,
) -> PlannedCampaign:
    size = batch_size_for(spec, caps)
    _warn_batch_size(spec, caps, size)
    df = validated
    if not df.get_column("row_index").is_sorted():
        df = df.sort("row_index")
    rid = df.get_column("recipient_id")
    keys = row_keys(spec.campaign_id, rid).alias("idempotency_key")
    if RESEND_ATTEMPT in df.columns:
        resent = df.get_column(RESEND_ATTEMPT).is_not_null()
        if resent.any():
            fresh = row_keys(f"{spec.campaign_id}\x1fresend-{spec.attempt}", rid.filter(resent))
            keys = keys.scatter(resent.arg_true(), fresh)
    df = df.with_columns(keys)

    # The batching works on a narrow frame (position, order, groups, keys) and its result is put back beside
    # the input in input order: sorting or joining the whole, wide frame of ten million rows costs seconds and
    # gigabytes.
    groups = [*provider.batch_group_keys(spec), *(extra_groups or [])]
    group_cols = [f"_g{i}" for i in range(len(groups))]
    pinned = [PINNED_KEY] if PINNED_KEY in df.columns else []
    narrow = df.select(
        pl.int_range(pl.len(), dtype=pl.Int64).alias("_pos"),
        "row_index",
        "idempotency_key",
        *pinned,
        *[g.alias(n) for g, n in zip(groups, group_cols, strict=True)],
        _valid=pl.col("status").is_null(),
    )
    sendable = narrow if narrow.get_column("_valid").all() else narrow.filter("_valid")
    sendable = sendable.drop("_valid")
    if group_cols:  # else the rows are in row order already
        sendable = sendable.sort([*group_cols, "row_index"])
    if group_cols:
        n_in_group = pl.len().over(group_cols)
        pos = pl.int_range(pl.len()).over(group_cols)
    else:
        n_in_group, pos = pl.len(), pl.int_range(pl.len())
    # Balanced split: ceil(n / size) batches of nearly equal size, so that the last one does not fall
    # under a provider's minimum (textingline needs 10) when the group as a whole has enough rows.
    n_batches = (n_in_group + size - 1) // size
    sendable = sendable.with_columns(_n=n_in_group, _b=(pos * n_batches) // n_in_group)
    too_small = sendable.get_column("_n") < caps.min_rows
    below = sendable.filter(too_small).select("_pos", "_n")
    if below.height:
        sendable = sendable.filter(~too_small)
    # Rows are in (group, row) order and a group's batch numbers rise with the row, so each batch is one run
    # of rows and numbering the runs gives the batches in the order a sort of (group, batch) would.
    seq = pl.struct([*group_cols, "_b"]).rle_id() if group_cols else pl.col("_b")
    sendable = sendable.with_columns(batch_seq=seq.cast(pl.Int64))
    per_batch = sendable.group_by("batch_seq", maintain_order=True).agg(rows=pl.len())
    bps = spec.shard_batches or max(1, round(ROWS_PER_SHARD / size))
    per_batch = per_batch.with_columns(
        batch_keys(
            spec.campaign_id,
            caps.name,
            sendable.get_column("idempotency_key"),
            per_batch.get_column("rows"),
            spec.attempt,
        ),
        batch_id=pl.format(
            "{}-a{}-b{}",
            pl.lit(spec.campaign_id),
            pl.lit(spec.attempt),
            pl.col("batch_seq").cast(pl.String).str.zfill(6),
        ),
        shard=(pl.col("batch_seq") // bps).cast(pl.Int64),
    )

    # Each row's batch, in input order (null: not sent), and from it the batch's columns for every row: one
    # gather a column, where sorting the planned rows back into input order would copy them all again.
    batch_seq = _scattered(df.height, sendable.get_column("_pos"), sendable.get_column("batch_seq"))
    batch_key_col = per_batch.get_column("batch_key").gather(batch_seq)
    if pinned:
        # A retry re-sending a request whose outcome is unknown must present the key that request carried
        # (a bisected half's is its parent's key plus "-L"/"-R"), or a provider keying whole requests
        # (sent.dm) would take it for a new one and send it twice.
        batch_key_col = df.select(
            pl.when(pl.lit(batch_seq).is_not_null()).then(pl.coalesce(PINNED_KEY, pl.lit(batch_key_col)))
        ).to_series()
    # Columns are added with with_columns and removed in place, never by select or drop: those copy every
    # column of a frame whose columns are chunked differently (the added ones are one chunk each).
    for internal in (PINNED_KEY, RESEND_ATTEMPT):
        if internal in df.columns:
            df.drop_in_place(internal)
    rows = df.with_columns(
        batch_seq,
        per_batch.get_column("batch_id").gather(batch_seq),
        per_batch.get_column("shard").gather(batch_seq),
        batch_key_col.alias("batch_key"),
    )

    if below.height:
        # In a campaign's first attempt rows too few for a request cannot be sent to this provider at all. In
        # a retry they were valid and sendable, and only too few remain to fill a request: still `failed`.
        unsendable = Status.INVALID if spec.attempt == 1 else Status.FAILED
        group_n = _scattered(df.height, below.get_column("_pos"), below.get_column("_n").cast(pl.Int64))
        small = group_n.is_not_null()
        rows = rows.with_columns(
            status=pl.when(small).then(pl.lit(unsendable.value)).otherwise("status"),
            error_code=pl.when(small).then(pl.lit("batch_below_minimum")).otherwise("error_code"),
            error_message=pl.when(small)
            .then(
                pl.format(
                    "{} needs at least {} recipients per request; only {} rows can share this request",
                    pl.lit(caps.name),
                    pl.lit(caps.min_rows),
                    pl.lit(group_n),
                )
            )
            .otherwise("error_message"),
        )
    shard_stats = per_batch.group_by("shard").agg(batches=pl.len(), rows=pl.col("rows").sum()).sort("shard")
    shards = [ShardRef(int(s), int(b), int(r)) for s, b, r in shard_stats.iter_rows()]
    return PlannedCampaign(rows=rows, shards=shards, batch_size=size)


def _scattered(n: int, at: pl.Series, values: pl.Series) -> pl.Series:
    """n nulls, but values[i] at position at[i]."""
    return pl.repeat(None, n, dtype=values.dtype, eager=True).alias(values.name).scatter(at, values)
