"""Contact policy rules (tasks/policy.py) beyond opt-outs: countries, quiet hours, frequency caps, a row caught by
several rules; and one campaign with every policy option end to end through the sandbox, checked against its
ledger. Quiet hours are decided at an explicit `now` in the unit tests; the end-to-end test places its quiet
hours hours wide around the real time, so nothing depends on the time of day it runs at or the machine's speed.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from support import assert_matches_ledger, flow_sandbox, ledger_frame, quiet_hours_around, write_recipients

from smscast.campaign import CampaignSpec
from smscast.optout import add_phones
from smscast.providers.registry import make_provider
from smscast.servers.sandbox import SandboxServer
from smscast.tasks.load import load_recipients
from smscast.tasks.policy import apply_policy
from smscast.tasks.validate import validate_recipients

KEY = "policy-rules-key"
# 22:30 UTC on a winter evening: London is quiet under 21:00-08:00, New York (17:30) is not, Tokyo (07:30) is.
NOW = datetime(2026, 12, 1, 22, 30, tzinfo=UTC)


def checked(tmp_path: Path, rows: list[dict[str, str]], now: datetime = NOW, **kw: object) -> pl.DataFrame:
    """`rows` loaded, validated and put through the policy at `now`, as the campaign flow does."""
    cols = list(dict.fromkeys(k for r in rows for k in r))
    src = tmp_path / "r.csv"
    src.write_text(
        ",".join(cols) + "\n" + "".join(",".join(f'"{r.get(c, "")}"' for c in cols) + "\n" for r in rows)
    )
    spec = CampaignSpec.model_validate(
        {"campaign_id": "c", "source": str(src), "results": str(tmp_path / "res"), "body": "Hi", **kw}
    )
    provider = make_provider("sandbox", base_url="http://127.0.0.1:9", require_key=False)
    validated = validate_recipients(load_recipients(spec), spec, provider.caps, provider)
    return apply_policy(validated, spec, now=now).sort("row_index")


def test_country_rules_use_the_numbers_country(tmp_path: Path) -> None:
    phones = ["+447911123456", "+353851234567", "+12125551234", "+33612345678", "+80012345678"]
    rows = checked(tmp_path, [{"phone": p} for p in phones], allow_countries=("GB", "GG", "IE", "US"))
    # +44 7911 is Guernsey to libphonenumber; +800 is non-geographic: no country, so outside any allow list.
    assert rows["country"].to_list() == ["GG", "IE", "US", "FR", None]
    assert rows["status"].to_list() == [None, None, None, "suppressed", "suppressed"]
    assert rows["error_code"].to_list()[3:] == ["country_blocked", "country_blocked"]
    assert rows["error_message"][3] == "country FR is not allowed by this campaign's country rules"
    blocked = checked(tmp_path, [{"phone": p} for p in phones[:3]], block_countries=("IE",))
    assert blocked["status"].to_list() == [None, "suppressed", None]


def test_a_number_libphonenumber_cannot_place_gets_its_calling_codes_country(tmp_path: Path) -> None:
    # +44 7400 900xxx is a range reserved for drama: not a valid number, still a British one for the rules.
    rows = checked(tmp_path, [{"phone": "+447400900123"}], allow_countries=("GB",))
    assert rows["country"].to_list() == ["GB"] and rows["status"].to_list() == [None]


def test_quiet_hours_hold_rows_until_their_local_window_ends(tmp_path: Path) -> None:
    rows = checked(
        tmp_path,
        [
            {"phone": "+447400900001", "timezone": "Europe/London"},
            {"phone": "+447400900002", "timezone": "America/New_York"},
            {"phone": "+447400900003", "timezone": "Asia/Tokyo"},
            {"phone": "+447400900004", "timezone": ""},  # empty: the number's zones (British)
            {"phone": "+12125551234", "timezone": ""},  # New York, from its area code: 17:30 there
            {"phone": "+447400900006", "timezone": "Mars/Olympus"},
        ],
        quiet_hours="21:00-08:00",
    )
    assert rows["status"].to_list() == ["held", None, "held", "held", None, "invalid"]
    assert rows["error_code"].to_list()[5] == "timezone_unknown"
    release = rows["release_at"].to_list()
    assert release[0] == datetime(2026, 12, 2, 8, 0, tzinfo=UTC)  # 08:00 in London, GMT in winter
    assert release[2] == datetime(2026, 12, 1, 23, 0, tzinfo=UTC)  # 08:00 in Tokyo
    assert release[1] is None and release[4] is None and release[5] is None
    assert release[3] is not None and release[3] >= datetime(2026, 12, 2, 8, 0, tzinfo=UTC)
    assert rows["error_message"][0] == (
        "quiet hours 21:00-08:00 in the recipient's time zone: held until 2026-12-02 08:00 UTC"
    )


def test_a_number_that_may_be_in_any_of_many_zones_is_quiet_if_one_of_them_is(tmp_path: Path) -> None:
    # A Russian mobile may be anywhere from Kaliningrad (UTC+2) to Kamchatka (UTC+12): at 12:00 UTC it is
    # evening in the east. Allowed hours 10:00-18:00 never overlap across that span: never releasable.
    at_noon = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    held = checked(tmp_path, [{"phone": "+79161234567"}], now=at_noon, quiet_hours="21:00-08:00")
    assert held["status"].to_list() == ["held"]
    never = checked(tmp_path, [{"phone": "+79161234567"}], now=at_noon, quiet_hours="18:00-10:00")
    assert never["status"].to_list() == ["suppressed"] and never["error_code"].to_list() == ["quiet_hours"]
    assert never["release_at"].to_list() == [None]
    assert "no hour outside the quiet hours" in never["error_message"][0]


def test_a_row_caught_by_several_rules_reports_every_reason_and_is_suppressed(tmp_path: Path) -> None:
    add_phones(str(tmp_path / "res"), ["+33612345678"])
    rows = checked(
        tmp_path,
        [{"phone": "+33612345678", "timezone": "Europe/Paris"}, {"phone": "bad"}, {"phone": "+447400900001"}],
        block_countries=("FR",),
        quiet_hours="21:00-08:00",
    )
    assert rows["status"].to_list() == ["suppressed", "invalid", "held"]
    assert rows["error_code"].to_list() == [
        "opted_out;country_blocked;quiet_hours",
        "phone_not_a_number",
        "quiet_hours",
    ]
    first = rows["error_message"][0]
    assert first.startswith("opted out (list: managed opt-out list); country FR is not allowed")
    assert rows["release_at"].to_list()[:2] == [None, None]  # suppressed wins: no release for it


def test_rows_without_any_rule_are_untouched(tmp_path: Path) -> None:
    rows = checked(tmp_path, [{"phone": "+447400900001"}, {"phone": "x"}])
    assert rows["status"].to_list() == [None, "invalid"]
    assert rows["release_at"].to_list() == [None, None]


# -- end to end -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxServer]:
    with flow_sandbox(KEY) as server:
        yield server


@pytest.mark.integration
def test_a_campaign_with_every_policy_option(
    sandbox: SandboxServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from smscast.flows import release
    from smscast.flows.campaign import send_campaign

    sandbox.client.reset()
    res = str(tmp_path / "res")
    # An earlier campaign messaged rows 0-4: with a cap of one a day, campaign 2 must skip them.
    send_campaign(
        CampaignSpec(
            campaign_id="earlier",
            source=str(write_recipients(tmp_path / "e.csv", 5)),
            results=res,
            base_url=sandbox.base_url,
            body="Hi {{name}}",
        )
    )
    sandbox.client.reset()  # its results stay: the ledger from here on is campaign 2's alone
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    window = quiet_hours_around(now)
    # Rows 10-14 live in UTC: inside the quiet hours. The others are at UTC+6, outside them.
    zones = ["Etc/GMT-6"] * 10 + ["UTC"] * 5 + ["Etc/GMT-6"] * 15
    src = write_recipients(tmp_path / "r.csv", 30, extra={"timezone": zones})
    (tmp_path / "dnc.csv").write_text("phone\n+447400900020\n")
    add_phones(res, ["+447400900021"])
    prices = tmp_path / "prices.csv"
    prices.write_text("provider,country,price_per_segment,currency\nsandbox,GB,0.05,GBP\n")
    spec = CampaignSpec(
        campaign_id="every-rule",
        source=str(src),
        results=res,
        base_url=sandbox.base_url,
        body="Hi {{name}}",
        suppress=(str(tmp_path / "dnc.csv"),),
        max_per_recipient=1,
        per_window="24h",
        quiet_hours=window,
        allow_countries=("GB",),
        prices=str(prices),
        max_cost=1.20,  # 30 one-segment rows at 0.05 would be 1.50: fits only because the policy holds some back
    )
    first = send_campaign(spec)
    counts = first["by_status"]
    assert (counts["suppressed"], counts["held"], counts["accepted"]) == (7, 5, 18)
    ledger = set(ledger_frame(sandbox.client, "generic")["to"].to_list())
    held_phones = {f"+44740090{i:04d}" for i in range(10, 15)}
    capped = {f"+44740090{i:04d}" for i in range(5)}
    assert ledger.isdisjoint(held_phones | capped | {"+447400900020", "+447400900021"}) and len(ledger) == 18
    # Release after the window: the held rows go once, with the keys attempt 1 gave them.
    monkeypatch.setattr(release, "now_utc", lambda: now + timedelta(hours=2, minutes=1))
    second = release.release_held(campaign_id="every-rule", results=res, base_url=sandbox.base_url)
    assert second["by_status"]["accepted"] == 5
    current = assert_matches_ledger(res, "every-rule", sandbox.client, "generic", 30)
    assert set(ledger_frame(sandbox.client, "generic")["to"].to_list()) >= held_phones
    reasons = dict(current.group_by("error_code").len().iter_rows())
    assert reasons == {None: 23, "frequency_cap": 5, "opted_out": 2}
    accepted = current.filter(pl.col("status") == "accepted")
    assert accepted.height == 23 and int(accepted["segments"].sum()) * 0.05 <= 1.20
