"""Compaction of the receiver's inbox (smscast/dlr/compact.py) on local folders and SeaweedFS, on an injected
clock: old parts become one, each report once; young parts, the log's folder and other files stay; reconcile
folds the same facts before, after, and with every report twice (a crash between the write and the deletes);
a compaction running at the same time, a part vanishing, a failing delete; and the command."""

from __future__ import annotations

import asyncio
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from typer.testing import CliRunner

from smscast import delivery, storage
from smscast.campaign import CampaignSpec
from smscast.delivery import DELIVERY_SCHEMA, REPORT_SCHEMA, SETTLED_SCHEMA
from smscast.dlr import compact
from smscast.dlr.compact import CompactionReport, app, compact_inbox, part_time
from smscast.results import CampaignPaths, conform, dlr_inbox
from smscast.tasks.manifest import save_spec
from smscast.tasks.reconcile import areconcile_campaign

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
NOW = T0 + timedelta(days=1)
HOUR = timedelta(hours=1)


def rep(
    mid: str, status: str, minute: int, *, received: int | None = None, at: bool = True
) -> dict[str, Any]:
    """A sandbox report; `at=False`: the provider gave no time (the id then holds none either)."""
    reported = T0 + timedelta(minutes=minute) if at else None
    return {
        "report_id": f"{mid}-{status}-{minute if at else ''}",
        **{"provider": "sandbox", "provider_message_id": mid, "client_ref": None},
        **{"delivery_status": status, "provider_status": status, "error_code": None, "error_message": None},
        "reported_at": reported,
        "received_at": T0 + timedelta(minutes=minute if received is None else received),
    }


def put(results: str, written: datetime, *reports: dict[str, Any], seq: int | None = None) -> str:
    """A part named as the receiver names it at `written`: as delivery.append does, or (`seq`) as a roll of
    the write-ahead log does."""
    stamp = written.strftime("%Y%m%dT%H%M%S%fZ")
    name = delivery.part_name(written) if seq is None else f"part-{stamp}-0123456789ab-{seq:012d}.parquet"
    uri = f"{dlr_inbox(results)}/{name}"
    storage.write_parquet(delivery.conform(pl.DataFrame(list(reports)), REPORT_SCHEMA), uri)
    return uri


def inbox_rows(results: str) -> pl.DataFrame:
    return delivery.read_all(dlr_inbox(results), REPORT_SCHEMA)


def ids(results: str) -> list[str]:
    return sorted(inbox_rows(results)["report_id"].to_list())


def parts(results: str) -> list[str]:
    return compact._parts_in(dlr_inbox(results))


def old_and_young(results: str) -> tuple[list[str], list[str]]:
    """Five old parts (some rolled from the log) with copies of reports across them, and two young ones."""
    old = [
        put(results, T0, rep("s0", "pending", 1), rep("s1", "pending", 2)),
        put(results, T0 + timedelta(minutes=1), rep("s0", "delivered", 5), rep("s1", "pending", 2), seq=1),
        put(results, T0 + timedelta(minutes=2), rep("s2", "undelivered", 6), seq=2),
        put(results, T0 + timedelta(minutes=3), rep("s0", "delivered", 5), rep("s3", "delivered", 7)),
        put(results, NOW - 2 * HOUR, rep("s4", "delivered", 8)),
    ]
    young = [
        put(results, NOW - timedelta(minutes=59), rep("s4", "delivered", 8), rep("s5", "pending", 9)),
        put(results, NOW, rep("s6", "pending", 10), seq=3),
    ]
    return old, young


