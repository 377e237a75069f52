"""The delivery report: what became of a campaign's messages, read from its current view (tasks/current.py).

The figures are computed here, vectorised (a campaign can have millions of rows); `render` is the terminal
text and smscast/report_html.py the self-contained page. Delivery figures are over `accepted` rows only: the
others were never messages the provider held. A flow publishes the report with `publish_delivery_report`,
which also makes it a Prefect table artifact when, and only when, it runs inside a flow or task run.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from typing import Any

import polars as pl

from smscast.delivery import DELIVERY_STATUSES, DeliveryStatus
from smscast.status import COUNTED, Status

TOP = 10
NO_REPORT = "no_report"  # accepted, and no fact yet: the provider has not said anything
# Buckets of the deliveries-over-time chart: the finest whose count stays readable for the span.
UNITS: tuple[tuple[str, str, int], ...] = (("minute", "1m", 60), ("hour", "1h", 3600), ("day", "1d", 86400))
MAX_BUCKETS = 240


@dataclass
class DeliveryReport:
    campaign_id: str
    rows: int
    by_status: dict[str, int]  # send status -> rows (zeros included; `suppressed` only when present)
    by_delivery: dict[str, int]  # of the accepted rows: delivery status (or NO_REPORT) -> rows
    by_provider: list[dict[str, Any]]  # {provider, accepted, delivered, share}
    by_country: list[dict[str, Any]]  # {calling_code ("+44", or "?"), accepted, delivered, share}
    top_send_errors: list[dict[str, Any]]  # {status, error_code, rows, example}
    top_delivery_errors: list[dict[str, Any]]  # {delivery_status, error_code, rows, example}
    latency_p50: float | None  # seconds from submitted_at to the delivered report, over delivered rows
    latency_p95: float | None
    latency_rows: int
    timeline_unit: str  # "minute", "hour" or "day"
    timeline: list[tuple[datetime, int]] = field(default_factory=list)  # non-empty buckets, in time order

    @property
    def accepted(self) -> int:
        return self.by_status.get(Status.ACCEPTED.value, 0)

    @property
    def delivered(self) -> int:
        return self.by_delivery.get(DeliveryStatus.DELIVERED.value, 0)

    @property
    def delivered_share(self) -> float | None:
        return self.delivered / self.accepted if self.accepted else None


@cache
def _calling_codes() -> tuple[str, ...]:
    # The ITU calling codes are prefix-free ("1", "44", "880"...), so at most one of a number's first 1, 2
    # or 3 digits is one: three vectorised look-ups find it, phonenumbers is only read for the table.
    from phonenumbers import COUNTRY_CODE_TO_REGION_CODE

    return tuple(sorted(str(code) for code in COUNTRY_CODE_TO_REGION_CODE))


def calling_code(phone: pl.Expr) -> pl.Expr:
    """The country calling code of an E.164 phone, "+44" for "+447400900123"; null for anything else."""
    digits = phone.str.extract(r"^\+([1-9][0-9]{6,14})$")
    codes = list(_calling_codes())
    found = pl.lit(None, pl.String)
    for n in (1, 2, 3):
        head = digits.str.slice(0, n)
        found = pl.when(head.is_in(codes)).then(pl.lit("+") + head).otherwise(found)
    return found


def delivery_report(view: pl.DataFrame, campaign_id: str | None = None) -> DeliveryReport:
    """The figures of a current view (tasks/current.py current_view)."""
    if campaign_id is None:
        campaign_id = str(view["campaign_id"][0]) if view.height else "?"
    by_status = dict.fromkeys(COUNTED, 0)
    by_status.update(_counts(view, "status"))
    accepted = view.filter(pl.col("status") == Status.ACCEPTED.value)
    by_delivery = dict.fromkeys((*DELIVERY_STATUSES, NO_REPORT), 0)
    by_delivery.update(
        _counts(accepted.with_columns(pl.col("delivery_status").fill_null(NO_REPORT)), "delivery_status")
    )
    delivered = accepted.filter(pl.col("delivery_status") == DeliveryStatus.DELIVERED.value)
    seconds = (
        (pl.col("delivery_reported_at") - pl.col("submitted_at")).dt.total_microseconds() / 1_000_000
    ).drop_nulls()
    latency = delivered.select(
        n=seconds.len(), p50=seconds.quantile(0.5, "linear"), p95=seconds.quantile(0.95, "linear")
    ).row(0, named=True)
    unit, timeline = _timeline(delivered.get_column("delivery_reported_at"))
    return DeliveryReport(
        campaign_id=campaign_id,
        rows=view.height,
        by_status=by_status,
        by_delivery=by_delivery,
        by_provider=_shares(accepted, pl.col("provider").fill_null("?"), "provider"),
        by_country=_shares(accepted, calling_code(pl.col("phone")).fill_null("?"), "calling_code"),
        top_send_errors=_top(view, "status", "error_code", "error_message"),
        top_delivery_errors=_top(
            accepted, "delivery_status", "delivery_error_code", "delivery_error_message"
        ),
        latency_p50=latency["p50"],
        latency_p95=latency["p95"],
        latency_rows=int(latency["n"]),
        timeline_unit=unit,
        timeline=timeline,
    )


def _counts(frame: pl.DataFrame, column: str) -> dict[str, int]:
    return {str(k): int(n) for k, n in frame.group_by(column).len().iter_rows()}


def _shares(accepted: pl.DataFrame, key: pl.Expr, name: str) -> list[dict[str, Any]]:
    """Delivered / accepted per group, the largest groups first."""
    return (
        accepted.group_by(key.alias(name))
        .agg(
            accepted=pl.len(),
            delivered=(pl.col("delivery_status") == DeliveryStatus.DELIVERED.value).sum().cast(pl.Int64),
        )
        .with_columns(share=pl.col("delivered") / pl.col("accepted"))
        .sort(["accepted", name], descending=[True, False])
        .to_dicts()
    )


def _top(frame: pl.DataFrame, status: str, code: str, message: str) -> list[dict[str, Any]]:
    """The most frequent (status, code) pairs, each with one of its messages (the smallest: deterministic)."""
    return (
        frame.filter(pl.col(code).is_not_null())
        .group_by(status, code)
        .agg(rows=pl.len(), example=pl.col(message).drop_nulls().min())
        .sort(["rows", status, code], descending=[True, False, False])
        .head(TOP)
        .rename({code: "error_code"})
        .to_dicts()
    )


def _timeline(reported: pl.Series) -> tuple[str, list[tuple[datetime, int]]]:
    """Deliveries per bucket. Only non-empty buckets are kept, so a bogus date far away costs one bar."""
    reported = reported.drop_nulls()
    if reported.is_empty():
        return UNITS[0][0], []
    t = pl.col("t")
    span = reported.to_frame("t").select((t.max() - t.min()).dt.total_microseconds()).item() / 1_000_000
    unit, every, _ = next((u for u in UNITS if span / u[2] <= MAX_BUCKETS), UNITS[-1])
    counts = reported.dt.truncate(every).alias("bucket").to_frame().group_by("bucket").len().sort("bucket")
    return unit, [(b, int(n)) for b, n in counts.iter_rows()]


def _pct(share: float | None) -> str:
    return "—" if share is None else f"{share:.1%}"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if abs(seconds) < 120:
        return f"{seconds:.1f} s"
    if abs(seconds) < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def render(report: DeliveryReport) -> str:
    """The report as terminal text (codes and counts: no recipient data, no provider messages)."""
    lines = [
        f"Delivery report · campaign {report.campaign_id} · {report.rows:,} rows",
        "  send: " + " · ".join(f"{k} {v:,}" for k, v in report.by_status.items()),
        f"  delivery (of {report.accepted:,} accepted): "
        + " · ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in report.by_delivery.items()),
        f"  delivered share: {_pct(report.delivered_share)} ({report.delivered:,} / {report.accepted:,})",
    ]
    for title, rows, key in (
        ("by provider", report.by_provider, "provider"),
        ("by country calling code", report.by_country, "calling_code"),
    ):
        if rows:
            lines.append(f"  {title}:")
            lines += [
                f"    {r[key]:<12} {r['delivered']:>10,} / {r['accepted']:<10,} {_pct(r['share']):>7}"
                for r in rows[:TOP]
            ]
            if len(rows) > TOP:
                lines.append(f"    … {len(rows) - TOP} more")
    for title, rows, key in (
        ("top send errors", report.top_send_errors, "status"),
        ("top delivery errors", report.top_delivery_errors, "delivery_status"),
    ):
        if rows:
            lines.append(f"  {title}:")
            lines += [f"    {r[key]:<12} {r['error_code']:<32} {r['rows']:>10,}" for r in rows]
    lines.append(
        f"  time to delivery ({report.latency_rows:,} delivered): "
        f"p50 {duration(report.latency_p50)} · p95 {duration(report.latency_p95)}"
    )
    return "\n".join(lines)


def artifact_table(report: DeliveryReport) -> list[dict[str, str]]:
    """One table for the Prefect UI: figure, group, value. Codes and counts only (artifacts are kept on the
    server, readable by everyone with access to it: no recipient data, no provider messages)."""
    table = [{"figure": "send status", "group": k, "value": f"{v:,}"} for k, v in report.by_status.items()]
    table += [
        {"figure": "delivery status", "group": k, "value": f"{v:,}"} for k, v in report.by_delivery.items()
    ]
    table.append(
        {
            "figure": "delivered share",
            "group": "all",
            "value": f"{_pct(report.delivered_share)} ({report.delivered:,}/{report.accepted:,})",
        }
    )
    for figure, rows, key in (
        ("delivered share by provider", report.by_provider, "provider"),
        ("delivered share by calling code", report.by_country, "calling_code"),
    ):
        table += [
            {
                "figure": figure,
                "group": str(r[key]),
                "value": f"{_pct(r['share'])} ({r['delivered']:,}/{r['accepted']:,})",
            }
            for r in rows[:TOP]
        ]
    table += [
        {"figure": "top send error", "group": f"{r['status']} {r['error_code']}", "value": f"{r['rows']:,}"}
        for r in report.top_send_errors
    ]
    table += [
        {
            "figure": "top delivery error",
            "group": f"{r['delivery_status']} {r['error_code']}",
            "value": f"{r['rows']:,}",
        }
        for r in report.top_delivery_errors
    ]
    table.append({"figure": "time to delivery", "group": "p50", "value": duration(report.latency_p50)})
    table.append({"figure": "time to delivery", "group": "p95", "value": duration(report.latency_p95)})
    return table


def artifact_key(campaign_id: str) -> str:
    """Prefect keys take lowercase letters, digits and dashes; campaign ids also `_` and `.`."""
    return f"campaign-{campaign_id.lower().replace('_', '-').replace('.', '-')}-delivery"


def publish_delivery_report(
    view: pl.DataFrame,
    campaign_id: str | None = None,
    logger: logging.Logger | logging.LoggerAdapter[logging.Logger] | None = None,
) -> DeliveryReport:
    """Compute the report, log it, and inside a flow or task run publish it as a table artifact."""
    report = delivery_report(view, campaign_id)
    log = logger or logging.getLogger(__name__)
    log.info("%s", render(report))
    if _in_prefect_run():
        try:
            from prefect.artifacts import create_table_artifact

            create_table_artifact(
                table=artifact_table(report),
                key=artifact_key(report.campaign_id),
                description=f"Delivery of campaign {report.campaign_id}",
            )
        except Exception:  # the report is informative: failing to publish it must not fail the run
            log.warning("delivery report artifact not created", exc_info=True)
    return report


def _in_prefect_run() -> bool:
    # A process that never imported Prefect is not in a run: checking costs nothing then, and the command
    # line never pays Prefect's import time.
    if "prefect" not in sys.modules:
        return False
    from prefect.context import FlowRunContext, TaskRunContext

    return FlowRunContext.get() is not None or TaskRunContext.get() is not None
