"""Failover: the rows a campaign's provider provably never took go through its fallback, in the same run.

With `spec.fallback`, once an attempt through the campaign's provider (the primary) is complete, the rows it
left `failed` (never accepted: retries spent on 5xx or dropped connections, a 429 budget spent, a transient
refusal, an open circuit, a campaign stop) go through the fallback as the next attempt, under the same lock:
re-planned from attempt 1's content with the contact policy applied again (flows/retry.py), validated again
with the fallback's rules (a row it refuses ends `invalid` with its reason), batched in its sizes and
minimums, journalled, resumable and sealed like any attempt; their results name the fallback (`provider`).
Rows in doubt (`unknown`) never go, nor rows the spend cap held back (tasks/current.py `never_accepted`).

The fallback takes its endpoint and key from its own settings (SMSCAST_<FALLBACK>_BASE_URL / _API_KEY), its
sender from `fallback_sender` (else the campaign's, where it needs one), its rate, concurrency, timeout and
batch size from its capabilities: the campaign's were chosen for the primary, and so is a provider template
(the fallback gets the text). A plan names its provider, so a resume goes through it (`attempt_spec`).

Retry and reconcile follow each row's provider (its latest attempt's; reconcile groups rows by it already). A
retry runs one attempt per provider (`retry_legs`, `run_legs`) rather than one attempt of mixed batches: the
send engine, the journal's mode, the limiter, the circuit breaker and the spend cap's budget all work per
attempt with one provider, and stay untouched; the cost is an attempt number per provider. The primary's goes
first, so what it fails again joins the fallback's own rows in the fallback's attempt.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import polars as pl

from smscast import storage
from smscast.campaign import CampaignSpec
from smscast.errors import CampaignStopError, ConfigError
from smscast.lock import CampaignLock
from smscast.phone import FLOAT_MARK
from smscast.provider_specs import fallback_spec, provider_spec
from smscast.providers.base import Provider
from smscast.providers.registry import make_provider, provider_class
from smscast.results import AttemptPaths, CampaignPaths
from smscast.status import Status
from smscast.tasks.current import current_results, never_accepted, planned_provider, resendable
from smscast.tasks.dispatch import Logger, run_attempt
from smscast.tasks.manifest import read_manifest
from smscast.tasks.plan import PlannedCampaign
from smscast.tasks.report import (
    CampaignSummary,
    artifact_key,
    publish_artifact,
    render,
    summarise,
    summary_markdown,
    tell,
)
from smscast.tasks.validate import quarantine, rules


def check_fallback(spec: CampaignSpec) -> None:
    """Before anything is sent: ConfigError if the fallback could not take the campaign (no key, no endpoint,
    a sender or content it refuses). A dry run needs no key, as for the primary."""
    if spec.fallback is None:
        return
    fb = fallback_spec(spec)
    try:
        make_provider(fb.provider, require_key=not spec.dry_run).validate_spec(fb)
    except ConfigError as exc:
        hint = " (the fallback's sender is --fallback-sender, else --sender)" if "sender" in str(exc) else ""
        raise ConfigError(f"--fallback {spec.fallback}: {exc}{hint}") from None


def attempt_spec(spec: CampaignSpec, attempt: int) -> CampaignSpec:
    """`spec` for resuming `attempt`: through the provider its plan was made for, whatever this run was asked
    to use (that plan's batches, keys and journal are that provider's)."""
    name = planned_provider(CampaignPaths.of(spec).attempt(attempt))
    base = spec if name is None else provider_spec(spec, name)
    return base.model_copy(update={"attempt": attempt})


# ---- which rows, and how they are planned -------------------------------------------------------------------


def revalidated(rows: pl.DataFrame, spec: CampaignSpec, provider: Provider) -> pl.DataFrame:
    """Rows re-planned for `provider` (flows/retry.py `_retry_rows`), checked against its own rules: those it
    would refuse become `invalid` with its reasons. Rows the policy caught are left as they are, and so are
    `unknown` ones (`_retry_group` set): they went to this very provider, which may hold them."""
    check = (pl.col("status").is_null() & pl.col("_retry_group").is_null()).fill_null(False)
    todo = rows.filter(check)
    if todo.is_empty():
        return rows
    # A float phone never reaches a plan (validation refused it), so the float rule has nothing to find.
    todo = todo.with_columns(pl.lit(False).alias(FLOAT_MARK))
    checked = quarantine(todo, rules(spec, provider.caps, provider, todo.columns, todo.columns))
    return pl.concat([checked.drop(FLOAT_MARK), rows.filter(~check)], how="diagonal_relaxed").sort(
        "row_index"
    )


def plan_for(
    campaign: CampaignPaths,
    todo: pl.DataFrame,
    spec: CampaignSpec,
    provider: Provider,
    now: datetime | None = None,
) -> PlannedCampaign:
    """The rows `todo` names as attempt `spec.attempt` through `provider`, validated with its rules and cut
    into its batches; the plan names the provider."""
    from smscast.flows.retry import replan  # flows/retry.py imports this module

    return replan(campaign, todo, spec, provider, now, check=lambda rows: revalidated(rows, spec, provider))


# ---- running it ---------------------------------------------------------------------------------------------


def run_with_failover(
    spec: CampaignSpec,
    choose_rows: Callable[[], PlannedCampaign],
    logger: Logger,
    *,
    lock: CampaignLock,
    seconds: dict[str, float] | None = None,
) -> dict[str, Any]:
    """The campaign flow's attempt (`run_attempt`), then, with a fallback, the failover of what its provider
    never accepted. Without a fallback exactly `run_attempt`. The flow's result: the attempt's summary, or
    after a failover one of the whole campaign."""
    if spec.fallback is None:
        return run_attempt(spec, choose_rows, logger, lock=lock, seconds=seconds).to_dict()
    first, stopped = _primary(
        spec, lambda: run_attempt(spec, choose_rows, logger, lock=lock, seconds=seconds), logger
    )
    return _then_fail_over(spec, first, stopped, logger, lock, whole=True)


def _primary(
    spec: CampaignSpec, run: Callable[[], CampaignSummary], logger: Logger
) -> tuple[list[CampaignSummary], CampaignStopError | None]:
    """Run an attempt through the campaign's provider; a stop that leaves it complete is kept, not raised,
    for the fallback to take its rows first."""
    try:
        return [run()], None
    except CampaignStopError as exc:
        if not sealed_after_stop(spec, exc, logger):
            raise
        return [], exc


def _then_fail_over(
    spec: CampaignSpec,
    done: list[CampaignSummary],
    stopped: CampaignStopError | None,
    logger: Logger,
    lock: CampaignLock,
    *,
    also: pl.DataFrame | None = None,
    whole: bool = False,
) -> dict[str, Any]:
    """After the attempts `done`: the failover (`fail_over`), then the run's result: the one attempt's summary,
    or one of what they all sent; `whole` (the campaign flow): of the whole campaign, once it has more than one
    attempt (a re-run reports what its failover did too). The primary's stop is raised only when no failover
    took its rows."""
    after = fail_over(spec, logger, lock, also=also)
    if after is None:
        if stopped is not None:
            raise stopped
    else:
        done = [*done, after]
        if stopped is not None:
            tell(logger, logging.WARNING, f"campaign {spec.campaign_id}: {spec.provider} stopped ({stopped})")
    attempts = sorted(CampaignPaths.of(spec).result_parts()) if whole else [s.attempt for s in done]
    if len(attempts) == 1 and len(done) == 1:
        return done[0].to_dict()
    return merged(spec, attempts, logger)


def sealed_after_stop(spec: CampaignSpec, stop: CampaignStopError, logger: Logger) -> bool:
    """Whether the primary's attempt that raised `stop` is complete, so that its rows may go to the fallback.
    A campaign stop seals it before raising; an open circuit pauses it (smscast/breaker.py) and is completed
    here: with a fallback, the rows the circuit kept back go through the fallback now, not a later resume."""
    paths = AttemptPaths.of(spec)
    if storage.exists(paths.done):
        return True
    from smscast.breaker import CIRCUIT_OPEN

    return stop.code == CIRCUIT_OPEN and complete_paused(spec, logger)


def complete_paused(spec: CampaignSpec, logger: Logger) -> bool:
    """Seal an attempt its circuit breaker paused: a shard without a results part gets its paused view (its
    answered rows, and those kept back `failed` with `circuit_open`) as its part; then `_SUCCESS`. False, with
    nothing changed, when a shard has neither: only resuming the attempt can complete its record."""
    from smscast.breaker import paused_view
    from smscast.tasks.persist import persist_results
    from smscast.tasks.send import shard_journal

    paths = AttemptPaths.of(spec)
    manifest = read_manifest(paths)
    if manifest is None:
        return False
    parts = {s.shard: paths.part(s.shard) for s in manifest.shards}
    views = {n: paused_view(paths, n) for n, part in parts.items() if not storage.exists(part)}
    if not all(storage.exists(v) for v in views.values()):
        logger.warning("campaign %s: a paused shard recorded nothing; no failover", spec.campaign_id)
        return False
    for shard, view in views.items():
        storage.write_parquet_once(storage.read_parquet(view), paths.part(shard))
        shard_journal(paths, shard, write_ahead=False).discard()  # the part is the record now
    persist_results.fn(spec, manifest.shards)  # the unsent part, then _SUCCESS
    return True


def fail_over(
    spec: CampaignSpec, logger: Logger, lock: CampaignLock, *, also: pl.DataFrame | None = None
) -> CampaignSummary | None:
    """After the campaign's provider's attempt: finish an interrupted attempt first (a failover the last run
    did not complete resumes through the fallback), then send through the fallback, as the next attempt, the
    rows `never_accepted` leaves, and `also` (current rows a retry re-sends through the fallback). The
    attempt's summary; None when there was nothing to send."""
    from smscast.flows.retry import resume_unfinished  # flows/retry.py imports this module

    if spec.fallback is None or spec.fallback == spec.provider:
        return None
    resumed = resume_unfinished(spec, logger, lock)
    campaign = CampaignPaths.of(spec)
    current = current_results(spec.results, spec.campaign_id)
    sealed = {n for n in campaign.result_parts() if storage.exists(campaign.attempt(n).done)}
    todo = never_accepted(current, spec.provider, sealed)
    if also is not None and not also.is_empty():
        todo = pl.concat([also.select(todo.columns), todo]).unique("row_index", keep="last")
    if todo.is_empty():
        return resumed
    last = int(current.get_column("attempt").max())  # type: ignore[arg-type]
    fb = fallback_spec(spec).model_copy(update={"attempt": last + 1})
    counts = todo.group_by("provider", "error_code").len().sort("len", descending=True).rows()
    what = ", ".join(f"{n:,} {code} from {name}" for name, code, n in counts)
    tell(
        logger,
        logging.WARNING,
        f"campaign {spec.campaign_id}: attempt {fb.attempt} via {fb.provider}: {what}",
    )
    prov = make_provider(fb.provider)
    return run_attempt(fb, lambda: plan_for(campaign, todo, fb, prov), logger, lock=lock)


