"""The campaign flow: load → validate → plan → send → persist → report.

Re-running a campaign id resumes it: a finished attempt is reported, not re-sent; an interrupted one reuses
its written plan and skips the shards whose results are recorded. A lease lock (smscast/lock.py) keeps a
second run of the same campaign from sending while the first is alive.
"""

from __future__ import annotations

import math
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE

from providers.registry import make_provider
from smscast import storage
from smscast.campaign import CampaignSpec
from smscast.lock import CampaignLock
from tasks.dispatch import dispatch, finished
from tasks.load import load_recipients
from tasks.manifest import check_same_campaign, read_manifest, save_spec, write_manifest
from tasks.persist import attempt_dir, done_marker, write_plan
from tasks.plan import plan_campaign
from tasks.report import publish, stage, summarise
from tasks.send import shard_runner
from tasks.validate import validate_recipients
from tasks.work import WorkDir

# No cache policy: hashing a million-row frame for a cache key would cost more than the step itself.
load = task(name="load", cache_policy=NONE)(load_recipients)
validate = task(name="validate", cache_policy=NONE)(validate_recipients)
plan = task(name="plan", cache_policy=NONE)(plan_campaign)


@flow(name="send-campaign", task_runner=shard_runner())
def send_campaign(spec: CampaignSpec, wait_for_lock: bool = False) -> dict[str, Any]:
    """`wait_for_lock`: if another live run is sending this campaign, wait for it rather than fail."""
    logger = get_run_logger()
    provider = make_provider(spec.provider, base_url=spec.base_url, require_key=not spec.dry_run)
    provider.validate_spec(spec)
    seconds: dict[str, float] = {}

    def make_plan() -> Any:
        with stage(seconds, "load"):
            recipients = load(spec)
        with stage(seconds, "validate"):
            checked = validate(recipients, spec, provider.caps, provider)
        with stage(seconds, "plan"):
            return plan(checked, spec, provider.caps, provider)

    if spec.dry_run:  # nothing is written and nothing locked: a dry run may run beside a real one
        check_same_campaign(spec)  # what the real run would refuse, the dry run refuses too
        summary = summarise(
            make_plan().rows,
            campaign_id=spec.campaign_id,
            attempt=spec.attempt,
            provider=spec.provider,
            results_uri=None,
            dry_run=True,
        )
        summary.seconds = seconds
        publish(summary, logger)
        return summary.to_dict()

    wait = math.inf if wait_for_lock else 0.0
    with CampaignLock(spec.results, spec.campaign_id, wait=wait, logger=logger) as lock:
        check_same_campaign(spec)
        if storage.exists(done_marker(spec)):
            return finished(spec, attempt_dir(spec), logger).to_dict()
        work = WorkDir.for_run(spec.results, spec.campaign_id, spec.attempt)
        manifest = read_manifest(work.root)
        if manifest is None:
            planned = make_plan()
            with stage(seconds, "write-plan"):
                if spec.attempt == 1:
                    save_spec(spec)
                write_plan(planned, work.root)
                manifest = write_manifest(work.root, planned)
        else:
            logger.info(
                "resuming campaign %s attempt %d from its recorded plan", spec.campaign_id, spec.attempt
            )
        return dispatch(spec, work.root, manifest, logger, seconds, lock=lock).to_dict()
