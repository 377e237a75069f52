"""The delivery report (tasks/delivery_report.py), its HTML page (smscast/report_html.py) and the `results` and
`report` commands (smscast/results_cli.py), on a small campaign whose figures are worked out by hand below."""

from __future__ import annotations

import json
import logging
import re
import uuid
from html.parser import HTMLParser
from pathlib import Path
from typing import cast

import polars as pl
import pytest
import typer
from test_current_view import CID, add_facts, at, write_attempt
from typer.testing import CliRunner

from smscast.report_html import render_html
from smscast.results_cli import register
from smscast.tasks.current import current_view
from smscast.tasks.delivery_report import (
    DeliveryReport,
    artifact_key,
    artifact_table,
    calling_code,
    delivery_report,
    publish_delivery_report,
)

HOSTILE = '<script>alert("x")</script><img src="https://evil.example/p.png" onerror=alert(1)>'


def build_campaign(results: Path) -> None:
    """12 rows. Accepted: 0-3 (+44) and 4-6 (+1); 0-4 via sandbox, 5-6 via robase. Delivered 0, 1, 2, 4 after
    10, 20, 30 and 100 s; 3 undelivered (30003, with a hostile message); 5 pending; 6 no report yet.
    Not accepted: 7-8 failed http_503, 9 rejected 21614, 10 invalid phone_invalid, 11 unknown read_timeout."""
    gb = [f"+4474009000{i:02d}" for i in range(4)]
    us = [f"+1415555010{i}" for i in range(3)]
    accepted = [
        {"row_index": i, "status": "accepted", "phone": p, "provider": "sandbox" if i < 5 else "robase"}
        for i, p in enumerate(gb + us)
    ]
    others = [
        {"row_index": 7, "status": "failed", "error_code": "http_503", "error_message": "busy"},
        {"row_index": 8, "status": "failed", "error_code": "http_503", "error_message": "also busy"},
        {"row_index": 9, "status": "rejected", "error_code": "21614", "error_message": HOSTILE},
        {
            "row_index": 10,
            "status": "invalid",
            "error_code": "phone_invalid",
            "phone": "12ab",
            "submitted_at": None,
        },
        {"row_index": 11, "status": "unknown", "error_code": "read_timeout"},
    ]
    write_attempt(results, 1, accepted + others)
    add_facts(
        results,
        [
            {"row_index": 0, "delivery_status": "delivered", "reported_at": at(10)},
            {"row_index": 1, "delivery_status": "delivered", "reported_at": at(20)},
            {"row_index": 2, "delivery_status": "delivered", "reported_at": at(30)},
            {"row_index": 4, "delivery_status": "delivered", "reported_at": at(100)},
            {
                "row_index": 3,
                "delivery_status": "undelivered",
                "reported_at": at(15),
                "error_code": "30003",
                "error_message": HOSTILE,
            },
            {"row_index": 5, "delivery_status": "pending", "reported_at": at(5)},
        ],
    )


@pytest.fixture
def campaign(tmp_path: Path) -> Path:
    build_campaign(tmp_path)
    return tmp_path


@pytest.fixture
def report(campaign: Path) -> DeliveryReport:
    return delivery_report(current_view(str(campaign), CID))