# ---- retries: one attempt per provider ----------------------------------------------------------------------


@dataclass(frozen=True)
class Leg:
    """One provider's share of a retry: the spec it sends with (its attempt not set yet) and its rows."""

    spec: CampaignSpec
    rows: pl.DataFrame


def retry_legs(
    spec: CampaignSpec,
    current: pl.DataFrame,
    *,
    override: str | None,
    undelivered: bool,
    undelivered_codes: list[str] | None,
    logger: Logger,
) -> list[Leg]:
    """The rows a retry re-sends, by the provider that sends them: each row's own (its latest attempt's),
    the campaign's provider first and its fallback last; or, with `override` (`--provider`), that one for
    every row, except `unknown` rows of another provider, which only the provider that may hold them can
    recognise by their keys (they stay for reconcile). `undelivered`: accepted rows whose delivery failed
    with one of `undelivered_codes` (else each provider's `resend_fixes`) go too (`current` is then a
    current_view)."""
    names = {str(n) for n in current.get_column("provider").drop_nulls()}
    order = sorted(names, key=lambda n: (n != spec.provider, n == spec.fallback, n))
    groups = {n: current.filter(pl.col("provider") == n) for n in order} if override is None else {}
    legs = []
    for name, part in (groups or {str(override): current}).items():
        caps = provider_class(name).caps
        codes = frozenset(undelivered_codes or caps.resend_fixes) if undelivered else frozenset()
        if undelivered and not codes:
            logger.warning(
                "campaign %s: %s names no delivery error code a re-send can fix; give --undelivered-code",
                spec.campaign_id,
                name,
            )
        rows = resendable(part, resend_safe=caps.resend_safe, undelivered_codes=codes)
        elsewhere = (pl.col("status") == Status.UNKNOWN.value) & (pl.col("provider") != name)
        if kept := rows.filter(elsewhere).height:
            logger.warning("%d unknown rows of other providers are not re-sent through %s", kept, name)
            rows = rows.filter(~elsewhere)
        if not rows.is_empty():
            legs.append(Leg(provider_spec(spec, name), rows))
    return legs


