"""Report: the end-of-attempt summary — counts by status and reason, segments, where the results are — on the
terminal and as a Prefect markdown artifact. The same summary is the flow's return value and, for an attempt a
run completed, the `smscast.campaign.finished` event. Every summary leaves a run through `report`.

Where it shows in Prefect: on the flow run that computed it and, when that run is a subflow (a deployment's
wrapper flow in flows/deployed.py runs the campaign flow as one), on the run the user started too
(`user_run`): the run the UI's form, a schedule or a trigger created, the one people open. Its key lines (the
summary, what happens next to failed rows) are logged there as well. Publishing is a courtesy: it never fails
a campaign.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any
from uuid import UUID

import polars as pl

from smscast import storage
from smscast.campaign import CampaignSpec
from smscast.events import emit_campaign_finished
from smscast.pricing import OVER_BUDGET, CostEstimate, describe, estimate_for
from smscast.status import COUNTED, NEVER_SENT, RETRIABLE, Status

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun

Logger = logging.Logger | logging.LoggerAdapter[logging.Logger]

TOP_REASONS = 10  # reasons shown in the artifact; the results dataset has them all


@dataclass
class CampaignSummary:
    campaign_id: str
    attempt: int
    provider: str
    rows: int
    by_status: dict[str, int]
    by_reason: list[dict[str, Any]]  # {status, error_code, rows}
    segments_accepted: int
    segments_planned: int
    results_uri: str | None
    dry_run: bool = False
    requests: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)  # wall time per stage
    cost: dict[str, Any] | None = None  # with a price list: smscast/pricing.py CostEstimate.to_dict()
    paused: dict[str, Any] | None = None  # the attempt paused on an open circuit: smscast/breaker.py Opening

    @property
    def over_budget_rows(self) -> int:
        """Rows not sent because the spend cap was reached (`failed`, but only a higher cap sends them)."""
        return sum(
            int(r["rows"])
            for r in self.by_reason
            if r["status"] == Status.FAILED.value and r["error_code"] == OVER_BUDGET
        )

    @property
    def needs_retry(self) -> bool:
        """Rows remain that a retry would re-send whatever the provider (what the retry deployment waits for).
        Not the ones the spend cap held back: the same retry would be refused for its cost."""
        left = {s.value: self.by_status.get(s.value, 0) for s in RETRIABLE}
        left[Status.FAILED.value] = left.get(Status.FAILED.value, 0) - self.over_budget_rows
        return any(n > 0 for n in left.values())

    def to_dict(self) -> dict[str, Any]:
        out = {**asdict(self), "needs_retry": self.needs_retry}
        for extra in ("cost", "paused"):  # summaries without them keep the shape they always had
            if out[extra] is None:
                del out[extra]
        return out


# The results columns `summarise` (and a release's `release_steps`) read: all a summary without prices needs.
SUMMARY_COLUMNS = ("status", "error_code", "segments")


def summarise(
    results: pl.DataFrame,
    *,
    campaign_id: str,
    attempt: int,
    provider: str,
    results_uri: str | None,
    dry_run: bool = False,
    estimate: CostEstimate | None = None,
) -> CampaignSummary:
    if dry_run:  # nothing was sent: valid rows are "planned", a word the results dataset never uses
        results = results.with_columns(pl.col("status").fill_null("planned"))
    by_status = {s: 0 for s in (*COUNTED, *(("planned",) if dry_run else ()))}
    for status, n in results.group_by("status").len().iter_rows():
        by_status[str(status)] = int(n)
    reasons = (
        results.filter(pl.col("error_code").is_not_null())
        .group_by("status", "error_code")
        .agg(rows=pl.len())
        .sort("rows", "status", "error_code", descending=[True, False, False])
    )
    valid = results.filter(~pl.col("status").is_in([s.value for s in NEVER_SENT]))
    accepted = results.filter(pl.col("status") == "accepted")
    return CampaignSummary(
        campaign_id=campaign_id,
        attempt=attempt,
        provider=provider,
        rows=results.height,
        by_status=by_status,
        by_reason=reasons.to_dicts(),
        segments_accepted=int(accepted.get_column("segments").fill_null(0).sum()),
        segments_planned=int(valid.get_column("segments").fill_null(0).sum()),
        results_uri=results_uri,
        dry_run=dry_run,
        cost=estimate.to_dict() if estimate is not None else None,
    )


def reason_lines(reasons: list[tuple[str, str, int]], top: int, where: str) -> list[str]:
    """The `reasons:` table of a summary (status, code, rows; the largest first): its first `top` rows, each
    column as wide as its longest entry, and where to find the rest."""
    shown = reasons[:top]
    if not shown:
        return []
    wide = max(len(s) for s, _, _ in shown), max(len(c) for _, c, _ in shown)
    lines = ["  reasons:", *(f"    {s:<{wide[0]}}  {c:<{wide[1]}}  {n:>10,}" for s, c, n in shown)]
    return lines + ([f"    … {len(reasons) - top} more reasons in {where}"] if len(reasons) > top else [])


def render(summary: CampaignSummary) -> str:
    head = "DRY RUN — nothing was sent. " if summary.dry_run else ""
    lines = [
        f"{head}Campaign {summary.campaign_id} · attempt {summary.attempt} · provider {summary.provider} · "
        f"{summary.rows:,} rows",
        "  " + "  ".join(f"{k}: {v:,}" for k, v in summary.by_status.items() if v or k != "unknown"),
        f"  segments: {summary.segments_planned:,} planned"
        if summary.dry_run
        else f"  segments: {summary.segments_accepted:,} accepted",
    ]
    if summary.paused:
        lines.insert(1, f"  PAUSED by the circuit breaker: {summary.paused['reason']}; a re-run resumes it")
    reasons = [(r["status"], r["error_code"], r["rows"]) for r in summary.by_reason]
    lines += reason_lines(reasons, 20, "the results dataset")
    lines += cost_lines(summary)
    if summary.seconds:
        lines.append("  time: " + " · ".join(f"{k} {v:.2f}s" for k, v in summary.seconds.items()))
    if summary.results_uri:
        lines.append(f"  results: {summary.results_uri}")
    return "\n".join(lines)


def cost_lines(summary: CampaignSummary) -> list[str]:
    """The cost on the terminal: the headline, by country (the costliest first), what it leaves out."""
    if summary.cost is None:
        return []
    head, notes, table = describe(summary.cost, dry_run=summary.dry_run, over_budget=summary.over_budget_rows)
    rows = [f"    {r[0]:<8}" + "".join(f"{c:>16}" for c in r[1:]) for r in table]
    return [f"  cost: {head}", *rows, *(f"  {n}" for n in notes)]


def cost_markdown(summary: CampaignSummary) -> list[str]:
    if summary.cost is None:
        return []
    head, notes, table = describe(summary.cost, dry_run=summary.dry_run, over_budget=summary.over_budget_rows)
    rows = [f"| {' | '.join(r)} |" for r in table]
    rows.insert(1, "|:--|" + "--:|" * (len(table[0]) - 1))
    return [f"**Cost**: {head}", "", *rows, "", *(f"- {n}" for n in notes), *([""] if notes else [])]


def share(n: int, total: int) -> str:
    return f"{100 * n / total:.1f}%" if total else "–"


def status_table(counts: dict[str, int], total: int) -> list[str]:
    """Markdown: one row per status, its rows and its share of `total`."""
    lines = ["| status | rows | share |", "|:--|--:|--:|"]
    lines += [f"| {s} | {n:,} | {share(n, total)} |" for s, n in counts.items()]
    return [*lines, f"| **all** | **{total:,}** | |"]


def summary_markdown(summary: CampaignSummary, results: str) -> str:
    """The summary artifact: statuses with their shares, the top reasons below, segments apart, and where the
    results are (`results`: the campaign's results location). Codes and counts only: an artifact is readable
    by everyone with access to the Prefect server, so no recipient data and no provider message."""
    title = f"{summary.campaign_id} · attempt {summary.attempt} · {summary.provider}"
    lines = [f"### {title}" + (" · dry run: nothing was sent" if summary.dry_run else ""), ""]
    if summary.paused:
        lines += [f"**Paused**: circuit open, cause `{summary.paused['cause']}`; a re-run resumes it", ""]
    lines += [*status_table(summary.by_status, summary.rows), ""]
    if summary.by_reason:
        shown = summary.by_reason[:TOP_REASONS]
        more = len(summary.by_reason) - len(shown)
        lines += [f"**Reasons**{f' (top {len(shown)} of {len(summary.by_reason)})' if more else ''}", ""]
        lines += ["| status | reason | rows | share |", "|:--|:--|--:|--:|"]
        lines += [
            f"| {r['status']} | `{r['error_code']}` | {r['rows']:,} | {share(r['rows'], summary.rows)} |"
            for r in shown
        ]
        lines += [f"| … | {more} more reasons in the results | | |"] if more else []
        lines.append("")
    segments = (
        f"{summary.segments_planned:,} planned"
        if summary.dry_run
        else f"{summary.segments_accepted:,} accepted"
    )
    lines += [f"**Segments** (message parts): {segments}", ""]
    lines += cost_markdown(summary)
    lines += results_lines(summary, results)
    if summary.seconds:
        lines += ["", "**Time**: " + " · ".join(f"{k} {v:.2f} s" for k, v in summary.seconds.items())]
    return "\n".join(lines)


def results_lines(summary: CampaignSummary, results: str) -> list[str]:
    if summary.results_uri is None:
        return ["**Results**: none written (dry run)."]
    here = f"- this attempt: `{storage.redact(summary.results_uri)}`"
    if not storage.is_s3(summary.results_uri):
        # A relative location means the worker's working directory: the absolute path is what one can open.
        here += f" (on the machine that ran it: `{storage.to_local_path(summary.results_uri).resolve()}`)"
    every = (
        f"- every attempt, each row's latest outcome: `smscast results --campaign-id {summary.campaign_id} "
        f"--results {storage.redact(results)}`"
    )
    return ["**Results**", "", here, every]


def artifact_key(campaign_id: str, what: str) -> str:
    """Prefect keys take lowercase letters, digits and dashes; campaign ids also `_` and `.`."""
    return f"campaign-{campaign_id.lower().replace('_', '-').replace('.', '-')}-{what}"


def report(
    rows: pl.DataFrame,
    spec: CampaignSpec,
    logger: Logger,
    *,
    results_uri: str | None,
    seconds: dict[str, float] | None = None,
    requests: dict[str, int] | None = None,
    completed: bool = False,
    estimate: CostEstimate | None = None,
    paused: dict[str, Any] | None = None,
) -> CampaignSummary:
    """Summarise an attempt's rows (a dry run's planned rows) and publish the summary. `completed`: this run
    has just completed the attempt, so automations hear of it (an attempt found complete was announced by
    the run that completed it). `estimate`: the cost, else estimated here when the campaign has a price
    list. `paused`: why the attempt paused (smscast/breaker.py), unfinished."""
    if estimate is None and spec.prices is not None:
        estimate = estimate_for(rows, spec)
    summary = summarise(
        rows,
        campaign_id=spec.campaign_id,
        attempt=spec.attempt,
        provider=spec.provider,
        results_uri=results_uri,
        dry_run=spec.dry_run,
        estimate=estimate,
    )
    summary.seconds = seconds or {}
    summary.requests = requests or {}
    summary.paused = paused
    tell(logger, logging.INFO, render(summary))
    publish_artifact(
        "markdown",
        summary_markdown(summary, spec.results),
        key=artifact_key(summary.campaign_id, "summary"),
        description=f"Campaign {summary.campaign_id}, attempt {summary.attempt}, via {summary.provider}",
    )
    if completed:
        emit_campaign_finished(summary.to_dict(), spec.results, logger)
    return summary


# -- the run the user started ---------------------------------------------------------------------------------


def this_run() -> FlowRun | None:
    """The flow run this code runs in (None outside a flow run, e.g. in a shard's task thread)."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    return ctx.flow_run if ctx is not None else None


def user_run() -> FlowRun | None:
    """The root of this flow run's tree when this run is a subflow: the run the user started. None when this
    run is itself the root, or outside a run."""
    run = this_run()
    if run is None or run.parent_task_run_id is None:
        return None
    return _root_of(run.id, run.parent_task_run_id)


@functools.lru_cache(maxsize=64)
def _root_of(run_id: UUID, parent_task_run_id: UUID) -> FlowRun | None:
    try:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            parent: UUID | None = parent_task_run_id
            root = None
            for _ in range(32):  # a subflow's parent is in another run; nesting is shallow, this is a bound
                if parent is None:
                    break
                flow_run_id = client.read_task_run(parent).flow_run_id
                if flow_run_id is None:
                    break
                root = client.read_flow_run(flow_run_id)
                parent = root.parent_task_run_id
            return root
    except Exception:
        logging.getLogger(__name__).debug("could not find run %s's root", run_id, exc_info=True)
        return None


def tell(logger: Logger, level: int, message: str) -> None:
    """Log `message` here and, when this run is a subflow, on the run the user started: its logs would
    otherwise stop at "Beginning flow run"."""
    logger.log(level, "%s", message)
    root = user_run()
    if root is not None:
        from prefect.logging.loggers import flow_run_logger

        flow_run_logger(flow_run=root).log(level, "%s", message)


def name_runs(name: str, logger: Logger) -> None:
    """Name this flow run `name` and, when it is a subflow of a deployment's run (started from the UI, a
    schedule or a trigger), that run too: the campaign is then found by its id in the runs list. A wrapper
    that sends several campaigns ends up named after the last."""
    run = this_run()
    if run is None:
        return
    try:
        from prefect.client.orchestration import get_client

        root = user_run()
        with get_client(sync_client=True) as client:
            for each in (run, root if root is not None and root.deployment_id is not None else None):
                if each is not None and each.name != name:
                    client.set_flow_run_name(each.id, name)
                    each.name = name
    except Exception:
        logger.debug("could not name the flow runs %r", name, exc_info=True)


def publish_artifact(kind: str, data: Any, *, description: str, key: str | None = None) -> list[UUID]:
    """Create an artifact on this run and, when it is a subflow, on the run the user started. `key` goes to
    the user's run (one keyed version per attempt, whose "latest" links to the run people open); the
    subflow's copy has none. The ids, for `update_artifacts`; none outside a flow run or if the API fails."""
    run = this_run()
    if run is None:
        return []
    root = user_run()
    targets = [(run.id, None if root else key), *([(root.id, key)] if root else [])]
    ids: list[UUID] = []
    try:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.actions import ArtifactCreate

        with get_client(sync_client=True) as client:
            for run_id, run_key in targets:
                request = ArtifactCreate(
                    type=kind, key=run_key, description=description, data=data, flow_run_id=run_id
                )
                ids.append(client.create_artifact(artifact=request).id)
    except Exception:
        logging.getLogger(__name__).warning("could not create the %s artifact", kind, exc_info=True)
    return ids


def update_artifacts(ids: list[UUID], data: Any, description: str | None = None) -> None:
    """Replace the data (and the description) of artifacts `publish_artifact` made; safe from any thread."""
    if not ids:
        return
    try:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.actions import ArtifactUpdate

        # A description left out stays as it was (None would clear it).
        update = (
            ArtifactUpdate(data=data, description=description) if description else ArtifactUpdate(data=data)
        )
        with get_client(sync_client=True) as client:
            for artifact_id in ids:
                client.update_artifact(artifact_id, update)
    except Exception:  # progress is a courtesy: never let it fail a send
        logging.getLogger(__name__).debug("could not update artifacts %s", ids, exc_info=True)
