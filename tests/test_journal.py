"""The per-batch journal: outcomes for every provider, intents for providers without idempotency, and a
resumed shard that sends only what has no outcome on record. The campaign lock: tests/test_lock_and_journal.py."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx
import polars as pl
import pytest

from smscast import ratelimit, storage
from smscast.campaign import CampaignSpec
from smscast.providers.base import Batch, Idempotency, RowOutcome
from smscast.providers.sandbox import SandboxProvider
from smscast.settings import ProviderSettings, Secret
from smscast.status import Status
from smscast.tasks.journal import Journal
from smscast.tasks.outcomes import SentBatch, outcomes_frame
from smscast.tasks.plan import plan_campaign
from smscast.tasks.send_batch import RetryPolicy
from smscast.tasks.send_engine import batches_of, send_rows
from smscast.tasks.validate import validate_recipients

SETTINGS = ProviderSettings(base_url="http://x.test", api_key=Secret("k"))


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


def send(
    provider: SandboxProvider,
    rows: pl.DataFrame,
    spec: CampaignSpec,
    handler: Callable[[httpx.Request], httpx.Response],
    journal: Journal,
    policy: RetryPolicy,
) -> pl.DataFrame:
    """The outcomes of sending `rows` to `handler` with `journal`, from a clean rate limiter."""
    ratelimit._BUCKETS.clear()
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return asyncio.run(send_rows(provider, rows, spec, client=client, journal=journal, policy=policy))[0]


# ---- providers without idempotency: intents written ahead ---------------------------------------------------


class NoIdempotency(SandboxProvider):
    caps = dataclasses.replace(SandboxProvider.caps, idempotency=Idempotency.NONE)


def test_journal_resume_keeps_recorded_batches_marks_started_ones_unknown_and_sends_the_rest(
    tmp_path: Path,
) -> None:
    provider = NoIdempotency(SETTINGS)
    spec, rows = _planned(provider, 40)
    batches = batches_of(rows, spec)
    posted: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        msgs = json.loads(request.content)["messages"]
        posted.append(len(msgs))
        return _accepted(msgs)

    def run() -> pl.DataFrame:
        return send(
            provider, rows, spec, handler, Journal(str(tmp_path / "journal"), write_ahead=True), RetryPolicy()
        )

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


def test_the_journal_withdraws_an_intent_when_the_answer_proves_nothing_was_sent() -> None:
    provider = NoIdempotency(SETTINGS)
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

    fast = RetryPolicy(backoff_base=0.001, backoff_cap=0.01)
    out = send(provider, rows, spec, handler, Spy(), fast)  # type: ignore[arg-type]
    assert set(out["status"]) == {"accepted"}
    assert calls == ["intend", "forget", "intend", "forget", "intend", "record", "close"]


# ---- the journal for providers with idempotency ---------------------------------------------------------------


class Crash(Exception):
    pass


def test_a_resumed_shard_re_sends_only_the_batches_without_a_recorded_outcome(tmp_path: Path) -> None:
    """Resend-safe provider: no intents; the first run's answered batches are kept, a batch refused for now
    (all `failed`) is not recorded, and the batch in flight when the run died is sent again."""
    provider = SandboxProvider(SETTINGS)
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
        fast = RetryPolicy(max_attempts=2, backoff_base=0.001, backoff_cap=0.01)
        return send(
            provider, rows, spec, handler, Journal(str(tmp_path / "journal"), write_ahead=False), fast
        )

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
    provider = SandboxProvider(SETTINGS)
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
