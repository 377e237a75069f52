"""`smscast dlr compact`: merge the receiver's old inbox parts into one, so that `smscast reconcile`, which reads
the whole inbox every time, GETs a few objects instead of one per roll since the receiver started.

    smscast dlr compact --results s3://crm/sms-results [--min-age 1h]

The parts it takes are the inbox's own (`<results>/_dlr/part-<UTC time>-….parquet`, directly in the folder)
whose name says they were written more than `min_age` ago, at least two of them. Their reports are merged,
one row kept per `report_id` (a digest of the report's content, so copies are the same report), and written
as ONE new part under the same naming scheme, so every reader of the inbox finds it. Nothing else is touched:
younger parts, the receiver's write-ahead log (`.wal`, hidden), files in sub-folders, other files.

Why it cannot lose a report:
- The merged part is a conditional create (never overwrites anything), atomic and fsynced on a local disk
  (folder included), one PUT on S3. Only once it is written are the merged parts deleted, and only those
  that were read whole: a part that vanished between the listing and its read (another compaction took it)
  is skipped and not deleted; a part that is not Parquet is left as it is.
- A crash (or a failed delete) between the write and the deletes leaves reports in two parts. Readers fold
  them as one: smscast.delivery.latest_facts keeps one fact per row whatever the copies, and a settlement
  is one per row. The next compaction merges the copies away.
- Two compactions at once each write their own part (a fresh name) with what they read; a part the other
  one deleted first is simply gone (a delete of nothing is done). The union is kept; at worst twice.
- A receiver only ever adds parts. One restarted after a crash may roll an old log segment into a part with
  an old time in its name: that part is whole when it appears (atomic write or one PUT), so merging it is as
  safe as any other. If the receiver had died between rolling a segment and deleting it, and a compaction
  merged that part before the restart, the restart rolls the segment again: duplicates, harmless as above.

Which copy of a report is kept: the one received last (then the greatest by content), whatever order the
parts are read in. That is the copy reconcile's fold would pick anyway when the provider gave no time of its
own (`reported_at` then falls back to `received_at`, and the latest fact wins), so folding the merged inbox
gives the same facts as folding the parts it came from.
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, TypeVar

import polars as pl
import typer

from smscast import delivery, storage
from smscast.campaign import duration_seconds
from smscast.delivery import REPORT_SCHEMA
from smscast.locations import is_s3, redact, to_local_path
from smscast.results import dlr_inbox

__all__ = ["CompactionReport", "app", "compact_command", "compact_inbox", "part_time"]

log = logging.getLogger("smscast.dlr")

# Both writers' names: delivery.part_name (`part-<time>-<uuid12>`) and the log's rolls
# (`part-<time>-<log id>-<seq>`, smscast/dlr/wal.py). The time is UTC, to the microsecond.
_PART = re.compile(r"^part-(\d{8}T\d{12}Z)-[A-Za-z0-9][A-Za-z0-9-]*\.parquet$")
_STAMP = "%Y%m%dT%H%M%S%fZ"
# GETs and DELETEs in flight on S3 (each is a round trip; thousands of parts one after another take minutes).
S3_WORKERS = 8
PROGRESS_EVERY = 1000

T = TypeVar("T")
R = TypeVar("R")


def part_time(name: str) -> datetime | None:
    """When the inbox part called `name` was written (from its name); None for a name the receiver does not
    give its parts."""
    match = _PART.match(name)
    if match is None:
        return None
    return datetime.strptime(match.group(1), _STAMP).replace(tzinfo=UTC)


@dataclass
class CompactionReport:
    inbox: str
    min_age: timedelta
    merged_uri: str | None = None  # the part written; None when nothing was merged
    parts_merged: int = 0
    reports_kept: int = 0
    duplicates_dropped: int = 0
    bytes_before: int = 0  # of the parts merged
    bytes_after: int = 0  # of the part written
    old: int = 0  # parts old enough when listed
    young: int = 0  # parts left because they are younger than min_age
    others: int = 0  # Parquet files in the inbox not named like its parts (left alone)
    vanished: list[str] = field(default_factory=list)  # gone before they were read: not deleted by us
    unreadable: list[str] = field(default_factory=list)  # not Parquet: left as they are
    not_deleted: list[str] = field(default_factory=list)  # merged, but their delete failed

    @property
    def ok(self) -> bool:
        """Everything merged was deleted (a failed delete leaves harmless duplicates, but says so)."""
        return not self.not_deleted

    def render(self) -> str:
        inbox, age = redact(self.inbox), _age(self.min_age)
        if self.merged_uri is None:
            lines = [
                f"smscast dlr: nothing to compact under {inbox}: {self.old} part(s) older than {age} "
                f"(at least 2 needed), {self.young} younger left as they are"
            ]
        else:
            lines = [
                f"smscast dlr: merged {self.parts_merged} parts ({_size(self.bytes_before)}) into "
                f"{redact(self.merged_uri)} ({_size(self.bytes_after)}): {self.reports_kept} reports kept, "
                f"{self.duplicates_dropped} duplicates dropped; {self.young} part(s) younger than {age} "
                "left as they are"
            ]
        if self.vanished:
            lines.append(
                f"  {len(self.vanished)} part(s) vanished before they were read (another compaction took "
                "them): left to it"
            )
        if self.others:
            lines.append(f"  {self.others} Parquet file(s) not named like the receiver's parts: left alone")
        lines += [f"  not Parquet, left as it is: {redact(u)}" for u in self.unreadable]
        if self.not_deleted:
            lines.append(
                f"  {len(self.not_deleted)} merged part(s) could not be deleted; their reports are also in "
                "the new part, which readers take as one report; the next compaction removes them:"
            )
            lines += [f"    {redact(u)}" for u in self.not_deleted]
        return "\n".join(lines)


def compact_inbox(
    results: str,
    *,
    min_age: timedelta,
    now: datetime | None = None,
    progress: Callable[[str], None] | None = None,
) -> CompactionReport:
    """Merge the inbox parts of `results` written more than `min_age` before `now` into one part, then delete
    them (the module docstring says why that is safe at any moment). Storage errors before the write raise
    with nothing deleted; a failed delete is reported in `not_deleted`."""
    if min_age < timedelta(0):
        raise ValueError("min_age must not be negative")
    say = progress or log.info
    inbox = dlr_inbox(results)
    now = now or datetime.now(UTC)
    if now.tzinfo is None:  # part names are UTC
        now = now.replace(tzinfo=UTC)
    report = CompactionReport(inbox, min_age)
    old: list[tuple[str, datetime]] = []
    for uri in _parts_in(inbox):
        written = part_time(_name(uri))
        if written is None:
            report.others += 1
        elif written <= now - min_age:
            old.append((uri, written))
        else:
            report.young += 1
    report.old = len(old)
    if len(old) < 2:
        return report
    workers = S3_WORKERS if is_s3(inbox) else 1
    say(f"smscast dlr: reading {len(old)} parts older than {_age(min_age)} under {redact(inbox)}")
    frames: list[pl.DataFrame] = []
    merged_from: list[tuple[str, datetime]] = []
    done = 0
    for (uri, written), data in zip(old, _each(_read, (u for u, _ in old), workers), strict=True):
        done += 1
        if done % PROGRESS_EVERY == 0:
            say(f"smscast dlr: read {done}/{len(old)} parts")
        if data is None:
            report.vanished.append(uri)
            continue
        try:
            frames.append(_conform(pl.read_parquet(io.BytesIO(data))))
        except pl.exceptions.PolarsError:
            report.unreadable.append(uri)
            continue
        merged_from.append((uri, written))
        report.bytes_before += len(data)
    if len(merged_from) < 2:
        return report
    rows = pl.concat(frames, how="diagonal_relaxed")
    merged = _dedup(rows)
    report.duplicates_dropped = rows.height - merged.height
    report.reports_kept = merged.height
    # Named at the newest merged part's time: it sorts with what it holds, and, old enough itself, it is
    # merged again with the next parts to age, so the inbox settles at one old part plus the young ones.
    target = f"{inbox.rstrip('/')}/{delivery.part_name(max(w for _, w in merged_from))}"
    body = storage.parquet_bytes(merged)
    # storage.write_parquet_once's conditional create, with the bytes kept to count them.
    if storage.put_if(target, body, None) is None:  # a fresh uuid in the name: never met in practice
        raise FileExistsError(f"{redact(target)} already exists; nothing was deleted")
    if not is_s3(target):  # put_if's lock file, named after this part alone: nobody else will take it
        path = to_local_path(target)
        path.with_name(f".{path.name}.flock").unlink(missing_ok=True)
    report.merged_uri, report.bytes_after = target, len(body)
    report.parts_merged = len(merged_from)
    say(f"smscast dlr: wrote {redact(target)}; deleting the {len(merged_from)} parts it replaces")
    for uri, failure in zip(
        (u for u, _ in merged_from), _each(_delete, (u for u, _ in merged_from), workers), strict=True
    ):
        if failure is not None:
            log.warning("dlr: could not delete merged part %s: %s", redact(uri), redact(failure)[:500])
            report.not_deleted.append(uri)
    return report


def _parts_in(inbox: str) -> list[str]:
    """Parquet files directly in the inbox (list_files already skips hidden files and, locally, hidden
    folders such as the log's `.wal`)."""
    files = storage.list_files(f"{inbox.rstrip('/')}/", suffix=".parquet")
    if is_s3(inbox):
        folder = inbox.rstrip("/")
        return [f for f in files if f.rsplit("/", 1)[0] == folder]
    root = to_local_path(inbox)
    return [f for f in files if Path(f).parent == root]


def _name(uri: str) -> str:
    return uri.rsplit("/", 1)[-1]


def _read(uri: str) -> bytes | None:
    try:
        return storage.get_bytes(uri)
    except FileNotFoundError:
        return None


def _delete(uri: str) -> str | None:
    """None once deleted (or already gone: storage.delete takes not-found as done); else why not."""
    try:
        storage.delete(uri)
    except Exception as exc:  # the storage's errors are many; each failure only leaves harmless duplicates
        return f"{type(exc).__name__}: {exc}"
    return None


def _each(fn: Callable[[T], R], items: Iterable[T], workers: int) -> Iterator[R]:
    """fn over items, results in order; `workers` at a time."""
    if workers <= 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dlr-compact") as pool:
        yield from pool.map(fn, items)


def _conform(df: pl.DataFrame) -> pl.DataFrame:
    """REPORT_SCHEMA first, as every reader takes it; columns outside it (a newer receiver's) kept after."""
    extra = [c for c in df.columns if c not in REPORT_SCHEMA]
    return pl.concat([delivery.conform(df, REPORT_SCHEMA), df.select(extra)], how="horizontal")


def _dedup(rows: pl.DataFrame) -> pl.DataFrame:
    """One row per report_id: the copy received last, then the greatest by content (a stable sort, so the
    result is the same whatever order the parts came in). Rows without an id cannot be told apart from
    other reports: all kept."""
    keyed = pl.col("report_id").is_not_null()
    order = ["report_id", "received_at", *(c for c in REPORT_SCHEMA if c not in ("report_id", "received_at"))]
    kept = (
        rows.filter(keyed)
        .sort(order, nulls_last=False, maintain_order=True)
        .unique("report_id", keep="last", maintain_order=True)
    )
    return pl.concat([kept, rows.filter(~keyed)]).sort("received_at", "report_id", maintain_order=True)


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _age(age: timedelta) -> str:
    seconds = int(age.total_seconds())
    for unit, span in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % span == 0:
            return f"{seconds // span}{unit}"
    return f"{seconds}s"


# ---- the command --------------------------------------------------------------------------------------------

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False)


