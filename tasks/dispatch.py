"""Send a written plan's shards as mapped task runs, persist the results, report. Shared by the campaign
flow and the retry flow, which differ only in how they make the plan."""

from __future__ import annotations

import logging
import uuid
from typing import cast
from uuid import UUID

from prefect import unmapped
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from smscast import progress, storage
from smscast.campaign import CampaignSpec
from smscast.errors import CampaignStopError
from smscast.lock import CampaignLock, CampaignLockedError
from tasks.events import emit_campaign_finished
from tasks.manifest import Manifest
from tasks.persist import persist_results
from tasks.report import CampaignSummary, publish, stage, summarise
from tasks.send import send_shard


def dispatch(
    spec: CampaignSpec,
    work_root: str,
    manifest: Manifest,
    logger: logging.Logger | logging.LoggerAdapter[logging.Logger],
    seconds: dict[str, float] | None = None,
    *,
    lock: CampaignLock | None = None,
) -> CampaignSummary:
    seconds = {} if seconds is None else seconds
    key = f"{spec.campaign_id}-{uuid.uuid4().hex[:8]}"
    artifact = cast(
        UUID, create_progress_artifact(0.0, description=f"Sending {spec.campaign_id}, attempt {spec.attempt}")
    )

    def publish_progress(pct: float) -> None:
        update_progress_artifact(artifact, pct)

    stop = progress.Stop(*((lock.held,) if lock is not None else ()))
    runtime = progress.Runtime(
        progress.Progress(manifest.rows_to_send, logger, publish=publish_progress), stop
    )
    progress.register(key, runtime)
    try:
        with stage(seconds, "send"):
            futures = send_shard.map(unmapped(spec), unmapped(work_root), manifest.shards, unmapped(key))
            reports = [f.result() for f in futures]
    finally:
        progress.unregister(key)
    if stop.code == "lock_lost":
        # Another run owns the campaign now: write nothing (its record stands), send nothing, fail loudly.
        raise CampaignLockedError(
            f"campaign {spec.campaign_id}: {stop.reason}; this run stopped and wrote nothing"
        )
    with stage(seconds, "persist"):
        uri = persist_results(spec, work_root, manifest.shards)
    results = storage.read_parquet(uri)
    summary = summarise(
        results, campaign_id=spec.campaign_id, attempt=spec.attempt, provider=spec.provider, results_uri=uri
    )
    summary.seconds = seconds
    for r in reports:
        for k, v in r.requests.items():
            summary.requests[k] = summary.requests.get(k, 0) + v
    publish(summary, logger)
    emit_campaign_finished(summary.to_dict(), spec.results, logger)
    if runtime.abort.is_set():
        # Results are written first, so that every row has its record; then the run fails loudly.
        raise CampaignStopError(
            f"campaign {spec.campaign_id} stopped: {runtime.abort.reason}. Rows not sent are recorded as "
            "failed; fix the cause, then `smscast retry` sends them.",
            code=runtime.abort.code or "stopped",
        )
    return summary


def finished(
    spec: CampaignSpec, uri: str, logger: logging.Logger | logging.LoggerAdapter[logging.Logger]
) -> CampaignSummary:
    """An attempt whose results exist is reported, never re-sent."""
    logger.info("campaign %s attempt %d is already complete; nothing to send", spec.campaign_id, spec.attempt)
    summary = summarise(
        storage.read_parquet(uri),
        campaign_id=spec.campaign_id,
        attempt=spec.attempt,
        provider=spec.provider,
        results_uri=uri,
    )
    publish(summary, logger)
    return summary
