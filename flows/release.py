"""The release flow: send a campaign's `held` rows (quiet hours) once their window is open, as the next attempt.

A row the contact policy held (tasks/policy.py) is in its attempt's unsent rows with `release_at`, when its
quiet hours end. A release takes the campaign's lock (waiting for it: an overlapping release waits, then finds
nothing left), resumes an unfinished attempt first as the retry flow does, and reads the current view (the
latest attempt per row): the rows still `held` whose `release_at` has come go out as attempt n+1, with attempt
1's content and the same row keys, the policy applied again at this moment (flows/retry.py `replan`): a number
that opted out since is suppressed, one still in quiet hours is held again with a new `release_at`. The rows
not yet due are left out of the attempt and stay held. So a row is released once, however many releases run.

Under a Prefect server that has the release deployment (`RELEASE_DEPLOYMENT`, deployments/prefect.yaml), every
attempt that leaves rows held schedules a run of it at the earliest `release_at` (`release_steps`, called at
the end of tasks/dispatch.py `run_attempt`), and a release that finds nothing due schedules the next one: held
rows go out with nobody watching. The run's idempotency key is (campaign, the attempt that left the earliest
rows held, their release time), so reporting or resuming that attempt again finds the run already there.
Without such a server (a command-line run on Prefect's temporary server) the lines say what to run instead.
"""

from __future__ import annotations

import logging
import math
import uuid
from datetime import UTC, datetime
from typing import Any, Literal, cast

import polars as pl
from prefect import flow, get_run_logger
from prefect.client.schemas.objects import FlowRun
from prefect.context import FlowRunContext

from smscast import storage
from smscast.campaign import CampaignSpec
from smscast.dask_runner import with_runner
from smscast.flows.campaign import FINAL_STATE_RESULT, finish, run_name
from smscast.flows.retry import recorded_spec, replan, resume_unfinished, run_spec
from smscast.lock import CampaignLock
from smscast.providers.registry import make_provider
from smscast.results import CampaignPaths
from smscast.status import Status
from smscast.tasks.current import current_results
from smscast.tasks.dispatch import Logger, run_attempt
from smscast.tasks.manifest import load_spec
from smscast.tasks.plan import PlannedCampaign
from smscast.tasks.report import name_runs, tell, this_run, user_run
from smscast.tasks.send import shard_runner

__all__ = ["RELEASE_DEPLOYMENT", "due_rows", "held_rows", "release_held", "release_steps", "schedule_release"]

# The deployment a campaign schedules its release on (deployments/prefect.yaml: flows/deployed.py
# release_campaign, deployment `when-due`).
RELEASE_DEPLOYMENT = "release-campaign/when-due"
HELD = Status.HELD.value


def now_utc() -> datetime:
    """The time a release decides what is due by (tests replace it; everything else uses the real clock)."""
    return datetime.now(UTC)


def release_run_name() -> str:
    """`spring-sale · release` until the run knows its attempt (then `run_name` renames it)."""
    ctx = FlowRunContext.get()
    campaign_id = ((ctx.parameters if ctx is not None else None) or {}).get("campaign_id")
    return f"{campaign_id} · release" if isinstance(campaign_id, str) and campaign_id else "release"


def held_rows(current: pl.DataFrame) -> pl.DataFrame:
    """The rows of a campaign's current results that are still held."""
    return current.filter(pl.col("status") == HELD)


def due_rows(held: pl.DataFrame, now: datetime) -> pl.DataFrame:
    """The held rows whose window is open at `now` (a row with no `release_at` is for the policy to decide)."""
    return held.filter(pl.col("release_at").is_null() | (pl.col("release_at") <= now))


