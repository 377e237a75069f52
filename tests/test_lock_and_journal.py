"""The campaign lock (local disk and real S3): leases, a dead holder's immediate takeover, waiting for a live
holder; and the per-batch journal: outcomes for every provider, intents for providers without idempotency."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx
import polars as pl
import pytest

from smscast import ratelimit, storage
from smscast.campaign import CampaignSpec
from smscast.lock import GONE, CampaignLock, CampaignLockedError, process_start, this_process
from smscast.providers.base import Batch, Idempotency, RowOutcome
from smscast.providers.sandbox import SandboxProvider
from smscast.results import CampaignPaths
from smscast.settings import ProviderSettings, Secret
from smscast.status import Status
from smscast.tasks.journal import Journal
from smscast.tasks.outcomes import SentBatch, outcomes_frame
from smscast.tasks.plan import plan_campaign
from smscast.tasks.send_engine import RetryPolicy, batches_of, send_rows
from smscast.tasks.validate import validate_recipients


@pytest.fixture(params=["local", "s3"])
def results(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "local":
        return str(tmp_path / "res")
    bucket = request.getfixturevalue("s3_bucket")
    return f"s3://{bucket}/res"


def _planned(provider: SandboxProvider, n: int, cid: str = "j") -> tuple[CampaignSpec, pl.DataFrame]:
    spec = CampaignSpec(
        campaign_id=cid, source="s", results="r", body="hi", batch_size=10, rate=10_000, concurrency=2
    )
    df = pl.DataFrame({"row_index": list(range(n)), "phone_raw": [f"+4474009{i:05d}" for i in range(n)]})
    checked = validate_recipients(df, spec, provider.caps, provider)
    return spec, plan_campaign(checked, spec, provider.caps, provider).rows


def _parts(batch: Batch, message_id: str = "m") -> list[SentBatch]:
    accepted = [RowOutcome(Status.ACCEPTED, provider_message_id=message_id)] * len(batch)
    return [SentBatch(batch.batch_id, batch.rows["row_index"].to_list(), accepted, datetime.now(UTC))]


def _accepted(msgs: list[object], prefix: str = "m") -> httpx.Response:
    results = [{"index": i, "status": "accepted", "message_id": f"{prefix}{i}"} for i in range(len(msgs))]
    return httpx.Response(200, json={"batch": "B", "results": results})


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


class NoIdempotency(SandboxProvider):
    caps = dataclasses.replace(SandboxProvider.caps, idempotency=Idempotency.NONE)


def test_journal_resume_keeps_recorded_batches_marks_started_ones_unknown_and_sends_the_rest(
    tmp_path: Path,
) -> None:
    provider = NoIdempotency(ProviderSettings(base_url="http://x.test", api_key=Secret("k")))
    spec, rows = _planned(provider, 40)
    batches = batches_of(rows, spec)
    posted: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        msgs = json.loads(request.content)["messages"]
        posted.append(len(msgs))
        return _accepted(msgs)

    def run() -> pl.DataFrame:
        ratelimit._BUCKETS.clear()
        client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
        journal = Journal(str(tmp_path / "journal"), write_ahead=True)
        return asyncio.run(
            send_rows(provider, rows, spec, client=client, journal=journal, policy=RetryPolicy())
        )[0]

    # An earlier run that died: batch 0 finished and was recorded, batch 1 had just been sent.
    first = Journal(str(tmp_path / "journal"), write_ahead=True)
    first.intend(batches[0])
    first.record(batches[0], _parts(batches[0], "old"))
    first.intend(batches[1])
    first.close()  # outcomes are written in the background: what a run's end (or crash, minus the queue) leaves

    out = run().sort("row_index")
    assert posted == [10, 10]  # only batches 2 and 3 went out
    assert out.height == 40
    by_batch = out.group_by("batch_id").agg(pl.col("status").unique()).sort("batch_id")
    assert by_batch["status"].to_list() == [["accepted"], ["unknown"], ["accepted"], ["accepted"]]
    assert out.filter(pl.col("batch_id") == batches[0].batch_id)[
        "provider_message_id"
    ].unique().to_list() == ["old"]
    assert set(out.filter(pl.col("status") == "unknown")["error_code"]) == {"interrupted_unrecorded"}
    # Every batch now has its outcome on record: a third run sends nothing.
    posted.clear()
    assert run().height == 40 and posted == []


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


def test_the_journal_withdraws_an_intent_when_the_answer_proves_nothing_was_sent() -> None:
    provider = NoIdempotency(ProviderSettings(base_url="http://x.test", api_key=Secret("k")))
    spec, rows = _planned(provider, 10)
    calls: list[str] = []

    class Spy:
        write_ahead = True

        def intend(self, batch: object) -> None:
            calls.append("intend")

        def forget(self, batch: object) -> None:
            calls.append("forget")

        def record(self, batch: object, parts: object) -> None:
            calls.append("record")

        def recover(self, batches: list[object]) -> object:
            from smscast.tasks.outcomes import Recovered

            return Recovered([], [], batches)  # type: ignore[arg-type]

        def close(self) -> None:
            calls.append("close")

        def outcomes(self) -> None:
            return None  # send_rows builds the outcomes itself then

    answers = iter([httpx.Response(503), httpx.Response(429, headers={"Retry-After": "0"})])

    def handler(request: httpx.Request) -> httpx.Response:
        try:
            return next(answers)
        except StopIteration:
            return _accepted(json.loads(request.content)["messages"])

    ratelimit._BUCKETS.clear()
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    fast = RetryPolicy(backoff_base=0.001, backoff_cap=0.01)
    out = asyncio.run(send_rows(provider, rows, spec, client=client, journal=Spy(), policy=fast))[0]  # type: ignore[arg-type]
    assert set(out["status"]) == {"accepted"}
    assert calls == ["intend", "forget", "intend", "forget", "intend", "record", "close"]


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


# ---- the journal for providers with idempotency ---------------------------------------------------------------


class Crash(Exception):
    pass


def test_a_resumed_shard_re_sends_only_the_batches_without_a_recorded_outcome(tmp_path: Path) -> None:
    """Resend-safe provider: no intents; the first run's answered batches are kept, a batch refused for now
    (all `failed`) is not recorded, and the batch in flight when the run died is sent again."""
    provider = SandboxProvider(ProviderSettings(base_url="http://x.test", api_key=Secret("k")))
    spec, rows = _planned(provider, 50, "rs")
    batches = batches_of(rows, spec)
    posted: list[str] = []
    crash_on, busy = batches[3].batch_id, batches[1].batch_id

    def handler(request: httpx.Request) -> httpx.Response:
        msgs = json.loads(request.content)["messages"]
        batch = next(b.batch_id for b in batches if b.rows["idempotency_key"][0] == msgs[0]["ref"])
        posted.append(batch)
        if batch == crash_on and run_no == 1:
            raise Crash  # the run dies with this request in flight
        if batch == busy and run_no == 1:
            return httpx.Response(503)
        return _accepted(msgs, f"r{run_no}-")

    def run() -> pl.DataFrame:
        ratelimit._BUCKETS.clear()
        client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
        journal = Journal(str(tmp_path / "journal"), write_ahead=False)
        fast = RetryPolicy(max_attempts=2, backoff_base=0.001, backoff_cap=0.01)
        return asyncio.run(send_rows(provider, rows, spec, client=client, journal=journal, policy=fast))[0]

    run_no = 1
    with pytest.raises(Crash):
        run()
    files = storage.list_files(str(tmp_path / "journal"))
    assert files and not [f for f in files if f.endswith(".intent")]  # no write-ahead with idempotency
    first_posted = set(posted)
    assert crash_on in first_posted and busy in first_posted
    posted.clear()
    run_no = 2
    out = run()
    resent = set(posted)
    assert busy in resent and crash_on in resent  # refused for now, and in flight: both sent again
    assert resent <= {busy, crash_on} | {b.batch_id for b in batches} - first_posted  # nothing answered
    assert out.height == 50 and set(out["status"]) == {"accepted"}
    kept = out.filter(~pl.col("batch_id").is_in(list(resent)))
    assert kept.height and set(kept["provider_message_id"].str.slice(0, 3)) == {"r1-"}  # answers recorded
    posted.clear()
    run_no = 3
    assert run().height == 50 and posted == []  # all on record now


def test_journal_writes_never_hold_up_sending_and_are_grouped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider = SandboxProvider(ProviderSettings(base_url="http://x.test", api_key=Secret("k")))
    spec, rows = _planned(provider, 50, "bg")
    batches = batches_of(rows, spec)
    real_write, entered, release = storage.write_parquet, threading.Event(), threading.Event()

    def slow_write(
        df: pl.DataFrame, uri: str, **options: bool
    ) -> None:  # a slow store: the first write hangs
        entered.set()
        assert release.wait(60)
        real_write(df, uri, **options)

    monkeypatch.setattr(storage, "write_parquet", slow_write)
    journal = Journal(str(tmp_path / "j"), write_ahead=False)
    journal.record(batches[0], _parts(batches[0]))
    assert entered.wait(60)
    for b in batches[1:]:
        journal.record(b, _parts(b))  # returns at once although the store is stuck
    release.set()
    journal.close()
    assert journal.files_written == 2  # the four queued meanwhile went out together
    built = journal.outcomes()  # what send_rows returns, without building it a second time
    expected = outcomes_frame([p for b in batches for p in _parts(b)])
    assert built is not None and built.sort("row_index").drop("submitted_at").equals(
        expected.drop("submitted_at")
    )
    again = Journal(str(tmp_path / "j"), write_ahead=False).recover(batches)
    assert again.todo == [] and sum(f.height for f in again.done) == 50
    journal.discard()
    assert storage.list_files(str(tmp_path / "j")) == []
