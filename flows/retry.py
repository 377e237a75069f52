"""The retry flow: read a campaign's results, re-send what may be re-sent, write attempt n+1.

What may be re-sent is tasks/current.py `resendable`: `failed` rows, and `unknown` ones where the provider's
idempotency makes a re-send harmless. They go with the same row keys, and `unknown` rows in the same batches
(so that a provider keying whole requests, like sent.dm, recognises them). With `include_undelivered`, accepted
rows whose delivery failed for a reason a re-send can fix (`Capabilities.resend_fixes`, or the codes given) go
too, as new messages: with a key of this attempt (tasks/plan.py RESEND_ATTEMPT), since the provider would take
the old key for the message it already has. It takes the campaign's lock, so it never runs beside the campaign
or another retry of it.

Its run is named `<campaign id> · retry` until it knows its attempt, then `<campaign id> · attempt <n>`, and
it ends in a state named like the campaign flow's (flows/campaign.py `campaign_state`).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import polars as pl
from prefect import flow, get_run_logger

from smscast import storage
from smscast.campaign import CampaignSpec
from smscast.errors import ConfigError
from smscast.flows.campaign import campaign_run_name, finish, run_name
from smscast.lock import CampaignLock
from smscast.providers.registry import make_provider
from smscast.results import CampaignPaths
from smscast.status import Status
from smscast.tasks.current import current_results, current_view, resendable
from smscast.tasks.dispatch import run_attempt
from smscast.tasks.manifest import load_spec, unfinished_attempt
from smscast.tasks.plan import PINNED_KEY, RESEND_ATTEMPT, PlannedCampaign, plan_campaign
from smscast.tasks.policy import apply_policy
from smscast.tasks.report import name_runs, tell
from smscast.tasks.send import shard_runner

PLAN_COLUMNS = ("shard", "batch_seq", "batch_id", "batch_key", "status", "error_code", "error_message")


@flow(name="retry-failed", task_runner=shard_runner(), flow_run_name=campaign_run_name)
def retry_failed(
    campaign_id: str,
    results: str,
    provider: str | None = None,
    base_url: str | None = None,
    max_attempts: int = 5,
    delay_seconds: float = 0.0,
    include_undelivered: bool = False,
    undelivered_codes: list[str] | None = None,
) -> dict[str, Any]:
    logger = get_run_logger()
    name_runs(run_name(campaign_id, None), logger)
    campaign = CampaignPaths(results, campaign_id)
    original = load_spec(campaign)
    if original is None:
        raise ConfigError(
            f"campaign {campaign_id!r} has no recorded parameters under {results}; was it sent there?"
        )
    if delay_seconds > 0:
        logger.info("waiting %.0f s before retrying campaign %s", delay_seconds, campaign_id)
        time.sleep(delay_seconds)
    overrides = {k: v for k, v in {"provider": provider, "base_url": base_url}.items() if v}
    with CampaignLock(results, campaign_id, logger=logger) as lock:
        pending = unfinished_attempt(campaign)
        if pending is not None:
            # An interrupted attempt is finished first, from its own plan and journal: planning a new one
            # beside it would re-send what it had already sent.
            spec = original.model_copy(update={**overrides, "attempt": pending, "dry_run": False})
            name_runs(run_name(campaign_id, pending), logger)
            logger.info("campaign %s: resuming interrupted attempt %d", campaign_id, pending)
            return finish(run_attempt(spec, None, logger, lock=lock).to_dict())
        spec = original.model_copy(update={**overrides, "dry_run": False})
        prov = make_provider(spec.provider, base_url=spec.base_url)
        codes = frozenset(undelivered_codes or prov.caps.resend_fixes) if include_undelivered else frozenset()
        if include_undelivered and not codes:
            logger.warning(
                "campaign %s: %s names no delivery error code a re-send can fix; give --undelivered-code",
                campaign_id,
                prov.caps.name,
            )
        current = current_view(results, campaign_id) if codes else current_results(results, campaign_id)
        last = int(current.get_column("attempt").max())  # type: ignore[arg-type]
        spec = spec.model_copy(update={"attempt": last + 1})
        todo = resendable(current, resend_safe=prov.caps.resend_safe, undelivered_codes=codes)
        counts = dict(current.group_by("status").len().iter_rows())
        if todo.is_empty() or last >= max_attempts:
            if not todo.is_empty():
                tell(
                    logger,
                    logging.WARNING,
                    f"campaign {campaign_id}: {todo.height:,} rows still retriable, but attempt {last} "
                    f"reached max_attempts={max_attempts}: no retry is scheduled; `smscast retry "
                    f"--campaign-id {campaign_id} --results {storage.redact(results)} --max-attempts "
                    f"{last + 1}` re-sends them",
                )
            else:
                tell(logger, logging.INFO, f"campaign {campaign_id}: nothing to retry ({counts})")
            return finish({"campaign_id": campaign_id, "attempt": last, "retried": 0, "by_status": counts})
        name_runs(run_name(campaign_id, last + 1), logger)

        def choose_rows() -> PlannedCampaign:
            """The rows that may be re-sent, as attempt 1 planned them, re-planned as this attempt."""
            rows = _retry_rows(campaign, todo, spec)
            return plan_campaign(rows, spec, prov.caps, prov, extra_groups=[pl.col("_retry_group")])

        return finish(run_attempt(spec, choose_rows, logger, lock=lock).to_dict())


def _retry_rows(campaign: CampaignPaths, todo: pl.DataFrame, spec: CampaignSpec) -> pl.DataFrame:
    """The rows to re-send, with their content as attempt 1 planned it (phone, rendered body, variables), and
    the contact policy applied again: a number opted out since is never messaged again."""
    rows = _plan_rows(campaign, 1).join(
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
        rows.drop([*PLAN_COLUMNS, "_b", "_attempt"], strict=False).with_columns(
            status=pl.lit(None, pl.String),
            error_code=pl.lit(None, pl.String),
            error_message=pl.lit(None, pl.String),
        ),
        spec,
    )
    # An `unknown` row may have been accepted: it is left out rather than recorded `suppressed` ("never sent"),
    # and stays `unknown` for reconcile. A `failed` row never reached the provider: now it is suppressed.
    held_unknown = (
        (pl.col("status") == Status.SUPPRESSED.value) & (pl.col("_was") == Status.UNKNOWN.value)
    ).fill_null(False)
    return rows.filter(~held_unknown).drop("_was")


def _plan_rows(campaign: CampaignPaths, attempt: int) -> pl.DataFrame:
    shards = campaign.attempt(attempt).plan_shards()
    return pl.concat([storage.read_parquet(f) for f in shards], how="diagonal_relaxed")


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
