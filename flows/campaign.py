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

from smscast.campaign import CampaignSpec
from smscast.lock import CampaignLock
from smscast.providers.registry import make_provider
from smscast.tasks.dispatch import run_attempt
from smscast.tasks.load import load_recipients
from smscast.tasks.manifest import check_same_campaign
from smscast.tasks.plan import PlannedCampaign, plan_campaign
from smscast.tasks.report import report, stage
from smscast.tasks.send import shard_runner
from smscast.tasks.validate import validate_recipients

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

    def choose_rows() -> PlannedCampaign:
        """Every row of the source, validated: the attempt's rows."""
        with stage(seconds, "load"):
            recipients = load(spec)
        with stage(seconds, "validate"):
            checked = validate(recipients, spec, provider.caps, provider)
        with stage(seconds, "plan"):
            return plan(checked, spec, provider.caps, provider)

    if spec.dry_run:  # nothing is written and nothing locked: a dry run may run beside a real one
        check_same_campaign(spec)  # what the real run would refuse, the dry run refuses too
        return report(choose_rows().rows, spec, logger, results_uri=None, seconds=seconds).to_dict()

    wait = math.inf if wait_for_lock else 0.0
    with CampaignLock(spec.results, spec.campaign_id, wait=wait, logger=logger) as lock:
        check_same_campaign(spec)
        return run_attempt(spec, choose_rows, logger, lock=lock, seconds=seconds).to_dict()
