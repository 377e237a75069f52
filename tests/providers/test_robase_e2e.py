"""A robase campaign end to end: the campaign and retry flows under Prefect's test harness, the robase
emulator on loopback, and the results Parquet checked row for row against the sandbox ledger."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest
from provider_facts import FACTS
from support import prefect_harness, provider_sandbox

from smscast import storage
from smscast.campaign import CampaignSpec
from smscast.flows.campaign import send_campaign
from smscast.flows.retry import retry_failed
from smscast.results import CampaignPaths
from smscast.servers.sandbox import SandboxServer

pytestmark = pytest.mark.integration

ROBASE = FACTS["robase"]
KEY = ROBASE.api_key("rb_live_e2e")
N = 60
LATER = "2026-05-01T08:00:00Z"


@pytest.fixture(scope="module", autouse=True)
def prefect_api() -> Iterator[None]:
    with prefect_harness():
        yield


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxServer]:
    with provider_sandbox("robase", KEY) as server:
        yield server


def write_csv(path: Path) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["phone", "name", "send_at"])
        for i in range(N):
            send_at = LATER if i < 20 else ""
            if i == 50:
                send_at = "tomorrow morning"  # not ISO 8601: quarantined before sending
            w.writerow([f"+2348012{i:06d}", "" if i == 40 else f"N{i}", send_at])
    return path


def attempt(results: Path, n: int) -> pl.DataFrame:
    # The attempt's results: every Parquet part of attempt n.
    return storage.read_parquet(CampaignPaths(str(results), "rb-e2e").attempt(n).dir).sort("row_index")


def test_campaign_and_retry_match_the_ledger(sandbox: SandboxServer, tmp_path: Path) -> None:
    sandbox.client.reset()
    # robase refuses numbers ending in 13 for good (phone_invalid) and those ending in 27 for now.
    sandbox.client.set_faults(provider="robase", reject_suffixes=["13"], transient_suffixes=["27"])
    results = tmp_path / "results"
    spec = CampaignSpec(
        campaign_id="rb-e2e",
        provider="robase",
        source=str(write_csv(tmp_path / "r.csv")),
        results=str(results),
        sender=ROBASE.sender,
        body="Hi {{name}}, your ride is at 10:00am.",
        base_url=sandbox.base_url,
    )
    summary = send_campaign(spec)

    out = attempt(results, 1)
    assert out.height == N and out["row_index"].to_list() == list(range(N))
    assert summary["by_status"] == {"accepted": 56, "invalid": 2, "rejected": 1, "failed": 1, "unknown": 0}
    by_code = dict(zip(out["row_index"], out["error_code"], strict=True))
    assert (by_code[40], by_code[50], by_code[13], by_code[27]) == (
        "template_var_missing",
        "send_at_invalid",
        "phone_invalid",
        "carrier_unavailable",
    )

    ledger = pl.DataFrame(sandbox.client.ledger(provider="robase"))
    accepted = out.filter(pl.col("status") == "accepted")
    # Every accepted row has exactly one ledger entry with its phone, key and id; nothing else is there.
    assert ledger.height == accepted.height == 56 and ledger["to"].n_unique() == 56
    joined = accepted.join(ledger, left_on="phone", right_on="to", how="inner")
    assert joined.height == 56
    assert (joined["idempotency_key"] == joined["key"]).all()
    assert (joined["provider_message_id"] == joined["message_id"]).all()
    assert joined["body"].to_list() == [f"Hi N{i}, your ride is at 10:00am." for i in joined["row_index"]]
    # send_at is per call: the scheduled rows travelled together, apart from the others.
    scheduled = joined.filter(pl.col("row_index") < 20)["batch"].unique().to_list()
    now = joined.filter(pl.col("row_index") >= 20)["batch"].unique().to_list()
    assert len(scheduled) == 1 and len(now) == 1 and scheduled != now

    # The transient failure is retriable: the retry flow re-sends it with the same key.
    sandbox.client.set_faults(provider="robase", transient_suffixes=[])
    second = retry_failed(campaign_id="rb-e2e", results=str(results), base_url=sandbox.base_url)
    assert second["by_status"]["accepted"] == 1
    retried = attempt(results, 2)
    assert retried["row_index"].to_list() == [27] and retried["status"].to_list() == ["accepted"]
    assert (
        retried["idempotency_key"].item() == out.filter(pl.col("row_index") == 27)["idempotency_key"].item()
    )
    ledger = pl.DataFrame(sandbox.client.ledger(provider="robase"))
    assert ledger.height == 57 and ledger["to"].n_unique() == 57
    assert ledger.filter(pl.col("key") == retried["idempotency_key"].item())["to"].item() == "+2348012000027"
