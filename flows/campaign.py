"""The campaign flow: load → validate → plan → send → persist → report.

Re-running a campaign id resumes it: a finished attempt is reported, not re-sent; an interrupted one reuses
its written plan and skips the shards whose outcomes are recorded (tasks/work.py).
"""

from __future__ import annotations

import uuid
from typing import Any

from prefect import flow, get_run_logger, task, unmapped
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NONE
from prefect.task_runners import ThreadPoolTaskRunner

from providers.registry import make_provider
from smscast import progress, storage
from smscast.campaign import CampaignSpec
from smscast.errors import AuthError
from tasks.load import load_recipients
from tasks.manifest import read_manifest, write_manifest
from tasks.persist import persist_results, results_uri, write_plan
from tasks.plan import plan_campaign
from tasks.report import publish, summarise
from tasks.send import SHARD_WORKERS, send_shard
from tasks.validate import validate_recipients
from tasks.work import WorkDir

load = task(load_recipients, name="load", cache_policy=NONE)
validate = task(validate_recipients, name="validate", cache_policy=NONE)
plan = task(plan_campaign, name="plan", cache_policy=NONE)


@flow(name="send-campaign", task_runner=ThreadPoolTaskRunner(max_workers=SHARD_WORKERS), log_prints=True)
def send_campaign(spec: CampaignSpec) -> dict[str, Any]:
    logger = get_run_logger()
    provider = make_provider(spec.provider, base_url=spec.base_url, require_key=not spec.dry_run)
    provider.check_spec(spec)
    work = WorkDir.for_run(spec.results, spec.campaign_id, spec.attempt)
    final = results_uri(spec)
    if not spec.dry_run and storage.exists(final):
        logger.info("campaign %s attempt %d is already complete; nothing to send", spec.campaign_id, spec.attempt)
        summary = summarise(storage.read_parquet(final), campaign_id=spec.campaign_id, attempt=spec.attempt,
                            provider=spec.provider, results_uri=final)
        publish(summary, logger)
        return summary.to_dict()

    manifest = None if spec.dry_run else read_manifest(work.root)
    if manifest is None:
        recipients = load(spec)
        checked = validate(recipients, spec, provider.caps, provider)
        planned = plan(checked, spec, provider.caps, provider)
        if spec.dry_run:
            summary = summarise(planned.rows, campaign_id=spec.campaign_id, attempt=spec.attempt,
                                provider=spec.provider, results_uri=None, dry_run=True)
            publish(summary, logger)
            return summary.to_dict()
        write_plan(planned, work.root)
        manifest = write_manifest(work.root, planned)
    else:
        logger.info("resuming campaign %s attempt %d from its recorded plan", spec.campaign_id, spec.attempt)

    key = f"{spec.campaign_id}-{uuid.uuid4().hex[:8]}"
    artifact = create_progress_artifact(0.0, description=f"Sending campaign {spec.campaign_id}")
    runtime = progress.Runtime(
        progress.Progress(manifest.rows_to_send, logger, publish=lambda pct: update_progress_artifact(artifact, pct))
    )
    progress.register(key, runtime)
    try:
        futures = send_shard.map(unmapped(spec), unmapped(work.root), manifest.shards, unmapped(key))
        reports = [f.result() for f in futures]
    finally:
        progress.unregister(key)
    uri = persist_results(spec, work.root, manifest.shards)
    summary = summarise(storage.read_parquet(uri), campaign_id=spec.campaign_id, attempt=spec.attempt,
                        provider=spec.provider, results_uri=uri)
    for r in reports:
        for k, v in r.requests.items():
            summary.requests[k] = summary.requests.get(k, 0) + v
    publish(summary, logger)
    if runtime.abort.is_set():
        # Results are written first, so that every row has its record; then the run fails loudly.
        raise AuthError(f"{spec.provider} refused the credentials; unsent rows are recorded as failed",
                        code="credentials_refused")
    return summary.to_dict()
