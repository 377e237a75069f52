"""Delivery by webhook end to end: Instasent, sent.dm and smscast's own sandbox API campaigns sent through the
campaign flow (Prefect's test harness) to the sandbox on loopback, whose delivery reports go to a real receiver
(`smscast dlr serve`, a subprocess) writing beside the campaigns' results; then reconcile, the current view
compared row for row with the sandbox ledger's delivery truth, and `retry --include-undelivered`. And robase,
which reports no delivery: reconcile writes nothing about it and a retry re-sends nothing.

Every wait is for a condition (the sandbox's callback counters, the reports in the receiver's inbox), with a
deadline; the moment each message reaches its final state follows the sandbox's clock, frozen and moved by
hand. The sandbox's ledger is the truth every comparison is made with."""

from __future__ import annotations

import csv
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from provider_facts import FACTS
from support import fast_retries, prefect_harness

from smscast import storage
from smscast.campaign import CampaignSpec
from smscast.delivery import REPORT_SCHEMA, read_all
from smscast.dlr.launcher import DlrServer
from smscast.flows.campaign import send_campaign
from smscast.flows.reconcile import reconcile, reconcile_recent
from smscast.flows.retry import retry_failed
from smscast.results import CampaignPaths, dlr_inbox
from smscast.sandbox.client import SandboxClient
from smscast.servers.sandbox import SandboxServer
from smscast.tasks.current import current_view
from smscast.tasks.reconcile import reconcile_campaign

pytestmark = pytest.mark.integration

WEBHOOK = ("instasent", "sent-dm", "sandbox")
PROVIDERS = (*WEBHOOK, "robase")
KEYS = {name: FACTS[name].api_key(f"{name}-dlr-e2e") for name in PROVIDERS}
N = 80  # rows per campaign: enough that both fixable and other undelivered codes occur whatever the ids
DELAY_S = 60.0  # each message reaches its final state this long after acceptance, on the sandbox's clock
DIGITS = {"instasent": "+346000", "sent-dm": "+141555", "sandbox": "+4477001", "robase": "+4477003"}
# Whether the provider's reports carry our row key (Instasent's clientId, the sandbox's ref): sent.dm's do not.
ECHOES_KEY = {"instasent": True, "sent-dm": False, "sandbox": True}
LOST, LOST_DIGITS = 10, {"instasent": "+346001", "sent-dm": "+141556", "sandbox": "+4477011"}
WAIT_S = 180.0  # generous: CI is a loaded 2-core machine


@pytest.fixture(scope="module", autouse=True)
def prefect_api() -> Iterator[None]:
    # Lost answers are retried five times before rows are left `unknown`: without the backoff's seconds.
    with prefect_harness(), fast_retries():
        yield


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One results location for every campaign of the module, so their reports share one inbox."""
    return str(tmp_path_factory.mktemp("webhook") / "results")


@pytest.fixture(scope="module")
def receiver(results: str) -> Iterator[DlrServer]:
    with DlrServer(results=results) as dlr:
        yield dlr


@pytest.fixture(scope="module")
def server() -> Iterator[SandboxServer]:
    keys = {FACTS[name].emulator: key for name, key in KEYS.items()}
    with SandboxServer(emulators=list(keys), api_keys=keys) as sbx, pytest.MonkeyPatch.context() as mp:
        for name, key in KEYS.items():
            mp.setenv(FACTS[name].key_env, key)
        yield sbx


@pytest.fixture
def sandbox(server: SandboxServer, receiver: DlrServer) -> Iterator[SandboxClient]:
    """A clean sandbox posting its delivery reports to the receiver, its clock frozen and rate limits off."""
    admin = server.client
    admin.reset()
    for name in PROVIDERS:
        admin.set_faults(provider=FACTS[name].emulator, **FACTS[name].lift)
    admin.set_faults(seed=23, dlr_url=f"{receiver.base_url}/dlr?token={receiver.secret}")
    admin.clock(freeze=True)
    try:
        yield admin
    finally:
        admin.reset()  # the clock runs again


# ---- helpers -----------------------------------------------------------------------------------------------


def wait_for(condition: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


def inbox(results: str, provider: str, message_ids: list[str]) -> pl.DataFrame:
    """The receiver's reports about these messages of the provider."""
    return read_all(dlr_inbox(results), REPORT_SCHEMA).filter(
        pl.col("provider") == provider, pl.col("provider_message_id").is_in(message_ids)
    )


