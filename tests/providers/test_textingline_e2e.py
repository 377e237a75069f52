"""A textingline campaign end to end: the Prefect flow (test harness), the emulator over loopback, and the
results Parquet checked row for row against the sandbox ledger."""

from __future__ import annotations

import asyncio
import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest
from provider_facts import FACTS
from support import prefect_harness

from smscast import storage
from smscast.campaign import CampaignSpec
from smscast.errors import CampaignStopError
from smscast.flows.campaign import send_campaign
from smscast.providers.base import StatusLookup
from smscast.providers.registry import make_provider
from smscast.results import CampaignPaths
from smscast.sandbox.emulators import textingline as tl
from smscast.servers.sandbox import SandboxServer
from smscast.status import Status

pytestmark = pytest.mark.integration

TEXTINGLINE = FACTS["textingline"]
KEY = TEXTINGLINE.api_key("tl-e2e")  # key_id:secret


@pytest.fixture(scope="module", autouse=True)
def prefect_api() -> Iterator[None]:
    with prefect_harness():
        yield


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxServer]:
    # The documented 5 requests a minute would make each campaign here take a minute: lifted for the test.
    emulator = TEXTINGLINE.emulator
    with SandboxServer(
        emulators=[emulator], api_keys={emulator: KEY}, provider_knobs={emulator: TEXTINGLINE.lift}
    ) as server:
        mp = pytest.MonkeyPatch()
        mp.setenv(TEXTINGLINE.key_env, KEY)
        try:
            yield server
        finally:
            mp.undo()


@pytest.fixture(autouse=True)
def clean(sandbox: SandboxServer) -> None:
    sandbox.client.reset()


def phone(i: int) -> str:
    return f"+4474009{i:05d}"


def write_csv(path: Path, n: int, special: dict[int, str] | None = None) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["phone", "body"])
        w.writeheader()
        for i in range(n):
            w.writerow(
                {"phone": phone(i), "body": (special or {}).get(i, f"Hi N{i}, order #{1000 + i} shipped")}
            )
    return path


def spec_for(sandbox: SandboxServer, tmp_path: Path, cid: str, source: Path, **kw: Any) -> CampaignSpec:
    return CampaignSpec(
        campaign_id=cid, provider="textingline", source=str(source), results=str(tmp_path / "res"),
        base_url=sandbox.base_url, sender=kw.pop("sender", TEXTINGLINE.sender), rate=TEXTINGLINE.test_rate, **kw,
    )  # fmt: skip


def results_of(tmp_path: Path, cid: str) -> pl.DataFrame:
    return storage.read_parquet(CampaignPaths(str(tmp_path / "res"), cid).attempt(1).dir).sort("row_index")


def test_campaign_results_match_the_ledger_row_for_row(sandbox: SandboxServer, tmp_path: Path) -> None:
    source = write_csv(
        tmp_path / "r.csv",
        60,
        {7: "Hi N7, claim your SHAFT-TEST prize", 20: "Hi N20 \x07", 33: "x" * 641},
    )
    # Row 42 will be accepted into the job and then reported undelivered by the status lookup.
    sandbox.client.set_faults(provider="textingline", reject_suffixes=["00042"])
    summary = send_campaign(spec_for(sandbox, tmp_path, "tl-e2e", source))
    assert summary["by_status"] == {"accepted": 44, "invalid": 2, "rejected": 14, "failed": 0, "unknown": 0}

    res = results_of(tmp_path, "tl-e2e")
    assert res["row_index"].to_list() == list(range(60))
    # Pre-send rules kept two rows that would have refused their whole batch (33016, and the 640 limit).
    invalid = res.filter(pl.col("status") == "invalid")
    assert dict(zip(invalid["row_index"], invalid["error_code"], strict=True)) == {
        20: "invalid_characters",
        33: "body_too_long",
    }
    # The 58 valid rows went as one batch, refused for row 7 (33019), bisected 58 -> 29 -> 14: the 14 rows
    # with row 7 cannot be split under textingline's minimum of 10 and are rejected, saying why.
    rejected = res.filter(pl.col("status") == "rejected")
    assert rejected["row_index"].to_list() == list(range(14))
    assert set(rejected["error_code"]) == {"33019"}
    assert rejected["error_message"].str.contains("could not be isolated: textingline needs 10\\+").all()

    # Row for row: every accepted row has exactly one ledger entry with its phone, key and job; nothing else.
    accepted = res.filter(pl.col("status") == "accepted")
    ledger = pl.DataFrame(sandbox.client.ledger(provider="textingline"))
    assert ledger.height == accepted.height == 44
    assert ledger["to"].n_unique() == 44
    joined = accepted.join(ledger, left_on="phone", right_on="to", how="full", coalesce=True)
    assert joined.height == 44 and joined["row_index"].null_count() == 0 and joined["seq"].null_count() == 0
    assert (joined["idempotency_key"] == joined["key"]).all()
    assert (joined["provider_batch_ref"] == joined["batch"]).all()
    assert set(ledger["body"]) == {f"Hi N{i}, order #{1000 + i} shipped" for i in accepted["row_index"]}

    # Reconciliation: the (ASSUMED) status endpoint reports each accepted recipient by its job.
    provider = make_provider("textingline", base_url=sandbox.base_url)

    async def lookup() -> list[StatusLookup]:
        async with httpx.AsyncClient() as client:
            found = [
                await provider.lookup_status(client, ref) for ref in accepted["provider_batch_ref"].unique()
            ]
        return [s for batch in found for s in batch]

    statuses = {s.phone: s for s in asyncio.run(lookup())}
    assert set(statuses) == set(accepted["phone"])
    assert (
        statuses[phone(42)].status is Status.REJECTED and statuses[phone(42)].provider_status == "undelivered"
    )
    assert {s.status for p, s in statuses.items() if p != phone(42)} == {Status.ACCEPTED}


def test_daily_quota_stops_the_campaign_and_sends_nothing(sandbox: SandboxServer, tmp_path: Path) -> None:
    source = write_csv(tmp_path / "q.csv", 40)
    spec = spec_for(
        sandbox, tmp_path, "tl-quota", source, sender=tl.QUOTA_SENDER, batch_size=10, concurrency=1
    )
    # The flow writes every row's result, then fails loudly.
    with pytest.raises(CampaignStopError):
        send_campaign(spec)
    res = results_of(tmp_path, "tl-quota")
    assert (
        res.height == 40
        and set(res["status"]) == {"failed"}
        and set(res["error_code"]) <= {"33012", "aborted"}
    )
    assert "33012" in set(res["error_code"])
    assert sandbox.client.ledger(provider="textingline") == []
    # One refused request, not one per batch nor a retry loop on the quota's 429.
    assert sandbox.client.stats()["providers"]["textingline"]["requests"] == {"429": 1}
