"""`smscast check` (smscast/check_cli.py): every row of a source with the status a campaign would give it,
written to Parquet or CSV, without sending, writing results or importing Prefect."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

import smscast.cli
from smscast.campaign import CampaignSpec
from smscast.check_cli import NO_RESULTS, run_check
from smscast.encoding import GSM7_ENCODING, UCS2_ENCODING
from smscast.optout import add_phones

# One row per outcome: ready, not a number, opted out (--suppress), a blocked country, a duplicate, and a body
# that needs UCS-2 (the emoji).
SOURCE = """\
phone,name,tier
+44 7400 123456,Ann,gold
call me,Bob,silver
07400 123457,Cat,gold
+353 85 123 4567,Dara,silver
+447400123456,Ann again,gold
+44 7400 123458,Eve 🙂,gold
"""


def check_args(tmp_path: Path, out: Path, *extra: str) -> list[str]:
    source = tmp_path / "recipients.csv"
    source.write_text(SOURCE)
    optouts = tmp_path / "optouts.csv"
    optouts.write_text("phone\n+447400123457\n")
    return [
        "check",
        str(source),
        "-p",
        "sandbox",
        "--out",
        str(out),
        "--body",
        "Hi {{name}}",
        "--default-country",
        "GB",
        "--suppress",
        str(optouts),
        "--block-countries",
        "IE",
        *extra,
    ]


def read(out: Path) -> pl.DataFrame:
    return pl.read_parquet(out) if out.suffix == ".parquet" else pl.read_csv(out, infer_schema_length=0)


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_check_writes_every_row_with_the_status_it_would_have(tmp_path: Path, suffix: str) -> None:
    out = tmp_path / "out" / f"checked{suffix}"
    result = CliRunner().invoke(smscast.cli.app, check_args(tmp_path, out))

    assert result.exit_code == 0, result.output
    rows = read(out)
    assert [str(i) for i in rows.get_column("row_index")] == [str(i) for i in range(6)]
    assert rows.get_column("status").to_list() == [
        "ready",
        "invalid",
        "suppressed",
        "suppressed",
        "invalid",
        "ready",
    ]
    assert rows.get_column("error_code").to_list() == [
        None,
        "phone_not_a_number",
        "opted_out",
        "country_blocked",
        "duplicate_phone",
        None,
    ]
    first = rows.row(0, named=True)
    assert first["phone"] == "+447400123456"
    assert first["country"] == "GB"
    assert first["number_type"] == "mobile"
    assert first["body"] == "Hi Ann"
    assert (first["phone_raw"], first["name"], first["tier"]) == ("+44 7400 123456", "Ann", "gold")
    assert rows.row(3, named=True)["country"] == "IE"
    assert (rows.get_column("encoding")[0], rows.get_column("encoding")[5]) == (GSM7_ENCODING, UCS2_ENCODING)
    assert str(rows.get_column("segments")[0]) == "1"
    assert rows.get_column("release_at").null_count() == rows.height
    # The check's own plan is not the campaign's: no batch ids or keys.
    assert not {"idempotency_key", "batch_id", "batch_key", "shard"} & set(rows.columns)
    assert "ready: 2  invalid: 2  suppressed: 2  held: 0" in result.output
    assert "suppressed country_blocked" in " ".join(result.output.split())


def test_the_results_location_is_read_for_its_opt_outs_and_never_written(tmp_path: Path) -> None:
    results = tmp_path / "results"
    add_phones(str(results), ["+447400123458"])
    before = sorted(p.relative_to(results) for p in results.rglob("*"))
    out = tmp_path / "checked.parquet"
    # send's command line with one word changed: its sending options are accepted, and change nothing.
    args = check_args(tmp_path, out, "-c", "spring-1", "-r", str(results), "--dry-run", "--rate", "5")
    args += ["--wait-for-lock", "--runner", "threads", "--max-failure-rate", "0.2"]

    result = CliRunner().invoke(smscast.cli.app, args)

    assert result.exit_code == 0, result.output
    row = read(out).row(5, named=True)
    assert (row["status"], row["error_code"]) == ("suppressed", "opted_out")
    assert "managed opt-out list" in row["error_message"]
    assert sorted(p.relative_to(results) for p in results.rglob("*")) == before


def test_a_price_list_costs_the_rows_that_would_be_sent(tmp_path: Path) -> None:
    prices = tmp_path / "prices.csv"
    prices.write_text("provider,country,price_per_segment,currency\nsandbox,GB,0.05,GBP\n")
    out = tmp_path / "checked.parquet"
    args = check_args(tmp_path, out, "--prices", str(prices), "--max-cost", "0.05")

    result = CliRunner().invoke(smscast.cli.app, args)

    assert result.exit_code == 0, result.output
    rows = read(out)
    assert rows.get_column("cost").to_list() == [0.05, None, None, None, None, 0.05]
    assert "GBP 0.10 estimated" in result.output
    assert "would not start" in result.output  # over the cap: said, as a dry run says it


def test_quiet_hours_hold_rows_until_they_end(tmp_path: Path) -> None:
    source = tmp_path / "r.csv"
    source.write_text(
        "phone,name,timezone\n+447400900123,Ann,Europe/London\n+447400900124,Bob,America/New_York\n"
    )
    spec = CampaignSpec(
        campaign_id="check",
        provider="sandbox",
        source=str(source),
        results=NO_RESULTS,
        body="Hi {{name}}",
        quiet_hours="21:00-08:00",
    )
    out = tmp_path / "held.csv"
    # 22:30 in London (BST), 17:30 in New York.
    run_check(spec, str(out), now=datetime(2026, 6, 1, 21, 30, tzinfo=UTC))

    rows = pl.read_csv(out, try_parse_dates=True)
    assert rows.get_column("status").to_list() == ["held", "ready"]
    assert rows.get_column("error_code").to_list() == ["quiet_hours", None]
    assert rows.get_column("release_at")[0] == datetime(2026, 6, 2, 7, 0, tzinfo=UTC)  # 08:00 in London
    assert rows.get_column("release_at")[1] is None


@pytest.mark.parametrize(
    ("extra", "out_name", "says"),
    [
        ((), "checked.txt", "neither .parquet nor .csv"),
        (("--column", "phone=msisdn"), "checked.parquet", "msisdn"),
        (("--max-per-recipient", "1", "--per-window", "24h"), "checked.parquet", "pass --results"),
        (("--body", "Hi {{nickname}}"), "checked.parquet", "nickname"),
    ],
)
def test_set_up_mistakes_exit_2_and_write_nothing(
    tmp_path: Path, extra: tuple[str, ...], out_name: str, says: str
) -> None:
    out = tmp_path / out_name
    result = CliRunner().invoke(smscast.cli.app, check_args(tmp_path, out, *extra))

    assert result.exit_code == 2, result.output
    assert says in result.output
    assert not out.exists()


def test_the_output_may_not_overwrite_the_source(tmp_path: Path) -> None:
    args = check_args(tmp_path, tmp_path / "recipients.csv")
    result = CliRunner().invoke(smscast.cli.app, args)

    assert result.exit_code == 2, result.output
    assert (tmp_path / "recipients.csv").read_text() == SOURCE


def test_help_shows_what_changes_the_outcome_and_hides_how_a_campaign_sends() -> None:
    result = CliRunner().invoke(smscast.cli.app, ["check", "--help"], env={"COLUMNS": "200"})

    assert result.exit_code == 0
    assert "--out" in result.output and "--quiet-hours" in result.output
    for hidden in ("--rate", "--runner", "--fallback", "--check-out", "--check-only", "--dry-run"):
        assert hidden not in result.output


def test_check_never_imports_prefect(tmp_path: Path) -> None:
    """In a process of its own: the test process may have imported Prefect already. Suppressed rows make the
    policy step log, which looks for a Prefect run logger."""
    args = check_args(tmp_path, tmp_path / "checked.parquet")
    code = textwrap.dedent(
        f"""
        import sys
        from smscast.cli import app
        app({args!r}, standalone_mode=False)
        print("prefect imported:", any(m.split(".")[0] == "prefect" for m in sys.modules))
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)

    assert done.returncode == 0, done.stderr
    assert "suppressed: 2" in done.stdout
    assert "prefect imported: False" in done.stdout
