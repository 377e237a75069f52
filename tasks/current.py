"""A campaign's current state: for each input row, its latest attempt's result.

Attempt 1 has a row for every input row; a retry attempt n+1 has a row for each row it re-sent. So the
current result of a row is the one with the highest attempt, and every input row has exactly one.
"""

from __future__ import annotations

import re

import polars as pl

from smscast import storage
from smscast.errors import SourceError

_ATTEMPT = re.compile(r"/attempt=(\d+)/")


def attempt_files(results: str, campaign_id: str) -> dict[int, list[str]]:
    """Result parts by attempt. An interrupted attempt's parts count: they record rows that were sent."""
    prefix = f"{results.rstrip('/')}/campaign={campaign_id}/"
    found: dict[int, list[str]] = {}
    for uri in storage.list_files(prefix, suffix=".parquet"):
        m = _ATTEMPT.search(uri)
        if m:
            found.setdefault(int(m.group(1)), []).append(uri)
    return found


def current_results(results: str, campaign_id: str) -> pl.DataFrame:
    files = attempt_files(results, campaign_id)
    if 1 not in files:
        raise SourceError(f"no results for campaign {campaign_id!r} under {results} (attempt 1 is missing)")
    frames = [storage.read_parquet(f) for n in sorted(files) for f in files[n]]
    all_attempts = pl.concat(frames, how="diagonal_relaxed")
    return all_attempts.sort("row_index", "attempt").group_by("row_index", maintain_order=True).last()