def reports_arrived(sandbox: SandboxClient, results: str, provider: str, distinct: int) -> None:
    """Until the receiver acknowledged every report the sandbox released (copies included; reports the frozen
    clock has not reached wait), and the inbox holds `distinct` different reports about the provider's
    messages: what reconcile reads. Acknowledged means durable; it may become readable a moment later."""
    ids = truth(sandbox, FACTS[provider].emulator)["truth_id"].to_list()

    def done() -> bool:
        s = sandbox.callbacks()
        assert s["abandoned"] == 0, s
        if s["queued"] or s["reports_acknowledged"] != s["reports"] or s["reports"] < distinct:
            return False
        return inbox(results, provider, ids)["report_id"].n_unique() >= distinct

    wait_for(done, f"{distinct} delivery reports about {provider} messages in the receiver's inbox")


def send(
    sandbox: SandboxClient, tmp_path: Path, results: str, provider: str, cid: str, digits: str, n: int
) -> dict[str, int]:
    """A campaign of `n` rows through the campaign flow, in requests of 10; its count of rows by status."""
    source = tmp_path / f"{cid}.csv"
    with source.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["phone", "name"])
        w.writerows([f"{digits}{i:05d}", f"N{i}"] for i in range(n))
    facts = FACTS[provider]
    content = {} if facts.template else {"body": "Hi {{name}}"}
    fields = {"campaign_id": cid, "provider": provider, "source": str(source), "results": results,
              "base_url": sandbox.base_url, "rate": 1000, "batch_size": 10}  # fmt: skip
    by_status: dict[str, int] = send_campaign(
        CampaignSpec.model_validate(fields | facts.spec_fields(**content))
    )["by_status"]
    return by_status


def retried(out: dict[str, Any]) -> int:
    """Rows a retry flow sent: an attempt's row count, or the 0 of a retry that found nothing to do."""
    n: int = out["rows"] if "rows" in out else out["retried"]
    return n


def truth(sandbox: SandboxClient, emulator: str) -> pl.DataFrame:
    """The ledger's final word on each message the provider took, by phone."""
    return pl.DataFrame(sandbox.ledger(provider=emulator), infer_schema_length=None).select(
        pl.col("to").alias("phone"),
        pl.col("message_id").alias("truth_id"),
        pl.col("key").cast(pl.String).alias("truth_key"),
        pl.col("batch_key").cast(pl.String).alias("truth_batch_key"),
        pl.col("delivery_status").alias("truth_status"),
        pl.col("delivery_error_code").cast(pl.String).alias("truth_code"),
        pl.col("delivery_at").str.to_datetime(time_zone="UTC").alias("truth_at"),
    )


def parts(results: str, cid: str) -> int:
    paths = CampaignPaths(results, cid)
    return sum(len(storage.list_files(f"{f}/", suffix=".parquet")) for f in (paths.delivery, paths.settled))


def facts_of(results: str, cid: str) -> pl.DataFrame:
    return storage.read_parquet(f"{CampaignPaths(results, cid).delivery}/")


def reconciled(results: str, cid: str) -> dict[str, Any]:
    out: dict[str, Any] = reconcile(campaign_id=cid, results=results)
    return out


def matches_the_ledger(view: pl.DataFrame, ledger: pl.DataFrame) -> pl.DataFrame:
    """The view joined to the ledger by message id, after checking that each row whose message the provider
    holds has the ledger's final word, reached at the ledger's moment (the report's own time, to the
    microsecond), learnt by webhook; rows without a message id have no delivery word at all."""
    joined = view.join(ledger, left_on="provider_message_id", right_on="truth_id", how="left", coalesce=False)
    known = joined.filter(pl.col("provider_message_id").is_not_null())
    assert known["truth_id"].null_count() == 0
    got = known.sort("row_index").select(
        "status", "delivery_status", "delivery_error_code", "delivery_reported_at", "delivery_source"
    )
    want = known.sort("row_index").select(
        pl.lit("accepted").alias("s"), "truth_status", "truth_code", "truth_at", pl.lit("webhook").alias("w")
    )
    assert got.rows() == want.rows()
    assert joined.filter(pl.col("provider_message_id").is_null())["delivery_status"].null_count() == (
        view.height - known.height
    )
    return joined


