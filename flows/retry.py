"""The retry flow: read a campaign's results, re-send what may be re-sent, write attempt n+1.

Re-sent: rows whose current status is `failed` (never accepted), and `unknown` rows only where the provider's
idempotency makes a re-send harmless — with the same row keys, and for `unknown` rows the same batches (so
that a provider keying whole requests, like sent.dm, recognises them). `rejected` and `invalid` are final.
It takes the campaign's lock, so it never runs beside the campaign or another retry of it.
"""

from __future__ import annotations

import time
from typing import Any

import polars as pl
from prefect import flow, get_run_logger

from providers.registry import make_provider
from smscast import storage
from smscast.errors import ConfigError
from smscast.lock import CampaignLock
from smscast.status import Status
from tasks.current import attempt_files, current_results
from tasks.dispatch import dispatch, finished
from tasks.manifest import load_spec, read_manifest, write_manifest
from tasks.persist import attempt_dir, done_marker, write_plan
from tasks.plan import PINNED_KEY, plan_campaign
from tasks.send import shard_runner
from tasks.work import WorkDir, unfinished_attempt

PLAN_COLUMNS = ("shard", "batch_seq", "batch_id", "batch_key", "status", "error_code", "error_message")


@flow(name="retry-failed", task_runner=shard_runner())
def retry_failed(
    campaign_id: str,
    results: str,
    provider: str | None = None,
    base_url: str | None = None,
    max_attempts: int = 5,
    delay_seconds: float = 0.0,
) -> dict[str, Any]:
    logger = get_run_logger()
    original = load_spec(results, campaign_id)
    if original is None:
        raise ConfigError(
            f"campaign {campaign_id!r} has no recorded parameters under {results}; was it sent there?"
        )
    if delay_seconds > 0:
        logger.info("waiting %.0f s before retrying campaign %s", delay_seconds, campaign_id)
        time.sleep(delay_seconds)
    overrides = {k: v for k, v in {"provider": provider, "base_url": base_url}.items() if v}
    with CampaignLock(results, campaign_id, logger=logger) as lock:
        pending = unfinished_attempt(results, campaign_id)
        if pending is not None:
            # An interrupted attempt is finished first, from its own plan and journal: planning a new one
            # beside it would re-send what it had already sent.
            spec = original.model_copy(update={**overrides, "attempt": pending, "dry_run": False})
            work = WorkDir.for_run(results, campaign_id, pending)
            manifest = read_manifest(work.root)
            assert manifest is not None
            logger.info("campaign %s: resuming interrupted attempt %d", campaign_id, pending)
            return dispatch(spec, work.root, manifest, logger, lock=lock).to_dict()
        current = current_results(results, campaign_id)
        last = int(current.get_column("attempt").max())  # type: ignore[arg-type]
        spec = original.model_copy(update={**overrides, "attempt": last + 1, "dry_run": False})
        prov = make_provider(spec.provider, base_url=spec.base_url)
        retriable = pl.col("status") == Status.FAILED.value
        if prov.caps.resend_safe:
            retriable = retriable | (pl.col("status") == Status.UNKNOWN.value)
        todo = current.filter(retriable)
        counts = dict(current.group_by("status").len().iter_rows())
        if todo.is_empty() or last >= max_attempts:
            if not todo.is_empty():
                logger.warning(
                    "campaign %s: %d rows still retriable, but attempt %d reached max_attempts=%d",
                    campaign_id,
                    todo.height,
                    last,
                    max_attempts,
                )
            else:
                logger.info("campaign %s: nothing to retry (%s)", campaign_id, counts)
            return {"campaign_id": campaign_id, "attempt": last, "retried": 0, "by_status": counts}
        if storage.exists(done_marker(spec)):
            return finished(spec, attempt_dir(spec), logger).to_dict()

        work = WorkDir.for_run(results, campaign_id, spec.attempt)
        manifest = read_manifest(work.root)
        if manifest is None:
            planned = plan_campaign(
                _retry_rows(results, campaign_id, todo),
                spec,
                prov.caps,
                prov,
                extra_groups=[pl.col("_retry_group")],
            )
            write_plan(planned, work.root)
            manifest = write_manifest(work.root, planned)
        logger.info(
            "campaign %s: re-sending %d rows as attempt %d", campaign_id, manifest.rows_to_send, spec.attempt
        )
        return dispatch(spec, work.root, manifest, logger, lock=lock).to_dict()


def _retry_rows(results: str, campaign_id: str, todo: pl.DataFrame) -> pl.DataFrame:
    """The rows to re-send, with their content as attempt 1 planned it (phone, rendered body, variables)."""
    rows = _plan_rows(results, campaign_id, 1).join(
        todo.select("row_index", pl.col("status").alias("_was"), pl.col("batch_id").alias("_b")),
        on="row_index",
    )
    # Unknown rows keep their original batches (same composition) and the key their request carried; failed
    # rows were never accepted and may be re-batched freely.
    rows = rows.with_columns(
        _retry_group=pl.when(pl.col("_was") == "unknown").then(pl.col("_b")).otherwise(None)
    ).join(_request_keys(results, campaign_id, todo), on="row_index", how="left")
    return rows.drop([*PLAN_COLUMNS, "_was", "_b"], strict=False).with_columns(
        status=pl.lit(None, pl.String),
        error_code=pl.lit(None, pl.String),
        error_message=pl.lit(None, pl.String),
    )


def _plan_rows(results: str, campaign_id: str, attempt: int) -> pl.DataFrame:
    work = WorkDir.for_run(results, campaign_id, attempt)
    shards = [f for f in storage.list_files(f"{work.root}/plan/", suffix=".parquet") if "/shard=" in f]
    return pl.concat([storage.read_parquet(f) for f in shards], how="diagonal_relaxed")


def _request_keys(results: str, campaign_id: str, todo: pl.DataFrame) -> pl.DataFrame:
    """row_index -> the key of the request that left it `unknown`, for requests re-sent whole: the planned
    batch's key, plus the "-L"/"-R" suffixes bisection added (tasks/plan.py PINNED_KEY says why). A request
    only part of which is unknown cannot be re-sent as the same request, and keeps a key of its own."""
    unknown = todo.filter(pl.col("status") == "unknown").select("row_index", "attempt", "batch_id")
    frames = [pl.DataFrame(schema={"row_index": pl.Int64, PINNED_KEY: pl.String})]
    for (attempt,), part in unknown.partition_by("attempt", as_dict=True).items():
        plan = _plan_rows(results, campaign_id, int(attempt)).select(
            "row_index", pl.col("batch_id").alias("_planned"), "batch_key"
        )
        sent = pl.concat(
            [storage.read_parquet(f) for f in attempt_files(results, campaign_id)[int(attempt)]],
            how="diagonal_relaxed",
        )
        sizes = sent.group_by("batch_id").agg(_request_rows=pl.len())
        keyed = (
            part.join(plan, on="row_index")
            .join(sizes, on="batch_id")
            .with_columns(_unknown_rows=pl.len().over("batch_id"))
            .filter(pl.col("_unknown_rows") == pl.col("_request_rows"))
        )
        frames.append(
            keyed.select(
                "row_index",
                (pl.col("batch_key") + pl.col("batch_id").str.strip_prefix(pl.col("_planned"))).alias(
                    PINNED_KEY
                ),
            )
        )
    return pl.concat(frames)
