"""Persist: the plan as per-shard files before sending, and the results dataset after.

Results go to `<results>/campaign=<id>/attempt=<n>/part-00000.parquet`, one row per input row: rows that were
never sent (invalid) keep their reasons; sent rows carry the provider's outcome. A sent row with no recorded
outcome cannot happen by construction, but if it did it would be written as `unknown`, never left out.
"""

from __future__ import annotations

import polars as pl
from prefect import task
from prefect.cache_policies import NONE

from smscast import storage
from smscast.campaign import CampaignSpec
from smscast.results import attempt_path, conform
from smscast.status import Status
from tasks.plan import PlannedCampaign, ShardRef
from tasks.work import WorkDir

RESULTS_FILE = "part-00000.parquet"


def results_uri(spec: CampaignSpec) -> str:
    return f"{attempt_path(spec.results, spec.campaign_id, spec.attempt)}/{RESULTS_FILE}"


@task(name="write-plan", cache_policy=NONE)
def write_plan(planned: PlannedCampaign, work_root: str) -> None:
    work = WorkDir(work_root)
    rows = planned.rows
    if "shard" not in rows.columns:
        rows = rows.with_columns(shard=pl.lit(None, pl.Int64))
    for shard, part in rows.filter(pl.col("shard").is_not_null()).partition_by("shard", as_dict=True).items():
        storage.write_parquet(part, work.plan_shard(int(shard[0])))  # type: ignore[call-overload]
    storage.write_parquet(rows.filter(pl.col("shard").is_null()), work.unsent)


def assemble(spec: CampaignSpec, work_root: str, shards: list[ShardRef]) -> pl.DataFrame:
    work = WorkDir(work_root)
    parts = [storage.read_parquet(work.unsent)]
    for ref in shards:
        planned = storage.read_parquet(work.plan_shard(ref.shard))
        outcomes = storage.read_parquet(work.outcomes(ref.shard))
        sent = (
            planned.drop(["status", "error_code", "error_message"], strict=False)
            .rename({"batch_id": "planned_batch_id"})
            .join(outcomes, on="row_index", how="left")
        )
        sent = sent.with_columns(
            # Bisection sends rows in sub-batches ("…b000012.L.R"); record the request that carried them.
            batch_id=pl.coalesce("batch_id", "planned_batch_id"),
            error_code=pl.when(pl.col("status").is_null()).then(pl.lit("no_outcome_recorded"))
            .otherwise(pl.col("error_code")),
            status=pl.col("status").fill_null(Status.UNKNOWN.value),
        )
        parts.append(sent)
    rows = pl.concat(parts, how="diagonal_relaxed")
    rows = rows.with_columns(
        campaign_id=pl.lit(spec.campaign_id), attempt=pl.lit(spec.attempt), provider=pl.lit(spec.provider)
    )
    return conform(rows).sort("row_index")


@task(name="persist-results", cache_policy=NONE)
def persist_results(spec: CampaignSpec, work_root: str, shards: list[ShardRef]) -> str:
    uri = results_uri(spec)
    storage.write_parquet(assemble(spec, work_root, shards), uri)
    return uri