def run_legs(
    campaign: CampaignPaths,
    spec: CampaignSpec,
    legs: list[Leg],
    last: int,
    logger: Logger,
    lock: CampaignLock,
) -> dict[str, Any]:
    """A retry's legs as attempts `last`+1, … (the fallback's joined by what the others fail again, through
    `fail_over`). The result: the one attempt's summary, or one of the rows all of them sent."""
    from smscast.flows.retry import replan  # flows/retry.py imports this module

    fallback = spec.fallback if spec.fallback != spec.provider else None
    done: list[CampaignSummary] = []
    stopped: CampaignStopError | None = None
    also: pl.DataFrame | None = None
    n = last
    for leg in legs:
        if fallback is not None and leg.spec.provider == fallback:
            also = leg.rows  # sent with what the campaign's provider fails again, in one attempt
            continue
        n += 1
        s = leg.spec.model_copy(update={"attempt": n})
        prov = make_provider(s.provider, base_url=s.base_url)

        def run(s: CampaignSpec = s, rows: pl.DataFrame = leg.rows, p: Provider = prov) -> CampaignSummary:
            return run_attempt(s, lambda: replan(campaign, rows, s, p), logger, lock=lock)

        if fallback is None or s.provider != spec.provider:
            done.append(run())
            continue
        ran, stopped = _primary(s, run, logger)
        done += ran
    if fallback is None:
        return done[0].to_dict() if len(done) == 1 else merged(spec, [d.attempt for d in done], logger)
    return _then_fail_over(spec, done, stopped, logger, lock, also=also)


