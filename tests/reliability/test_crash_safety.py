"""Crash safety of interrupted and stalled runs, proved with the sandbox ledger: regression tests for four bugs
this suite found (each was a strict xfail until commit 90a9b12 fixed it). Three would have texted Postman
recipients twice, which issue 4 forbids:

* test_resuming_an_interrupted_multi_shard_retry_sends_nothing_twice
      `smscast retry` after a retry attempt died with some of its shards' results written planned a NEW
      attempt instead of resuming the interrupted one, ignoring its plan and journal: batches the dead
      attempt had sent (and journalled) were sent again.
* test_a_run_that_lost_its_lock_does_not_overwrite_the_new_runs_results
      a stalled run (a lost worker: paused VM, frozen container) whose lease another run took over went on,
      when it woke, to send a few batches and then write its view of the attempt — every row it had not
      sent `failed: aborted` — over the results of the run that had completed the campaign; `smscast retry`
      then re-sent delivered rows.
* test_a_holder_whose_heartbeat_fails_stops_once_its_lease_has_run_out
      the lock's heartbeat swallowed storage errors and never set `lost`, so a run whose lease had expired
      (and been taken over) kept sending for as long as its storage calls failed.
* test_rows_refused_with_503_before_a_crash_are_not_left_unknown
      the journal's intent was written once, before a batch's first attempt, and kept through its retries:
      after a crash, batches whose every request had been refused unprocessed (503) were `unknown` — rows
      never sent, which `smscast retry` never sends for Postman.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import polars as pl
import pytest
from reliability.invariants import check_campaign
from reliability.processes import CliRun
from reliability.report import Report
from reliability.soak import Soak
from support import ledger_frame

from smscast import storage
from smscast.lock import CampaignLock
from smscast.runtime import Stop
from smscast.tasks.current import current_results

pytestmark = pytest.mark.integration

DRIVER = """
import json, sys
from smscast.flows.campaign import send_campaign
from smscast.campaign import CampaignSpec
from smscast.errors import SmscastError
try:
    send_campaign(CampaignSpec.model_validate(json.loads(sys.argv[1])))
except SmscastError as exc:
    print(f"error: {exc}")
    sys.exit(1)
