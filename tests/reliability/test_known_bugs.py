"""Open bugs the reliability suite found, each shown by a test that fails today (strict xfail: CI stays green,
and turns red the day a fix makes one pass, so that its marker is removed).

All four are about a run that is interrupted or stalled, and three end with Postman (no idempotency) texting
people twice, which is what issue 4 forbids:

* test_resuming_an_interrupted_multi_shard_retry_sends_nothing_twice
      `smscast retry` after a retry attempt died with some of its shards' results written plans a NEW
      attempt instead of resuming the interrupted one, ignoring its plan and journal: batches the dead
      attempt sent (and journalled) are sent again.
* test_a_run_that_lost_its_lock_does_not_overwrite_the_new_runs_results
      a stalled run (a lost worker: paused VM, frozen container) whose lease another run took over goes on,
      when it wakes, to write its view of the attempt — every row it had not sent `failed: aborted` — over
      the results of the run that completed the campaign; `smscast retry` then re-sends delivered rows.
* test_a_holder_whose_heartbeat_fails_stops_once_its_lease_has_run_out
      the lock's heartbeat swallows storage errors and never sets `lost`, so a run whose lease has expired
      (and been taken over) keeps sending for as long as its storage calls fail.
* test_rows_refused_with_503_before_a_crash_are_not_left_unknown
      the journal's intent is written once, before a batch's first attempt, and kept through its retries:
      after a crash, batches whose every request was refused unprocessed (503) are `unknown` — rows that were
      never sent, which `smscast retry` will never send (Postman's `unknown` is not re-sent).
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
from reliability.harness import CliRun, Soak, check_campaign, ledger_frame

from smscast import storage
from smscast.lock import CampaignLock
from smscast.progress import Stop
from tasks.current import current_results

pytestmark = pytest.mark.integration

DRIVER = """
import json, sys
from flows.campaign import send_campaign
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


@pytest.mark.xfail(
    strict=True,
    reason="retry flow numbers the next attempt from the parts on disk: an interrupted multi-shard retry "
    "attempt is not resumed, its journal is ignored and journalled batches are re-sent (Postman duplicates)",
)
@pytest.mark.parametrize("soak", ["postman"], indirect=True)
def test_resuming_an_interrupted_multi_shard_retry_sends_nothing_twice(soak: Soak) -> None:
    """A campaign started with several shards (`shard_batches`, a field of the Prefect form and the Python
    API; from the command line any retry of more than 100,000 rows is sharded the same way) whose first
    attempt failed as a whole (refused credentials), then a `smscast retry` killed after two of its three
    shards wrote their results, then `smscast retry` again."""
    c = soak.campaign("bug-multishard-retry", 3000)
    soak.reset(latency_ms=1)
    spec = {
        "campaign_id": c.cid, "provider": "postman", "source": str(c.source), "results": soak.results,
        "base_url": soak.server.base_url, "template": "soak_campaign", "body": "Hi {{name}}",
        "language": "english", "batch_size": 100, "shard_batches": 10, "rate": 400, "concurrency": 4,
    }  # fmt: skip
    env = soak.env()
    first = CliRun(
        [json.dumps(spec)],
        {**env, soak.setup.key_env: "a-wrong-key"},
        soak.logs / "bug-multishard-attempt1.log",
        command=[sys.executable, "-c", DRIVER],
    )
    assert first.wait(300) == 1 and "credentials" in first.output(), first.tail()

    soak.client.set_faults(provider=soak.emu, latency_ms=600)
    retry = soak.start(c, "retry")
    parts = f"{soak.attempt_dir(c, 2)}/"
    wait_for(
        lambda: (
            retry.poll() is not None
            or (
                any("/part-s" in f for f in storage.list_files(parts))
                and soak.client.health()["entries"] >= 2300
            )
        ),
        300,
        "two shards' results and the third shard under way",
    )
    assert retry.poll() is None, retry.tail()
    retry.kill()
    time.sleep(1.0)
    soak.client.set_faults(provider=soak.emu, latency_ms=1)
    soak.retry_until_done(c)
    verdict = check_campaign(soak, c)
    print(verdict.summary())
    assert not verdict.problems, verdict.problems


