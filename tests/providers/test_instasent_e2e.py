"""An Instasent campaign end to end: the campaign flow under Prefect's test harness, the Instasent emulator on
loopback, and the results Parquet checked row for row against the sandbox ledger."""

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
from smscast.results import CampaignPaths
from smscast.servers.sandbox import SandboxServer

pytestmark = pytest.mark.integration

INSTASENT = FACTS["instasent"]
KEY = INSTASENT.api_key("ins-e2e-key")
N = 60


@pytest.fixture(scope="module", autouse=True)
def prefect_api() -> Iterator[None]:
    with prefect_harness():
        yield


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxServer]:
    with provider_sandbox("instasent", KEY) as server:
        yield server


def write_csv(path: Path) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["phone", "name"])
        for i in range(N):
            phone = f"+34 600 00{i:04d}" if i != 7 else "600 00 0007"  # row 7: no country code
            name = "Zoë 🎉" if i % 10 == 3 else f"Ana {i}"  # every tenth-plus-three needs UCS-2
            w.writerow([phone, name])
    return path


def test_campaign_results_match_the_ledger(sandbox: SandboxServer, tmp_path: Path) -> None:
    sandbox.client.reset()
    # Instasent refuses items one by one: numbers ending in 0013 and 0042 land in `errors`. And the first
    # request is processed but its connection dropped: the engine re-sends it with the same clientIds, and
    # Instasent's de-duplication must keep the ledger at one entry per phone.
    sandbox.client.set_faults(provider="instasent", reject_suffixes=["0013", "0042"], next_drop_after=1)
    results = tmp_path / "results"
    spec = CampaignSpec(
        campaign_id="ins-e2e",
        provider="instasent",
        source=str(write_csv(tmp_path / "r.csv")),
        results=str(results),
        sender=INSTASENT.sender,
        body="Hola {{name}}, tu pedido sale hoy.",
        batch_size=25,
    )
    spec = spec.model_copy(update={"base_url": sandbox.base_url})
    summary = send_campaign(spec)

    out = storage.read_parquet(CampaignPaths(str(results), "ins-e2e").attempt(1).dir).sort("row_index")
    assert out.height == N and out["row_index"].to_list() == list(range(N))
    assert summary["by_status"] == {"accepted": 57, "invalid": 1, "rejected": 2, "failed": 0, "unknown": 0}
    assert out.filter(pl.col("status") == "invalid")["error_code"].to_list() == ["phone_needs_country"]
    rejected = out.filter(pl.col("status") == "rejected")
    assert rejected["phone"].to_list() == ["+34600000013", "+34600000042"]
    assert set(rejected["error_code"]) == {"to:invalid"}

    ledger = pl.DataFrame(sandbox.client.ledger(provider="instasent"))
    accepted = out.filter(pl.col("status") == "accepted")
    # Every accepted row has exactly one ledger entry with its phone, and the ledger holds nothing else.
    assert ledger.height == accepted.height == 57
    assert ledger["to"].n_unique() == ledger.height
    joined = accepted.join(ledger, left_on="phone", right_on="to", how="inner")
    assert joined.height == 57
    # The clientId is our idempotency key, and the message id is the one Instasent gave.
    assert (joined["key"] == joined["idempotency_key"]).all()
    assert (joined["message_id"] == joined["provider_message_id"]).all()
    # UCS-2 rows (3, 23, 33, 43, 53; 13 is refused) went out with allowUnicode and were accepted, text intact.
    ucs2 = joined.filter(pl.col("encoding") == "UCS-2")
    assert ucs2.height == 5 and set(ucs2["body"]) == {"Hola Zoë 🎉, tu pedido sale hoy."}
    stats = sandbox.client.stats()["providers"]["instasent"]
    assert stats["requests"].get("drop_after") == 1 and stats["duplicates"] >= 1
