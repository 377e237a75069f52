"""No double campaigns (issue 4, item 3), proved with the sandbox ledger (item 5).

1. A second `smscast send` of a campaign that is being sent must refuse ("being sent by another run"), exit
   non-zero and send nothing; the first completes; the ledger has each phone once.
2. A second run started after the first was SIGKILLed on another machine (made to look so: its lock names
   another host, where no process can be inspected), while its lease still runs, must refuse likewise; one
   started after the lease has run out resumes the campaign and completes it. (Killed on this machine, the
   run is provably dead and is taken over at once: test_immediate_resume.py.)

Postman in the short variant: without idempotency, anything sent twice is twice in the ledger. The long
variant runs it for every provider.
"""

from __future__ import annotations

import json
import time

import pytest
from reliability.invariants import check_campaign
from reliability.mixes import total_requests
from reliability.report import Report
from reliability.settings import LOCKED_MESSAGE, Sizes, rng_for, selected_providers
from reliability.soak import Soak

from smscast import storage

pytestmark = pytest.mark.integration


def wait_until(predicate, timeout: float, what: str, step: float = 0.02) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(step)


def duplicate_runs(soak: Soak, report: Report, rows: int) -> None:
    name = soak.facts.name
    tally = report.tally(name)

    # 1. Two live runs of one campaign.
    c = soak.campaign("dup-live", rows)
    soak.reset(latency_ms=soak.latency_for(c, 120.0))  # slow enough to outlast the second run's start
    first = soak.start(c)
    wait_until(lambda: soak.lock_expiry(c) is not None or first.poll() is not None, 180, "the first lock")
    to_lock = time.monotonic() - first.started  # how long a run takes to reach the lock
    wait_until(lambda: soak.processed() > 0 or first.poll() is not None, 180, "the first run to send")
    assert first.poll() is None, f"the first run ended early:\n{first.tail()}"
    second = soak.start(c)
    rc = second.wait(300)
    first_alive = first.poll() is None
    soak.client.set_faults(provider=soak.emu, latency_ms=1)  # let the first one finish now
    assert first_alive, "the first run ended before the second gave up: nothing was proved"
    assert rc != 0, f"the second run of a live campaign succeeded:\n{second.tail()}"
    assert LOCKED_MESSAGE in second.output(), second.tail()
    assert first.wait(600) == 0, first.tail()
    verdict = check_campaign(soak, c)
    manifest = json.loads(storage.get_bytes(soak.attempt(c).manifest))
    planned_batches = sum(s["batches"] for s in manifest["shards"])  # sent.dm plans per template value
    stats = soak.stats()
    # Nothing was sent twice, not even in a way the provider would recognise.
    assert stats["duplicates"] == 0, stats
    assert total_requests(stats) == planned_batches, stats
    report.add_verdict(verdict)
    tally.duplicate_runs += 1
    assert not verdict.problems, verdict.summary() + "\n" + "\n".join(verdict.problems)

    # 2. A run killed with -9 on "another machine", a second run while its lease runs, a third after it.
    d = soak.campaign("dup-dead", rows)
    latency = soak.latency_for(d, 6.0)
    soak.reset(latency_ms=latency)
    settle = latency / 1000 + 1.0  # requests in flight at the kill are processed all the same
    # The refusing run must reach the lock before the dead run's lease ends. The heartbeat renews every third
    # of the lease, so at the kill as little as two thirds may be left: that must cover the settling time and
    # a start-up (what the first run took to reach the lock, with a margin). No longer: the test waits it out.
    lease = max(12.0, 1.5 * (settle + 1.5 * to_lock + 3.0))
    killed = soak.run_and_kill(d, "send", rng_for("dup", name), lease=lease)
    assert killed.killed, f"the run to kill completed first: {killed.note}"
    soak.move_lock_elsewhere(d)
    time.sleep(settle)
    before = total_requests(soak.stats())
    refused = soak.start(d)
    rc = refused.wait(300)
    assert "resuming campaign" not in refused.output(), (
        "the second run reached the lock after the dead run's lease had run out (it resumed, as it should "
        "then): the test's lease is too short for this machine's start-up time"
    )
    assert rc != 0, f"a run started inside a dead run's lease sent the campaign:\n{refused.tail()}"
    # Refused because the lease was still running (the message says when it ends), not for another reason.
    assert LOCKED_MESSAGE in refused.output() and "lease ends at" in refused.output(), refused.tail()
    assert total_requests(soak.stats()) == before, "the refused run sent something"
    soak.client.set_faults(provider=soak.emu, latency_ms=1)
    # The third run starts once the lease has run out (complete() would otherwise spend a run on a second
    # refusal first, the one just proved), and resumes the campaign.
    soak.wait_out_lease(d)
    soak.complete(d)
    resumed = d.runs[-1]
    assert resumed.rc == 0
    soak.retry_until_done(d)
    verdict = check_campaign(soak, d)
    report.add_kills(name, d)
    report.add_verdict(verdict)
    tally.duplicate_runs += 1
    assert not verdict.problems, verdict.summary() + "\n" + "\n".join(verdict.problems)


SHORT = [p for p in ("postman",) if p in selected_providers()]


@pytest.mark.parametrize("soak", SHORT, indirect=True)
def test_second_run_of_a_campaign_refuses_while_the_first_lives(soak: Soak, soak_report: Report) -> None:
    duplicate_runs(soak, soak_report, min(Sizes.short().mix_rows, 2000))


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("soak", selected_providers(), indirect=True)
def test_second_run_refuses_for_every_provider(soak: Soak, soak_report: Report) -> None:
    duplicate_runs(soak, soak_report, min(Sizes.long().mix_rows, 5000))
