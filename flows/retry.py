"""The retry flow: read a campaign's results, re-send what may be re-sent, write attempt n+1.

What may be re-sent is tasks/current.py `resendable`: `failed` rows, and `unknown` ones where the provider's
idempotency makes a re-send harmless. They go with the same row keys, and `unknown` rows in the same batches
(so that a provider keying whole requests, like sent.dm, recognises them). With `include_undelivered`, accepted
rows whose delivery failed for a reason a re-send can fix (`Capabilities.resend_fixes`, or the codes given) go
too, as new messages: with a key of this attempt (tasks/plan.py RESEND_ATTEMPT), since the provider would take
the old key for the message it already has. It takes the campaign's lock, so it never runs beside the campaign
or another retry of it.

`choose_rows` (the rows to send again, with attempt 1's content and the contact policy applied anew) is shared
with the release flow (flows/release.py), which sends `held` rows the same way.

Its run is named `<campaign id> · retry` until it knows its attempt, then `<campaign id> · attempt <n>`, and
it ends in a state named like the campaign flow's (flows/campaign.py `campaign_state`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import Any, Literal

import polars as pl
from prefect import flow, get_run_logger
from pydantic import ValidationError

from smscast import storage
from smscast.campaign import CampaignSpec
from smscast.dask_runner import with_runner
from smscast.errors import ConfigError
from smscast.flows.campaign import FINAL_STATE_RESULT, campaign_run_name, finish, run_name
from smscast.flows.failover import Leg, attempt_spec, retry_legs, run_legs
from smscast.lock import CampaignLock
from smscast.providers.base import Provider
from smscast.results import CampaignPaths
from smscast.status import POLICY, Status
from smscast.tasks.current import current_results, current_view, send_tries
from smscast.tasks.dispatch import Logger, run_attempt
from smscast.tasks.manifest import load_spec, unfinished_attempt
from smscast.tasks.plan import PINNED_KEY, RESEND_ATTEMPT, PlannedCampaign, plan_campaign
from smscast.tasks.policy import apply_policy
from smscast.tasks.report import CampaignSummary, name_runs, tell
from smscast.tasks.send import shard_runner

PLAN_COLUMNS = ("shard", "batch_seq", "batch_id", "batch_key", "status", "error_code", "error_message")


@flow(
    name="retry-failed",
    task_runner=shard_runner(),
    flow_run_name=campaign_run_name,
    persist_result=FINAL_STATE_RESULT,
)
def retry_failed(
    campaign_id: str,
    results: str,
    provider: str | None = None,
    base_url: str | None = None,
    max_attempts: int = 5,
    delay_seconds: float = 0.0,
    include_undelivered: bool = False,
    undelivered_codes: list[str] | None = None,
    max_cost: float | None = None,
    runner: Literal["threads", "dask"] | None = None,
    dask_address: str | None = None,
    dask_workers: int | None = None,
) -> dict[str, Any]:
    """`max_attempts`: the most times any one row is sent (`within_tries`). `max_cost` replaces the campaign's
    spend cap for this run (it needs the campaign's price list)."""
    logger = get_run_logger()
    name_runs(run_name(campaign_id, None), logger)
    campaign = CampaignPaths(results, campaign_id)
    spec = run_spec(recorded_spec(campaign), provider=provider, base_url=base_url, max_cost=max_cost)
    # Where its shards run: the campaign's recorded runner, unless this run names one (smscast/dask_runner.py).
    spec = with_runner(spec, runner, dask_address, dask_workers)
    if delay_seconds > 0:
        logger.info("waiting %.0f s before retrying campaign %s", delay_seconds, campaign_id)
        time.sleep(delay_seconds)
    with CampaignLock(results, campaign_id, logger=logger) as lock:
        resumed = resume_unfinished(spec, logger, lock)
        if resumed is not None:
            return finish(resumed.to_dict())
        current = (
            current_view(results, campaign_id)
            if include_undelivered
            else current_results(results, campaign_id)
        )
        last = int(current.get_column("attempt").max())  # type: ignore[arg-type]
        # Each row goes back through the provider its latest attempt went through (or `provider`, if given):
        # one attempt per provider, the fallback's last (flows/failover.py).
        legs = retry_legs(
            spec,
            current,
            override=provider,
            undelivered=include_undelivered,
            undelivered_codes=undelivered_codes,
            logger=logger,
        )
        legs, spent = within_tries(legs, send_tries(results, campaign_id), max_attempts)
        counts = dict(current.group_by("status").len().iter_rows())
        if spent:
            tell(
                logger,
                logging.WARNING,
                f"campaign {campaign_id}: {spent:,} retriable rows were already sent max_attempts="
                f"{max_attempts} times and are not re-sent; `smscast retry --campaign-id {campaign_id} "
                f"--results {storage.redact(results)} --max-attempts {max_attempts + 1}` re-sends them",
            )
        if not legs:
            if not spent:
                tell(logger, logging.INFO, f"campaign {campaign_id}: nothing to retry ({counts})")
            return finish({"campaign_id": campaign_id, "attempt": last, "retried": 0, "by_status": counts})
        name_runs(run_name(campaign_id, last + 1), logger)
        return finish(run_legs(campaign, spec, legs, last, logger, lock))


def within_tries(legs: list[Leg], tries: pl.DataFrame, max_attempts: int) -> tuple[list[Leg], int]:
    """The legs less their rows already sent `max_attempts` times (`tries`: tasks/current.py `send_tries`),
    and how many rows that left out. Legs left without rows are dropped."""
    kept: list[Leg] = []
    spent = 0
    for leg in legs:
        rows = leg.rows.join(tries, on="row_index", how="left", maintain_order="left")
        under = pl.col("tries").fill_null(0) < max_attempts
        spent += rows.height - (fresh := rows.filter(under).drop("tries")).height
        if not fresh.is_empty():
            kept.append(replace(leg, rows=fresh))
    return kept, spent


def recorded_spec(campaign: CampaignPaths) -> CampaignSpec:
    """The campaign's recorded parameters; ConfigError when it was never sent under these results."""
    original = load_spec(campaign)
    if original is None:
        raise ConfigError(
            f"campaign {campaign.campaign_id!r} has no recorded parameters under {campaign.results}; was it "
            "sent there?"
        )
    return original


def run_spec(
    original: CampaignSpec,
    *,
    provider: str | None,
    base_url: str | None,
    max_cost: float | None,
) -> CampaignSpec:
    """The recorded campaign with this run's overrides, validated (a spend cap needs the campaign's price
    list, and must be positive): ConfigError saying why otherwise."""
    update: dict[str, Any] = {
        k: v for k, v in {"provider": provider, "base_url": base_url, "max_cost": max_cost}.items() if v
    }
    update["dry_run"] = False
    try:
        return CampaignSpec.model_validate({**original.model_dump(), **update})
    except ValidationError as exc:
        reasons = "; ".join(str(e.get("msg", e)) for e in exc.errors())
        raise ConfigError(f"campaign {original.campaign_id!r}: {reasons}") from None


def resume_unfinished(spec: CampaignSpec, logger: Logger, lock: CampaignLock) -> CampaignSummary | None:
    """Finish an interrupted attempt first, from its own plan and journal: planning a new one beside it would
    re-send what it had already sent. Its summary, or None when no attempt was left unfinished."""
    pending = unfinished_attempt(CampaignPaths.of(spec))
    if pending is None:
        return None
    name_runs(run_name(spec.campaign_id, pending), logger)
    logger.info("campaign %s: resuming interrupted attempt %d", spec.campaign_id, pending)
    # Through the provider its plan was made for, whatever this run was asked to use.
    return run_attempt(attempt_spec(spec, pending), None, logger, lock=lock)


def replan(
    campaign: CampaignPaths,
    todo: pl.DataFrame,
    spec: CampaignSpec,
    provider: Provider,
    now: datetime | None = None,
    *,
    check: Callable[[pl.DataFrame], pl.DataFrame] | None = None,
) -> PlannedCampaign:
    """The rows `todo` names, as attempt 1 planned them, re-planned as attempt `spec.attempt` with the contact
    policy applied at `now` (the real time unless given). `check`: what else the rows go through before they
    are cut into batches (a fallback's own validation rules, flows/failover.py)."""
    rows = _retry_rows(campaign, todo, spec, now=now)
    if check is not None:
        rows = check(rows)
    planned = plan_campaign(rows, spec, provider.caps, provider, extra_groups=[pl.col("_retry_group")])
    # The plan names its provider, so that resuming it goes through that one (flows/failover.py attempt_spec).
    return replace(planned, rows=planned.rows.with_columns(provider=pl.lit(provider.caps.name)))


def _retry_rows(
    campaign: CampaignPaths, todo: pl.DataFrame, spec: CampaignSpec, *, now: datetime | None = None
) -> pl.DataFrame:
    """The rows to send again (`todo`: current results), with their content as attempt 1 planned it (phone,
    rendered body, variables) and the contact policy applied again at `now`: a number opted out since is never
    messaged, one inside its quiet hours is held again (with a new `release_at`). A row attempt 1 held is in
    its plan's unsent rows, not its shards; a row re-held by a later attempt still has attempt 1's content."""
    rows = _plan_rows(campaign, 1, unsent=True).join(
        todo.select(
            "row_index",
            pl.col("status").alias("_was"),
            pl.col("batch_id").alias("_b"),
            pl.col("attempt").alias("_attempt"),
        ),
        on="row_index",
    )
    # Unknown rows keep their original batches (same composition) and the key their request carried; failed
    # rows were never accepted and may be re-batched freely; accepted (undelivered) ones are new messages.
    rows = rows.with_columns(
        _retry_group=pl.when(pl.col("_was") == "unknown").then(pl.col("_b")).otherwise(None),
        **{RESEND_ATTEMPT: pl.when(pl.col("_was") == "accepted").then(pl.col("_attempt")).otherwise(None)},
    ).join(_request_keys(campaign, todo), on="row_index", how="left")
    rows = apply_policy(
        rows.drop([*PLAN_COLUMNS, "release_at", "_b", "_attempt"], strict=False).with_columns(
            status=pl.lit(None, pl.String),
            error_code=pl.lit(None, pl.String),
            error_message=pl.lit(None, pl.String),
        ),
        spec,
        now=now,
    )
    # An `unknown` row may have been accepted: it is left out rather than recorded `suppressed` or `held`
    # ("not sent"), and stays `unknown` for reconcile. A `failed` or `held` row never reached the provider: now
    # it is suppressed, or held (again).
    held_unknown = (
        pl.col("status").is_in([s.value for s in POLICY]) & (pl.col("_was") == Status.UNKNOWN.value)
    ).fill_null(False)
    return rows.filter(~held_unknown).drop("_was")


def _plan_rows(campaign: CampaignPaths, attempt: int, *, unsent: bool = False) -> pl.DataFrame:
    """An attempt's planned rows: those it was to send, and with `unsent` those it was not (held among them)."""
    paths = campaign.attempt(attempt)
    files = paths.plan_shards()
    if unsent and storage.exists(paths.plan_unsent):
        files.append(paths.plan_unsent)
    return pl.concat([storage.read_parquet(f) for f in files], how="diagonal_relaxed")


def _request_keys(campaign: CampaignPaths, todo: pl.DataFrame) -> pl.DataFrame:
    """row_index -> the key of the request that left it `unknown`, for requests re-sent whole: the planned
    batch's key, plus the "-L"/"-R" suffixes bisection added (tasks/plan.py PINNED_KEY says why). A request
    only part of which is unknown cannot be re-sent as the same request, and keeps a key of its own."""
    unknown = todo.filter(pl.col("status") == "unknown").select("row_index", "attempt", "batch_id")
    frames = [pl.DataFrame(schema={"row_index": pl.Int64, PINNED_KEY: pl.String})]
    for (attempt,), part in unknown.partition_by("attempt", as_dict=True).items():
        plan = _plan_rows(campaign, int(attempt)).select(
            "row_index", pl.col("batch_id").alias("_planned"), "batch_key"
        )
        sent = pl.concat(
            [storage.read_parquet(f) for f in campaign.result_parts()[int(attempt)]],
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
