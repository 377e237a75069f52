"""Contact policy, first step: opt-outs. The managed opt-out list (`smscast optout`), `suppress` sources, the
policy step between validation and planning (tasks/policy.py), and, end to end through the campaign and retry
flows with the sandbox, that a suppressed number never reaches the provider."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest
import typer
from support import assert_matches_ledger, flow_sandbox, ledger_frame, write_recipients
from typer.testing import CliRunner

from smscast.campaign import CONTENT_FIELDS, CampaignSpec
from smscast.optout import add_phones, import_phones, register, remove_phones
from smscast.providers.registry import make_provider
from smscast.results import optout_list
from smscast.servers.sandbox import SandboxServer
from smscast.status import RETRIABLE, Status
from smscast.tasks.current import resendable
from smscast.tasks.load import load_recipients
from smscast.tasks.policy import apply_policy
from smscast.tasks.report import summarise
from smscast.tasks.suppression import read_optouts
from smscast.tasks.validate import validate_recipients

KEY = "policy-test-key"
runner = CliRunner()


def cli() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def main() -> None:  # a group, so that `optout` is a subcommand as on the real command line
        pass

    register(app)
    return app


def checked(tmp_path: Path, rows: list[str], **kw: object) -> pl.DataFrame:
    """`rows` (phones) loaded, validated and put through the policy, as the campaign flow does."""
    src = tmp_path / "r.csv"
    src.write_text("phone,name\n" + "".join(f'"{p}",N{i}\n' for i, p in enumerate(rows)))
    spec = CampaignSpec.model_validate(
        {
            "campaign_id": "c",
            "source": str(src),
            "results": str(tmp_path / "res"),
            "body": "Hi {{name}}",
            **kw,
        }
    )
    provider = make_provider("sandbox", base_url="http://127.0.0.1:9", require_key=False)
    validated = validate_recipients(load_recipients(spec), spec, provider.caps, provider)
    return apply_policy(validated, spec).sort("row_index")


# -- the policy step ------------------------------------------------------------------------------------------


def test_the_managed_list_applies_without_any_option_whatever_the_spelling(tmp_path: Path) -> None:
    res = str(tmp_path / "res")
    out = runner.invoke(cli(), ["optout", "add", "+44 7400 900123", "--results", res])
    assert out.exit_code == 0, out.output
    rows = checked(tmp_path, ["447400900123", "07400 900124", "+44 (0)7400 900123"], default_country="GB")
    assert rows["status"].to_list() == ["suppressed", None, "invalid"]  # the third is a duplicate phone
    first = rows.row(0, named=True)
    assert first["error_code"] == "opted_out"
    assert first["error_message"] == "opted out (list: managed opt-out list)"
    # Invalid rows stay invalid, with their own reason: the policy only looks at valid ones.
    assert rows["error_code"].to_list()[2] == "duplicate_phone"


def test_suppress_sources_name_their_lists_and_normalise_like_recipients(tmp_path: Path) -> None:
    crm = tmp_path / "crm.csv"
    crm.write_text("Phone,reason\n07400 900124,asked\nnot a number,\n")
    (tmp_path / "dnc.csv").write_text("phone\n+447400900124\n+447400900125\n")
    add_phones(str(tmp_path / "res"), ["+447400900125"])
    rows = checked(
        tmp_path,
        ["+447400900123", "447400900124", "+447400900125"],
        default_country="GB",
        suppress=(str(crm), str(tmp_path / "dnc.csv")),
    )
    assert rows["status"].to_list() == [None, "suppressed", "suppressed"]
    assert rows["error_message"].to_list()[1:] == [
        f"opted out (list: {crm}; {tmp_path / 'dnc.csv'})",
        f"opted out (list: managed opt-out list; {tmp_path / 'dnc.csv'})",
    ]


def test_suppressed_rows_are_settled_never_resent_and_counted(tmp_path: Path) -> None:
    add_phones(str(tmp_path / "res"), ["+447400900123"])
    rows = checked(tmp_path, ["+447400900123", "+447400900124"])
    assert Status.SUPPRESSED not in RETRIABLE
    as_results = rows.with_columns(pl.col("status").fill_null("failed"))
    assert resendable(as_results, resend_safe=True)["phone"].to_list() == ["+447400900124"]
    summary = summarise(as_results, campaign_id="c", attempt=1, provider="sandbox", results_uri=None)
    assert summary.by_status["suppressed"] == 1 and summary.segments_planned == 1
    assert "suppress" in CONTENT_FIELDS and "suppress_query" in CONTENT_FIELDS


def test_a_suppression_source_may_not_carry_a_password() -> None:
    with pytest.raises(ValueError, match="password"):
        CampaignSpec(
            campaign_id="c", source="r.csv", results="res", suppress=("postgresql://u:secret@db/crm",)
        )


# -- the managed list -----------------------------------------------------------------------------------------


def test_add_remove_and_list(tmp_path: Path) -> None:
    res = str(tmp_path / "res")
    when = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
    assert add_phones(res, ["+447400900123", "07400900124"], "GB", clock=lambda: when) == 2
    assert add_phones(res, ["447400900123"], "GB") == 0  # already there: kept with its own added_at
    listed = runner.invoke(cli(), ["optout", "list", "-r", res])
    assert listed.exit_code == 0
    assert "+447400900123\t2026-12-01T09:30:00+00:00" in listed.output
    out = runner.invoke(cli(), ["optout", "remove", "07400 900123", "-r", res, "--default-country", "GB"])
    assert out.exit_code == 0 and "removed 1 number" in out.output
    assert read_optouts(res)[0]["phone"].to_list() == ["+447400900124"]
    assert remove_phones(res, ["+447400900999"]) == 0


def test_add_refuses_what_is_not_a_number_and_changes_nothing(tmp_path: Path) -> None:
    res = str(tmp_path / "res")
    out = runner.invoke(cli(), ["optout", "add", "+447400900123", "07400900124", "call me", "-r", res])
    assert out.exit_code == 1
    assert "'07400900124', 'call me'" in out.output and "--default-country" in out.output
    assert not Path(optout_list(res)).exists()


def test_import_from_a_csv(tmp_path: Path) -> None:
    res = str(tmp_path / "res")
    src = tmp_path / "unsubscribed.csv"
    src.write_text("Mobile,when\n07400 900123,monday\n+44 7400 900124,tuesday\n07400900123,again\nn/a,\n")
    add_phones(res, ["+447400900124"])
    out = runner.invoke(
        cli(),
        ["optout", "import", str(src), "-r", res, "--default-country", "GB", "--phone-column", "Mobile"],
    )
    assert out.exit_code == 0, out.output
    assert "read 2 number(s)" in out.output and "added 1" in out.output
    assert sorted(read_optouts(res)[0]["phone"].to_list()) == ["+447400900123", "+447400900124"]
    assert import_phones(res, str(src), default_country="GB", phone_column="Mobile") == (2, 0)


def test_two_concurrent_adds_both_land(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both commands read the list before either writes (a barrier makes sure): the second write's condition
    fails, and that command reads again and applies its change to the first one's list."""
    res = str(tmp_path / "res")
    barrier = threading.Barrier(2, timeout=60)
    reads: list[str | None] = []
    real = read_optouts

    def read_together(results: str) -> tuple[pl.DataFrame, str | None]:
        got = real(results)
        reads.append(got[1])
        if len(reads) <= 2:
            barrier.wait()
        return got

    monkeypatch.setattr("smscast.optout.read_optouts", read_together)
    errors: list[BaseException] = []

    def adder(phone: str) -> Callable[[], None]:
        def run() -> None:
            try:
                add_phones(res, [phone])
            except BaseException as exc:  # reported by the assertion below
                errors.append(exc)

        return run

    threads = [threading.Thread(target=adder(p)) for p in ("+447400900123", "+447400900124")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and not any(t.is_alive() for t in threads)
    assert reads[:2] == [None, None] and len(reads) == 3  # one conflict, one re-read
    assert sorted(read_optouts(res)[0]["phone"].to_list()) == ["+447400900123", "+447400900124"]


# -- end to end: the sandbox's ledger -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxServer]:
    with flow_sandbox(KEY) as server:
        yield server


@pytest.mark.integration
def test_suppressed_numbers_never_reach_the_provider_nor_a_retry(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    from smscast.flows.campaign import send_campaign
    from smscast.flows.retry import retry_failed

    sandbox.client.reset()
    src = write_recipients(tmp_path / "r.csv", 60)  # +447400900000 … +447400900059
    res = str(tmp_path / "res")
    add_phones(res, ["447400900003", "+44 7400 900013"], "GB")  # the managed list: no option needed
    (tmp_path / "dnc.csv").write_text("phone\n07400900023\n")
    suppressed = {"+447400900003", "+447400900013", "+447400900023"}
    sandbox.client.set_faults(transient_suffixes=["3"])  # every phone ending in 3 fails at first
    spec = CampaignSpec(
        campaign_id="c-optout",
        source=str(src),
        results=res,
        base_url=sandbox.base_url,
        body="Hi {{name}}",
        sender="ACME",
        default_country="GB",
        suppress=(str(tmp_path / "dnc.csv"),),
    )
    first = send_campaign(spec)
    assert first["by_status"]["suppressed"] == 3 and first["by_status"]["failed"] == 3
    assert first["by_status"]["accepted"] == 54
    sandbox.client.set_faults(transient_suffixes=[])
    # One of the failed numbers opts out before the retry: the retry applies the policy again.
    add_phones(res, ["+447400900033"], "GB")
    second = retry_failed(campaign_id="c-optout", results=res, base_url=sandbox.base_url)
    assert second["rows"] == 3 and second["by_status"]["accepted"] == 2
    assert second["by_status"]["suppressed"] == 1
    current = assert_matches_ledger(res, "c-optout", sandbox.client, "generic", 60)
    ledger = set(ledger_frame(sandbox.client, "generic")["to"].to_list())
    assert ledger.isdisjoint(suppressed | {"+447400900033"}) and len(ledger) == 56
    held = current.filter(pl.col("status") == "suppressed").sort("row_index")
    assert set(held["phone"].to_list()) == suppressed | {"+447400900033"}
    assert set(held["error_code"]) == {"opted_out"}
    assert held["attempt"].to_list() == [1, 1, 1, 2]
