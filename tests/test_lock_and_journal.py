"""The campaign lock (local disk and real S3): leases, a dead holder's immediate takeover, waiting for a live
holder. The per-batch journal: tests/test_journal.py."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest

from smscast import storage
from smscast.lock import GONE, CampaignLock, CampaignLockedError, process_start, this_process
from smscast.results import CampaignPaths


@pytest.fixture(params=["local", "s3"])
def results(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "local":
        return str(tmp_path / "res")
    bucket = request.getfixturevalue("s3_bucket")
    return f"s3://{bucket}/res"


def test_second_holder_is_refused_while_the_first_lives(results: str) -> None:
    with CampaignLock(results, "c1", lease=30):
        with pytest.raises(CampaignLockedError, match="being sent by another run"):
            CampaignLock(results, "c1", lease=30).acquire()
        CampaignLock(results, "other-campaign", lease=30).acquire()  # other campaigns are not blocked
    with CampaignLock(results, "c1", lease=30):  # released: free again
        pass
    assert not storage.exists(CampaignPaths(results, "c1").lock)


def test_an_expired_lease_is_taken_over(results: str) -> None:
    dead = CampaignLock(results, "c2", lease=0.5)
    dead.acquire()
    dead._stop.set()  # a holder killed with -9: no more heartbeats
    if dead._thread is not None:
        dead._thread.join(timeout=30)
    # The heir's clock is a second ahead: the dead holder's 0.5 s lease is over, without waiting for it.
    with CampaignLock(results, "c2", lease=30, clock=lambda: time.time() + 1.0) as heir:
        held = json.loads(storage.get_bytes(CampaignPaths(results, "c2").lock))
        assert held["owner"] == heir.owner


def test_heartbeat_keeps_a_live_lease_and_notices_a_takeover(results: str) -> None:
    uri = CampaignPaths(results, "c3").lock
    lock = CampaignLock(results, "c3", lease=3.0)
    lock.acquire()
    try:
        # Wait for a renewal itself (not a fixed sleep): a loaded machine may take its time over it.
        first = json.loads(storage.get_bytes(uri))["expires_at"]
        deadline = time.time() + 60
        while json.loads(storage.get_bytes(uri))["expires_at"] == first and time.time() < deadline:
            time.sleep(0.05)
        assert json.loads(storage.get_bytes(uri))["expires_at"] > first, (
            "the heartbeat never renewed the lease"
        )
        with pytest.raises(CampaignLockedError):
            CampaignLock(results, "c3", lease=30).acquire()
        # Someone takes the lock over (as a run would after this one stalled past its lease): by
        # compare-and-swap, as every taker does, so that the heartbeat cannot overwrite it unseen.
        taken = None
        for _ in range(20):  # a renewal may slip in between the read and the write: read again
            current = storage.get_versioned(uri)
            assert current is not None
            usurper = json.dumps({"owner": "x", "expires_at": time.time() + 60}).encode()
            taken = storage.put_if(uri, usurper, current[1])
            if taken is not None:
                break
        assert taken is not None
        deadline = time.time() + 60
        while not lock.lost.is_set() and time.time() < deadline:
            time.sleep(0.05)
        assert lock.lost.is_set()
    finally:
        lock.release()
    assert storage.exists(uri)  # the usurper's lock is not deleted by the loser


def test_result_parts_are_write_once(results: str) -> None:
    uri = CampaignPaths(results, "c").attempt(1).part(0)
    assert storage.write_parquet_once(pl.DataFrame({"a": [1]}), uri)
    assert not storage.write_parquet_once(pl.DataFrame({"a": [2]}), uri)  # a stale run cannot overwrite
    assert storage.read_parquet(uri)["a"].to_list() == [1]


def test_a_lock_whose_renewals_fail_stops_being_held_when_its_lease_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [time.time()]  # an injected clock: the lease runs out when the test says so, on any machine
    lock = CampaignLock(str(tmp_path / "res"), "c", lease=1.5, clock=lambda: now[0])
    lock.acquire()
    try:
        assert lock.held()
        monkeypatch.setattr(storage, "put_if", lambda *a, **k: (_ for _ in ()).throw(OSError("unreachable")))
        now[0] += 1.0
        assert lock.held()  # within the lease less its margin
        now[0] += 0.3
        assert not lock.held() and lock.lost.is_set()  # 1.5 s lease less its margin: gone after ~1.1 s
    finally:
        lock.release()


# ---- a dead holder, another machine, waiting (a holder killed with -9: reliability/test_immediate_resume.py) --


def _holder_record(**changes: object) -> bytes:
    me = dataclasses.asdict(this_process())  # host, machine, pid, started: this very process by default
    return json.dumps(
        {"owner": "someone", "expires_at": time.time() + 60, "lease": 60.0, **me, **changes}
    ).encode()


def test_a_reused_pid_is_told_apart_by_its_start_time(tmp_path: Path) -> None:
    results, me = str(tmp_path / "res"), this_process()
    assert me.started is not None and me.machine is not None  # Linux: /proc is readable
    storage.put_bytes(CampaignPaths(results, "c").lock, _holder_record())  # this very process: alive
    with pytest.raises(CampaignLockedError, match="lease ends at"):
        CampaignLock(results, "c").acquire()
    # The same pid, but a process that started at another moment: the holder died and its pid was reused.
    storage.put_bytes(CampaignPaths(results, "c").lock, _holder_record(started=me.started - 1))
    with CampaignLock(results, "c") as heir:
        assert heir.takeover is not None and "now belongs to another process" in heir.takeover


def test_a_holder_elsewhere_keeps_its_lease_even_with_a_pid_unused_here(tmp_path: Path) -> None:
    results = str(tmp_path / "res")
    unused = next(pid for pid in range(4_000_000, 3_000_000, -1) if process_start(pid) == GONE)
    for elsewhere in (
        {"host": "another-host"},  # another machine
        {"machine": "another-boot/pid:[1]"},  # the same host name, but another pid namespace (a container)
    ):
        storage.put_bytes(CampaignPaths(results, "c").lock, _holder_record(pid=unused, **elsewhere))
        with pytest.raises(CampaignLockedError, match=r"being sent by another run.*lease ends at"):
            CampaignLock(results, "c").acquire()


class FakeTime:
    """A clock that only moves when the lock sleeps; `on_sleep` plays the other run meanwhile."""

    def __init__(self, on_sleep: Callable[[float], None] = lambda now: None) -> None:
        self.now = time.time()
        self.sleeps: list[float] = []
        self.on_sleep = on_sleep

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        self.on_sleep(self.now)


def test_wait_mode_waits_for_the_lease_of_a_holder_elsewhere_then_takes_over(tmp_path: Path) -> None:
    results = str(tmp_path / "res")
    fake = FakeTime()
    expiry = fake.now + 40
    storage.put_bytes(
        CampaignPaths(results, "c").lock, _holder_record(host="another-host", expires_at=expiry)
    )
    lock = CampaignLock(results, "c", lease=30, wait=300, clock=lambda: fake.now, sleep=fake.sleep)
    with lock:
        assert fake.now >= expiry  # not before the lease ended
        assert 2 <= len(fake.sleeps) <= 40 / 5 + 2  # polled at the lease's pace, not in a tight loop
        assert lock.takeover is not None and "lease ended" in lock.takeover


def test_wait_mode_gives_up_on_a_holder_that_keeps_renewing(tmp_path: Path) -> None:
    results = str(tmp_path / "res")
    uri = CampaignPaths(results, "c").lock

    def renew(now: float) -> None:  # the live holder's heartbeat
        storage.put_bytes(uri, _holder_record(host="another-host", expires_at=now + 60))

    fake = FakeTime(renew)
    renew(fake.now)
    lock = CampaignLock(results, "c", wait=90, clock=lambda: fake.now, sleep=fake.sleep)
    start = fake.now
    with pytest.raises(CampaignLockedError, match="still renewed after waiting 90 s"):
        lock.acquire()
    assert 90 <= fake.now - start <= 90 + 5


def test_wait_mode_takes_the_lock_once_a_live_holder_releases_it(results: str) -> None:
    holder = CampaignLock(results, "c", lease=30)
    holder.acquire()
    waiting = threading.Event()

    def short_sleep(seconds: float) -> None:  # polls quickly, so that the release is seen at once
        waiting.set()
        time.sleep(min(seconds, 0.05))

    waiter = CampaignLock(results, "c", lease=30, wait=120, sleep=short_sleep)
    worker = threading.Thread(target=waiter.acquire)
    worker.start()
    try:
        assert waiting.wait(60), "the second lock never waited"
        assert worker.is_alive()  # still waiting while the holder lives
        holder.release()
        worker.join(60)
        assert not worker.is_alive() and waiter.held() and waiter.takeover is None
        assert json.loads(storage.get_bytes(CampaignPaths(results, "c").lock))["owner"] == waiter.owner
    finally:
        holder.release()
        worker.join(60)
        waiter.release()
