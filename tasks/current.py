"""A campaign's current state: for each input row, its latest attempt's result, and which rows may be re-sent.

Attempt 1 has a row for every input row; a retry attempt n+1 has a row for each row it re-sent. So the
current result of a row is the one with the highest attempt, and every input row has exactly one.
"""

from __future__ import annotations

import polars as pl

from smscast import storage
from smscast.errors import SourceError
from smscast.results import CampaignPaths
from smscast.status import RETRIABLE, Status


def current_results(results: str, campaign_id: str) -> pl.DataFrame:
    files = CampaignPaths(results, campaign_id).result_parts()
    if 1 not in files:
        raise SourceError(f"no results for campaign {campaign_id!r} under {results} (attempt 1 is missing)")
    frames = [storage.read_parquet(f) for n in sorted(files) for f in files[n]]
    all_attempts = pl.concat(frames, how="diagonal_relaxed")
    return all_attempts.sort("row_index", "attempt").group_by("row_index", maintain_order=True).last()


def resendable(current: pl.DataFrame, *, resend_safe: bool) -> pl.DataFrame:
    """The rows a retry may re-send: RETRIABLE ones (`failed`: never accepted), and `unknown` ones only where
    the provider's idempotency makes a re-send harmless (`resend_safe`: it recognises the same keys and
    answers the first message). `rejected`, `invalid` and `accepted` are final."""
    statuses = (RETRIABLE | {Status.UNKNOWN}) if resend_safe else RETRIABLE
    return current.filter(pl.col("status").is_in([s.value for s in statuses]))
