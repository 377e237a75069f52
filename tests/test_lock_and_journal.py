"""The campaign lock (local disk and real S3) and the write-ahead journal for providers without idempotency."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from pathlib import Path

import httpx
import polars as pl
import pytest

from providers.base import Idempotency
from providers.sandbox import SandboxProvider
from smscast import ratelimit, storage
from smscast.campaign import CampaignSpec
from smscast.lock import CampaignLock, CampaignLockedError, lock_uri
from smscast.settings import ProviderSettings, Secret
from tasks.journal import Journal
from tasks.plan import plan_campaign
from tasks.send import batches_of, send_rows
from tasks.send_engine import RetryPolicy
from tasks.validate import validate_recipients


def _lock_cases(tmp_path: Path) -> list[str]:
    return [str(tmp_path / "res")]


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
    assert not storage.exists(lock_uri(results, "c1"))


def test_an_expired_lease_is_taken_over(results: str) -> None:
    dead = CampaignLock(results, "c2", lease=0.5)
    dead.acquire()
    dead._stop.set()  # a holder killed with -9: no more heartbeats
    time.sleep(0.8)
    with CampaignLock(results, "c2", lease=30) as heir:
        held = json.loads(storage.get_bytes(lock_uri(results, "c2")))
        assert held["owner"] == heir.owner


def test_heartbeat_keeps_a_live_lease_and_notices_a_takeover(results: str) -> None:
    lock = CampaignLock(results, "c3", lease=0.6)
    lock.acquire()
    try:
        time.sleep(1.0)  # longer than the lease: only the heartbeat keeps it
        with pytest.raises(CampaignLockedError):
            CampaignLock(results, "c3", lease=30).acquire()
        # Someone overwrites the lock (as a run would after this one stalled past its lease).
        storage.put_bytes(
            lock_uri(results, "c3"), json.dumps({"owner": "x", "expires_at": time.time() + 60}).encode()
        )
        deadline = time.time() + 3
        while not lock.lost.is_set() and time.time() < deadline:
            time.sleep(0.05)
        assert lock.lost.is_set()
    finally:
        lock.release()
    assert storage.exists(lock_uri(results, "c3"))  # the usurper's lock is not deleted by the loser


class NoIdempotency(SandboxProvider):
    caps = dataclasses.replace(SandboxProvider.caps, idempotency=Idempotency.NONE)


def test_journal_resume_keeps_recorded_batches_marks_started_ones_unknown_and_sends_the_rest(
    tmp_path: Path,
) -> None:
    provider = NoIdempotency(ProviderSettings(base_url="http://x.test", api_key=Secret("k")))
    spec = CampaignSpec(campaign_id="j", source="s", results="r", body="hi", batch_size=10, rate=10_000)
    df = pl.DataFrame({"row_index": list(range(40)), "phone_raw": [f"+4477009{i:05d}" for i in range(40)]})
    rows = plan_campaign(
        validate_recipients(df, spec, provider.caps, provider), spec, provider.caps, provider
    ).rows
    batches = batches_of(rows, spec)
    posted: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        msgs = json.loads(request.content)["messages"]
        posted.append(len(msgs))
        return httpx.Response(
            200,
            json={
                "batch": "B",
                "results": [
                    {"index": i, "status": "accepted", "message_id": f"m{i}"} for i in range(len(msgs))
                ],
            },
        )

    def run() -> pl.DataFrame:
        ratelimit._BUCKETS.clear()
        client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
        journal = Journal(str(tmp_path / "journal"))
        return asyncio.run(
            send_rows(provider, rows, spec, client=client, journal=journal, policy=RetryPolicy())
        )[0]

    # An earlier run that died: batch 0 finished and was recorded, batch 1 had just been sent.
    first = Journal(str(tmp_path / "journal"))
    first.intend(batches[0])
    from datetime import UTC, datetime

    from providers.base import RowOutcome
    from smscast.status import Status
    from tasks.send_engine import SentBatch

    idx0 = batches[0].rows["row_index"].to_list()
    first.record(
        batches[0],
        [
            SentBatch(
                batches[0].batch_id,
                idx0,
                [RowOutcome(Status.ACCEPTED, provider_message_id="old")] * 10,
                datetime.now(UTC),
            )
        ],
    )
    first.intend(batches[1])

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
    uri = f"{results}/campaign=c/attempt=1/part-s00000.parquet"
    assert storage.write_parquet_once(pl.DataFrame({"a": [1]}), uri)
    assert not storage.write_parquet_once(pl.DataFrame({"a": [2]}), uri)  # a stale run cannot overwrite
    assert storage.read_parquet(uri)["a"].to_list() == [1]


def test_a_lock_whose_renewals_fail_stops_being_held_when_its_lease_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lock = CampaignLock(str(tmp_path / "res"), "c", lease=1.5)
    lock.acquire()
    try:
        assert lock.held()
        monkeypatch.setattr(storage, "put_if", lambda *a, **k: (_ for _ in ()).throw(OSError("unreachable")))
        time.sleep(1.3)
        assert not lock.held() and lock.lost.is_set()  # 1.5 s lease less its margin: gone after ~1.1 s
    finally:
        lock.release()


def test_the_journal_withdraws_an_intent_when_the_answer_proves_nothing_was_sent() -> None:
    provider = NoIdempotency(ProviderSettings(base_url="http://x.test", api_key=Secret("k")))
    spec = CampaignSpec(campaign_id="w", source="s", results="r", body="hi", batch_size=10, rate=10_000)
    df = pl.DataFrame({"row_index": list(range(10)), "phone_raw": [f"+4477009{i:05d}" for i in range(10)]})
    rows = plan_campaign(
        validate_recipients(df, spec, provider.caps, provider), spec, provider.caps, provider
    ).rows
    calls: list[str] = []

    class Spy:
        def intend(self, batch: object) -> None:
            calls.append("intend")

        def forget(self, batch: object) -> None:
            calls.append("forget")

        def record(self, batch: object, parts: object) -> None:
            calls.append("record")

        def recover(self, batches: list[object]) -> object:
            from tasks.journal import Recovered

            return Recovered([], [], batches)  # type: ignore[arg-type]

    answers = iter([httpx.Response(503), httpx.Response(429, headers={"Retry-After": "0"})])

    def handler(request: httpx.Request) -> httpx.Response:
        try:
            return next(answers)
        except StopIteration:
            n = len(json.loads(request.content)["messages"])
            return httpx.Response(
                200,
                json={
                    "batch": "B",
                    "results": [{"index": i, "status": "accepted", "message_id": f"m{i}"} for i in range(n)],
                },
            )

    ratelimit._BUCKETS.clear()
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    fast = RetryPolicy(backoff_base=0.001, backoff_cap=0.01)
    out = asyncio.run(send_rows(provider, rows, spec, client=client, journal=Spy(), policy=fast))[0]  # type: ignore[arg-type]
    assert set(out["status"]) == {"accepted"}
    assert calls == ["intend", "forget", "intend", "forget", "intend", "record"]