def test_the_figures(report: DeliveryReport) -> None:
    assert report.rows == 12
    assert report.by_status == {"accepted": 7, "invalid": 1, "rejected": 1, "failed": 2, "unknown": 1}
    assert report.by_delivery == {
        "pending": 1,
        "delivered": 4,
        "undelivered": 1,
        "expired": 0,
        "no_report": 1,
    }
    assert report.delivered_share == pytest.approx(4 / 7)
    assert report.by_provider == [
        {"provider": "sandbox", "accepted": 5, "delivered": 4, "share": pytest.approx(0.8)},
        {"provider": "robase", "accepted": 2, "delivered": 0, "share": 0.0},
    ]
    assert report.by_country == [
        {"calling_code": "+44", "accepted": 4, "delivered": 3, "share": pytest.approx(0.75)},
        {"calling_code": "+1", "accepted": 3, "delivered": 1, "share": pytest.approx(1 / 3)},
    ]
    # Most frequent first, then by status and code.
    assert [(e["status"], e["error_code"], e["rows"]) for e in report.top_send_errors] == [
        ("failed", "http_503", 2),
        ("invalid", "phone_invalid", 1),
        ("rejected", "21614", 1),
        ("unknown", "read_timeout", 1),
    ]
    assert report.top_send_errors[0]["example"] == "also busy"  # the smallest message: deterministic
    assert [(e["delivery_status"], e["error_code"], e["rows"]) for e in report.top_delivery_errors] == [
        ("undelivered", "30003", 1)
    ]
    # Latencies 10, 20, 30, 100 s; linear interpolation: p50 = (20 + 30) / 2, p95 at rank 2.85 = 30 + 0.85 * 70.
    assert report.latency_rows == 4
    assert report.latency_p50 == pytest.approx(25.0)
    assert report.latency_p95 == pytest.approx(89.5)
    # Deliveries at 10:00:10, :20, :30 and 10:01:40: a 90 s span, so per minute.
    assert report.timeline_unit == "minute"
    assert report.timeline == [(at(0), 3), (at(60), 1)]


def test_a_long_span_is_charted_per_hour(tmp_path: Path) -> None:
    write_attempt(tmp_path, 1, [{"row_index": i, "status": "accepted"} for i in range(3)])
    add_facts(
        tmp_path,
        [
            {"row_index": i, "delivery_status": "delivered", "reported_at": at(s)}
            for i, s in enumerate((5, 70, 5 * 3600))
        ],
    )
    report = delivery_report(current_view(str(tmp_path), CID))
    assert report.timeline_unit == "hour"
    assert report.timeline == [(at(0), 2), (at(5 * 3600), 1)]


def test_calling_codes_are_found_in_e164_numbers_only() -> None:
    phones = ["+447400900123", "+14155550100", "+8801712345678", "+35312345678", "+79161234567", "12ab", None]
    got = (
        pl.DataFrame({"p": phones}, schema={"p": pl.String})
        .select(calling_code(pl.col("p")).alias("c"))["c"]
        .to_list()
    )
    assert got == ["+44", "+1", "+880", "+353", "+7", None, None]