@app.callback()
def _group() -> None:
    """Delivery reports (compact only: the lead registers `compact_command` in the `dlr` app)."""


@app.command("compact")
def compact_command(
    results: Annotated[
        str, typer.Option("--results", "-r", help="Results location (a directory or s3://bucket/prefix).")
    ],
    min_age: Annotated[
        str,
        typer.Option(
            "--min-age",
            help="Merge only parts written longer ago than this (30m, 1h, 2d): what the receiver is "
            "rolling now is left alone.",
        ),
    ] = "1h",
) -> None:
    """Merge the receiver's inbox parts older than --min-age into one part (one row per report), then delete
    them, so that `smscast reconcile` reads a few objects instead of thousands. Safe beside a running
    receiver, reconcile, or another compaction; a crash at any point leaves every report readable."""
    try:
        age = timedelta(seconds=duration_seconds(min_age))
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--min-age") from None
    try:
        report = compact_inbox(results, min_age=age, progress=lambda m: typer.echo(m, err=True))
    except Exception as exc:  # before the write: nothing was deleted (deletes report their own failures)
        reason = redact(f"{type(exc).__name__}: {exc}")[:500]
        typer.secho(f"error: compaction failed, nothing was deleted: {reason}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    typer.echo(report.render())
    if not report.ok:
        raise typer.Exit(1)
