"""A sent.dm campaign end to end: the campaign flow under Prefect's test harness, the sent.dm emulator on
loopback, and the results Parquet checked row for row against the sandbox ledger."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest
from provider_facts import FACTS
from support import prefect_harness, provider_sandbox

from smscast import storage
from smscast.campaign import CampaignSpec
from smscast.flows.campaign import send_campaign
from smscast.results import CampaignPaths
from smscast.servers.sandbox import SandboxServer

pytestmark = pytest.mark.integration

KEY = FACTS["sent-dm"].api_key("sdm-e2e-key")
N = 60
TIERS = ("gold", "silver", "bronze")


@pytest.fixture(scope="module", autouse=True)
def prefect_api() -> Iterator[None]:
    with prefect_harness():
        yield


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxServer]:
    with provider_sandbox("sent-dm", KEY) as server:
        yield server


def write_csv(path: Path) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["phone", "tier"])
        for i in range(N):
            phone = "+1 415 555 " + f"{i:04d}" if i != 7 else "555-0107"  # row 7: no country code
            w.writerow([phone, TIERS[i % 3]])
    return path


def test_campaign_results_match_the_ledger(sandbox: SandboxServer, tmp_path: Path) -> None:
    sandbox.client.reset()
    # sent.dm leaves refused recipients out of its answer: numbers ending in 13 (0013, 0113 … here 0013).
    sandbox.client.set_faults(provider="sent-dm", reject_suffixes=["13", "42"])
    results = tmp_path / "results"
    spec = CampaignSpec(
        campaign_id="sdm-e2e",
        provider="sent-dm",
        source=str(write_csv(tmp_path / "r.csv")),
        results=str(results),
        template="tmpl_tier_news",
        template_vars=("tier",),
        base_url=sandbox.base_url,
    )
    summary = send_campaign(spec)

    # The attempt's results: every Parquet part of attempt 1.
    out = storage.read_parquet(CampaignPaths(str(results), "sdm-e2e").attempt(1).dir).sort("row_index")
    assert out.height == N and out["row_index"].to_list() == list(range(N))
    assert summary["by_status"] == {"accepted": 57, "invalid": 1, "rejected": 2, "failed": 0, "unknown": 0}
    assert out.filter(pl.col("status") == "invalid")["error_code"].to_list() == ["phone_needs_country"]
    rejected = out.filter(pl.col("status") == "rejected")
    assert rejected["phone"].to_list() == ["+14155550013", "+14155550042"]
    assert set(rejected["error_code"]) == {"recipient_rejected"}

    ledger = pl.DataFrame(sandbox.client.ledger(provider="sent-dm"))
    accepted = out.filter(pl.col("status") == "accepted")
    # Every accepted row has exactly one ledger entry with its phone, and the ledger holds nothing else.
    assert ledger.height == accepted.height == 57
    assert ledger["to"].n_unique() == ledger.height
    joined = accepted.join(ledger, left_on="phone", right_on="to", how="inner")
    assert joined.height == accepted.height
    assert (joined["provider_message_id"] == joined["message_id"]).all()
    # One template request per tier: each message carried its own row's parameters (row i has TIERS[i % 3]).
    sent_tiers = [json.loads(b)["parameters"]["tier"] for b in joined["body"]]
    assert sent_tiers == [TIERS[i % 3] for i in joined["row_index"]]
    assert joined["batch_key"].n_unique() == 3 and (joined["provider_batch_ref"] == joined["batch"]).all()
    # Nothing accepted twice, nothing sent for the invalid or rejected rows.
    assert not set(ledger["to"]) & set(out.filter(pl.col("status") != "accepted")["phone"])

    # Re-running the finished campaign sends nothing more.
    before = sandbox.client.stats()["providers"]["sent-dm"]["requests"]
    send_campaign(spec)
    assert sandbox.client.stats()["providers"]["sent-dm"]["requests"] == before
