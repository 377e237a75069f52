"""The campaign flow: load → validate → plan → send → persist → report.

Re-running a campaign id resumes it: a finished attempt is reported, not re-sent; an interrupted one reuses
its written plan and skips the shards whose outcomes are recorded (tasks/work.py).
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE
from prefect.task_runners import ThreadPoolTaskRunner

from providers.registry import make_provider
from smscast import storage
from smscast.campaign import CampaignSpec
from tasks.dispatch import dispatch, finished
from tasks.load import load_recipients
from tasks.manifest import read_manifest, save_spec, write_manifest
from tasks.persist import results_uri, write_plan
from tasks.plan import plan_campaign
from tasks.report import publish, summarise
from tasks.send import SHARD_WORKERS
from tasks.validate import validate_recipients
from tasks.work import WorkDir

load = task(load_recipients, name="load", cache_policy=NONE)
validate = task(validate_recipients, name="validate", cache_policy=NONE)
plan = task(plan_campaign, name="plan", cache_policy=NONE)


@flow(name="send-campaign", task_runner=ThreadPoolTaskRunner(max_workers=SHARD_WORKERS))
def send_campaign(spec: CampaignSpec) -> dict[str, Any]:
    logger = get_run_logger()
    provider = make_provider(spec.provider, base_url=spec.base_url, require_key=not spec.dry_run)
    provider.check_spec(spec)
    work = WorkDir.for_run(spec.results, spec.campaign_id, spec.attempt)
    if not spec.dry_run and storage.exists(results_uri(spec)):
        return finished(spec, results_uri(spec), logger).to_dict()

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
        if spec.attempt == 1:
            save_spec(spec)
        write_plan(planned, work.root)
        manifest = write_manifest(work.root, planned)
    else:
        logger.info("resuming campaign %s attempt %d from its recorded plan", spec.campaign_id, spec.attempt)

    return dispatch(spec, work.root, manifest, logger).to_dict()
