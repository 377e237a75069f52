"""The delivery report as one self-contained HTML page (tasks/delivery_report.py computes the figures).

It must open anywhere, offline, and be safe to mail around: styles and the chart (SVG) are inline, nothing is
fetched, and a Content-Security-Policy forbids any fetch and any script should something slip in. Every value
is escaped: error codes and messages are the providers' own text, and a provider (or whoever spoofs one) can
put markup in them.
"""

from __future__ import annotations

import html
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from smscast.tasks.delivery_report import DeliveryReport

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2rem auto;max-width:60rem;
color:#1d2330;padding:0 1rem}
h1{font-size:1.4rem;margin-bottom:.2rem}h2{font-size:1.05rem;margin:1.6rem 0 .4rem}
.muted{color:#667085}.cards{display:flex;flex-wrap:wrap;gap:.8rem;margin:1rem 0}
.card{border:1px solid #d0d5dd;border-radius:6px;padding:.6rem .9rem;min-width:8rem}
.card b{display:block;font-size:1.3rem}
table{border-collapse:collapse;min-width:24rem}th,td{padding:.25rem .7rem;border-bottom:1px solid #eaecf0;
text-align:left;vertical-align:top}td.n{text-align:right;font-variant-numeric:tabular-nums}
td.msg{max-width:28rem;overflow-wrap:anywhere;color:#475467}
svg{max-width:100%;height:auto}.bar{fill:#2e90fa}.axis{stroke:#98a2b3}svg text{font-size:11px;fill:#475467}
"""

_CSP = "default-src 'none'; style-src 'unsafe-inline'"


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _pct(share: float | None) -> str:
    return "—" if share is None else f"{share:.1%}"


def _table(headers: list[str], rows: list[list[tuple[object, str]]]) -> str:
    """`rows`: cells as (value, css class). Empty tables say so instead of showing headers alone."""
    if not rows:
        return '<p class="muted">none</p>'
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join(
        "<tr>"
        + "".join(f'<td class="{cls}">{_e(v)}</td>' if cls else f"<td>{_e(v)}</td>" for v, cls in row)
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _counts(counts: dict[str, int]) -> str:
    return _table(
        ["status", "rows"], [[(k.replace("_", " "), ""), (f"{v:,}", "n")] for k, v in counts.items()]
    )


def _shares(rows: list[dict[str, Any]], key: str, label: str) -> str:
    return _table(
        [label, "accepted", "delivered", "delivered share"],
        [
            [(r[key], ""), (f"{r['accepted']:,}", "n"), (f"{r['delivered']:,}", "n"), (_pct(r["share"]), "n")]
            for r in rows
        ],
    )


def _errors(rows: list[dict[str, Any]], status: str) -> str:
    return _table(
        [status.replace("_", " "), "code", "rows", "example message"],
        [
            [(r[status], ""), (r["error_code"], ""), (f"{r['rows']:,}", "n"), (r["example"], "msg")]
            for r in rows
        ],
    )


_UNIT_SECONDS = {"minute": 60, "hour": 3600, "day": 86400}


def chart(timeline: list[tuple[datetime, int]], unit: str, *, width: int = 800, height: int = 220) -> str:
    """Deliveries per `unit` as an inline SVG bar chart; bars sit at their time, so gaps show as gaps."""
    if not timeline:
        return '<p class="muted">no deliveries reported yet</p>'
    left, right, top, bottom = 44, 10, 12, 28
    plot_w, plot_h = width - left - right, height - top - bottom
    first, last = timeline[0][0], timeline[-1][0]
    step = _UNIT_SECONDS.get(unit, 60)
    slots = int((last - first).total_seconds() // step) + 1
    slot_w = plot_w / slots
    peak = max(n for _, n in timeline) or 1
    stamp = "%Y-%m-%d %H:%M" if unit != "day" else "%Y-%m-%d"
    bars = []
    for when, n in timeline:
        x = left + (when - first).total_seconds() // step * slot_w
        h = plot_h * n / peak
        bars.append(
            f'<rect class="bar" x="{x:.2f}" y="{top + plot_h - h:.2f}" width="{min(max(slot_w * 0.85, 0.5), 48):.2f}" '
            f'height="{h:.2f}"><title>{_e(when.strftime(stamp))} UTC: {n:,} delivered</title></rect>'
        )
    axes = (
        f'<line class="axis" x1="{left}" y1="{top + plot_h}" x2="{width - right}" y2="{top + plot_h}"/>'
        f'<line class="axis" x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}"/>'
        f'<text x="{left - 6}" y="{top + 10}" text-anchor="end">{peak:,}</text>'
        f'<text x="{left - 6}" y="{top + plot_h}" text-anchor="end">0</text>'
        f'<text x="{left}" y="{height - 8}">{_e(first.strftime(stamp))}</text>'
        f'<text x="{width - right}" y="{height - 8}" text-anchor="end">{_e(last.strftime(stamp))} UTC</text>'
    )
    label = f"Deliveries per {unit}, {first.strftime(stamp)} to {last.strftime(stamp)} UTC"
    return (
        f'<svg viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" role="img" aria-label="{_e(label)}"><title>{_e(label)}</title>'
        f"{axes}{''.join(bars)}</svg>"
    )


def render_html(report: DeliveryReport, *, generated_at: datetime | None = None) -> str:
    """The whole page, as text (UTF-8 when written)."""
    from smscast.tasks.delivery_report import duration

    made = (generated_at or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M UTC")
    cards = [
        ("rows", f"{report.rows:,}"),
        ("accepted", f"{report.accepted:,}"),
        ("delivered", f"{report.delivered:,}"),
        ("delivered share", _pct(report.delivered_share)),
        ("time to delivery p50", duration(report.latency_p50)),
        ("time to delivery p95", duration(report.latency_p95)),
    ]
    sections = [
        ("Send status", _counts(report.by_status)),
        (f"Delivery status (of {report.accepted:,} accepted)", _counts(report.by_delivery)),
        (f"Deliveries per {report.timeline_unit}", chart(report.timeline, report.timeline_unit)),
        ("Delivered share by provider", _shares(report.by_provider, "provider", "provider")),
        (
            "Delivered share by country calling code",
            _shares(report.by_country, "calling_code", "calling code"),
        ),
        ("Top send errors", _errors(report.top_send_errors, "status")),
        ("Top delivery errors", _errors(report.top_delivery_errors, "delivery_status")),
    ]
    title = f"Delivery report · {report.campaign_id}"
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
            f"<h1>{_e(title)}</h1>",
            f'<p class="muted">Generated {_e(made)} · time to delivery is from the send to the provider\'s '
            f"delivered report, over {report.latency_rows:,} delivered rows.</p>",
            '<div class="cards">'
            + "".join(
                f'<div class="card"><span class="muted">{_e(k)}</span><b>{_e(v)}</b></div>' for k, v in cards
            )
            + "</div>",
            *(f"<h2>{_e(h)}</h2>{body}" for h, body in sections),
            "</body></html>",
        ]
    )
