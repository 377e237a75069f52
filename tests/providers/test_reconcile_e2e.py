"""Reconciliation end to end: a textingline and a Postman campaign sent through the campaign flow (Prefect's test
harness) to the sandbox on loopback, reconciled by the reconcile flow before and after their messages reach a
final state (the sandbox's clock, frozen and moved by hand), and the delivery facts and settlements compared row
for row with the sandbox ledger's truth."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from support import prefect_harness

from smscast import storage
from smscast.campaign import CampaignSpec
from smscast.flows.campaign import send_campaign
from smscast.flows.reconcile import reconcile
from smscast.flows.retry import retry_failed
from smscast.results import CampaignPaths
from smscast.sandbox.client import SandboxClient
from smscast.servers.sandbox import SandboxServer
from smscast.tasks.current import current_view
from smscast.tasks.reconcile import reconcile_campaign

pytestmark = pytest.mark.integration

# tests/providers/conftest.py: `admin` resets the sandbox and turns textingline's 5-a-minute limit off.
EMULATOR, API_KEY, QUIET_RATE_LIMIT = "textingline", "kid-rc:secret-rc", True
PM_KEY = "pm-rc-key"
DELAY_S = 60.0  # every message reaches its final state this long after acceptance, on the sandbox's clock


@pytest.fixture(scope="module", autouse=True)
def prefect_api() -> Iterator[None]:
    with prefect_harness():
        yield


@pytest.fixture(scope="module")
def server() -> Iterator[SandboxServer]:
    """conftest's `server`, serving both providers reconciled by lookup."""
    keys = {"textingline": API_KEY, "postman": PM_KEY}
    with SandboxServer(emulators=list(keys), api_keys=keys) as sbx, pytest.MonkeyPatch.context() as mp:
        mp.setenv("SMSCAST_TEXTINGLINE_API_KEY", API_KEY)
        mp.setenv("SMSCAST_POSTMAN_API_KEY", PM_KEY)
        yield sbx


@pytest.fixture
def sandbox(admin: SandboxClient) -> Iterator[SandboxClient]:
    """The sandbox with its clock frozen, so that "before" and "after" the final states are the test's to say."""
    admin.set_faults(seed=11)
    admin.set_faults(provider="postman", rate_limit_rps=0)
    admin.clock(freeze=True)
    try:
        yield admin
    finally:
        admin.reset()  # the clock runs again


def send(
    sandbox: SandboxClient, tmp_path: Path, cid: str, provider: str, n: int, digits: str, **spec: Any
) -> str:
    source = tmp_path / f"{cid}.csv"
    with source.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["phone", "name"])
        w.writerows([f"{digits}{i:05d}", f"N{i}"] for i in range(n))
    results = str(tmp_path / "results")
    summary = send_campaign(
        CampaignSpec.model_validate(
            {"campaign_id": cid, "provider": provider, "source": str(source), "results": results,
             "base_url": sandbox.base_url, "rate": 1000, "batch_size": 10, **spec}
        )
    )  # fmt: skip
    assert summary["by_status"]["accepted"] == n
    return results


def truth(sandbox: SandboxClient, provider: str) -> pl.DataFrame:
    """The ledger's final word on each message the provider took, by phone."""
    return pl.DataFrame(sandbox.ledger(provider=provider)).select(
        pl.col("to").alias("phone"),
        pl.col("message_id").alias("truth_id"),
        pl.col("delivery_status").alias("truth_status"),
        pl.col("delivery_error_code").cast(pl.String).alias("truth_code"),
        pl.col("delivery_at").str.to_datetime(time_zone="UTC").alias("truth_at"),
    )


def reconciled(results: str, cid: str) -> dict[str, Any]:
    out: dict[str, Any] = reconcile(campaign_id=cid, results=results)
    return out


def parts(results: str, cid: str) -> int:
    paths = CampaignPaths(results, cid)
    return sum(len(storage.list_files(f"{f}/", suffix=".parquet")) for f in (paths.delivery, paths.settled))