@flow(
    name="release-held",
    task_runner=shard_runner(),
    flow_run_name=release_run_name,
    persist_result=FINAL_STATE_RESULT,
)
def release_held(
    campaign_id: str,
    results: str,
    provider: str | None = None,
    base_url: str | None = None,
    max_cost: float | None = None,
    runner: Literal["threads", "dask"] | None = None,
    dask_address: str | None = None,
    dask_workers: int | None = None,
) -> dict[str, Any]:
    """Send the campaign's held rows whose window is open now, as its next attempt; leave the others held.
    `provider`, `base_url` and `max_cost` (the spend cap) replace the recorded campaign's for this run."""
    logger = get_run_logger()
    campaign = CampaignPaths(results, campaign_id)
    spec = run_spec(recorded_spec(campaign), provider=provider, base_url=base_url, max_cost=max_cost)
    # Where its shards run: the campaign's recorded runner, unless this run names one (smscast/dask_runner.py).
    spec = with_runner(spec, runner, dask_address, dask_workers)
    with CampaignLock(results, campaign_id, wait=math.inf, logger=logger) as lock:
        resume_unfinished(spec, logger, lock)
        now = now_utc()
        current = current_results(results, campaign_id)
        last = int(current.get_column("attempt").max())  # type: ignore[arg-type]
        held = held_rows(current)
        due = due_rows(held, now)
        counts = dict(current.group_by("status").len().iter_rows())
        if due.is_empty():
            name_runs(f"{campaign_id} · release (nothing due)", logger)
            if held.is_empty():
                tell(logger, logging.INFO, f"campaign {campaign_id}: no rows are held ({counts})")
            else:
                tell(logger, logging.INFO, f"campaign {campaign_id}: no held row is due at {_utc(now)}")
                for line in schedule_release(spec.model_copy(update={"attempt": last}), held, logger):
                    tell(logger, logging.INFO, line)
            return finish(
                {"campaign_id": campaign_id, "attempt": last, "rows": 0, "released": 0, "by_status": counts}
            )
        spec = spec.model_copy(update={"attempt": last + 1})
        name_runs(run_name(campaign_id, last + 1), logger)
        tell(
            logger,
            logging.INFO,
            f"campaign {campaign_id}: releasing {due.height:,} held rows due by {_utc(now)} as attempt "
            f"{last + 1}; {held.height - due.height:,} not yet due stay held",
        )
        prov = make_provider(spec.provider, base_url=spec.base_url)

        def choose_rows() -> PlannedCampaign:
            return replan(campaign, due, spec, prov, now=now)

        summary = run_attempt(spec, choose_rows, logger, lock=lock)
        if not summary.by_status.get(HELD):
            # run_attempt's release_steps schedules for an attempt that left rows held; this one left none,
            # but rows that were not due may still be.
            for line in schedule_release(spec, held_rows(current_results(results, campaign_id)), logger):
                tell(logger, logging.INFO, line)
        return finish(summary.to_dict())


def release_steps(spec: CampaignSpec, results: pl.DataFrame, logger: Logger) -> list[str]:
    """What becomes of the rows attempt `spec.attempt` left held (`results`: its rows): a release scheduled at
    the earliest `release_at` of the campaign's held rows, under a Prefect server that has the release
    deployment, else the command that sends them. The lines to tell the user; none when it held nothing."""
    if "status" not in results.columns or results.filter(pl.col("status") == HELD).is_empty():
        return []
    # The campaign's held rows, not only this attempt's: a release attempt leaves out rows not yet due, which
    # stay held by an earlier attempt, and they may be due before this one's.
    return schedule_release(spec, held_rows(current_results(spec.results, spec.campaign_id)), logger)