"""


def wait_for(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.mark.parametrize("soak", ["postman"], indirect=True)
def test_resuming_an_interrupted_multi_shard_retry_sends_nothing_twice(
    soak: Soak, soak_report: Report
) -> None:
    """A campaign started with several shards (`shard_batches`, a field of the Prefect form and the Python
    API; from the command line any retry of more than 100,000 rows is sharded the same way) whose first
    attempt failed as a whole (refused credentials), then a `smscast retry` killed after two of its three
    shards wrote their results, then `smscast retry` again."""
    c = soak.campaign("bug-multishard-retry", 3000)
    soak.reset(latency_ms=1)
    spec = {
        "campaign_id": c.cid, "provider": "postman", "source": str(c.source), "results": soak.results,
        "base_url": soak.server.base_url, **soak.facts.spec_fields(body="Hi {{name}}"),
        "batch_size": 100, "shard_batches": 10, "rate": 400, "concurrency": 4,
    }  # fmt: skip
    env = soak.env()
    first = CliRun(
        [json.dumps(spec)],
        {**env, soak.facts.key_env: "a-wrong-key"},
        soak.logs / "bug-multishard-attempt1.log",
        command=[sys.executable, "-c", DRIVER],
    )
    assert first.wait(300) == 1 and "credentials" in first.output(), first.tail()

    soak.client.set_faults(provider=soak.emu, latency_ms=600)
    retry = soak.start(c, "retry")
    second = soak.attempt(c, 2)
    wait_for(
        lambda: (
            retry.poll() is not None
            or (bool(second.shard_parts()) and soak.client.health()["entries"] >= 2300)
        ),
        300,
        "two shards' results and the third shard under way",
    )
    assert retry.poll() is None, retry.tail()
    retry.kill()
    soak_report.add_interruption(soak.facts.name, "retry-persist")
    time.sleep(1.0)
    soak.client.set_faults(provider=soak.emu, latency_ms=1)
    soak.retry_until_done(c)
    verdict = check_campaign(soak, c)
    soak_report.add_verdict(verdict)
    print(verdict.summary())
    assert not verdict.problems, verdict.problems


@pytest.mark.parametrize("soak", ["postman"], indirect=True)
def test_a_run_that_lost_its_lock_does_not_overwrite_the_new_runs_results(
    soak: Soak, soak_report: Report
) -> None:
    """A lost worker: the run is frozen (SIGSTOP of its process group) mid-send, its lease runs out, a second
    run takes the campaign over and completes it, then the first wakes up (SIGCONT)."""
    c = soak.campaign("bug-lost-worker", 3000)
    # Slow answers keep the run sending long after the 600th entry (30 requests of 100 at ~1 s each, 4 at a
    # time: ~7 s), so that on a loaded machine it is still running when it is frozen.
    soak.reset(latency_ms=1000)
    stalled = soak.start(c)
    wait_for(lambda: stalled.poll() is not None or soak.client.health()["entries"] >= 600, 300, "sending")
    assert stalled.poll() is None, stalled.tail()
    os.killpg(stalled.pid, signal.SIGSTOP)
    soak_report.add_interruption(soak.facts.name, "stall")
    try:
        soak.wait_out_lease(c)
        soak.client.set_faults(provider=soak.emu, latency_ms=1)
        heir = soak.run(c)
        assert heir.rc == 0, heir.note
        healthy = check_campaign(soak, c)
        assert not healthy.problems, healthy.problems  # the takeover itself is right
        entries = soak.client.health()["entries"]
    finally:
        os.killpg(stalled.pid, signal.SIGCONT)
    rc = stalled.wait(300)
    assert rc != 0 and "another run took over" in stalled.output(), stalled.tail()
    # Nothing new may go out after waking. What may still land are the requests the freeze caught half-written
    # (httpx writes a request in several steps, yielding between them): their batches' intents were on record,
    # so the heir left their rows `unknown` and not in the ledger. Any other entry would be a row the heir had
    # sent, i.e. a duplicate, which the verdict below refuses.
    on_the_wire = healthy.unknown - healthy.unknown_in_ledger
    landed = soak.client.health()["entries"] - entries
    assert 0 <= landed <= on_the_wire, f"the stalled run sent again after waking up: {landed} > {on_the_wire}"
    soak.retry_until_done(c)
    verdict = check_campaign(soak, c)
    soak_report.add_verdict(verdict)
    print(verdict.summary())
    assert not verdict.problems, verdict.problems


def test_a_holder_whose_heartbeat_fails_stops_once_its_lease_has_run_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_put_if = storage.put_if

    def put_if(*args, **kwargs):  # type: ignore[no-untyped-def]
        if threading.current_thread().name.startswith("lock-"):  # only the heartbeat's renewals fail
            raise OSError("results storage unreachable")
        return real_put_if(*args, **kwargs)

    monkeypatch.setattr(storage, "put_if", put_if)
    results = str(tmp_path / "res")
    holder = CampaignLock(results, "c", lease=1.5)
    holder.acquire()
    stop = Stop(holder.held)  # what dispatch gives the shards: checked before every request
    try:
        assert not stop.is_set()
        time.sleep(1.7)  # renewals every 0.5 s, all failed: the lease is over
        heir = CampaignLock(results, "c", lease=30)
        heir.acquire()  # another run takes the campaign over, as it should
        assert stop.is_set(), "the old holder would go on sending beside the new one"
        assert stop.code == "lock_lost"
    finally:
        holder.release()


@pytest.mark.parametrize("soak", ["postman"], indirect=True)
def test_rows_refused_with_503_before_a_crash_are_not_left_unknown(soak: Soak, soak_report: Report) -> None:
    """The first six requests are answered 503 (nothing processed); their batches wait for a retry behind the
    queue when the run is killed mid-send. Only the batches that can be in flight at the kill (two per
    shard, and one whose outcome is being written) may be in doubt."""
    c = soak.campaign("bug-503-unknown", 3000)
    soak.reset(latency_ms=soak.latency_for(c, 6.0), next_5xx=6)
    killed = soak.run_and_kill(c, "send@40", rng=None)
    assert killed.killed, killed.note
    soak_report.add_kills(soak.facts.name, c)
    soak.client.set_faults(provider=soak.emu, latency_ms=1)
    soak.complete(c)
    verdict = check_campaign(soak, c)
    soak_report.add_verdict(verdict)
    assert not verdict.problems, verdict.problems
    ledger = set(ledger_frame(soak.client, soak.emu)["to"].to_list())
    unknown = current_results(soak.results, c.cid).filter(pl.col("status") == "unknown")
    never_sent = [p for p in unknown["phone"].to_list() if p not in ledger]
    print(f"{len(unknown)} unknown rows, {len(never_sent)} of them never reached the provider")
    assert len(never_sent) <= 300, f"{len(never_sent)} rows never sent are `unknown`"
