"""The results contract (docs/contracts.md): where a campaign's files live, and the columns of its results.

Every path under a results location is spelled here and nowhere else (`CampaignPaths`):

    <results>/campaign=<id>/attempt=<n>/part-sNNNNN.parquet    the rows shard N sent, with their outcomes
    <results>/campaign=<id>/attempt=<n>/part-unsent.parquet    the rows never sent (invalid), with reasons
    <results>/campaign=<id>/attempt=<n>/_SUCCESS               written last: the attempt is complete
    <results>/_work/campaign=<id>/spec.json                     the campaign's parameters
    <results>/_work/campaign=<id>/lock.json                     the lease lock (smscast/lock.py)
    <results>/_work/campaign=<id>/attempt=<n>/plan/shard=NNNNN.parquet   rows to send, per shard
    <results>/_work/campaign=<id>/attempt=<n>/plan/unsent.parquet        rows that will not be sent
    <results>/_work/campaign=<id>/attempt=<n>/plan/manifest.json         written after the plan: it is complete
    <results>/_work/campaign=<id>/attempt=<n>/journal/shard=NNNNN        each batch's outcome as it came back
    <results>/campaign=<id>/delivery/part-<time>-<uid>.parquet   delivery facts (smscast/delivery.py)
    <results>/campaign=<id>/settled/part-<time>-<uid>.parquet    send statuses settled by reconciliation
    <results>/_dlr/part-<time>-<uid>.parquet                     delivery reports received, not yet matched
    <results>/_policy/optout.parquet                             the managed opt-out list (smscast/optout.py)
    <results>/_policy/frequency-lock.json                        held while a campaign counts for its frequency
                                                                 cap and records its plan (tasks/frequency.py)

The results dataset has one row per input row per attempt. Downstream jobs read its columns; add, never rename.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

import polars as pl

from smscast import storage

RESULT_SCHEMA: dict[str, pl.DataType] = {
    "campaign_id": pl.String(),
    "attempt": pl.Int32(),
    "row_index": pl.Int64(),  # position in the input, so every input row is accounted for
    "recipient_id": pl.String(),
    "phone": pl.String(),  # E.164 when it could be normalised, else the input as given
    "provider": pl.String(),
    "batch_id": pl.String(),
    "idempotency_key": pl.String(),
    "status": pl.String(),
    "error_code": pl.String(),
    "error_message": pl.String(),
    "provider_message_id": pl.String(),
    "provider_batch_ref": pl.String(),  # async providers' job/batch reference, for reconciliation
    "encoding": pl.String(),
    "segments": pl.Int32(),
    "submitted_at": pl.Datetime("us", "UTC"),
    "country": pl.String(),  # ISO region of the number (libphonenumber's), null when it has none
    "number_type": pl.String(),  # libphonenumber's type in lower case (mobile, fixed_line, …; unknown: invalid)
    "release_at": pl.Datetime("us", "UTC"),  # `held` rows: when the contact policy lets them go
}

RESULT_COLUMNS: tuple[str, ...] = tuple(RESULT_SCHEMA)

# The outcome columns a send produces for each row it handled (joined back onto the plan by row_index).
OUTCOME_SCHEMA: dict[str, pl.DataType] = {
    "row_index": pl.Int64(),
    "status": pl.String(),
    "error_code": pl.String(),
    "error_message": pl.String(),
    "provider_message_id": pl.String(),
    "provider_batch_ref": pl.String(),
    "submitted_at": pl.Datetime("us", "UTC"),
}


def conform(df: pl.DataFrame) -> pl.DataFrame:
    """Select and cast to the results schema, filling absent columns with nulls."""
    return df.select(
        [
            (pl.col(name) if name in df.columns else pl.lit(None)).cast(dtype).alias(name)
            for name, dtype in RESULT_SCHEMA.items()
        ]
    )


class _Located(Protocol):
    @property
    def results(self) -> str: ...
    @property
    def campaign_id(self) -> str: ...
    @property
    def attempt(self) -> int: ...


@dataclass(frozen=True)
class CampaignPaths:
    """One campaign's files under a results location (local or s3://)."""

    results: str
    campaign_id: str

    @classmethod
    def of(cls, spec: _Located) -> CampaignPaths:
        return cls(spec.results, spec.campaign_id)

    @property
    def dataset(self) -> str:
        """Every attempt's results: what downstream jobs read."""
        return f"{self.results.rstrip('/')}/campaign={self.campaign_id}"

    @property
    def work(self) -> str:
        """The run's own files (plans, journals, lock, spec): not results."""
        return f"{self.results.rstrip('/')}/_work/campaign={self.campaign_id}"

    @property
    def lock(self) -> str:
        return f"{self.work}/lock.json"

    @property
    def spec(self) -> str:
        return f"{self.work}/spec.json"

    @property
    def delivery(self) -> str:
        """Delivery facts: append-only parts (smscast/delivery.py), never inside an attempt's folder."""
        return f"{self.dataset}/delivery"

    @property
    def settled(self) -> str:
        """Send statuses that reconciliation settled (an `unknown` row found or proven absent)."""
        return f"{self.dataset}/settled"

    def attempt(self, n: int) -> AttemptPaths:
        return AttemptPaths(self, n)

    def result_parts(self) -> dict[int, list[str]]:
        """Result parts by attempt. An interrupted attempt's parts count: they record rows that were sent."""
        found: dict[int, list[str]] = {}
        for uri in storage.list_files(f"{self.dataset}/", suffix=".parquet"):
            if m := _RESULT_PART.search(uri):
                found.setdefault(int(m.group(1)), []).append(uri)
        return found

    def shard_parts(self) -> list[str]:
        """Every attempt's shard parts: the rows each attempt set out to send (not their unsent rows)."""
        return [f for parts in self.result_parts().values() for f in parts if _SHARD_PART.search(f)]

    def planned_attempts(self) -> list[int]:
        """The attempts whose plan is complete (their manifest exists), in order."""
        return sorted(
            int(m.group(1))
            for uri in storage.list_files(f"{self.work}/", suffix=_MANIFEST)
            if (m := _PLANNED.search(uri))
        )