def test_textingline_facts_and_settlements_match_the_ledger(sandbox: SandboxClient, tmp_path: Path) -> None:
    # Some messages end undelivered (33030-33032), some fail at the carrier (33007, a message that exists),
    # and the job itself fails a share of recipients: never sent, no message, re-sendable.
    sandbox.set_faults(provider="textingline", undelivered_share=0.3, async_reject_share=0.2,
                       transient_suffixes=["7"], dlr_delay_ms=DELAY_S * 1000)  # fmt: skip
    spec = {"sender": "+18005559876", "body": "Hi {{name}}"}
    results = send(sandbox, tmp_path, "rc-tl", "textingline", 40, "+4474009", **spec)

    early = reconciled(results, "rc-tl")
    ledger = truth(sandbox, "textingline")
    rejected_by_job = sandbox.stats()["emulators"]["textingline"]["async_rejected"]
    assert rejected_by_job > 0 and ledger.height + rejected_by_job == 40
    # Before the final states: every message pending, every row still accepted and waiting.
    assert early["facts"] == {"pending": ledger.height} and early["settlements"] == {}
    assert early["left"] == {"accepted": {"pending": 40}} and early["batches_looked_up"] == 4

    sandbox.clock(advance=DELAY_S + 1)
    late = reconciled(results, "rc-tl")
    view = current_view(results, "rc-tl").join(ledger, on="phone", how="left").sort("row_index")
    sent, failed = (
        view.filter(pl.col("truth_status").is_not_null()),
        view.filter(pl.col("truth_status").is_null()),
    )
    # Row for row: each sent message's final fact is the ledger's; each recipient the job failed is settled
    # `failed` with textingline's transient code, and has no delivery fact.
    assert sent.select("status", "delivery_status", "delivery_error_code", "delivery_source").rows() == [
        ("accepted", s, c, "lookup") for s, c in sent.select("truth_status", "truth_code").rows()
    ]
    assert failed.height == rejected_by_job
    assert set(failed.select("status", "error_code", "delivery_status").rows()) == {("failed", "33007", None)}
    assert {"delivered", "undelivered"} <= set(sent["delivery_status"])
    # A message that exists and failed at the carrier (the `7` numbers the job sent) is a delivery failure.
    carrier = sent.filter(pl.col("phone").str.ends_with("7"))
    assert carrier.height > 0 and set(carrier["delivery_error_code"]) == {"33007"}
    assert late["settlements"] == {"failed": rejected_by_job} and late["left"] == {}

    # Again: nothing new, nothing written.
    before = parts(results, "rc-tl")
    again = reconcile_campaign(results, "rc-tl")
    assert parts(results, "rc-tl") == before and again.facts == {} and again.looked_at == 0


def test_postman_facts_match_the_ledger(sandbox: SandboxClient, tmp_path: Path) -> None:
    sandbox.set_faults(provider="postman", undelivered_share=0.3, transient_suffixes=["00003"],
                       dlr_delay_ms=DELAY_S * 1000)  # fmt: skip
    spec = {"template": "campaign_rc", "body": "Hi {{name}}", "language": "english"}
    results = send(sandbox, tmp_path, "rc-pm", "postman", 30, "+65910", **spec)

    early = reconciled(results, "rc-pm")
    assert early["facts"] == {"pending": 30} and early["batches_looked_up"] == 3

    sandbox.clock(advance=DELAY_S + 1)
    reconciled(results, "rc-pm")
    view = current_view(results, "rc-pm").join(truth(sandbox, "postman"), on="phone", how="left")
    assert view["truth_status"].null_count() == 0 and view.height == 30
    got = view.sort("row_index").select("delivery_status", "delivery_error_code", "delivery_reported_at")
    # Postman says when each message reached its state (updatedAt): the ledger's moment, to the microsecond.
    assert got.rows() == view.sort("row_index").select("truth_status", "truth_code", "truth_at").rows()
    assert {"delivered", "undelivered"} <= set(got["delivery_status"])
    assert "server_unknown_error" in set(got["delivery_error_code"])
    assert isinstance(got["delivery_reported_at"][0], datetime)

    before = parts(results, "rc-pm")
    assert reconcile_campaign(results, "rc-pm").facts == {} and parts(results, "rc-pm") == before


def test_retry_resends_the_undelivered_rows_a_resend_can_fix_once(
    sandbox: SandboxClient, tmp_path: Path
) -> None:
    # Postman: no idempotency, so a re-sent row shows in the ledger as a second message to the same phone.
    sandbox.set_faults(provider="postman", undelivered_share=0.6)  # final at once: no delay
    spec = {"template": "campaign_rt", "body": "Hi {{name}}", "language": "english"}
    results = send(sandbox, tmp_path, "rt-pm", "postman", 40, "+65920", **spec)
    reconciled(results, "rt-pm")
    first = current_view(results, "rt-pm")
    fixable = first.filter(pl.col("delivery_error_code") == "telco_unreachable_recipient")
    others = first.filter(pl.col("delivery_status") == "undelivered").height - fixable.height
    assert fixable.height > 0 and others > 0  # both kinds, so the choice is tested
    sent_before = len(sandbox.ledger(provider="postman"))

    out = retry_failed(campaign_id="rt-pm", results=results, include_undelivered=True)
    ledger = sandbox.ledger(provider="postman")
    resent = sorted(e["to"] for e in ledger[sent_before:])
    # Exactly the rows whose delivery failed for a reason a re-send can fix, once each.
    assert resent == sorted(fixable["phone"]) and out["attempt"] == 2
    second = current_view(results, "rt-pm").join(
        first.select("row_index", old_key="idempotency_key"), on="row_index"
    )
    again = second.filter(pl.col("attempt") == 2)
    assert again.height == fixable.height and set(again["status"]) == {"accepted"}
    assert (again["idempotency_key"] != again["old_key"]).all()  # a new message, a new key

    # Without --include-undelivered nothing of that is re-sent; with it, the new messages have no report yet.
    retry_failed(campaign_id="rt-pm", results=results)
    retry_failed(campaign_id="rt-pm", results=results, include_undelivered=True)
    assert len(sandbox.ledger(provider="postman")) == len(ledger)
