"""Failover to a second provider (flows/failover.py) end to end, against the sandbox's emulators under
Prefect's test harness: the campaign's provider goes down mid-campaign, or its circuit opens, or it refuses
rows as transient, and the fallback takes what it provably never accepted, in the same run; rows in doubt stay
with it. Every recipient the providers took is accepted exactly once, by the provider its row names, across a
second run, a resumed failover attempt, a reconcile and a retry. The units are in tests/test_failover.py."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from failover_support import KEY, LONG_BODY, TL_KEY, TL_SENDER, keys, spec_of  # noqa: F401 (keys: autouse)
from support import env, fast_retries, ledger_frame, prefect_harness, sandbox_clock, write_recipients

from smscast import storage
from smscast.campaign import CampaignSpec
from smscast.flows.campaign import send_campaign
from smscast.flows.retry import retry_failed
from smscast.results import CampaignPaths
from smscast.servers.sandbox import SandboxServer
from smscast.tasks.current import current_results
from smscast.tasks.reconcile import reconcile_campaign

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxServer]:
    lifted = {"rate_limit_rps": 0}  # the vendors' documented limits off: the tests set their own
    with (
        prefect_harness(),
        fast_retries(),  # a primary that is down fails its requests five times each, without backoff's seconds
        SandboxServer(
            default_key=KEY,
            api_keys={"textingline": TL_KEY},
            provider_knobs={"instasent": lifted, "textingline": lifted},
        ) as server,
        env(SMSCAST_INSTASENT_BASE_URL=server.base_url, SMSCAST_TEXTINGLINE_BASE_URL=server.base_url),
    ):
        yield server


@pytest.fixture
def admin(sandbox: SandboxServer) -> Iterator[Any]:
    sandbox.client.reset()
    yield sandbox.client
    sandbox_clock(sandbox.base_url, freeze=False)


def requests(admin: Any, emulator: str) -> dict[str, int]:
    return dict(admin.stats()["providers"].get(emulator, {}).get("requests", {}))


def wait_for(what: str, ready: Callable[[], bool], timeout: float = 120.0) -> None:
    """Poll `ready` until it holds; the bound is generous, for a loaded machine."""
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def ledgers_agree(current: pl.DataFrame, ledgers: dict[str, pl.DataFrame]) -> list[str]:
    """What breaks "each recipient the providers took is accepted exactly once, by the provider its row names":
    no phone in two ledgers or twice in one; every accepted row in its own provider's ledger once; `unknown`
    rows only ever in their own provider's; nothing else in any ledger."""
    problems = []
    seen: dict[str, str] = {}
    for name, ledger in ledgers.items():
        phones = ledger["to"].to_list()
        if len(phones) != len(set(phones)):
            problems.append(f"{name}: a phone twice")
        for phone in phones:
            if phone in seen:
                problems.append(f"{phone} in both {seen[phone]} and {name}")
            seen[phone] = name
    for row in current.iter_rows(named=True):
        where = seen.get(row["phone"])
        if row["status"] == "accepted" and where != row["provider"]:
            problems.append(f"row {row['row_index']} accepted by {row['provider']} but in {where}'s ledger")
        elif row["status"] == "unknown" and where not in (None, row["provider"]):
            problems.append(f"row {row['row_index']} unknown at {row['provider']} but sent by {where}")
        elif row["status"] not in ("accepted", "unknown") and where is not None:
            problems.append(f"row {row['row_index']} is {row['status']} but in {where}'s ledger")
    return problems


def both_ledgers(admin: Any) -> dict[str, pl.DataFrame]:
    return {"sandbox": ledger_frame(admin, "generic"), "instasent": ledger_frame(admin, "instasent")}


def through_sandbox(sandbox: SandboxServer, src: Path, campaign_id: str, **kw: Any) -> CampaignSpec:
    """A campaign of `src` with the sandbox's generic emulator as its provider, sender ACME; its results in
    `res` beside `src`."""
    fields = {
        "campaign_id": campaign_id,
        "provider": "sandbox",
        "source": str(src),
        "base_url": sandbox.base_url,
    }
    return spec_of(src.parent / "res", **(fields | kw))