@dataclass(frozen=True)
class AttemptPaths:
    """One attempt's results and its plan, journals and manifest."""

    campaign: CampaignPaths
    n: int

    @classmethod
    def of(cls, spec: _Located) -> AttemptPaths:
        return CampaignPaths.of(spec).attempt(spec.attempt)

    @property
    def dir(self) -> str:
        return f"{self.campaign.dataset}/attempt={self.n}"

    def part(self, shard: int) -> str:
        return f"{self.dir}/part-s{shard:05d}.parquet"

    @property
    def unsent_part(self) -> str:
        return f"{self.dir}/part-unsent.parquet"

    @property
    def done(self) -> str:
        return f"{self.dir}/_SUCCESS"

    def shard_parts(self) -> list[str]:
        """The shard parts written so far (not the unsent rows' part)."""
        return [f for f in storage.list_files(f"{self.dir}/", suffix=".parquet") if _SHARD_PART.search(f)]

    @property
    def work(self) -> str:
        return f"{self.campaign.work}/attempt={self.n}"

    def plan_shard(self, shard: int) -> str:
        return f"{self.work}/plan/shard={shard:05d}.parquet"

    @property
    def plan_unsent(self) -> str:
        return f"{self.work}/plan/unsent.parquet"

    @property
    def manifest(self) -> str:
        return f"{self.work}/plan/{_MANIFEST}"

    def plan_shards(self) -> list[str]:
        return [
            f for f in storage.list_files(f"{self.work}/plan/", suffix=".parquet") if _PLAN_SHARD.search(f)
        ]

    @property
    def journals(self) -> str:
        return f"{self.work}/journal"

    def journal(self, shard: int) -> str:
        return f"{self.journals}/shard={shard:05d}"


def dlr_inbox(results: str) -> str:
    """Where the delivery-report receiver records what it took, for every campaign under `results`."""
    return f"{results.rstrip('/')}/_dlr"


def optout_list(results: str) -> str:
    """The managed opt-out list every campaign under `results` applies (smscast/optout.py, tasks/policy.py)."""
    return f"{results.rstrip('/')}/_policy/optout.parquet"


def frequency_lock(results: str) -> str:
    """The lock campaigns under `results` take while they count and plan under a frequency cap
    (tasks/frequency.py `counting_alone`)."""
    return f"{results.rstrip('/')}/_policy/frequency-lock.json"


def campaign_ids(results: str) -> list[str]:
    """Every campaign with results under `results` (attempt 1 started writing), sorted."""
    found = {
        m.group(1)
        for uri in storage.list_files(f"{results.rstrip('/')}/", suffix=".parquet")
        if (m := _CAMPAIGN.search(uri))
    }
    return sorted(found)


# How the listings above recognise what the properties spell (list_files may normalise the results prefix).
_MANIFEST = "manifest.json"
_RESULT_PART = re.compile(r"/attempt=(\d+)/[^/]+$")
_CAMPAIGN = re.compile(r"/campaign=([^/]+)/attempt=\d+/[^/]+$")
_SHARD_PART = re.compile(r"/part-s\d+\.parquet$")
_PLANNED = re.compile(r"/attempt=(\d+)/plan/manifest\.json$")
_PLAN_SHARD = re.compile(r"/plan/shard=\d+\.parquet$")
