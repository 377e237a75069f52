"""What becomes of an attempt's rows that are not settled, said at its end (`next_steps`): `failed` ones are
retried (by the retry automation, when this Prefect server has it, else by hand) or sent when a paused attempt
is resumed; rows over the spend cap need a higher cap; `unknown` ones are reconciled.
"""

from __future__ import annotations

import logging

import polars as pl

from smscast import storage
from smscast.campaign import CampaignSpec
from smscast.pricing import OVER_BUDGET, money, units
from smscast.results import AttemptPaths
from smscast.tasks.current import send_tries
from smscast.tasks.report import CampaignSummary

# The automation that schedules the retry deployment on a `smscast.campaign.finished` event with failures
# (deployments/prefect.yaml), and flows/deployed.py retry_campaign's default max_attempts.
RETRY_AUTOMATION = "smscast-retry-on-failure"
RETRY_MAX_ATTEMPTS = 5


def next_steps(summary: CampaignSummary, spec: CampaignSpec, *, completed: bool) -> list[str]:
    """What becomes of rows that are not settled: `failed` ones are retried (by the retry automation, when
    this Prefect server has it, else by hand), or sent when a paused attempt is resumed; `unknown` ones are
    reconciled."""
    from smscast.breaker import CIRCUIT_OPEN

    cid, where = summary.campaign_id, storage.redact(spec.results)
    retry = f"smscast retry --campaign-id {cid} --results {where}"
    lines = []
    if summary.paused:  # unfinished: no retry is scheduled, the resume sends what is not settled
        held = sum(int(r["rows"]) for r in summary.by_reason if r["error_code"] == CIRCUIT_OPEN)
        lines.append(
            f"campaign {cid} is paused: its circuit breaker opened ({summary.paused['cause']}) and {held:,} "
            f"rows were not sent. Once the cause is fixed, run the same `smscast send` again, or `{retry}`: "
            f"either resumes attempt {summary.attempt}, keeps what the provider answered and sends the rest"
        )
    over = summary.over_budget_rows
    if over:
        cost = summary.cost or {}
        cap = money(units(cost.get("max_cost") or 0), cost.get("currency"))
        lines.append(
            f"{over:,} rows not sent: the spend cap ({cap}) was reached. The cap covers the whole campaign; "
            f"`{retry} --max-cost <a higher cap>` sends them"
        )
    failed = summary.by_status.get("failed", 0) - over
    if failed and completed and spec.fallback not in (None, spec.provider):
        # flows/failover.py sends them through the fallback now, in this run, as the next attempt.
        lines.append(f"{failed:,} rows failed transiently: the fallback {spec.fallback} sends them next")
    elif failed and not summary.paused:
        head = f"{failed:,} rows failed transiently"
        # Only a run that completed the attempt emitted the event the automation reacts to.
        scheduled = scheduled_retry() if completed else None
        if not completed:
            lines.append(
                f"{head} (the attempt was complete before this run: a retry, if any, was scheduled when it "
                f"completed); `{retry}` re-sends them"
            )
        elif scheduled is None:
            lines.append(
                f"{head}: no retry is scheduled by this run (this Prefect server has no {RETRY_AUTOMATION} "
                f"automation: a run from the command line?); `{retry}` re-sends them"
            )
        else:
            deployment, after, max_attempts = scheduled
            # A row is sent at most max_attempts times (flows/retry.py): before that many attempts, none can be.
            spent = failed_at_limit(spec, max_attempts) if summary.attempt >= max_attempts else 0
            again = f"`{retry} --max-attempts {max_attempts + 1}` re-sends them"
            if spent >= failed:
                lines.append(
                    f"{head}: the retry deployment {deployment} sends a row at most max_attempts={max_attempts} "
                    f"times and these were sent that often, so it will send nothing; {again}"
                )
            else:
                lines.append(
                    f"{head}: a retry is scheduled (deployment {deployment}, about {after / 60:.0f} min after "
                    f"this run, by the automation {RETRY_AUTOMATION}); it re-sends them with the same "
                    f"idempotency keys as attempt {summary.attempt + 1}. To send them sooner, start that "
                    "scheduled run from the UI"
                    + (
                        f". {spent:,} of them were sent max_attempts={max_attempts} times: {again}"
                        if spent
                        else ""
                    )
                )
    unknown = summary.by_status.get("unknown", 0)
    if unknown:
        lines.append(
            f"{unknown:,} rows are unknown (sent, outcome not known): `smscast reconcile --campaign-id {cid} "
            f"--results {where}` asks the provider what became of them; never re-send them blindly"
        )
    return lines


def failed_at_limit(spec: CampaignSpec, max_attempts: int) -> int:
    """This attempt's `failed` rows (not those the spend cap held back) that were sent `max_attempts` times,
    which a retry leaves out."""
    rows = storage.read_parquet(AttemptPaths.of(spec).dir, columns=["row_index", "status", "error_code"])
    failed = rows.filter(
        (pl.col("status") == "failed") & (pl.col("error_code") != OVER_BUDGET).fill_null(True)
    )
    tries = send_tries(spec.results, spec.campaign_id)
    return failed.join(tries, on="row_index").filter(pl.col("tries") >= max_attempts).height


def scheduled_retry() -> tuple[str, float, int] | None:
    """The retry deployment (`flow/deployment`), the delay in seconds and its max_attempts, when this Prefect
    server has the retry automation enabled: then the event this run emitted schedules it."""
    try:
        from prefect.client.orchestration import get_client
        from prefect.events.actions import RunDeployment

        with get_client(sync_client=True) as client:
            for automation in client.read_automations_by_name(RETRY_AUTOMATION):
                for action in automation.actions if automation.enabled else []:
                    if isinstance(action, RunDeployment) and action.deployment_id is not None:
                        deployment = client.read_deployment(action.deployment_id)
                        flow = client.read_flow(deployment.flow_id)
                        limit = (deployment.parameters or {}).get("max_attempts", RETRY_MAX_ATTEMPTS)
                        name = f"{flow.name}/{deployment.name}"
                        return name, action.schedule_after.total_seconds(), int(limit)
    except Exception:  # no server to ask, or an older one: say what is certain, that a retry can be run
        logging.getLogger(__name__).debug("could not look the retry automation up", exc_info=True)
    return None
