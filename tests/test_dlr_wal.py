"""The receiver's write-ahead log (smscast/dlr/wal.py): appended batches roll into the inbox exactly once, a
process killed with -9 loses nothing it acknowledged (the next open rolls it), a torn or damaged segment
gives up only what was never acknowledged, and one process at a time holds a log. And the receiver's report
routes, answered past Starlette's router, answered alike through it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest
from starlette.applications import Starlette
from typer.testing import CliRunner

from smscast import delivery, storage
from smscast.delivery import REPORT_SCHEMA
from smscast.dlr import parse as p
from smscast.dlr import wal as w
from smscast.dlr.app import create_app
from smscast.dlr.cli import app as dlr_cli
from smscast.dlr.wal import LogBusy, LogMismatch, WriteAheadLog, default_directory
from smscast.results import dlr_inbox

NOW = 1_700_000_000_000_000
SECRET = "wal-secret-7"
ROOT = Path(__file__).resolve().parent.parent


def batch(prefix: str, n: int) -> list[tuple[Any, ...]]:
    """n reports as REPORT_SCHEMA columns, ids `<prefix><i>`."""
    reports = p.parse_generic([{"message_id": f"{prefix}{i}", "status": "delivered"} for i in range(n)], NOW)
    return list(zip(*reports.reports, strict=True))


def inbox(results: Path) -> pl.DataFrame:
    return delivery.read_all(dlr_inbox(str(results)), REPORT_SCHEMA)


def parts(results: Path) -> list[str]:
    return storage.list_files(f"{dlr_inbox(str(results))}/", suffix=".parquet")


def open_log(results: Path, **kw: Any) -> WriteAheadLog:
    inbox_uri = dlr_inbox(str(results))
    log = WriteAheadLog(default_directory(inbox_uri), inbox_uri, **kw)
    log.open()
    return log


def segments(results: Path, pattern: str = "*.wal") -> list[Path]:
    return sorted(default_directory(dlr_inbox(str(results))).glob(pattern))


def test_appended_batches_roll_into_one_part_per_segment(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    log.append(batch("a", 3))
    log.append(batch("b", 2))
    assert log.pending == (1, 5) and inbox(tmp_path).is_empty()  # durable in the log, not yet in the inbox
    (segment,) = segments(tmp_path)
    assert segment.stat().st_size >= 64 * 1024  # zeros written ahead: records overwrite, never extend

    result = log.roll()
    assert (result.parts, result.reports, result.segments) == (1, 5, 1) and log.pending == (0, 0)
    (part,) = parts(tmp_path)
    assert Path(part).name == f"part-{segment.name[13:-4]}-{log.id}-{segment.name[:12]}.parquet"
    got = inbox(tmp_path)
    assert got.schema == pl.Schema(REPORT_SCHEMA)
    assert got["provider_message_id"].to_list() == ["a0", "a1", "a2", "b0", "b1"]
    assert segments(tmp_path) == [] and log.roll().parts == 0  # nothing left, nothing rolled twice
    log.append(batch("c", 1))  # a new segment after the roll
    log.close()
    assert len(segments(tmp_path)) == 1  # closing seals; the next open rolls it
    log = open_log(tmp_path)
    assert log.roll().reports == 1 and sorted(inbox(tmp_path)["provider_message_id"])[-1] == "c0"
    log.close()


def test_rolling_is_exactly_once_when_cut_short(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    log.append(batch("a", 4))
    log.close()
    (segment,) = segments(tmp_path)
    kept = segment.read_bytes()
    log = open_log(tmp_path)
    log.roll()
    log.close()
    # As if the roll had died after writing the part, before deleting the segment: the segment is back.
    segment.write_bytes(kept)
    log = open_log(tmp_path)
    assert log.roll().segments == 1
    log.close()
    assert len(parts(tmp_path)) == 1 and inbox(tmp_path).height == 4 and segments(tmp_path) == []


def test_a_segment_is_sealed_when_full(tmp_path: Path) -> None:
    log = open_log(tmp_path, segment_bytes=2000)
    for i in range(6):
        log.append(batch(f"s{i}-", 5))
    sealed = log.pending[0]
    assert sealed >= 2
    log.roll()
    log.close()
    assert len(parts(tmp_path)) == sealed and inbox(tmp_path).height == 30


_CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from smscast.dlr import parse as p
    from smscast.dlr.wal import WriteAheadLog
    log = WriteAheadLog(Path(sys.argv[1]), sys.argv[2])
    log.open()
    for n in range(int(sys.argv[3])):
        reports = p.parse_generic([{"message_id": f"k{n}-{i}", "status": "sent"} for i in range(3)], 1).reports
        log.append(list(zip(*reports)))
        print(n, flush=True)  # acknowledged: the append returned after its fdatasync
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def killed_writer(results: Path, batches: int) -> list[str]:
    """A process that appends `batches` batches and kills itself with -9, holding the log. Returns the ids
    it acknowledged."""
    inbox_uri = dlr_inbox(str(results))
    child = subprocess.run(
        [sys.executable, "-c", _CHILD, str(default_directory(inbox_uri)), inbox_uri, str(batches)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=120,
    )
    assert child.returncode == -9, child.stderr
    return [f"k{n}-{i}" for n in map(int, child.stdout.split()) for i in range(3)]


def test_after_kill_9_the_next_open_rolls_what_was_acknowledged(tmp_path: Path) -> None:
    acked = killed_writer(tmp_path, 20)
    assert len(acked) == 60 and inbox(tmp_path).is_empty()
    log = open_log(tmp_path)  # the dead process's flock went with it
    assert log.roll().reports == 60
    log.close()
    assert sorted(inbox(tmp_path)["provider_message_id"]) == sorted(acked)


def test_a_torn_last_record_is_dropped_and_a_damaged_segment_kept_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    acked = killed_writer(tmp_path, 3)
    (segment,) = segments(tmp_path)
    data = bytearray(segment.read_bytes())
    end = len(data.rstrip(b"\0"))
    # A record whose write was cut short by the crash (its fdatasync never returned: never acknowledged).
    data[end : end + 11] = w._HEAD.pack(500, 1234) + b"[[1"
    segment.write_bytes(bytes(data))
    log = open_log(tmp_path)
    assert log.roll().reports == 9
    log.close()
    assert "unfinished record" in caplog.text and sorted(inbox(tmp_path)["provider_message_id"]) == acked
    assert {s.name for s in segments(tmp_path, "*")} == {"lock", "wal.json"}  # the segment is gone

    # Damage: a garbled record with records after it. What precedes it is rolled; the segment is kept aside.
    acked = killed_writer(tmp_path / "two", 3)
    (segment,) = segments(tmp_path / "two")
    data = bytearray(segment.read_bytes())
    second = len(w.MAGIC) + w._HEAD.size + w._HEAD.unpack_from(data, len(w.MAGIC))[0]
    data[second + w._HEAD.size + 2] ^= 0xFF
    segment.write_bytes(bytes(data))
    log = open_log(tmp_path / "two")
    assert log.roll().reports == 3
    log.close()
    assert "damaged (bad record at byte" in caplog.text
    assert sorted(inbox(tmp_path / "two")["provider_message_id"]) == acked[:3]
    assert [s.name for s in segments(tmp_path / "two", "*.damaged")] == [segment.name + ".damaged"]


def test_a_failed_append_is_not_acknowledged_and_the_log_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = open_log(tmp_path)
    log.append(batch("a", 2))
    real = os.fdatasync

    def failing(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", failing)
    with pytest.raises(OSError, match="Input/output"):
        log.append(batch("lost", 2))
    monkeypatch.setattr(os, "fdatasync", real)
    log.append(batch("b", 2))  # a new segment: nothing goes after a record in doubt
    assert log.pending[0] == 2
    log.roll()
    log.close()
    assert sorted(inbox(tmp_path)["provider_message_id"]) == ["a0", "a1", "b0", "b1"]


def test_one_process_per_log_and_one_inbox_per_log(tmp_path: Path) -> None:
    first = open_log(tmp_path)
    with pytest.raises(LogBusy, match=f"in use by process {os.getpid()}"):
        open_log(tmp_path)
    first.append(batch("a", 1))
    first.close()
    directory = default_directory(dlr_inbox(str(tmp_path)))
    other = WriteAheadLog(directory, dlr_inbox(str(tmp_path / "elsewhere")))
    with pytest.raises(LogMismatch, match="roll them there first"):
        other.open()  # it holds a report for the first inbox
    again = open_log(tmp_path)
    assert again.roll().reports == 1
    again.close()


def test_default_directory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert default_directory("/data/results/_dlr") == Path("/data/results/_dlr/.wal")
    s3 = default_directory("s3://crm/sms-results/_dlr", {"SMSCAST_HOME": str(tmp_path)})
    assert s3.parent == tmp_path / "dlr-wal" and s3.name.startswith("crm-sms-results-_dlr-")
    assert s3 != default_directory("s3://crm/other/_dlr", {"SMSCAST_HOME": str(tmp_path)})


# ---- through the receiver ---------------------------------------------------------------------------------


async def test_the_receiver_answers_once_logged_and_rolls_on_schedule_and_at_stop(tmp_path: Path) -> None:
    wal_dir = tmp_path / "wal"
    app = create_app(str(tmp_path), SECRET, summary_interval=0, wal_dir=wal_dir, roll_ms=600_000)
    writer = app.state.receiver.writer
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://d") as http,
    ):
        body = [{"message_id": f"r{i}", "status": "delivered"} for i in range(3)]
        answer = await http.post("/dlr/generic", json=body, headers={"X-Smscast-Token": SECRET})
        assert answer.json() == {"recorded": 3, "ignored": 0}
        health = (await http.get("/healthz")).json()
        assert (health["log"], health["log_segments"], health["log_reports"]) == (True, 1, 3)
        assert inbox(tmp_path).is_empty()  # acknowledged: in the log; the inbox has it after the roll
        await writer.roll()
        assert inbox(tmp_path).height == 3 and writer.stats.rolled == 3
        await http.post(
            "/dlr/instasent", json={"id": "m1", "status": "sent"}, headers={"X-Smscast-Token": SECRET}
        )
    # Stopping rolled the log: the inbox has everything and the log folder no segment.
    assert sorted(inbox(tmp_path)["provider_message_id"]) == ["m1", "r0", "r1", "r2"]
    assert not list(wal_dir.glob("*.wal")) and writer.stats.parts == 2


async def test_a_failed_roll_keeps_the_reports_in_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unreachable(df: pl.DataFrame, uri: str) -> None:
        raise OSError("the inbox is unreachable")

    app = create_app(str(tmp_path), SECRET, summary_interval=0, wal_dir=tmp_path / "wal", roll_ms=600_000)
    writer = app.state.receiver.writer
    async with app.router.lifespan_context(app):
        await writer.submit(p.parse_instasent({"id": "m1", "status": "sent"}, NOW).reports)
        monkeypatch.setattr(storage, "write_parquet", unreachable)
        await writer.roll()  # logged and left for the next roll: the report is still acknowledged
        assert writer.stats.failed_rolls == 1 and writer.wal is not None and writer.wal.pending == (1, 1)
        monkeypatch.undo()
    assert inbox(tmp_path)["provider_message_id"].to_list() == ["m1"]


async def test_report_routes_answer_alike_through_the_router(tmp_path: Path) -> None:
    """The app sends a report route's exact POSTs past Starlette's router; through the router they are
    answered the same way, and the router answers everything else about those paths."""
    app = create_app(str(tmp_path), SECRET, summary_interval=0)

    async def via_router(scope: Any, receive: Any, send: Any) -> None:
        await Starlette.__call__(app, scope, receive, send)

    transport = httpx.ASGITransport(app=via_router)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://d") as http,
    ):
        token = {"X-Smscast-Token": SECRET}
        answer = await http.post("/dlr/instasent", json={"id": "m1", "status": "sent"}, headers=token)
        assert answer.json() == {"recorded": 1, "ignored": 0}
        ignored = await http.post(f"/dlr/sent-dm?token=x&token={SECRET}", json={"field": "x"})
        assert ignored.json() == {"recorded": 0, "ignored": 1}  # the last `token` counts, as in Starlette
        assert (await http.post("/dlr/generic", json=[])).status_code == 401
        assert (await http.get("/dlr/instasent", headers=token)).status_code == 405
    assert inbox(tmp_path)["provider_message_id"].to_list() == ["m1"]


def test_roll_command_rolls_a_dead_receivers_log(tmp_path: Path) -> None:
    acked = killed_writer(tmp_path, 2)
    result = CliRunner().invoke(dlr_cli, ["roll", "--results", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "rolled 6 reports into 1 parts" in result.output
    assert sorted(inbox(tmp_path)["provider_message_id"]) == acked
    held = open_log(tmp_path)
    busy = CliRunner().invoke(dlr_cli, ["roll", "--results", str(tmp_path)])
    held.close()
    assert busy.exit_code == 2 and "in use by process" in busy.output
    nothing = CliRunner().invoke(dlr_cli, ["roll", "--results", str(tmp_path / "none")])
    assert nothing.exit_code == 0 and "rolled 0 reports" in nothing.output


@pytest.mark.integration
async def test_a_log_on_local_disk_rolls_into_s3_exactly_once(s3_bucket: str, tmp_path: Path) -> None:
    results = f"s3://{s3_bucket}/wal-results"
    wal_dir = tmp_path / "wal"
    app = create_app(results, SECRET, summary_interval=0, wal_dir=wal_dir, roll_ms=600_000)
    async with app.router.lifespan_context(app):
        writer = app.state.receiver.writer
        await writer.submit(p.parse_instasent({"id": "s3-1", "status": "delivered"}, NOW).reports)
        (segment,) = wal_dir.glob("*.wal")
        kept = segment.read_bytes()
        await writer.roll()
    segment.write_bytes(kept)  # as if the roll had died after its PUT: rolled again, to the same object
    log = WriteAheadLog(wal_dir, dlr_inbox(results))
    log.open()
    assert log.roll().segments == 1
    log.close()
    assert len(storage.list_files(f"{dlr_inbox(results)}/", suffix=".parquet")) == 1
    assert delivery.read_all(dlr_inbox(results), REPORT_SCHEMA)["provider_message_id"].to_list() == ["s3-1"]
