"""Persist: the plan before sending, and the results dataset as it is made (paths: smscast/results.py).

An attempt's results are Parquet parts, one row per input row of the attempt: a part per shard (written by
the shard itself, tasks/send.py), a part for the rows never sent (invalid), and `_SUCCESS`, written last.

A shard writes its part when it finishes, so what was sent is on record in its final form even if the run
dies a moment later; a resumed run skips shards whose part exists. A sent row with no outcome cannot happen
by construction, but if it did it would be written as `unknown`, never left out.
"""

from __future__ import annotations

import json

import polars as pl
from prefect import task
from prefect.cache_policies import NONE

from smscast import storage
from smscast.campaign import CampaignSpec
from smscast.results import AttemptPaths, conform
from smscast.status import Status
from smscast.tasks.manifest import Manifest, write_manifest
from smscast.tasks.plan import PlannedCampaign, ShardRef


@task(name="write-plan", cache_policy=NONE, persist_result=False)
def save_plan(paths: AttemptPaths, planned: PlannedCampaign) -> Manifest:
    """Every plan file, then the manifest: its presence means the plan is complete and a resumed run sends
    from it without reading the source again (which may have changed since)."""
    rows = planned.rows
    if "shard" not in rows.columns:
        rows = rows.with_columns(shard=pl.lit(None, pl.Int64))
    # One shard at a time, each filtered lazily (which shares the plan's buffers): partitioning the whole plan
    # at once copied it, ~350 MB at a million rows on top of the plan, for more CPU.
    for shard in rows.get_column("shard").drop_nulls().unique().sort().to_list():
        part = rows.lazy().filter(pl.col("shard") == shard).collect()
        _write_plan_file(part, paths.plan_shard(int(shard)))
    _write_plan_file(rows.lazy().filter(pl.col("shard").is_null()).collect(), paths.plan_unsent)
    return write_manifest(paths, planned)


def _write_plan_file(df: pl.DataFrame, uri: str) -> None:
    """A plan file, written whole like every record. No column statistics: plan files are read whole, by
    smscast alone, so statistics would serve no reader."""
    storage.write_parquet(df, uri, statistics=False)


def result_rows(spec: CampaignSpec, planned: pl.DataFrame, outcomes: pl.DataFrame | None) -> pl.DataFrame:
    """Planned rows joined with their outcomes, in the results schema."""
    rows = planned.with_columns(
        campaign_id=pl.lit(spec.campaign_id), attempt=pl.lit(spec.attempt), provider=pl.lit(spec.provider)
    )
    if outcomes is not None:
        rows = (
            rows.drop(["status", "error_code", "error_message"], strict=False)
            .rename({"batch_id": "planned_batch_id"})
            .join(outcomes, on="row_index", how="left")
            .with_columns(
                # Bisection sends rows in sub-batches ("…b000012-L-R"); record the request that carried them.
                batch_id=pl.coalesce("batch_id", "planned_batch_id"),
                error_code=pl.when(pl.col("status").is_null())
                .then(pl.lit("no_outcome_recorded"))
                .otherwise(pl.col("error_code")),
                status=pl.col("status").fill_null(Status.UNKNOWN.value),
            )
        )
    return conform(rows).sort("row_index")


@task(name="persist-results", cache_policy=NONE, persist_result=False)
def persist_results(spec: CampaignSpec, shards: list[ShardRef]) -> str:
    """Seal the attempt: the unsent rows' part, then `_SUCCESS`. Returns the attempt's results location."""
    paths = AttemptPaths.of(spec)
    missing = [s.shard for s in shards if not storage.exists(paths.part(s.shard))]
    if missing:
        raise RuntimeError(f"shards {missing} have no results part; the attempt is not complete")
    unsent = storage.read_parquet(paths.plan_unsent)
    storage.write_parquet(result_rows(spec, unsent, None), paths.unsent_part)
    marker = {"shards": len(shards), "rows_sent": sum(s.rows for s in shards), "rows_unsent": unsent.height}
    storage.put_bytes(paths.done, json.dumps(marker).encode())
    return paths.dir
