"""One attempt of a campaign, start to end: done marker → manifest → plan → save → send → seal → report.

Every flow that sends runs its attempts through `run_attempt`; a flow says only how it chooses the attempt's
rows (the campaign flow loads, validates and plans its source; the retry flow re-plans what may be re-sent).
An attempt already complete is reported, never re-sent; one with a recorded plan is resumed from it.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import cast
from uuid import UUID

from prefect import unmapped
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from smscast import runtime as shared
from smscast import storage
from smscast.campaign import CampaignSpec
from smscast.errors import CampaignStopError
from smscast.lock import CampaignLock, CampaignLockedError
from smscast.results import AttemptPaths
from smscast.tasks.manifest import Manifest, read_manifest, save_spec
from smscast.tasks.persist import persist_results, save_plan
from smscast.tasks.plan import PlannedCampaign
from smscast.tasks.report import CampaignSummary, report, stage
from smscast.tasks.send import ShardReport, send_shard

Logger = logging.Logger | logging.LoggerAdapter[logging.Logger]


def run_attempt(
    spec: CampaignSpec,
    choose_rows: Callable[[], PlannedCampaign] | None,
    logger: Logger,
    *,
    lock: CampaignLock,
    seconds: dict[str, float] | None = None,
) -> CampaignSummary:
    """Run attempt `spec.attempt` under the campaign's `lock`. `choose_rows` plans the attempt when it has no
    recorded plan (None: the attempt may only be resumed). `seconds` collects the stages' wall times."""
    seconds = {} if seconds is None else seconds
    paths = AttemptPaths.of(spec)
    if storage.exists(paths.done):
        logger.info(
            "campaign %s attempt %d is already complete; nothing to send", spec.campaign_id, spec.attempt
        )
        return report(storage.read_parquet(paths.dir), spec, logger, results_uri=paths.dir)
    manifest = read_manifest(paths)
    if manifest is None:
        if choose_rows is None:
            raise RuntimeError(f"campaign {spec.campaign_id} attempt {spec.attempt} has no plan to resume")
        planned = choose_rows()
        with stage(seconds, "write-plan"):
            if spec.attempt == 1:
                save_spec(spec)  # before the plan: a re-run meets it whether or not the plan was finished
            manifest = save_plan(paths, planned)
    else:
        logger.info("resuming campaign %s attempt %d from its recorded plan", spec.campaign_id, spec.attempt)
    logger.info(
        "campaign %s attempt %d: %d of %d rows to send",
        spec.campaign_id,
        spec.attempt,
        manifest.rows_to_send,
        manifest.rows,
    )
    stop, reports = _send(spec, manifest, logger, seconds, lock)
    with stage(seconds, "persist"):
        uri = persist_results(spec, manifest.shards)
    requests: dict[str, int] = {}
    for r in reports:
        for k, v in r.requests.items():
            requests[k] = requests.get(k, 0) + v
    summary = report(
        storage.read_parquet(uri),
        spec,
        logger,
        results_uri=uri,
        seconds=seconds,
        requests=requests,
        completed=True,
    )
    if stop.is_set():
        # Results are written first, so that every row has its record; then the run fails loudly.
        raise CampaignStopError(
            f"campaign {spec.campaign_id} stopped: {stop.reason}. Rows not sent are recorded as "
            "failed; fix the cause, then `smscast retry` sends them.",
            code=stop.code or "stopped",
        )
    return summary


def _send(
    spec: CampaignSpec, manifest: Manifest, logger: Logger, seconds: dict[str, float], lock: CampaignLock
) -> tuple[shared.Stop, list[ShardReport]]:
    """The manifest's shards as mapped task runs, sharing one stop signal (which a lost lock also sets)."""
    key = f"{spec.campaign_id}-{uuid.uuid4().hex[:8]}"
    artifact = cast(
        UUID, create_progress_artifact(0.0, description=f"Sending {spec.campaign_id}, attempt {spec.attempt}")
    )

    def publish_progress(pct: float) -> None:
        update_progress_artifact(artifact, pct)

    stop = shared.Stop(lock.held)
    shared.register(
        key, shared.Runtime(shared.Progress(manifest.rows_to_send, logger, publish=publish_progress), stop)
    )
    try:
        with stage(seconds, "send"):
            futures = send_shard.map(unmapped(spec), manifest.shards, unmapped(key))
            reports = [f.result() for f in futures]
    finally:
        shared.unregister(key)
    if stop.code == "lock_lost":
        # Another run owns the campaign now: write nothing (its record stands), send nothing, fail loudly.
        raise CampaignLockedError(
            f"campaign {spec.campaign_id}: {stop.reason}; this run stopped and wrote nothing"
        )
    return stop, reports