def schedule_release(spec: CampaignSpec, held: pl.DataFrame, logger: Logger) -> list[str]:
    """Schedule the release of `held` (the campaign's held rows) at their earliest `release_at`, or say what to
    run when no Prefect server here has the release deployment. The lines to tell the user."""
    if held.is_empty():
        return []
    first = cast(datetime | None, held.get_column("release_at").min()) or now_utc()
    last = cast(datetime | None, held.get_column("release_at").max()) or first
    span = f"{held.height:,} rows are held (quiet hours) until {_utc(first)}" + (
        f", the last until {_utc(last)}" if last > first else ""
    )
    command = f"smscast release --campaign-id {spec.campaign_id} --results {storage.redact(spec.results)}"
    later = f" (again after {_utc(last)} for the last)" if last > first else ""
    try:
        run = _schedule(spec, held, first)
    except Exception as exc:  # the server went away, or refused: the command still sends them
        logger.warning("could not schedule the release of campaign %s: %s", spec.campaign_id, exc)
        return [
            f"{span}: no release could be scheduled ({type(exc).__name__}); `{command}` sends them{later}"
        ]
    if run is None:
        return [
            f"{span}: no release is scheduled by this run (this Prefect server has no {RELEASE_DEPLOYMENT} "
            f"deployment: a run from the command line?); `{command}` sends them after {_utc(first)}{later}"
        ]
    return [
        f"{span}: a release is scheduled (deployment {RELEASE_DEPLOYMENT}, flow run {run.name!r} at "
        f"{_utc(first)}); it sends them with the same idempotency keys once their window is open, and "
        "schedules itself again for rows still held then"
    ]


def _schedule(spec: CampaignSpec, held: pl.DataFrame, when: datetime) -> FlowRun | None:
    """A scheduled run of the release deployment at `when`; None when there is no such deployment here."""
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL

    # Prefect's temporary server (no API URL configured) ends with the command that started it.
    if not PREFECT_API_URL.value():
        return None
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        try:
            client.read_deployment_by_name(RELEASE_DEPLOYMENT)
        except ObjectNotFound:
            return None
    at_first = held.filter(pl.col("release_at") == when).get_column("attempt")
    attempt = int(cast(int, at_first.max())) if at_first.len() else spec.attempt
    key = release_key(spec.campaign_id, attempt, when)
    parameters = {"campaign_id": spec.campaign_id, "results": spec.results, **_overrides(spec)}

    def create(idempotency_key: str) -> FlowRun:
        return cast(
            FlowRun,
            run_deployment(
                RELEASE_DEPLOYMENT,
                parameters=parameters,
                scheduled_time=when,
                flow_run_name=f"{spec.campaign_id} · release",
                timeout=0,  # schedule it and return: the worker runs it when it is due
                idempotency_key=idempotency_key,
                as_subflow=False,  # its own run, not a child of the attempt that held the rows
            ),
        )

    run = create(key)
    mine = {r.id for r in (this_run(), user_run()) if r is not None}
    if run.id in mine or (run.state is not None and run.state.is_final()):
        # The run under this key is this very run (a release started before its rows were due), or one that
        # ended without releasing them (it failed): the rows need another.
        me = next(iter(sorted(str(m) for m in mine)), None) or uuid.uuid4().hex
        run = create(f"{key}:after:{me}")
    return run


def release_key(campaign_id: str, attempt: int, when: datetime) -> str:
    """One scheduled release per (campaign, attempt that left the rows held, release time): an attempt reported
    or resumed again finds its release already scheduled (Prefect returns the run created under the key)."""
    return f"smscast-release:{campaign_id}:a{attempt}:{when.astimezone(UTC):%Y%m%dT%H%M%SZ}"


def _overrides(spec: CampaignSpec) -> dict[str, Any]:
    """The settings of this attempt that differ from the recorded campaign's, for the release to use too (a
    retry's provider or spend cap); the release reads the rest from the record, and the endpoint from the
    worker's environment (the deployment takes no base URL, as the retry's does not)."""
    recorded = load_spec(CampaignPaths.of(spec))
    fields = ("provider", "max_cost")
    return {
        f: getattr(spec, f) for f in fields if recorded is None or getattr(spec, f) != getattr(recorded, f)
    }


def _utc(when: datetime) -> str:
    return f"{when.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"