def test_an_empty_campaign_reports_zeros_without_dividing_by_zero(tmp_path: Path) -> None:
    write_attempt(tmp_path, 1, [{"row_index": 0, "status": "invalid", "error_code": "phone_missing"}])
    report = delivery_report(current_view(str(tmp_path), CID))
    assert report.accepted == 0 and report.delivered_share is None
    assert report.latency_p50 is None and report.timeline == [] and report.by_country == []
    assert "<svg" not in render_html(report)


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str | None]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs += attrs

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_the_html_page_is_self_contained_and_escapes_what_providers_wrote(report: DeliveryReport) -> None:
    page = render_html(report)
    parsed = _Tags()
    parsed.feed(page)
    # Nothing to fetch: no src/href at all, no script, no external reference of any kind.
    assert not {name for name, _ in parsed.attrs} & {"src", "href", "srcset", "action", "onerror"}
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*https?:""", page, re.IGNORECASE)
    assert "script" not in parsed.tags and "img" not in parsed.tags
    assert set(parsed.tags) <= {
        "html", "head", "meta", "title", "style", "body", "h1", "h2", "p", "div", "span", "b", "table", "thead",
        "tbody", "tr", "th", "td", "svg", "line", "text", "rect",
    }  # fmt: skip
    # The hostile messages are there as text, both the send error's and the delivery error's.
    assert "".join(parsed.text).count(HOSTILE) == 2
    assert page.count("&lt;script&gt;") == 2
    # The chart: one bar per non-empty minute.
    assert parsed.tags.count("rect") == 2
    assert "57.1%" in page and "25.0 s" in page and "89.5 s" in page


def test_publishing_outside_a_run_logs_and_creates_no_artifact(
    report: DeliveryReport, campaign: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        published = publish_delivery_report(current_view(str(campaign), CID))
    assert published == report
    assert "delivered share: 57.1% (4 / 7)" in caplog.text
    assert HOSTILE not in caplog.text  # codes and counts only
    table = artifact_table(report)
    assert {"figure": "time to delivery", "group": "p95", "value": "89.5 s"} in table
    assert not any(HOSTILE in v for row in table for v in row.values())
    assert artifact_key("Promo_06.12") == "campaign-promo-06-12-delivery"


@pytest.mark.integration
def test_inside_a_flow_run_the_report_becomes_a_table_artifact(campaign: Path) -> None:
    from prefect import flow
    from prefect.artifacts import Artifact
    from prefect.client.schemas.objects import Artifact as ArtifactResponse
    from support import prefect_harness

    cid = f"Dr_{uuid.uuid4().hex[:8]}"  # the harness's database is shared: a key of this test's own
    view = current_view(str(campaign), CID).with_columns(campaign_id=pl.lit(cid))

    @flow
    def reconcile_like() -> None:
        publish_delivery_report(view)

    with prefect_harness():
        reconcile_like()
        # get() is typed as maybe a coroutine (it dispatches on async context); called here from sync code.
        artifact = cast("ArtifactResponse | None", Artifact.get(artifact_key(cid)))
    assert artifact is not None and artifact.type == "table" and artifact.flow_run_id is not None
    table = json.loads(str(artifact.data))
    assert {"figure": "delivered share", "group": "all", "value": "57.1% (4/7)"} in table
    assert HOSTILE not in str(artifact.data)


# ---- the commands ---------------------------------------------------------------------------------------


def cli() -> typer.Typer:
    app = typer.Typer()
    register(app)
    return app


def test_results_writes_the_whole_view_as_parquet_and_csv(campaign: Path) -> None:
    view = current_view(str(campaign), CID)
    for name, read in (("view.parquet", pl.read_parquet), ("view.csv", pl.read_csv)):
        out = campaign / "out" / name
        got = CliRunner().invoke(cli(), ["results", "-c", CID, "-r", str(campaign), "--out", str(out)])
        assert got.exit_code == 0, got.output
        assert "wrote 12 rows" in got.output
        written = read(out)
        assert written.columns == view.columns
        assert written["row_index"].to_list() == list(range(12))
        assert written["delivery_status"].to_list() == view["delivery_status"].to_list()


def test_results_shows_counts_by_status_and_delivery_and_the_first_rows(campaign: Path) -> None:
    got = CliRunner().invoke(cli(), ["results", "-c", CID, "-r", str(campaign), "--rows", "3"])
    assert got.exit_code == 0, got.output
    accepted_line = next(line for line in got.output.splitlines() if "accepted" in line)
    # rows, pending, delivered, undelivered, expired, no_report
    assert re.findall(r"\d+", accepted_line) == ["7", "1", "4", "1", "0", "1"]
    assert "First 3 rows" in got.output and "+447400900002" in got.output
    assert "+14155550100" not in got.output  # row 4: past the first 3


def test_results_refuses_an_unknown_output_format_and_a_missing_campaign(campaign: Path) -> None:
    bad = CliRunner().invoke(
        cli(), ["results", "-c", CID, "-r", str(campaign), "--out", str(campaign / "v.xlsx")]
    )
    assert bad.exit_code == 2 and ".parquet or .csv" in bad.output
    assert not (campaign / "v.xlsx").exists()
    for command in ("results", "report"):
        missing = CliRunner().invoke(cli(), [command, "-c", "nobody", "-r", str(campaign)])
        assert missing.exit_code == 1
        assert "error: no results for campaign 'nobody'" in missing.output


def test_report_prints_the_figures_and_writes_the_page(campaign: Path) -> None:
    page = campaign / "report.html"
    got = CliRunner().invoke(cli(), ["report", "-c", CID, "-r", str(campaign), "--html", str(page)])
    assert got.exit_code == 0, got.output
    assert "delivered share: 57.1% (4 / 7)" in got.output
    assert "p50 25.0 s · p95 89.5 s" in got.output
    assert re.search(r"\+44\s+3 / 4\s+75.0%", got.output)
    text = page.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and "&lt;script&gt;" in text and "<script" not in text
