"""Where a campaign run keeps its intermediate files, beside its results:

    <results>/_work/campaign=<id>/attempt=<n>/plan/shard=00000.parquet    rows to send, per shard
    <results>/_work/campaign=<id>/attempt=<n>/plan/unsent.parquet         rows that will not be sent

Shards receive these locations, never DataFrames (DESIGN.md). What a shard sent goes straight to its part of
the results dataset (tasks/persist.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from smscast.results import attempt_path


@dataclass(frozen=True)
class WorkDir:
    root: str

    @classmethod
    def for_run(cls, results: str, campaign_id: str, attempt: int) -> WorkDir:
        return cls(attempt_path(f"{results.rstrip('/')}/_work", campaign_id, attempt))

    def plan_shard(self, shard: int) -> str:
        return f"{self.root}/plan/shard={shard:05d}.parquet"

    @property
    def unsent(self) -> str:
        return f"{self.root}/plan/unsent.parquet"


def unfinished_attempt(results: str, campaign_id: str) -> int | None:
    """The highest attempt that was planned but never completed (a manifest, no `_SUCCESS`), if any: an
    interrupted run to resume before anything new is planned."""
    from smscast import storage
    from smscast.results import attempt_path

    root = f"{results.rstrip('/')}/_work/campaign={campaign_id}/"
    planned = sorted(
        int(m.group(1))
        for uri in storage.list_files(root, suffix="manifest.json")
        if (m := re.search(r"/attempt=(\d+)/plan/manifest\.json$", uri))
    )
    for attempt in reversed(planned):
        if not storage.exists(f"{attempt_path(results, campaign_id, attempt)}/_SUCCESS"):
            return attempt
        return None  # the latest planned attempt is complete
    return None
