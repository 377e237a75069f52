"""Issue 8, parts 4 and 5: after `kill -9` of a sending `smscast send`, running it again at once, with the
normal lease, takes the campaign over without waiting for the dead run's lease (its holder is provably dead:
this machine, its process gone), completes it with nothing sent twice and nothing lost (the sandbox ledger),
and re-sends only the batches whose outcome the dead run had not recorded: at most those in flight.

The bound: at most CONCURRENCY requests are in flight, and as many again may have been answered with their
outcome not yet written (a journal write under way; and the kill is triggered by the sandbox's progress,
right as answers are on their way): 2 x CONCURRENCY x batch size rows per kill (typically 2-4 batches
are re-sent). The sandbox answers about 7 requests a second here: faster than robase's documented 4, slower
than one per journal LINGER, beyond which answers gather for a grouped write and more of them may be in
that window. A resume that re-sent whole shards (as before the journal recorded every provider's
outcomes) re-sends every row the shard had sent: half the campaign here, far above the bound.

Fast variant: robase (per-row keys), 3,000 recipients, one kill mid-send. Slow variant: every provider,
10,000 recipients, three kills in a row, each re-run at once.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from reliability.invariants import check_campaign
from reliability.report import Report
from reliability.settings import PROJECT_ROOT, selected_providers
from reliability.soak import Soak

from smscast import storage
from smscast.lock import CampaignLock
from smscast.results import CampaignPaths

pytestmark = pytest.mark.integration

LEASE = 60.0  # the default lease: a re-run that waited for it would show
TAKEN_OVER = "took the lock over from a run that died"
CONCURRENCY = 4  # Soak.send_args

HOLDER = """
import sys
from smscast.lock import CampaignLock
CampaignLock(sys.argv[1], "dead", lease=60).acquire()
print("held", flush=True)
sys.stdin.read()
"""


def test_a_lock_holder_killed_on_this_machine_is_taken_over_at_once(tmp_path: Path) -> None:
    results = str(tmp_path / "res")
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER, results],
        cwd=PROJECT_ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == b"held\n"
    finally:
        child.kill()  # SIGKILL: no release, no last heartbeat
        child.wait()
    held = json.loads(storage.get_bytes(CampaignPaths(results, "dead").lock))
    assert held["pid"] == child.pid and held["expires_at"] > time.time() + 30  # its lease runs for long yet
    with CampaignLock(results, "dead", lease=30) as heir:  # no wait: it would raise if it had to
        assert heir.takeover is not None and f"process {child.pid} on this machine is gone" in heir.takeover
        assert json.loads(storage.get_bytes(CampaignPaths(results, "dead").lock))["owner"] == heir.owner


def kill_and_rerun_at_once(soak: Soak, report: Report, *, cid: str, rows: int, kills: int) -> None:
    c = soak.campaign(cid, rows)
    soak.reset(latency_ms=soak.latency_for(c, 4.0 * rows / 3000))  # the same pace whatever the size
    bound = 2 * CONCURRENCY * soak.batch_size(c)
    resent: list[int] = []
    for k in range(kills):
        stats = soak.stats()
        duplicates_before = int(stats["duplicates"])
        killed = soak.run_and_kill(c, "send@50", rng=None, lease=LEASE)
        if not killed.killed:
            assert killed.rc == 0, killed.note
            break  # the campaign completed before the moment came
        assert (killed.landed or "").startswith("send@"), killed.landed
        if k > 0:  # this run was itself an immediate re-run: it took over and then re-sent
            resent.append(int(soak.stats()["duplicates"]) - duplicates_before)
        expiry = soak.lock_expiry(c)
        assert expiry is not None and expiry > time.time() + LEASE / 4, "the dead run's lease is over"
    duplicates_before = int(soak.stats()["duplicates"])
    soak.client.set_faults(provider=soak.emu, latency_ms=1)
    rerun = soak.start(c, "send", lease=LEASE)  # at once: no waiting for the lease
    assert rerun.wait(600) == 0, rerun.tail()
    assert TAKEN_OVER in rerun.output() and "on this machine is gone" in rerun.output(), rerun.tail()
    resent.append(int(soak.stats()["duplicates"]) - duplicates_before)
    soak.retry_until_done(c)
    verdict = check_campaign(soak, c)
    report.add_kills(soak.facts.name, c)
    report.add_verdict(verdict)
    print(verdict.summary(), f"re-sent per resume {resent} (bound {bound} per kill)")
    assert not verdict.problems, verdict.summary() + "\n" + "\n".join(verdict.problems)
    assert verdict.duplicates == 0 and verdict.losses == 0
    # Summed: a run killed early in its resume leaves part of the previous kill's re-sends to the next.
    assert sum(resent) <= bound * len(resent), f"rows re-sent per resume {resent}, over {bound} per kill"


@pytest.mark.parametrize("soak", ["robase"], indirect=True)
def test_a_run_killed_mid_send_is_resumed_at_once_re_sending_only_what_was_in_flight(
    soak: Soak, soak_report: Report
) -> None:
    kill_and_rerun_at_once(soak, soak_report, cid="at-once", rows=3000, kills=1)


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("soak", selected_providers(), indirect=True)
def test_three_kills_each_resumed_at_once_for_every_provider(soak: Soak, soak_report: Report) -> None:
    kill_and_rerun_at_once(soak, soak_report, cid="at-once-long", rows=10_000, kills=3)