# ---- the webhook providers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", WEBHOOK)
def test_reports_reconcile_to_the_ledger_and_retry_resends_the_fixable_once(
    provider: str, sandbox: SandboxClient, results: str, tmp_path: Path
) -> None:
    facts = FACTS[provider]
    emulator, fixes = facts.emulator, sorted(facts.caps.resend_fixes)
    cid = f"wh-{provider}"
    # Half the messages end undelivered, with one of the vendor's four codes; a share of reports is posted twice.
    sandbox.set_faults(undelivered_share=0.5, dlr_duplicate_share=0.3, dlr_delay_ms=DELAY_S * 1000)
    assert send(sandbox, tmp_path, results, provider, cid, DIGITS[provider], N)["accepted"] == N
    ledger = truth(sandbox, emulator)
    assert ledger.height == N and ledger["phone"].n_unique() == N

    # Before the final states: only the pending reports are out, and every row is pending.
    reports_arrived(sandbox, results, provider, N)
    assert sandbox.callbacks()["scheduled"] == N  # the final reports wait for the clock
    early = reconciled(results, cid)
    assert early["facts"] == {"pending": N} and early["facts_by_source"] == {"webhook": N}
    assert early["left"] == {"accepted": {"pending": N}} and early["settlements"] == {}

    sandbox.clock(advance=DELAY_S + 1)
    reports_arrived(sandbox, results, provider, 2 * N)
    assert sandbox.callbacks()["reports"] > 2 * N  # duplicates were posted
    took = inbox(results, provider, ledger["truth_id"].to_list())
    # The receiver took every report, copies included (a copy in the same batch as its original is dropped).
    assert took["report_id"].n_unique() == 2 * N and took.height >= 2 * N

    late = reconciled(results, cid)
    assert sum(late["facts"].values()) == N and late["settlements"] == {} and late["left"] == {}
    view = matches_the_ledger(current_view(results, cid), ledger)
    undelivered = view.filter(pl.col("delivery_status") == "undelivered")
    fixable = undelivered.filter(pl.col("delivery_error_code").is_in(fixes))
    assert 0 < fixable.height < undelivered.height  # both kinds, so the retry's choice is tested
    # Duplicates count once: one pending and one final fact per row, nothing more.
    written = facts_of(results, cid)
    assert written.height == 2 * N
    assert written.group_by("row_index", "delivery_status").len()["len"].max() == 1

    # Again: nothing new, nothing written.
    before = parts(results, cid)
    again = reconcile_campaign(results, cid)
    assert again.facts == {} and again.settlements == {} and again.looked_at == 0
    assert parts(results, cid) == before

    # The retry: the undelivered rows a re-send can fix, as new messages (to be delivered this time).
    sandbox.set_faults(undelivered_share=0.0)
    out = retry_failed(campaign_id=cid, results=results, include_undelivered=True)
    after = truth(sandbox, emulator)
    new = after.join(ledger.select("truth_id"), on="truth_id", how="anti")
    assert out["attempt"] == 2 and retried(out) == fixable.height
    # Exactly the fixable rows, once each.
    assert sorted(new["phone"]) == sorted(fixable["phone"])
    second = current_view(results, cid).join(
        view.select("row_index", old_key="idempotency_key"), on="row_index"
    )
    resent = second.filter(pl.col("attempt") == 2).join(new, on="phone")
    assert resent.height == fixable.height and set(resent["status"]) == {"accepted"}
    assert (resent["idempotency_key"] != resent["old_key"]).all()  # a new message, a new key
    assert (resent["provider_message_id"] == resent["truth_id"]).all()
    if ECHOES_KEY[provider]:  # the row key went on the wire with the message
        assert (resent["truth_key"] == resent["idempotency_key"]).all()
    else:  # sent.dm: one key per request, none of the first attempt's
        assert not set(resent["truth_batch_key"]) & set(ledger["truth_batch_key"])
    # The old attempt's undelivered facts are not the new messages': a second retry re-sends nothing.
    assert resent["delivery_status"].null_count() == resent.height
    assert retried(retry_failed(campaign_id=cid, results=results, include_undelivered=True)) == 0
    assert truth(sandbox, emulator).height == after.height

    # The re-sent messages' own reports: every row's current message is the ledger's, with its final word.
    sandbox.clock(advance=DELAY_S + 1)
    reports_arrived(sandbox, results, provider, 2 * N + 2 * fixable.height)
    assert reconcile_campaign(results, cid).facts == {"delivered": fixable.height}
    final = matches_the_ledger(current_view(results, cid), truth(sandbox, emulator))
    assert set(final.filter(pl.col("attempt") == 2)["delivery_status"]) == {"delivered"}
    assert retried(retry_failed(campaign_id=cid, results=results, include_undelivered=True)) == 0
    assert truth(sandbox, emulator).height == after.height


