"""Contact policy, frequency caps: how many messages every campaign under a results location sent each number
within a window, so that a campaign holds back rows whose number already reached its cap.

What counts as a message (`recent_messages`), for every campaign but the one asking:

* each attempt's rows whose status is `accepted` or `unknown` (an unknown row may have been accepted: a cap
  must not be exceeded by what we cannot see), with reconciliation's settlements applied to the attempt they
  name, as the campaign's own view applies them (tasks/current.py `apply_settlements`);
* one message per idempotency key, not per result row and not per current row. The current view keeps only a
  row's latest attempt, which under-counts: a row accepted in attempt 1 and re-sent as a new message in
  attempt 3 (`retry --include-undelivered`, a new key) reached the phone twice. Counting every attempt's row
  over-counts: an `unknown` row re-sent by a retry carries its old key, and the provider answers it with the
  message it already has. A key is the provider's notion of one message, so it is the unit; its time is the
  latest of its rows', so that a message is never dated out of the window by an earlier attempt at it;
* the planned rows of an attempt that is under way (its manifest exists, its `_SUCCESS` does not) whose shard
  has no results part yet: they are being sent now, so they count at `now`. A run that died and was never
  resumed keeps counting them; a resume would still send them.

Two campaigns counting at the same moment would not see each other's plans, and both could send to a number
with one message left under its cap. So a campaign with a cap counts and records its plan under a lock over
the whole results location (`counting_alone`): the next one to count waits for it, then finds its manifest
and counts its rows. The lock is a lease like the campaign's (smscast/lock.py): a holder that dies is taken
over, at once on the same machine, after its lease elsewhere. It is held while the attempt chooses its rows
(load, validate, policy, plan) and writes its plan, seconds for a million rows, never while sending.

Reading is one listing of the results location and, for the files it names, only the columns needed: a
location of hundreds of campaigns costs one listing (a few pages on S3), not one per campaign, and the
counting is joins and group-bys in Polars, never Python per row.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

import polars as pl

from smscast import storage
from smscast.campaign import CampaignSpec
from smscast.delivery import SETTLED_SCHEMA
from smscast.lock import LeaseLock
from smscast.results import CampaignPaths, frequency_lock
from smscast.status import Status
from smscast.tasks.manifest import read_manifest

__all__ = ["COUNTED", "Campaign", "counting_alone", "counts_for", "recent_messages", "scan_location"]

# The statuses that may mean the phone got the message.
COUNTED: tuple[str, ...] = (Status.ACCEPTED.value, Status.UNKNOWN.value)

_TIME = pl.Datetime("us", "UTC")
RECENT_SCHEMA: dict[str, pl.DataType] = {"phone": pl.String(), "sent": pl.UInt32()}
_SENT_COLUMNS: dict[str, pl.DataType] = {
    "campaign_id": pl.String(),
    "attempt": pl.Int32(),
    "row_index": pl.Int64(),
    "phone": pl.String(),
    "idempotency_key": pl.String(),
    "status": pl.String(),
    "submitted_at": _TIME,
}
_PLAN_COLUMNS: dict[str, pl.DataType] = {"phone": pl.String(), "idempotency_key": pl.String()}
_SETTLED_COLUMNS = {
    k: SETTLED_SCHEMA[k] for k in ("campaign_id", "attempt", "row_index", "status", "settled_at")
}

# The files of smscast/results.py's layout this module reads, recognised from the end of a listed URI (a
# listing may spell the results prefix its own way). tests/test_frequency.py checks them against the paths
# CampaignPaths and AttemptPaths spell. `part-unsent.parquet` is never read: its rows were never sent.
_DATASET = r"(?:^|(?<!/_work)/)campaign=([^/]+)"
_SHARD_PART = re.compile(_DATASET + r"/attempt=(\d+)/part-s(\d+)\.parquet$")
_DONE = re.compile(_DATASET + r"/attempt=(\d+)/_SUCCESS$")
_SETTLED = re.compile(_DATASET + r"/settled/[^/]+\.parquet$")
_MANIFEST = re.compile(r"(?:^|/)_work/campaign=([^/]+)/attempt=(\d+)/plan/manifest\.json$")


@contextmanager
def counting_alone(
    spec: CampaignSpec, logger: logging.Logger | logging.LoggerAdapter[logging.Logger]
) -> Iterator[None]:
    """Around counting for `spec`'s frequency cap and recording the plan that follows from it: no other
    campaign under the same results counts meanwhile (this module's docstring). Nothing is taken without a cap.
    The wait has no bound: a holder renews its lease only while it plans, and one that dies is taken over."""
    if spec.max_per_recipient is None or spec.per_window is None:
        yield
        return
    lock = LeaseLock(
        frequency_lock(spec.results),
        f"the frequency caps under {storage.redact(spec.results)}",
        busy="are being applied by another campaign",
        wait=math.inf,
        logger=logger,
    )
    with lock:
        yield
        if not lock.held():
            # Stalled past the lease (a frozen process, storage out of reach): another campaign may have
            # counted meanwhile without seeing this plan.
            logger.warning(
                "campaign %s: its frequency-cap lock lapsed while it planned; a campaign that counted meanwhile "
                "may pass the cap by one message per number",
                spec.campaign_id,
            )


@dataclass
class Campaign:
    """What one listing says about one campaign."""

    parts: dict[int, dict[int, str]] = field(default_factory=dict)  # attempt -> shard -> results part
    done: set[int] = field(default_factory=set)  # attempts with `_SUCCESS`
    planned: set[int] = field(default_factory=set)  # attempts whose plan is complete (a manifest)
    settled: list[str] = field(default_factory=list)  # settlement parts

    def under_way(self) -> list[int]:
        return sorted(self.planned - self.done)


def scan_location(results: str) -> dict[str, Campaign]:
    """Every campaign under `results` that has results or a complete plan, from one listing."""
    found: dict[str, Campaign] = {}
    for uri in storage.list_files(f"{results.rstrip('/')}/"):
        if m := _SHARD_PART.search(uri):
            at = found.setdefault(m.group(1), Campaign()).parts.setdefault(int(m.group(2)), {})
            at[int(m.group(3))] = uri
        elif m := _DONE.search(uri):
            found.setdefault(m.group(1), Campaign()).done.add(int(m.group(2)))
        elif m := _MANIFEST.search(uri):
            found.setdefault(m.group(1), Campaign()).planned.add(int(m.group(2)))
        elif m := _SETTLED.search(uri):
            found.setdefault(m.group(1), Campaign()).settled.append(uri)
    return found


def recent_messages(
    results: str, *, since: datetime, now: datetime, exclude_campaign: str | None
) -> pl.DataFrame:
    """Messages to each number since `since` (inclusive) by every campaign under `results` but
    `exclude_campaign`: columns `phone`, `sent` (UInt32), one row per number that has any. Rows being sent
    right now count at `now`. Messages dated after `now` count too: another machine's clock may run ahead."""
    if since.tzinfo is None or now.tzinfo is None:
        raise ValueError("since and now must be timezone-aware")
    if since > now:
        raise ValueError(f"the window starts ({since.isoformat()}) after now ({now.isoformat()})")
    since, now = since.astimezone(UTC), now.astimezone(UTC)  # Polars compares UTC columns with UTC values
    campaigns = {cid: c for cid, c in scan_location(results).items() if cid != exclude_campaign}
    parts = [uri for c in campaigns.values() for at in c.parts.values() for uri in at.values()]
    sent = [_sent(parts, [uri for c in campaigns.values() for uri in c.settled])] if parts else []
    flying = [f for cid, c in campaigns.items() for f in _in_flight(results, cid, c, now)]
    if not sent and not flying:
        return pl.DataFrame(schema=RECENT_SCHEMA)
    # A sent row has its time by construction; one without (`no_outcome_recorded`) may be recent, so it counts.
    in_window = (pl.col("submitted_at") >= since) | pl.col("submitted_at").is_null()
    return (
        pl.concat([*sent, *flying], how="vertical")
        # Rows first, keys after: a key with any row in the window is a message in it, and the filter reaches
        # the scan, whose Parquet statistics pass over the parts of older campaigns unread.
        .filter(in_window & pl.col("phone").is_not_null())
        .unique(["campaign_id", "idempotency_key"])
        .group_by("phone")
        .agg(sent=pl.len().cast(pl.UInt32))
        .collect()
    )


def _sent(parts: list[str], settled: list[str]) -> pl.LazyFrame:
    """The accepted and unknown rows of these results parts, settlements applied. One scan for them all: a
    part names its campaign and attempt in its own columns, and Polars reads many files at once far faster
    than it concatenates a scan per file."""
    keys = ["campaign_id", "attempt", "row_index"]
    rows = _scan(parts, _SENT_COLUMNS)
    if settled:
        # As tasks/current.py applies them: the latest settlement of (attempt, row) replaces its send status
        # when it names one.
        latest = (
            _scan(settled, _SETTLED_COLUMNS)
            .group_by(keys)
            .agg(pl.col("status").sort_by("settled_at").last().alias("_settled"))
        )
        rows = rows.join(latest, on=keys, how="left").with_columns(status=pl.coalesce("_settled", "status"))
    return rows.filter(pl.col("status").is_in(COUNTED)).select(
        "campaign_id",
        # A key is missing only from parts no current version writes: the row is then its own message.
        idempotency_key=pl.coalesce(
            "idempotency_key", pl.format("a{}-r{}", pl.col("attempt"), pl.col("row_index"))
        ),
        phone="phone",
        submitted_at="submitted_at",
    )


def _in_flight(results: str, campaign_id: str, found: Campaign, now: datetime) -> list[pl.LazyFrame]:
    """The planned rows of attempts under way whose shard has no results part yet, dated `now`. The manifest
    names the plan's shards: a plan file it does not name is a leftover of a plan that was never completed."""
    frames: list[pl.LazyFrame] = []
    for attempt in found.under_way():
        paths = CampaignPaths(results, campaign_id).attempt(attempt)
        manifest = read_manifest(paths)
        if manifest is None:  # removed since the listing: nothing under way any more
            continue
        written = found.parts.get(attempt, {})
        frames += [
            _scan([paths.plan_shard(s.shard)], _PLAN_COLUMNS).select(
                campaign_id=pl.lit(campaign_id),
                idempotency_key="idempotency_key",
                phone="phone",
                submitted_at=pl.lit(now, _TIME),
            )
            for s in manifest.shards
            if s.shard not in written
        ]
    return frames


def _scan(uris: list[str], columns: dict[str, pl.DataType]) -> pl.LazyFrame:
    """Only `columns` of these Parquet files (local or s3://, all under one location); a column a file lacks
    comes out null, and integers written narrower by other versions are widened."""
    return pl.scan_parquet(
        uris,
        schema=columns,
        missing_columns="insert",
        extra_columns="ignore",
        cast_options=pl.ScanCastOptions(integer_cast="upcast"),
        storage_options=storage.storage_options(uris[0]),
        hive_partitioning=False,
        glob=False,
    )


def counts_for(validated: pl.DataFrame, recent: pl.DataFrame, limit: int) -> pl.Series:
    """For each row of `validated` (by its `phone`), the messages its number already had when they reach
    `limit` (the row must be held back), else null. Named `frequency_sent`, in `validated`'s row order."""
    over = recent.filter(pl.col("sent") >= limit).select(
        pl.col("phone").cast(pl.String), frequency_sent=pl.col("sent").cast(pl.UInt32)
    )
    return (
        validated.select(pl.col("phone").cast(pl.String))
        .join(over, on="phone", how="left", maintain_order="left")
        .get_column("frequency_sent")
    )