def test_old_parts_become_one_part_with_each_report_once(tmp_path: Path) -> None:
    results = str(tmp_path)
    old, young = old_and_young(results)
    inbox = Path(dlr_inbox(results))
    young_bytes = {u: Path(u).read_bytes() for u in young}
    # What compaction never touches: the log's folder, other files, sub-folders, a name not the receiver's.
    (inbox / ".wal").mkdir()
    (inbox / ".wal" / "000000000001-20260302T090000000000Z.wal").write_bytes(b"log")
    (inbox / "README.txt").write_text("notes")
    (inbox / "x").mkdir()
    shutil.copy(old[0], inbox / "x" / Path(old[0]).name)
    shutil.copy(old[0], inbox / "reports.parquet")
    union = sorted(set(ids(results)))
    before = sum(Path(u).stat().st_size for u in old)

    report = compact_inbox(results, min_age=HOUR, now=NOW)

    assert report.parts_merged == 5 and report.old == 5 and report.young == 2 and report.others == 1
    assert report.duplicates_dropped == 2 and report.reports_kept == 6 and report.ok
    assert report.bytes_before == before and report.bytes_after == Path(str(report.merged_uri)).stat().st_size
    assert report.merged_uri is not None
    # Named like the receiver's parts, at the newest merged part's time, in the same folder.
    assert part_time(Path(report.merged_uri).name) == NOW - 2 * HOUR
    assert sorted(parts(results)) == sorted([report.merged_uri, *young, str(inbox / "reports.parquet")])
    assert all(not Path(u).exists() for u in old)
    assert {u: Path(u).read_bytes() for u in young} == young_bytes
    assert (inbox / ".wal" / "000000000001-20260302T090000000000Z.wal").read_bytes() == b"log"
    assert (inbox / "README.txt").exists() and (inbox / "x" / Path(old[0]).name).exists()
    assert not list(inbox.glob(".*.flock"))  # the conditional create's lock file is not left behind
    merged = pl.read_parquet(report.merged_uri)
    assert merged.schema == pl.Schema(REPORT_SCHEMA)
    assert sorted(merged["report_id"].to_list()) == sorted(set(merged["report_id"].to_list()))
    # Every reader still sees the union (here: with the young parts' and the stray files' copies).
    assert sorted(set(ids(results))) == union
    assert "merged 5 parts" in report.render() and "6 reports kept, 2 duplicates dropped" in report.render()

    again = compact_inbox(results, min_age=HOUR, now=NOW)
    assert again.merged_uri is None and again.old == 1 and again.young == 2
    assert sorted(parts(results)) == sorted([report.merged_uri, *young, str(inbox / "reports.parquet")])
    assert "nothing to compact" in again.render()
    # An hour later the young parts have aged: they join the merged one.
    later = compact_inbox(results, min_age=HOUR, now=NOW + 2 * HOUR)
    assert later.parts_merged == 3 and later.young == 0
    assert ids(results).count("s4-delivered-8") == 1  # its young copy has gone into the merged part
    assert ids(results).count("s0-pending-1") == 3  # the two stray copies are nobody's to compact


def test_nothing_to_do_is_a_clean_no_op(tmp_path: Path) -> None:
    empty = compact_inbox(str(tmp_path), min_age=HOUR, now=NOW)
    assert empty == CompactionReport(dlr_inbox(str(tmp_path)), HOUR)
    assert not Path(dlr_inbox(str(tmp_path))).exists()
    one = put(str(tmp_path), T0, rep("s0", "pending", 1))
    young = put(str(tmp_path), NOW, rep("s1", "pending", 1))
    report = compact_inbox(str(tmp_path), min_age=HOUR, now=NOW)
    assert (report.merged_uri, report.old, report.young) == (None, 1, 1)
    assert sorted(parts(str(tmp_path))) == sorted([one, young])
    assert report.render().startswith("smscast dlr: nothing to compact under ")


def test_the_copy_kept_does_not_depend_on_the_order_parts_are_read(tmp_path: Path) -> None:
    # The same report posted twice, received 1 and 40 minutes after; the provider gave no time of its own.
    first, second = rep("s0", "delivered", 1, at=False), rep("s0", "delivered", 1, received=40, at=False)
    kept: list[pl.DataFrame] = []
    for order in ([first, second], [second, first]):
        results = str(tmp_path / str(len(kept)))
        put(results, T0, order[0], rep("s1", "pending", 2))
        put(results, T0 + HOUR, order[1])
        report = compact_inbox(results, min_age=HOUR, now=NOW)
        assert report.duplicates_dropped == 1
        kept.append(pl.read_parquet(str(report.merged_uri)))
    assert kept[0].equals(kept[1])
    assert kept[0].filter(pl.col("provider_message_id") == "s0")["received_at"].to_list() == [
        T0 + timedelta(minutes=40)
    ]


# ---- reconcile sees the same ----------------------------------------------------------------------------


def campaign(results: Path) -> None:
    """A sandbox campaign (its provider reports by webhook): rows 0-5 accepted as s0-s5, row 6 unknown."""
    save_spec(CampaignSpec(campaign_id="c1", provider="sandbox", source="r.csv", results=str(results)))
    base = {"campaign_id": "c1", "attempt": 1, "provider": "sandbox", "batch_id": "b1", "submitted_at": T0}
    rows = [
        {
            **base,
            "row_index": i,
            "status": "accepted",
            "phone": f"+4474009{i:05d}",
            "provider_message_id": f"s{i}",
        }
        for i in range(6)
    ]
    rows.append(
        {**base, "row_index": 6, "status": "unknown", "phone": "+447400900006", "idempotency_key": "k6"}
    )
    frame = pl.DataFrame(rows, infer_schema_length=None)
    storage.write_parquet(conform(frame), CampaignPaths(str(results), "c1").attempt(1).part(0))