@pytest.mark.parametrize("provider", WEBHOOK)
def test_a_report_settles_an_unknown_row_where_it_names_it(
    provider: str, sandbox: SandboxClient, results: str, tmp_path: Path
) -> None:
    """A request processed but whose answer was lost (five times over: the engine gives up) leaves its rows
    `unknown`. A report naming such a row by the key it echoes proves the provider holds its message: the row
    is settled `accepted`. sent.dm's reports carry no key of ours, so its rows stay `unknown` (`no_report`)
    until a retry re-sends their request under the same key and sent.dm answers with the messages it has."""
    facts, echoes = FACTS[provider], ECHOES_KEY[provider]
    cid = f"wh-lost-{provider}"
    sandbox.set_faults(undelivered_share=0.5, dlr_duplicate_share=0.3)  # final at once: no delay
    sandbox.set_faults(provider=facts.emulator, next_drop_after=5)
    assert send(sandbox, tmp_path, results, provider, cid, LOST_DIGITS[provider], LOST)["unknown"] == LOST
    ledger = truth(sandbox, facts.emulator)
    assert ledger.height == LOST  # the first request's messages, once: the others were answered from them
    reports_arrived(sandbox, results, provider, 2 * LOST)

    # The scheduled flow: every recent campaign under the results location, from one read of the inbox.
    every = reconcile_recent(results=results)
    assert every["failed"] == {}
    out = every["campaigns"][cid]
    if echoes:
        assert out["settlements"] == {"accepted": LOST} and out["left"] == {}
        assert sum(out["facts"].values()) == LOST  # the final word only: it beats the pending one
        assert retried(retry_failed(campaign_id=cid, results=results)) == 0
    else:
        assert out["settlements"] == {} and out["facts"] == {}
        assert out["left"] == {"unknown": {"no_report": LOST}}
        assert retried(retry_failed(campaign_id=cid, results=results)) == LOST
        assert truth(sandbox, facts.emulator).height == LOST  # the same request, answered, not sent again
        assert reconcile_campaign(results, cid).facts_by_source == {"webhook": LOST}
    view = matches_the_ledger(current_view(results, cid), ledger)
    assert view["provider_message_id"].null_count() == 0 and set(view["status"]) == {"accepted"}
    assert reconcile_campaign(results, cid).facts == {}


# ---- robase: no delivery reports ---------------------------------------------------------------------------


def test_robase_reports_nothing_and_nothing_is_resent(
    sandbox: SandboxClient, results: str, tmp_path: Path
) -> None:
    cid = "wh-robase"
    sandbox.set_faults(undelivered_share=0.5, dlr_duplicate_share=0.3)  # final at once: no delay
    assert send(sandbox, tmp_path, results, "robase", cid, DIGITS["robase"], N)["accepted"] == N
    ledger = truth(sandbox, "robase")
    # The sandbox knows some messages were not delivered, but robase tells nobody: no report is posted.
    assert ledger.height == N and "undelivered" in set(ledger["truth_status"])
    assert sandbox.callbacks()["reports"] == 0

    out = reconciled(results, cid)
    assert out["facts"] == {} and out["settlements"] == {} and out["parts_written"] == 0
    assert out["no_delivery_reports"] == {"robase": N}
    assert out["left"] == {"accepted": {"no_delivery_reports": N}}
    assert parts(results, cid) == 0
    view = current_view(results, cid)
    assert set(view["status"]) == {"accepted"} and view["delivery_status"].null_count() == N

    # Nothing to re-send, even naming every code robase's messages could fail with: no fact says so.
    codes: list[str] = sorted(ledger["truth_code"].drop_nulls().unique())
    for named in (None, codes):
        out = retry_failed(
            campaign_id=cid, results=results, include_undelivered=True, undelivered_codes=named
        )
        assert retried(out) == 0
    assert truth(sandbox, "robase").height == N
