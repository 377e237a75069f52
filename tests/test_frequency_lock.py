"""Frequency caps across campaigns that count at the same moment (tasks/frequency.py `counting_alone`).

Two campaigns under one results location, each with a cap of one message a day, to the same numbers. The first
is held inside its count until the second has arrived at its own, so that without the lock both would count
before either had a plan on record, and both would send. With it, the second waits, counts the first's planned
rows, and sends nothing; the sandbox's ledger shows each number once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from support import flow_sandbox, ledger_frame, write_recipients

from smscast import storage
from smscast.campaign import CampaignSpec
from smscast.lock import LeaseLock
from smscast.results import frequency_lock
from smscast.servers.sandbox import SandboxServer
from smscast.tasks import frequency

KEY = "frequency-lock-key"
ROWS = 6
WAIT = 120.0  # generous: each side only waits for the other to reach a point, never for a time


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxServer]:
    with flow_sandbox(KEY) as server:
        yield server


def capped(campaign_id: str, source: Path, results: str, base_url: str) -> CampaignSpec:
    return CampaignSpec(
        campaign_id=campaign_id,
        source=str(source),
        results=results,
        base_url=base_url,
        body="Hi {{name}}",
        max_per_recipient=1,
        per_window="24h",
    )


@pytest.mark.integration
def test_a_campaign_counting_while_another_plans_waits_and_counts_its_rows(
    sandbox: SandboxServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from smscast.flows.campaign import send_campaign

    sandbox.client.reset()
    results = str(tmp_path / "res")
    source = write_recipients(tmp_path / "r.csv", ROWS)
    first_counting = threading.Event()
    second_arrived = threading.Event()  # the second campaign reached its count, or the lock before it
    count = frequency.recent_messages
    acquire = LeaseLock.acquire

    def recent_messages(results: str, *, since: datetime, now: datetime, exclude_campaign: str | None) -> Any:
        if exclude_campaign == "second":
            second_arrived.set()
        found = count(results, since=since, now=now, exclude_campaign=exclude_campaign)
        if exclude_campaign == "first":
            first_counting.set()
            # Hold the first campaign between its count and its plan until the second is at its own count.
            assert second_arrived.wait(WAIT), "the second campaign never reached its count"
        return found

    def arrive(self: LeaseLock, wait: float | None = None) -> None:
        if self.uri == frequency_lock(results) and first_counting.is_set():
            second_arrived.set()
        acquire(self, wait)

    monkeypatch.setattr(frequency, "recent_messages", recent_messages)
    monkeypatch.setattr(LeaseLock, "acquire", arrive)

    summaries: dict[str, dict[str, Any]] = {}
    errors: list[BaseException] = []

    def run(campaign_id: str) -> None:
        try:
            summaries[campaign_id] = send_campaign(capped(campaign_id, source, results, sandbox.base_url))
        except BaseException as exc:  # reported below, with the other thread's outcome
            errors.append(exc)

    first = threading.Thread(target=run, args=("first",))
    first.start()
    assert first_counting.wait(WAIT), "the first campaign never counted"
    second = threading.Thread(target=run, args=("second",))
    second.start()
    first.join(WAIT * 2)
    second.join(WAIT * 2)
    assert not first.is_alive() and not second.is_alive()
    assert not errors, errors

    assert summaries["first"]["by_status"]["accepted"] == ROWS
    # The second counted the first's planned rows: every number had its one message of the day.
    second_counts = {k: v for k, v in summaries["second"]["by_status"].items() if v}
    assert second_counts == {"suppressed": ROWS}
    ledger = ledger_frame(sandbox.client, "generic")
    assert ledger.height == ROWS and ledger["to"].n_unique() == ROWS
    reasons = pl.read_parquet(f"{results}/campaign=second/attempt=1/*.parquet")["error_code"].unique()
    assert reasons.to_list() == ["frequency_cap"]
    assert not storage.exists(frequency_lock(results))  # released by both


def test_a_campaign_without_a_cap_takes_no_location_lock(tmp_path: Path) -> None:
    results = str(tmp_path / "res")
    spec = CampaignSpec(campaign_id="c", source="s", results=results, body="hi")
    with frequency.counting_alone(spec, logging.getLogger("test")):
        assert not storage.exists(frequency_lock(results))
    capped_spec = spec.model_copy(update={"max_per_recipient": 2, "per_window": "1h"})
    with frequency.counting_alone(capped_spec, logging.getLogger("test")):
        assert storage.exists(frequency_lock(results))
    assert not storage.exists(frequency_lock(results))
