"""The campaign flow: load → validate → policy → plan → send → persist → report.

Re-running a campaign id resumes it: a finished attempt is reported, not re-sent; an interrupted one reuses
its written plan and skips the shards whose results are recorded. A lease lock (smscast/lock.py) keeps a
second run of the same campaign from sending while the first is alive.

A campaign's runs are found and read by its id: runs are named `<campaign id> · attempt <n>` (`run_name`;
`campaign_run_name` is the `flow_run_name` for any flow taking a campaign or a `campaign_id`), and a run ends in a
state named for its outcome (`campaign_state`): "Completed with failures" when `failed` rows remain (a retry
re-sends them), "Completed with unknown rows" when `unknown` ones do (reconcile settles them), "Dry run" when
nothing was sent, else plain "Completed".
"""

from __future__ import annotations

import math
from typing import Any, cast

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE
from prefect.client.schemas.objects import State
from prefect.context import FlowRunContext
from prefect.states import Completed

from smscast.campaign import CampaignSpec
from smscast.flows.failover import check_fallback, run_with_failover
from smscast.lock import CampaignLock
from smscast.providers.registry import make_provider
from smscast.step_log import stage
from smscast.tasks.load import load_recipients
from smscast.tasks.manifest import check_same_campaign
from smscast.tasks.plan import PlannedCampaign, plan_campaign
from smscast.tasks.policy import apply_policy
from smscast.tasks.report import name_runs, report
from smscast.tasks.send import shard_runner
from smscast.tasks.validate import validate_recipients

# No cache policy: hashing a million-row frame for a cache key would cost more than the step itself.
load = task(name="load", cache_policy=NONE, persist_result=False)(load_recipients)
validate = task(name="validate", cache_policy=NONE, persist_result=False)(validate_recipients)
policy = task(name="policy", cache_policy=NONE, persist_result=False)(apply_policy)
plan = task(name="plan", cache_policy=NONE, persist_result=False)(plan_campaign)

FAILURES = "Completed with failures"
UNKNOWN_ROWS = "Completed with unknown rows"
DRY_RUN = "Dry run"


def run_name(campaign_id: str, attempt: int | None, *, dry_run: bool = False) -> str:
    """`spring-sale · attempt 2`; `spring-sale · retry` while a retry does not know its attempt yet."""
    name = f"{campaign_id} · " + (f"attempt {attempt}" if attempt is not None else "retry")
    return f"{name} · dry run" if dry_run else name


def campaign_run_name() -> str:
    """A `flow_run_name` for a flow whose parameters hold a campaign: a parameter with a `campaign_id` field
    (a CampaignSpec, the UI's CampaignForm, or such a dict), or a `campaign_id` string (a retry: its attempt
    is known only once it has read the results). A wrapper that derives the campaign id (a night's date, a
    file's hash) gets its prefix here; the campaign flow it runs renames it once the id is known
    (tasks/report.py `name_runs`)."""
    ctx = FlowRunContext.get()
    params: dict[str, Any] = (ctx.parameters if ctx is not None else None) or {}
    campaign_id = params.get("campaign_id")
    if isinstance(campaign_id, str) and campaign_id:
        return run_name(campaign_id, None)
    for value in params.values():
        cid, attempt, dry_run = (_field(value, k) for k in ("campaign_id", "attempt", "dry_run"))
        if isinstance(cid, str) and cid:
            return run_name(cid, attempt if isinstance(attempt, int) else 1, dry_run=dry_run is True)
    return ctx.flow.name if ctx is not None and ctx.flow is not None else "smscast"


def _field(value: Any, name: str) -> Any:
    return value.get(name) if isinstance(value, dict) else getattr(value, name, None)


FINAL_STATE_RESULT = True  # `persist_result` of the flows that end in `finish` (which says why)


def campaign_state(result: dict[str, Any]) -> State[dict[str, Any]]:
    """The final state a campaign's (or retry's) result calls for: COMPLETED whatever the rows (the run did its
    work), named for what is left to do, with the counts as its message. `result` is its data."""
    counts: dict[str, int] = result.get("by_status") or {}
    failed, unknown = counts.get("failed", 0), counts.get("unknown", 0)
    message = " · ".join(f"{status} {n:,}" for status, n in counts.items() if n)
    if result.get("dry_run"):
        return Completed(name=DRY_RUN, message=f"nothing was sent: {message}", data=result)
    if failed:
        name = FAILURES
    elif unknown:
        name = UNKNOWN_ROWS
    else:
        return Completed(message=message, data=result)
    return Completed(name=name, message=message, data=result)


def finish(result: dict[str, Any]) -> dict[str, Any]:
    """What a flow returns to end in `campaign_state(result)`: Prefect makes a State a flow returns its final
    state, and hands whoever called the flow that state's data, so the caller still gets `result`. Typed
    as the dict for that reason (a deployment's wrapper flow ends the same way: `return finish(...)`).

    Every flow that ends here is declared with `persist_result=True` (FINAL_STATE_RESULT). When the API refuses
    the final state because it already holds it (the engine proposed it again after its first answer was lost,
    seen on a loaded machine), the engine reads the result from the API's copy of the state, which has only
    what was stored: without a stored result, a campaign that completed failed with MissingResult. The
    result is the summary, a few hundred bytes. Tasks set `persist_result=False`, since they would inherit the
    flow's default and they return whole frames."""
    return cast(dict[str, Any], campaign_state(result))


@flow(
    name="send-campaign",
    task_runner=shard_runner(),
    flow_run_name=campaign_run_name,
    persist_result=FINAL_STATE_RESULT,
)
def send_campaign(spec: CampaignSpec, wait_for_lock: bool = False) -> dict[str, Any]:
    """`wait_for_lock`: if another live run is sending this campaign, wait for it rather than fail."""
    logger = get_run_logger()
    name_runs(run_name(spec.campaign_id, spec.attempt, dry_run=spec.dry_run), logger)
    provider = make_provider(spec.provider, base_url=spec.base_url, require_key=not spec.dry_run)
    provider.validate_spec(spec)
    check_fallback(spec)  # a fallback that could not take the campaign is refused before anything is sent
    seconds: dict[str, float] = {}

    def choose_rows() -> PlannedCampaign:
        """Every row of the source, validated, less those the contact policy holds back: the attempt's rows."""
        with stage(seconds, "load"):
            recipients = load(spec)
        with stage(seconds, "validate"):
            checked = validate(recipients, spec, provider.caps, provider)
        with stage(seconds, "policy"):
            checked = policy(checked, spec)
        with stage(seconds, "plan"):
            return plan(checked, spec, provider.caps, provider)

    if spec.dry_run:  # nothing is written and nothing locked: a dry run may run beside a real one
        check_same_campaign(spec)  # what the real run would refuse, the dry run refuses too
        return finish(report(choose_rows().rows, spec, logger, results_uri=None, seconds=seconds).to_dict())

    wait = math.inf if wait_for_lock else 0.0
    with CampaignLock(spec.results, spec.campaign_id, wait=wait, logger=logger) as lock:
        check_same_campaign(spec)
        # With a fallback, what the provider never accepted then goes through it (flows/failover.py).
        return finish(run_with_failover(spec, choose_rows, logger, lock=lock, seconds=seconds))
