"""Report: the end-of-attempt summary — counts by status and reason, segments — on the terminal and as a
Prefect table artifact. The same summary is the flow's return value and, for an attempt a run completed, the
`smscast.campaign.finished` event. Every summary leaves a run through `report`."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import polars as pl

from smscast.campaign import CampaignSpec
from smscast.events import emit_campaign_finished
from smscast.status import RETRIABLE, STATUSES


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

    @property
    def needs_retry(self) -> bool:
        """Rows remain that a retry would re-send whatever the provider (what the retry deployment waits for)."""
        return any(self.by_status.get(s.value, 0) > 0 for s in RETRIABLE)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "needs_retry": self.needs_retry}


def summarise(
    results: pl.DataFrame,
    *,
    campaign_id: str,
    attempt: int,
    provider: str,
    results_uri: str | None,
    dry_run: bool = False,
) -> CampaignSummary:
    if dry_run:  # nothing was sent: valid rows are "planned", a word the results dataset never uses
        results = results.with_columns(pl.col("status").fill_null("planned"))
    by_status = {s: 0 for s in (*STATUSES, *(("planned",) if dry_run else ()))}
    for status, n in results.group_by("status").len().iter_rows():
        by_status[str(status)] = int(n)
    reasons = (
        results.filter(pl.col("error_code").is_not_null())
        .group_by("status", "error_code")
        .agg(rows=pl.len())
        .sort("rows", "status", "error_code", descending=[True, False, False])
    )
    valid = results.filter(pl.col("status") != "invalid")
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
    )


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
    if summary.by_reason:
        lines.append("  reasons:")
        lines += [
            f"    {r['status']:<9} {r['error_code']:<32} {r['rows']:>10,}" for r in summary.by_reason[:20]
        ]
        if len(summary.by_reason) > 20:
            lines.append(f"    … {len(summary.by_reason) - 20} more reasons in the results dataset")
    if summary.seconds:
        lines.append("  time: " + " · ".join(f"{k} {v:.2f}s" for k, v in summary.seconds.items()))
    if summary.results_uri:
        lines.append(f"  results: {summary.results_uri}")
    return "\n".join(lines)


def report(
    rows: pl.DataFrame,
    spec: CampaignSpec,
    logger: logging.Logger | logging.LoggerAdapter[logging.Logger],
    *,
    results_uri: str | None,
    seconds: dict[str, float] | None = None,
    requests: dict[str, int] | None = None,
    completed: bool = False,
) -> CampaignSummary:
    """Summarise an attempt's rows (a dry run's planned rows) and publish the summary. `completed`: this run
    has just completed the attempt, so automations hear of it (an attempt found complete was announced by
    the run that completed it)."""
    summary = summarise(
        rows,
        campaign_id=spec.campaign_id,
        attempt=spec.attempt,
        provider=spec.provider,
        results_uri=results_uri,
        dry_run=spec.dry_run,
    )
    summary.seconds = seconds or {}
    summary.requests = requests or {}
    _publish(summary, logger)
    if completed:
        emit_campaign_finished(summary.to_dict(), spec.results, logger)
    return summary


def _publish(
    summary: CampaignSummary, logger: logging.Logger | logging.LoggerAdapter[logging.Logger]
) -> None:
    logger.info("%s", render(summary))
    try:
        from prefect.artifacts import create_table_artifact

        table = [{"status": k, "error_code": "", "rows": v} for k, v in summary.by_status.items()]
        table += [
            {"status": r["status"], "error_code": r["error_code"], "rows": r["rows"]}
            for r in summary.by_reason
        ]
        table.append({"status": "segments (accepted)", "error_code": "", "rows": summary.segments_accepted})
        create_table_artifact(
            table=table,
            key=f"campaign-{summary.campaign_id.lower().replace('_', '-').replace('.', '-')}-summary",
            description=f"Campaign {summary.campaign_id}, attempt {summary.attempt}, via {summary.provider}",
        )
    except Exception:
        logger.debug("summary artifact not created", exc_info=True)


@contextmanager
def stage(seconds: dict[str, float], name: str) -> Iterator[None]:
    """Time a pipeline stage into `seconds` (shown in the summary and used by the benchmark)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - start