@pytest.mark.xfail(
    strict=True,
    reason="a run that lost its lock still persists its results (rows it had not sent as failed: aborted) "
    "over the attempt the new holder completed; retry then re-sends delivered rows (Postman duplicates)",
)
@pytest.mark.parametrize("soak", ["postman"], indirect=True)
def test_a_run_that_lost_its_lock_does_not_overwrite_the_new_runs_results(soak: Soak) -> None:
    """A lost worker: the run is frozen (SIGSTOP of its process group) mid-send, its lease runs out, a second
    run takes the campaign over and completes it, then the first wakes up (SIGCONT)."""
    c = soak.campaign("bug-lost-worker", 3000)
    soak.reset(latency_ms=300)
    stalled = soak.start(c)
    wait_for(lambda: stalled.poll() is not None or soak.client.health()["entries"] >= 600, 300, "sending")
    assert stalled.poll() is None, stalled.tail()
    os.killpg(stalled.pid, signal.SIGSTOP)
    try:
        soak.wait_out_lease(c)
        soak.client.set_faults(provider=soak.emu, latency_ms=1)
        heir = soak.run(c)
        assert heir.rc == 0, heir.note
        healthy = check_campaign(soak, c)
        assert not healthy.problems, healthy.problems  # the takeover itself is right
    finally:
        os.killpg(stalled.pid, signal.SIGCONT)
    rc = stalled.wait(300)
    assert rc != 0 and "another run took over" in stalled.output(), stalled.tail()
    soak.retry_until_done(c)
    verdict = check_campaign(soak, c)
    print(verdict.summary())
    assert not verdict.problems, verdict.problems


@pytest.mark.xfail(
    strict=True,
    reason="CampaignLock's heartbeat swallows storage errors and never sets `lost`: a holder past its lease "
    "(taken over by another run) keeps sending",
)
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
    holder = CampaignLock(results, "c", lease=0.6)
    holder.acquire()
    try:
        time.sleep(1.0)  # three failed renewals: the lease is over
        heir = CampaignLock(results, "c", lease=30)
        heir.acquire()  # another run takes the campaign over, as it should
        time.sleep(0.3)
        assert Stop(holder.lost).is_set(), "the old holder would go on sending beside the new one"
    finally:
        holder.release()


@pytest.mark.xfail(
    strict=True,
    reason="the journal keeps a batch's intent through retries after a 503: after a crash never-sent rows are "
    "`unknown`, which retry never re-sends for Postman",
)
@pytest.mark.parametrize("soak", ["postman"], indirect=True)
def test_rows_refused_with_503_before_a_crash_are_not_left_unknown(soak: Soak) -> None:
    """The first six requests are answered 503 (nothing processed); their batches wait for a retry behind the
    queue when the run is killed mid-send. Only the batches that can be in flight at the kill (two per
    shard, and one whose outcome is being written) may be in doubt."""
    c = soak.campaign("bug-503-unknown", 3000)
    soak.reset(latency_ms=soak.latency_for(c, 6.0), next_5xx=6)
    killed = soak.run_and_kill(c, "send@40", rng=None)
    assert killed.killed, killed.note
    soak.client.set_faults(provider=soak.emu, latency_ms=1)
    soak.complete(c)
    verdict = check_campaign(soak, c)
    assert not verdict.problems, verdict.problems
    ledger = set(ledger_frame(soak.client, soak.emu)["to"].to_list())
    unknown = current_results(soak.results, c.cid).filter(pl.col("status") == "unknown")
    never_sent = [p for p in unknown["phone"].to_list() if p not in ledger]
    print(f"{len(unknown)} unknown rows, {len(never_sent)} of them never reached the provider")
    assert len(never_sent) <= 300, f"{len(never_sent)} rows never sent are `unknown`"