def reconciled(results: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Reconcile at NOW; the delivery facts and settlements it wrote."""

    async def go() -> None:
        await areconcile_campaign(str(results), "c1", clock=lambda: NOW)

    asyncio.run(go())
    paths = CampaignPaths(str(results), "c1")
    facts = delivery.read_all(paths.delivery, DELIVERY_SCHEMA).sort("row_index", "reported_at")
    settled = delivery.read_all(paths.settled, SETTLED_SCHEMA).sort("row_index")
    return facts, settled


def test_reconcile_folds_the_same_facts_before_after_and_with_every_report_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain, compacted, crashed = tmp_path / "plain", tmp_path / "compacted", tmp_path / "crashed"
    campaign(plain)
    old_and_young(str(plain))
    # Row 5's report without a time of its own, received twice (it then counts from when it was received);
    # a report naming only the unknown row's key.
    put(str(plain), T0 + timedelta(minutes=4), rep("s5", "undelivered", 3, at=False))
    put(str(plain), T0 + timedelta(minutes=5), rep("s5", "undelivered", 3, received=30, at=False))
    put(str(plain), T0 + timedelta(minutes=6), {**rep("x", "delivered", 9), "provider_message_id": None,
                                                "client_ref": "k6"})  # fmt: skip
    for copy in (compacted, crashed):
        shutil.copytree(plain, copy)
        save_spec(CampaignSpec(campaign_id="c1", provider="sandbox", source="r.csv", results=str(copy)))
    assert compact_inbox(str(compacted), min_age=HOUR, now=NOW).parts_merged == 8
    with monkeypatch.context() as patched:
        patched.setattr(storage, "delete", _refuse)
        report = compact_inbox(str(crashed), min_age=HOUR, now=NOW)
    assert len(report.not_deleted) == 8 and not report.ok
    assert len(parts(str(crashed))) == 11  # every old part, the merged one and the young ones
    assert ids(str(crashed)) != ids(str(plain)) and set(ids(str(crashed))) == set(ids(str(plain)))

    facts, settled = reconciled(plain)
    assert facts.select("row_index", "delivery_status", "reported_at").rows() == [
        (0, "delivered", T0 + timedelta(minutes=5)),
        (1, "pending", T0 + timedelta(minutes=2)),
        (1, "expired", NOW),  # the sandbox's 24 h window: the same in every case
        (2, "undelivered", T0 + timedelta(minutes=6)),
        (3, "delivered", T0 + timedelta(minutes=7)),
        (4, "delivered", T0 + timedelta(minutes=8)),
        (5, "undelivered", T0 + timedelta(minutes=30)),  # the copy received last, as before compaction
        (6, "delivered", T0 + timedelta(minutes=9)),
    ]
    assert settled.select("row_index", "status", "provider_message_id").rows() == [(6, "accepted", None)]
    for other in (compacted, crashed):
        other_facts, other_settled = reconciled(other)
        assert other_facts.equals(facts) and other_settled.equals(settled)


def _refuse(uri: str) -> None:
    raise OSError(f"simulated crash before deleting {uri}")


# ---- failures and company -------------------------------------------------------------------------------


def test_a_crash_between_the_write_and_the_deletes_leaves_everything_and_the_next_run_cleans_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    results = str(tmp_path)
    old, young = old_and_young(results)
    union = sorted(set(ids(results)))
    with monkeypatch.context() as patched:
        patched.setattr(storage, "delete", _refuse)
        crashed = compact_inbox(results, min_age=HOUR, now=NOW)
    assert crashed.merged_uri is not None and sorted(crashed.not_deleted) == sorted(old)
    assert "5 merged part(s) could not be deleted" in crashed.render()
    assert sorted(parts(results)) == sorted([*old, crashed.merged_uri, *young])
    assert sorted(set(ids(results))) == union

    again = compact_inbox(results, min_age=HOUR, now=NOW)
    assert again.ok and again.parts_merged == 6 and again.reports_kept == 6
    assert again.duplicates_dropped == 8  # the crashed run's whole part, and the two copies in the old ones
    assert sorted(parts(results)) == sorted([str(again.merged_uri), *young])
    assert sorted(set(ids(results))) == union


def test_a_compaction_running_at_the_same_time_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    results = str(tmp_path)
    old, young = old_and_young(results)
    union = sorted(set(ids(results)))
    real_get = storage.get_bytes
    reads: list[str] = []
    other: list[CompactionReport] = []

    def get_bytes(uri: str) -> bytes:
        # After our second read another compaction runs whole: it merges everything and deletes it all.
        reads.append(uri)
        if len(reads) == 3 and not other:
            other.append(compact_inbox(results, min_age=HOUR, now=NOW))
        return real_get(uri)

    monkeypatch.setattr(storage, "get_bytes", get_bytes)
    ours = compact_inbox(results, min_age=HOUR, now=NOW)
    theirs = other[0]
    assert theirs.parts_merged == 5 and theirs.ok
    assert ours.parts_merged == 2 and ours.vanished == old[2:] and ours.ok  # deleting what is gone is done
    assert sorted(parts(results)) == sorted([str(theirs.merged_uri), str(ours.merged_uri), *young])
    assert sorted(set(ids(results))) == union
    assert "3 part(s) vanished before they were read" in ours.render()
    monkeypatch.undo()
    last = compact_inbox(results, min_age=HOUR, now=NOW)
    assert last.parts_merged == 2 and last.reports_kept == 6
    assert sorted(parts(results)) == sorted([str(last.merged_uri), *young])


def test_a_part_that_is_not_parquet_is_left_alone(tmp_path: Path) -> None:
    results = str(tmp_path)
    _old, _ = old_and_young(results)
    broken = Path(dlr_inbox(results)) / delivery.part_name(T0 - HOUR)
    broken.write_bytes(b"not parquet")
    report = compact_inbox(results, min_age=HOUR, now=NOW)
    assert report.parts_merged == 5 and report.unreadable == [str(broken)] and broken.exists()
    assert "not Parquet, left as it is" in report.render()


# ---- on S3 ------------------------------------------------------------------------------------------------


@pytest.mark.integration
def test_compaction_on_s3(s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    results = f"s3://{s3_bucket}/sms-results"
    _old, young = old_and_young(results)
    deeper = put(f"{results}/_dlr/x", T0, rep("s9", "delivered", 1))  # a sub-folder: not the inbox's
    union = sorted(set(ids(results)))
    # A part that was listed but is gone when read (another compaction took it).
    gone = f"{dlr_inbox(results)}/{delivery.part_name(T0 - HOUR)}"
    listed = storage.list_files
    monkeypatch.setattr(storage, "list_files", lambda uri, suffix="": [*listed(uri, suffix), gone])
    report = compact_inbox(results, min_age=HOUR, now=NOW)
    monkeypatch.undo()
    assert report.parts_merged == 5 and report.vanished == [gone] and report.ok
    assert report.reports_kept == 6 and report.duplicates_dropped == 2
    assert report.bytes_after == storage.size(str(report.merged_uri))
    assert sorted(parts(results)) == sorted([str(report.merged_uri), *young])
    assert storage.exists(deeper) and sorted(set(ids(results))) == union
    again = compact_inbox(results, min_age=HOUR, now=NOW + 2 * HOUR)
    assert again.parts_merged == 3 and parts(results) == [again.merged_uri]


# ---- the command ------------------------------------------------------------------------------------------


def test_the_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The command reads the real clock: parts of two days ago are old, one of a minute ago is young.
    results, real = str(tmp_path), datetime.now(UTC)
    put(results, real - timedelta(days=2), rep("s0", "pending", 1), rep("s1", "pending", 2))
    put(results, real - timedelta(days=2, minutes=-1), rep("s0", "delivered", 5), rep("s1", "pending", 2))
    put(results, real - timedelta(hours=2), rep("s2", "delivered", 6), seq=1)
    young = put(results, real - timedelta(minutes=1), rep("s3", "pending", 1))
    runner = CliRunner()

    with monkeypatch.context() as patched:
        patched.setattr(storage, "delete", _refuse)
        failed = runner.invoke(app, ["compact", "--results", results])
    assert failed.exit_code == 1, failed.output
    assert "3 merged part(s) could not be deleted" in failed.stdout and len(parts(results)) == 5

    done = runner.invoke(app, ["compact", "-r", results, "--min-age", "30m"])
    assert done.exit_code == 0, done.output
    assert "reading 4 parts older than 30m" in done.stderr
    assert done.stdout.startswith("smscast dlr: merged 4 parts (")
    assert "4 reports kept, 5 duplicates dropped; 1 part(s) younger than 30m" in done.stdout
    assert young in parts(results) and len(parts(results)) == 2

    noop = runner.invoke(app, ["compact", "-r", results])
    assert noop.exit_code == 0, noop.output
    assert "nothing to compact" in noop.stdout and "1 younger left" in noop.stdout

    bad = runner.invoke(app, ["compact", "-r", results, "--min-age", "soon"])
    assert bad.exit_code == 2 and "--min-age" in bad.output

    def denied(uri: str) -> bytes:
        raise PermissionError("denied")

    monkeypatch.setattr(storage, "get_bytes", denied)
    put(results, real - timedelta(days=1), rep("s8", "pending", 1))
    broken = runner.invoke(app, ["compact", "-r", results])
    assert broken.exit_code == 1
    assert "compaction failed, nothing was deleted: PermissionError: denied" in broken.stderr
    assert len(parts(results)) == 3