def test_the_primary_goes_down_mid_campaign_and_the_fallback_takes_what_it_never_accepted(
    sandbox: SandboxServer, admin: Any, tmp_path: Path
) -> None:
    """600 valid rows in 12 requests of 50. The sandbox's clock is frozen and its limit lets the first 4 requests
    through: those are accepted. One more is let through and its connection dropped after processing: that
    request's rows may have been accepted. Then the primary is down: every request answers 503, or drops before
    being processed (the client cannot tell that drop from the other: its rows are in doubt too). Rows in doubt
    stay `unknown` with the primary; the rest go through Instasent, in its own requests of at most 100."""
    src = write_recipients(tmp_path / "r.csv", 601, extra={"name": ["N0", ""]})  # row 1 lacks its variable
    spec = through_sandbox(
        sandbox,
        src,
        "fo-down",
        body="Hi {{name}}",
        batch_size=50,
        fallback="instasent",
        fallback_sender="Instasent",
        min_sample=1_000_000,  # the circuit breaker stays out of it (its own test is below)
    )
    res = spec.results
    admin.set_faults(provider="generic", rate_limit_rps=1, rate_limit_burst=4)
    sandbox_clock(sandbox.base_url, freeze=True)  # no token comes back unless the test says so
    failures: list[BaseException] = []

    def down_mid_campaign() -> None:
        try:
            wait_for("4 accepted requests", lambda: requests(admin, "generic").get("200", 0) >= 4)
            wait_for("a throttled request", lambda: requests(admin, "generic").get("429", 0) >= 1)
            admin.set_faults(provider="generic", next_drop_after=1)
            # One more token: one request processed, then dropped.
            sandbox_clock(sandbox.base_url, advance=1.0)
            wait_for("the dropped request", lambda: requests(admin, "generic").get("drop_after", 0) >= 1)
            admin.set_faults(provider="generic", rate_limit_rps=0, rate_5xx=1.0, next_drop_before=1)
        except BaseException as exc:
            failures.append(exc)

    chaos = threading.Thread(target=down_mid_campaign, daemon=True)
    chaos.start()
    summary = send_campaign(spec)
    chaos.join(timeout=150)
    assert not failures, failures
    sandbox_clock(sandbox.base_url, freeze=False)

    current = current_results(res, "fo-down")
    assert ledgers_agree(current, both_ledgers(admin)) == []
    by = {k: dict(v) for k, v in summary["by_provider"].items()}
    assert by["sandbox"]["accepted"] == 200 and by["sandbox"]["invalid"] == 1
    unknown = current.filter(pl.col("status") == "unknown")
    assert 50 <= unknown.height <= 100 and set(unknown["provider"]) == {"sandbox"}  # 1 or 2 requests in doubt
    over = current.filter(pl.col("provider") == "instasent")
    assert over.height == 600 - 200 - unknown.height and set(over["status"]) == {"accepted"}
    sizes = over.group_by("batch_id").len()["len"].to_list()
    assert set(over["attempt"]) == {2} and max(sizes) <= 100 and len(sizes) == -(-over.height // 100)
    assert summary["attempts"] == [1, 2] and summary["by_status"]["failed"] == 0
    assert storage.exists(CampaignPaths(res, "fo-down").attempt(2).done)

    # The same campaign again: complete, nothing sent anywhere.
    before = {e: requests(admin, e) for e in ("generic", "instasent")}
    assert send_campaign(spec)["by_status"] == summary["by_status"]
    assert {e: requests(admin, e) for e in ("generic", "instasent")} == before

    # A run that died inside the failover attempt resumes it through Instasent, with the same keys.
    attempt = CampaignPaths(res, "fo-down").attempt(2)
    for uri in (attempt.done, attempt.unsent_part, attempt.part(0)):
        storage.delete(uri)
    dupes = admin.stats()["providers"]["instasent"]["duplicates"]
    assert send_campaign(spec)["by_status"] == summary["by_status"]
    assert requests(admin, "generic") == before["generic"]
    assert admin.stats()["providers"]["instasent"]["duplicates"] - dupes == over.height
    assert ledgers_agree(current_results(res, "fo-down"), both_ledgers(admin)) == []

    # The primary is back: a retry re-sends the rows in doubt through it (it answers them from its record),
    # never through the fallback.
    admin.set_faults(provider="generic", rate_5xx=0.0)
    instasent = ledger_frame(admin, "instasent").height
    again = retry_failed(campaign_id="fo-down", results=res)
    assert again["attempt"] == 3 and again["by_status"]["accepted"] == unknown.height
    after = current_results(res, "fo-down")
    assert ledgers_agree(after, both_ledgers(admin)) == []  # what the sandbox had processed: not sent twice
    assert ledger_frame(admin, "instasent").height == instasent
    assert set(after.filter(pl.col("attempt") == 3)["provider"]) == {"sandbox"}
    assert after.filter(pl.col("status") != "accepted")["row_index"].to_list() == [1]


def test_an_open_circuit_sends_the_rows_it_kept_back_through_the_fallback(
    sandbox: SandboxServer, admin: Any, tmp_path: Path
) -> None:
    src = write_recipients(tmp_path / "r.csv", 400)
    spec = through_sandbox(
        sandbox,
        src,
        "fo-circuit",
        body="Hi {{name}}",
        batch_size=25,
        fallback="instasent",
        min_sample=50,
        max_failure_rate=0.5,
    )
    res = spec.results
    admin.set_faults(provider="generic", rate_5xx=1.0)  # down from the start: nothing is ever processed
    summary = send_campaign(spec)
    first = storage.read_parquet(CampaignPaths(res, "fo-circuit").attempt(1).dir)
    assert first.filter(pl.col("error_code") == "circuit_open").height > 0  # the circuit kept rows back
    current = current_results(res, "fo-circuit")
    assert set(current["provider"]) == {"instasent"} and set(current["status"]) == {"accepted"}
    assert ledgers_agree(current, both_ledgers(admin)) == [] and ledger_frame(admin, "generic").is_empty()
    assert summary["by_status"]["accepted"] == 400
    before = requests(admin, "instasent")
    send_campaign(spec)  # complete: the paused attempt was sealed, nothing is resumed through the primary
    assert requests(admin, "instasent") == before


def test_reconcile_and_retry_follow_the_fallback_that_has_the_rows(
    sandbox: SandboxServer, admin: Any, tmp_path: Path
) -> None:
    """Rows the sandbox refuses as transient go through textingline, which takes 10 or more a request, no body
    over 640 characters, and a sender of its own. Reconcile looks textingline's job up at textingline; the
    recipients its job failed are re-sent by a retry through textingline, not through the sandbox."""
    bodies = [LONG_BODY if i == 3 else f"Hi N{i}" for i in range(300)]
    src = write_recipients(tmp_path / "r.csv", 300, extra={"body": bodies})
    spec = through_sandbox(sandbox, src, "fo-tl", fallback="textingline", fallback_sender=TL_SENDER)
    res = spec.results
    admin.set_faults(provider="generic", transient_suffixes=["3"])  # 30 rows refused, for now
    admin.set_faults(provider="textingline", async_reject_share=0.7)  # its job fails most of them itself
    summary = send_campaign(spec)
    current = current_results(res, "fo-tl")
    moved = current.filter(pl.col("provider") == "textingline")
    assert sorted(moved["row_index"]) == [i for i in range(300) if i % 10 == 3]
    long = moved.filter(pl.col("row_index") == 3)
    assert (long["status"].item(), long["error_code"].item()) == ("invalid", "body_too_long")
    assert set(moved.filter(pl.col("row_index") != 3)["status"]) == {"accepted"}
    assert summary["by_provider"]["sandbox"] == {"accepted": 270}

    admin.set_faults(provider="textingline", async_reject_share=0.0)
    admin.set_faults(provider="generic", transient_suffixes=[])
    found = reconcile_campaign(res, "fo-tl")
    assert found.batches == 1  # textingline's one job, looked up at textingline
    settled = found.settlements.get("failed", 0)
    assert settled >= 10 and found.facts.get("delivered", 0) == 29 - settled  # 10+: a textingline request
    facts = storage.read_parquet(CampaignPaths(res, "fo-tl").delivery)
    assert set(facts["provider"]) == {"textingline"}  # the sandbox's rows were not asked about there
    sandbox_requests = requests(admin, "generic")
    again = retry_failed(campaign_id="fo-tl", results=res)
    assert again["by_status"]["accepted"] == settled
    assert requests(admin, "generic") == sandbox_requests  # not one request to the healthy primary
    after = current_results(res, "fo-tl")
    ledgers = {"sandbox": ledger_frame(admin, "generic"), "textingline": ledger_frame(admin, "textingline")}
    assert ledgers_agree(after, ledgers) == []
    assert after.filter(pl.col("status") != "accepted")["row_index"].to_list() == [3]
