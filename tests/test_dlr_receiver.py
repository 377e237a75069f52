"""The delivery-report receiver (smscast/dlr/): parsing, the group-commit writer, the app in process, and the
real `python -m smscast.dlr serve`: token never logged, graceful stop, kill -9 under load losing nothing acked."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest
from starlette.applications import Starlette
from typer.testing import CliRunner

from smscast import delivery
from smscast.delivery import REPORT_SCHEMA, DeliveryStatus
from smscast.dlr import parse as p
from smscast.dlr.app import create_app
from smscast.dlr.cli import app as dlr_cli
from smscast.dlr.launcher import DlrServer
from smscast.dlr.writer import GroupCommitWriter, WriteFailed, WriterClosed, durable_append
from smscast.results import dlr_inbox

SECRET = "test-secret-Zq81"
NOW = 1_700_000_000_000_000


def inbox(results: Path | str) -> pl.DataFrame:
    return delivery.read_all(dlr_inbox(str(results)), REPORT_SCHEMA)


def insta(mid: str, status: str | None = "delivered", **kw: Any) -> dict[str, Any]:
    return {"id": mid, "clientId": f"k-{mid}", "status": status, "errorCode": None,
            "updatedAt": "2026-11-22T10:00:00Z", **kw}  # fmt: skip


def wait_until(what: str, predicate: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"not true after {timeout:g}s: {what}"
        time.sleep(0.02)


# ---- parsing ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "expected"),
    [("sent", "pending"), ("enroute", "pending"), ("accepted", "pending"), ("DELIVERED", "delivered"),
     ("failed", "undelivered"), ("undelivered", "undelivered"), ("rejected", "undelivered"),
     ("expired", "expired"), ("unknown", None), ("teleported", None)],
)  # fmt: skip
def test_instasent_states(state: str, expected: str | None) -> None:
    (r,) = p.parse_instasent(insta("m1", state, errorCode=30), NOW).reports
    assert (r.provider, r.provider_message_id, r.client_ref) == ("instasent", "m1", "k-m1")
    assert (r.delivery_status, r.provider_status, r.error_code) == (expected, state, "30")
    assert r.reported_at == p.to_micros(datetime(2026, 11, 22, 10, tzinfo=UTC))


def test_sent_dm_status_and_other_events() -> None:
    event = {"field": "message", "sub_type": "message.status_updated",
             "payload": {"message_id": "msg_1", "message_status": "FAILED", "channel": "sms", "error_code": "E7",
                         "error_message": "x" * 5000, "updated_at": "2026-11-22T10:00:00+01:00"}}  # fmt: skip
    (r,) = p.parse_sent_dm(event, NOW).reports
    got = (r.provider, r.provider_message_id, r.delivery_status, r.error_code)
    assert got == ("sent-dm", "msg_1", "undelivered", "E7")
    assert r.error_message is not None and len(r.error_message) == 2000  # kept, cut: never a reason to refuse
    assert r.reported_at == p.to_micros(datetime(2026, 11, 22, 9, tzinfo=UTC))
    for status, expected in (
        ("DELIVERED", "delivered"),
        ("queued", "pending"),
        ("EXPIRED", "expired"),
        ("X", None),
    ):
        event["payload"]["message_status"] = status  # type: ignore[index]
        assert p.parse_sent_dm(event, NOW).reports[0].delivery_status == expected
    inbound = {"field": "message", "sub_type": "message.inbound", "payload": {"text": "STOP"}}
    assert p.parse_sent_dm(inbound, NOW) == p.Parsed([], 1)
    assert p.parse_sent_dm({"field": "template", "sub_type": "template.approved"}, NOW) == p.Parsed([], 1)


def test_generic_object_and_array() -> None:
    (one,) = p.parse_generic({"message_id": "a", "status": "delivered"}, NOW).reports
    assert (one.provider, one.delivery_status, one.reported_at) == ("sandbox", "delivered", NOW)
    many = p.parse_generic(
        [{"provider": "robase", "message_id": "b", "status": "undelivered", "error_code": 5},
         {"client_ref": "ref-c", "status": "bounced", "reported_at": "2026-11-22T10:00:00"}], NOW
    ).reports  # fmt: skip
    assert [(r.provider, r.provider_message_id, r.client_ref, r.delivery_status, r.provider_status) for r in many] == [
        ("robase", "b", None, "undelivered", "undelivered"), ("sandbox", None, "ref-c", None, "bounced")]  # fmt: skip
    assert many[0].error_code == "5"
    assert p.parse_generic([], NOW) == p.Parsed([], 0)


@pytest.mark.parametrize(
    ("route", "body", "message"),
    [("instasent", [insta("m")], "expected a JSON object, got an array"),
     ("instasent", {"status": "sent"}, "`id` is required"),
     ("instasent", insta("m", status=None), "`status` is required"),
     ("instasent", insta("m", updatedAt="yesterday"), "`updatedAt` is not an ISO-8601 time"),
     ("instasent", insta("m", updatedAt=1700000000), "`updatedAt` must be an ISO-8601 string"),
     ("instasent", {"id": {"x": 1}, "status": "sent"}, "`id` must be a string, got an object"),
     ("instasent", {"id": "m" * 300, "status": "sent"}, "longer than 256"),
     ("sent-dm", {"sub_type": "message.status_updated"}, "`field` is required"),
     ("sent-dm", {"field": "message", "sub_type": "message.status_updated", "payload": []}, "`payload`"),
     ("generic", [{"message_id": "a", "status": "delivered"}, {"status": "delivered"}],
      "report [1]: `message_id` or `client_ref` is required"),
     ("generic", [{"message_id": "a", "status": "x"}] * 10_001, "at most 10000"),
     ("generic", "hello", "report: expected a JSON object, got a string")],
)  # fmt: skip
def test_malformed_bodies_name_what_is_wrong(route: str, body: Any, message: str) -> None:
    with pytest.raises(p.BadReport, match=message.replace("[", r"\[").replace("]", r"\]")):
        p.PARSERS[route](body, NOW)


def test_report_id_is_the_reports_identity() -> None:
    a = p.parse_instasent(insta("m1"), NOW).reports[0]
    again = p.parse_instasent(insta("m1", updatedAt="2026-11-22T10:00:00+00:00"), NOW + 5_000_000).reports[0]
    assert a.report_id == again.report_id and a.received_at != again.received_at
    assert a.report_id != p.parse_instasent(insta("m1", "sent"), NOW).reports[0].report_id
    assert a.report_id != p.parse_instasent(insta("m2"), NOW).reports[0].report_id
    other = p.parse_generic({"provider": "robase", "message_id": "m1", "status": "delivered"}, NOW).reports[0]
    assert a.report_id != other.report_id
    # No time from the provider: the report is still the same report whenever it is re-posted.
    first, later = (p.parse_generic({"message_id": "z", "status": "x"}, t).reports[0] for t in (NOW, NOW + 9))
    assert first.report_id == later.report_id


def test_mapping_tables_speak_the_delivery_vocabulary() -> None:
    assert all(set(t.values()) <= set(DeliveryStatus) for t in (p.INSTASENT_STATES, p.SENT_DM_STATES))
    assert "unknown" not in p.INSTASENT_STATES  # never guess a final word


# ---- the writer -------------------------------------------------------------------------------------------


def reports(n: int, prefix: str = "m") -> list[p.Report]:
    return [p.parse_instasent(insta(f"{prefix}{i}"), NOW).reports[0] for i in range(n)]


async def test_group_commit_waits_for_arriving_requests(tmp_path: Path) -> None:
    folder = str(tmp_path / "_dlr")
    writer = GroupCommitWriter(folder, batch_rows=1000, batch_ms=600_000)
    await writer.start()
    writer.arriving()  # a request still being read: the batch waits for it (batch_ms is ten minutes)
    first = asyncio.create_task(writer.submit(reports(3, "a")))
    for _ in range(20):
        await asyncio.sleep(0)
    assert not first.done() and writer.held == 3
    writer.arrived()
    await writer.submit(reports(2, "b"))  # the last one: written with the others, at once
    await first
    assert (writer.stats.parts, writer.stats.reports) == (1, 5)
    writer.arriving()
    await writer.submit(reports(1000, "c"))  # batch_rows reached: written though a request is arriving
    assert writer.stats.parts == 2
    held = asyncio.create_task(writer.submit(reports(1, "d")))
    await asyncio.sleep(0)
    await writer.close()  # a stopping server writes what it holds
    await held
    assert writer.stats.reports == 1006 and inbox(tmp_path).height == 1006
    with pytest.raises(WriterClosed):  # stopped: the provider will retry elsewhere or later
        await writer.submit(reports(1, "e"))


async def test_timer_flush_and_duplicates_in_batch(tmp_path: Path) -> None:
    writer = GroupCommitWriter(str(tmp_path / "_dlr"), batch_rows=1000, batch_ms=20)
    await writer.start()
    writer.arriving()  # never arrives: only the timer writes the batch
    dup = reports(3)
    await asyncio.gather(writer.submit(dup), writer.submit(dup[:2]))
    assert (writer.stats.parts, writer.stats.reports, writer.stats.duplicates) == (1, 3, 2)
    await writer.close()


async def test_a_failed_write_fails_its_batch_only(tmp_path: Path) -> None:
    calls: list[int] = []

    def flaky(folder: str, df: pl.DataFrame) -> str | None:
        calls.append(df.height)
        if len(calls) == 1:
            raise OSError("disk full")
        return durable_append(folder, df)

    writer = GroupCommitWriter(str(tmp_path / "_dlr"), write=flaky)
    await writer.start()
    with pytest.raises(WriteFailed, match="disk full"):
        await writer.submit(reports(2))
    await writer.submit(reports(2))  # the provider's retry
    await writer.close()
    assert calls == [2, 2] and writer.stats.failed_flushes == 1 and inbox(tmp_path).height == 2


async def test_a_slow_write_does_not_hold_the_next_batch(tmp_path: Path) -> None:
    started, release = threading.Event(), threading.Event()

    def slow_first(folder: str, df: pl.DataFrame) -> str | None:
        if df["provider_message_id"][0] == "a0":
            started.set()
            release.wait(60)
        return durable_append(folder, df)

    writer = GroupCommitWriter(str(tmp_path / "_dlr"), write=slow_first, flushes=2)
    await writer.start()
    first = asyncio.create_task(writer.submit(reports(1, "a")))
    assert await asyncio.to_thread(started.wait, 60)
    await writer.submit(reports(1, "b"))  # written while the first part is still being written
    assert not first.done()
    release.set()
    await writer.close()  # waits for the write in flight
    assert first.done() and inbox(tmp_path).height == 2


# ---- the app, in process ----------------------------------------------------------------------------------


@asynccontextmanager
async def served(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    """The app in this process, its lifespan (the writer) running, as an HTTP client sees it."""
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://d") as http,
    ):
        yield http


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with served(create_app(str(tmp_path), SECRET, summary_interval=0)) as http:
        yield http


async def post(client: httpx.AsyncClient, path: str, body: Any, token: str = SECRET) -> httpx.Response:
    return await client.post(path, json=body, headers={"X-Smscast-Token": token})


async def test_token_required(client: httpx.AsyncClient, tmp_path: Path) -> None:
    body = insta("m1")
    assert (await client.post("/dlr/instasent", json=body)).status_code == 401
    assert (await client.post("/dlr/instasent?token=wrong", json=body)).status_code == 401
    assert (await post(client, "/dlr/instasent", body, SECRET + "x")).status_code == 401
    assert inbox(tmp_path).is_empty()
    assert (await client.post(f"/dlr/instasent?token={SECRET}", json=body)).status_code == 200
    assert (await post(client, "/dlr/instasent", insta("m2"))).status_code == 200
    assert (await client.get("/healthz")).json()["rejected"] == {"unauthorized": 3}


async def test_recorded_before_answered(client: httpx.AsyncClient, tmp_path: Path) -> None:
    answer = await post(client, "/dlr/instasent", insta("m1", errorCode="E1"))
    assert answer.json() == {"recorded": 1, "ignored": 0}
    row = inbox(tmp_path).row(0, named=True)  # readable the moment the provider has its 2xx
    assert (row["provider_message_id"], row["delivery_status"], row["error_code"]) == (
        "m1",
        "delivered",
        "E1",
    )
    assert row["reported_at"].isoformat() == "2026-11-22T10:00:00+00:00"
    assert inbox(tmp_path).schema == pl.Schema(REPORT_SCHEMA)
    sent_dm = {"field": "message", "sub_type": "message.status_updated",
               "payload": {"message_id": "msg_9", "message_status": "DELIVERED"}}  # fmt: skip
    assert (await post(client, "/dlr/sent-dm", sent_dm)).json() == {"recorded": 1, "ignored": 0}
    inbound = {"field": "message", "sub_type": "message.inbound", "payload": {}}  # acknowledged, not recorded
    assert (await post(client, "/dlr/sent-dm", inbound)).json() == {"recorded": 0, "ignored": 1}
    assert sorted(inbox(tmp_path)["provider"]) == ["instasent", "sent-dm"]


async def test_generic_batches_and_duplicates(client: httpx.AsyncClient, tmp_path: Path) -> None:
    batch = [
        {"message_id": f"g{i}", "status": "delivered", "reported_at": "2026-11-22T10:00Z"} for i in range(50)
    ]
    assert (await post(client, "/dlr/generic", batch + batch[:5])).json()["recorded"] == 55
    assert (await post(client, "/dlr/generic", batch[:10])).status_code == 200  # the provider retried
    got = inbox(tmp_path)
    assert got.height == 60 and got["report_id"].n_unique() == 50  # readers de-duplicate by report_id
    assert (await client.get("/healthz")).json()["duplicates_in_batch"] == 5


async def test_malformed_and_oversized(tmp_path: Path) -> None:
    async with served(create_app(str(tmp_path), SECRET, summary_interval=0, max_body=1000)) as client:
        bad = await client.post("/dlr/instasent", content=b"{not json", headers={"X-Smscast-Token": SECRET})
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_json"
        bad = await post(client, "/dlr/generic", [{"status": "delivered"}])
        assert bad.status_code == 400 and "report [0]" in bad.json()["error"]["message"]
        assert (await post(client, "/dlr/generic", [insta("m")] * 20)).status_code == 413
        assert inbox(tmp_path).is_empty()


async def test_write_failure_answers_503(tmp_path: Path) -> None:
    def broken(folder: str, df: pl.DataFrame) -> str | None:
        raise OSError("read-only file system")

    async with served(create_app(str(tmp_path), SECRET, summary_interval=0, write=broken)) as client:
        answer = await post(client, "/dlr/instasent", insta("m1"))
        assert answer.status_code == 503 and answer.headers["retry-after"] == "5"


@pytest.mark.integration
async def test_results_on_s3(s3_bucket: str) -> None:
    results = f"s3://{s3_bucket}/results"
    async with served(create_app(results, SECRET, summary_interval=0)) as client:
        assert (await post(client, "/dlr/instasent", insta("s3-1"))).status_code == 200
        assert inbox(results)["provider_message_id"].to_list() == ["s3-1"]


def test_cli_refuses_to_start_without_a_secret(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("SMSCAST_DLR_SECRET", raising=False)
    result = CliRunner().invoke(dlr_cli, ["serve", "--port", "0", "--results", str(tmp_path)])
    assert result.exit_code == 2 and "SMSCAST_DLR_SECRET" in result.output
    assert not (tmp_path / "_dlr").exists()
    helped = CliRunner().invoke(dlr_cli, ["serve", "--help"])
    assert helped.exit_code == 0 and "--batch-rows" in helped.output and "--batch-ms" in helped.output


# ---- the real server --------------------------------------------------------------------------------------


@pytest.mark.integration
def test_subprocess_logs_no_token_and_flushes_on_sigterm(tmp_path: Path) -> None:
    results = str(tmp_path / "results")
    # batch_ms of ten minutes: only the graceful stop can write the held report.
    with DlrServer(results, log_level="debug", batch_ms=600_000, workdir=tmp_path) as dlr:
        assert httpx.post(f"{dlr.url('instasent')}?token={dlr.secret}", json=insta("m1")).status_code == 200
        wrong = f"{dlr.url('instasent')}?token=not-{dlr.secret}-either"
        assert httpx.post(wrong, json=insta("m2")).status_code == 401
        dlr.settle()  # the receiver's log rolled into the inbox
        assert inbox(results)["provider_message_id"].to_list() == ["m1"]
        # A request whose body never comes holds the batch open; a complete report then waits in it.
        slow = socket.create_connection(("127.0.0.1", dlr.port or 0))
        slow.sendall(b"POST /dlr/generic HTTP/1.1\r\nHost: x\r\nX-Smscast-Token: " + dlr.secret.encode()
                     + b"\r\nContent-Length: 100\r\n\r\n[")  # fmt: skip
        wait_until("the slow request is being read", lambda: dlr.health()["arriving"] == 1)
        answers: list[int] = []

        def held() -> None:
            answers.append(
                httpx.post(dlr.url("instasent"), json=insta("m3"), headers=dlr.auth, timeout=60).status_code
            )

        waiting = threading.Thread(target=held)
        waiting.start()
        wait_until("the report is held", lambda: dlr.health()["held"] == 1)
        os.kill(dlr.pid or 0, signal.SIGTERM)
        waiting.join(timeout=60)
        slow.close()
        assert answers == [200]
        dlr.process.wait(timeout=60)  # type: ignore[union-attr]
    assert sorted(inbox(results)["provider_message_id"]) == ["m1", "m3"]  # the held one too
    assert not list((tmp_path / "results" / "_dlr" / ".wal").glob("*.wal"))  # the stop rolled the log
    log = (tmp_path / "dlr.log").read_text()
    assert "flushed 1 reports" in log and "(closing)" in log and "unauthorized 1" in log
    assert dlr.secret not in log


@pytest.mark.integration
@pytest.mark.parametrize("wal", [True, False], ids=["log", "part-per-batch"])
def test_kill_9_under_load_loses_no_acknowledged_report(tmp_path: Path, wal: bool) -> None:
    results = str(tmp_path / "results")  # the log, by default, in results/_dlr/.wal
    acked, ended = list[str](), list[str]()  # ids of the reports answered 2xx; how each client ended
    with DlrServer(results, wal=wal, workdir=tmp_path) as dlr:

        def drive(worker: int) -> None:
            with httpx.Client(headers=dlr.auth, timeout=30) as http:
                for n in range(1_000_000):
                    generic = n % 3 == 0
                    ids = [f"w{worker}-{n}-{i}" for i in range(20 if generic else 1)]
                    body = (
                        [{"message_id": i, "status": "delivered"} for i in ids] if generic else insta(ids[0])
                    )
                    try:
                        answer = http.post(dlr.url("generic" if generic else "instasent"), json=body)
                    except httpx.TransportError as exc:
                        ended.append(type(exc).__name__)
                        return
                    if answer.status_code == 200:
                        acked.extend(ids)  # one call: atomic under the GIL

        workers = [threading.Thread(target=drive, args=(w,)) for w in range(8)]
        for w in workers:
            w.start()
        wait_until("reports acknowledged under load", lambda: len(acked) >= 500, timeout=120)
        assert dlr.kill() == -9
        for w in workers:
            w.join(timeout=60)
    assert len(ended) == 8  # every client was cut off mid-load
    with DlrServer(results, wal=wal, workdir=tmp_path / "again") as dlr:  # it rolls the log before it serves
        missing = set(acked) - set(inbox(results)["provider_message_id"].to_list())
        assert not missing, f"{len(missing)} acknowledged reports lost, e.g. {sorted(missing)[:5]}"
        assert httpx.post(dlr.url("instasent"), json=insta("after"), headers=dlr.auth).status_code == 200
    assert "after" in inbox(results)["provider_message_id"].to_list()