def merged(spec: CampaignSpec, attempts: list[int], logger: Logger) -> dict[str, Any]:
    """One summary of the rows whose latest attempt is among `attempts` (settlements applied), with each
    provider's counts: what several attempts of one run did, told and published as the campaign's summary."""
    current = current_results(spec.results, spec.campaign_id)
    rows = current.filter(pl.col("attempt").is_in(attempts))
    order = rows.group_by("provider").agg(pl.col("attempt").min()).sort("attempt", "provider")
    providers = [str(p) for p in order.get_column("provider").to_list() if p is not None]
    summary = summarise(
        rows,
        campaign_id=spec.campaign_id,
        attempt=max(attempts),
        provider=" + ".join(providers),
        results_uri=CampaignPaths.of(spec).dataset,
    )
    by_provider: dict[str, dict[str, int]] = {}
    for provider, status, count in (
        rows.group_by("provider", "status").len().sort("provider", "status").rows()
    ):
        by_provider.setdefault(str(provider), {})[str(status)] = int(count)
    lines = [f"    {p:<12} " + "  ".join(f"{s}: {c:,}" for s, c in n.items()) for p, n in by_provider.items()]
    tell(logger, logging.INFO, "\n".join([render(summary), f"  by provider (attempts {attempts}):", *lines]))
    publish_artifact(
        "markdown",
        summary_markdown(summary, spec.results),
        key=artifact_key(spec.campaign_id, "summary"),
        description=f"Campaign {spec.campaign_id}, attempts {attempts[0]}–{attempts[-1]}, via {summary.provider}",
    )
    return {**summary.to_dict(), "attempts": attempts, "by_provider": by_provider}
