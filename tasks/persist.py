"""Persist: the plan before sending, and the results dataset as it is made.

Results live under `<results>/campaign=<id>/attempt=<n>/` as Parquet parts, one row per input row of the attempt:

    part-sNNNNN.parquet   the rows shard N sent, with the provider's outcomes (written by the shard itself)
    part-unsent.parquet   the rows that were never sent (invalid), with their reasons
    _SUCCESS              written last: the attempt is complete

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
from smscast.results import attempt_path, conform
from smscast.status import Status
from tasks.plan import PlannedCampaign, ShardRef
from tasks.work import WorkDir


def attempt_dir(spec: CampaignSpec) -> str:
    return attempt_path(spec.results, spec.campaign_id, spec.attempt)


def done_marker(spec: CampaignSpec) -> str:
    return f"{attempt_dir(spec)}/_SUCCESS"


def shard_part(spec: CampaignSpec, shard: int) -> str:
    return f"{attempt_dir(spec)}/part-s{shard:05d}.parquet"


def unsent_part(spec: CampaignSpec) -> str:
    return f"{attempt_dir(spec)}/part-unsent.parquet"


@task(name="write-plan", cache_policy=NONE)
def write_plan(planned: PlannedCampaign, work_root: str) -> None:
    work = WorkDir(work_root)
    rows = planned.rows
    if "shard" not in rows.columns:
        rows = rows.with_columns(shard=pl.lit(None, pl.Int64))
    for (shard,), part in (
        rows.filter(pl.col("shard").is_not_null()).partition_by("shard", as_dict=True).items()
    ):
        storage.write_parquet(part, work.plan_shard(int(shard)))
    storage.write_parquet(rows.filter(pl.col("shard").is_null()), work.unsent)


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


@task(name="persist-results", cache_policy=NONE)
def persist_results(spec: CampaignSpec, work_root: str, shards: list[ShardRef]) -> str:
    missing = [s.shard for s in shards if not storage.exists(shard_part(spec, s.shard))]
    if missing:
        raise RuntimeError(f"shards {missing} have no results part; the attempt is not complete")
    unsent = storage.read_parquet(WorkDir(work_root).unsent)
    storage.write_parquet(result_rows(spec, unsent, None), unsent_part(spec))
    marker = {"shards": len(shards), "rows_sent": sum(s.rows for s in shards), "rows_unsent": unsent.height}
    storage.put_bytes(done_marker(spec), json.dumps(marker).encode())
    return attempt_dir(spec)
