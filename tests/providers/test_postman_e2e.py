"""A Postman campaign end to end, in Postman's test environment (20 rows per file): the campaign flow under
Prefect's test harness, the Postman emulator on loopback, and the results Parquet checked row for row against
the sandbox ledger."""

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

POSTMAN = FACTS["postman"]
KEY = POSTMAN.api_key("pm-e2e-key")
N = 60
LANGS = ("english", "chinese", "malay", "tamil")


@pytest.fixture(scope="module", autouse=True)
def prefect_api() -> Iterator[None]:
    with prefect_harness():
        yield


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxServer]:
    # Postman's test environment: the adapter plans files of at most 20 rows.
    with provider_sandbox("postman", KEY, **POSTMAN.test_env_vars) as server:
        yield server


def write_csv(path: Path) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["phone", "language", "recipient_name", "topic"])
        for i in range(N):
            language = "french" if i == 5 else LANGS[i % 4].upper() if i % 7 == 0 else LANGS[i % 4]
            name = "" if i == 9 else f"Person {i}"
            topic = f"=SUM(A{i})" if i == 11 else f"application #{i:05d}"
            w.writerow([f"+65 9100 {i:04d}", language, name, topic])
    return path


def test_campaign_results_match_the_ledger(sandbox: SandboxServer, tmp_path: Path) -> None:
    sandbox.client.reset()
    # Postman refuses a whole file for one bad row: recipients ending in 0013 and 0042 are row errors here,
    # and the engine bisects each refused file until they stand alone.
    sandbox.client.set_faults(provider="postman", reject_suffixes=["0013", "0042"])
    results = tmp_path / "results"
    spec = CampaignSpec(
        campaign_id="pm-e2e",
        provider="postman",
        source=str(write_csv(tmp_path / "r.csv")),
        results=str(results),
        template="campaign_e2e",
        template_vars=("recipient_name", "topic"),
        base_url=sandbox.base_url + POSTMAN.test_env_path,
    )
    summary = send_campaign(spec)

    # The attempt's results: every Parquet part of attempt 1.
    out = storage.read_parquet(CampaignPaths(str(results), "pm-e2e").attempt(1).dir)
    out = out.sort("row_index")
    assert out.height == N and out["row_index"].to_list() == list(range(N))
    assert summary["by_status"] == {"accepted": 56, "invalid": 2, "rejected": 2, "failed": 0, "unknown": 0}
    invalid = out.filter(pl.col("status") == "invalid")
    assert invalid.select("row_index", "error_code").rows() == [
        (5, "language_invalid"),
        (9, "template_var_missing"),
    ]
    rejected = out.filter(pl.col("status") == "rejected")
    assert rejected["phone"].to_list() == ["+6591000013", "+6591000042"]
    assert set(rejected["error_code"]) == {"parameter_invalid"}
    assert all("Validation failed: row 1: recipient" in m for m in rejected["error_message"].to_list())

    ledger = pl.DataFrame(sandbox.client.ledger(provider="postman"))
    accepted = out.filter(pl.col("status") == "accepted")
    # Every accepted row has exactly one ledger entry with its phone, and the ledger holds nothing else.
    assert ledger.height == accepted.height == 56
    assert ledger["to"].n_unique() == ledger.height
    assert sorted(ledger["to"].to_list()) == sorted(accepted["phone"].to_list())
    # Each accepted row's batch reference names the Postman batch that holds its phone.
    joined = accepted.join(ledger, left_on="phone", right_on="to", how="inner")
    assert joined.height == 56
    assert (joined["provider_batch_ref"] == "campaign_e2e/" + joined["batch"]).all()
    # Test environment: no file carried more than 20 rows.
    assert ledger.group_by("batch").len()["len"].max() <= 20  # type: ignore[operator]
    # The formula-looking cell went out neutralised; the upper-cased language was normalised.
    row11 = joined.filter(pl.col("row_index") == 11)
    assert row11["body"].item() == '{"recipient_name":"Person 11","topic":"\'=SUM(A11)"}'
