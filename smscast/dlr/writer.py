"""Group commit: the receiver's requests hand their reports to one writer and wait for the flush of the batch
that holds them; only then is the provider answered 2xx.

A batch is flushed when it holds `batch_rows` reports or `batch_ms` after its first report arrived, whichever
comes first; and sooner when no other request is on its way in (`arriving` is 0), since waiting could then add
nothing. Providers post DLRs over a fixed number of connections, each waiting for our answer before the next
post: a timer alone would make every one of them wait `batch_ms` per report for company that cannot come.
A flush is one record appended to the write-ahead log and fdatasynced (wal.py; a roller task rolls the log into
Parquet parts under the inbox every `roll_ms`), or, without a log, one Parquet part (smscast.delivery.append).
Flushes run in threads (at most `flushes` at a time) while the event loop keeps taking requests: while one is
written the next batch fills, so under load batches grow by themselves and flushes per second stay bounded by
write time.

Durability: a log record is on disk when its fdatasync returns (the segment's name was made durable when it was
created). Without a log, a local part is written to a hidden temporary file, fsynced, renamed, and its folder
fsynced (smscast/storage.py); an S3 part is one PUT, durable when it returns. A request is acknowledged only
after that, so a kill -9 at any moment loses nothing that was acknowledged: at worst reports that were never
answered, which the provider sends again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import polars as pl

from smscast import delivery
from smscast.dlr.parse import Report
from smscast.dlr.wal import WriteAheadLog, durable_mkdir, frame_columns
from smscast.locations import is_s3, redact, to_local_path

__all__ = [
    "DEFAULT_BATCH_MS",
    "DEFAULT_BATCH_ROWS",
    "DEFAULT_ROLL_MS",
    "GroupCommitWriter",
    "WriteFailed",
    "WriterClosed",
    "WriterStats",
    "durable_append",
    "frame",
]

log = logging.getLogger("smscast.dlr")

DEFAULT_BATCH_ROWS = 2000
DEFAULT_BATCH_MS = 10
DEFAULT_ROLL_MS = 1000  # the log becomes a part in the inbox this often (while it holds anything)
# Parts written at the same time: one on a local disk (fsyncs queue in the journal anyway); two on S3, where a
# PUT takes tens of ms and the next batch's requests would otherwise wait for the previous PUT, then their own.
LOCAL_FLUSHES = 1
S3_FLUSHES = 2

WriteFn = Callable[[str, pl.DataFrame], str | None]


class WriteFailed(Exception):
    """The batch holding these reports could not be written: nothing of it is recorded (answered 503)."""


class WriterClosed(Exception):
    """The writer has shut down: nothing more is taken (answered 503; the provider retries elsewhere/later)."""


@dataclass
class WriterStats:
    reports: int = 0  # reports written
    duplicates: int = 0  # exact duplicates (same report_id) dropped inside one batch
    parts: int = 0
    failed_flushes: int = 0
    failed_reports: int = 0
    rolled: int = 0  # reports rolled from the log into parts
    failed_rolls: int = 0


def frame(reports: Sequence[Report]) -> pl.DataFrame:
    """Reports as a REPORT_SCHEMA frame."""
    return frame_columns(_columns(reports))


def _columns(reports: Sequence[Report]) -> list[tuple[object, ...]]:
    return list(zip(*reports, strict=True)) if reports else [()] * len(delivery.REPORT_SCHEMA)


def durable_append(folder: str, df: pl.DataFrame) -> str | None:
    """delivery.append: a new write-once part, written atomically and durably (storage fsyncs the file and,
    after the rename, its folder; an S3 PUT is durable when it answers)."""
    return delivery.append(folder, df, delivery.REPORT_SCHEMA)


class _Batch:
    __slots__ = ("duplicates", "future", "opened", "reports")

    def __init__(self, opened: float, future: asyncio.Future[str | None]) -> None:
        self.opened = opened
        self.future = future  # result: None once written, else why it failed
        self.reports: dict[str, Report] = {}
        self.duplicates = 0


class GroupCommitWriter:
    """One writer per receiver. `submit` returns once the reports are durably recorded (or raises). With a
    `wal`, a flush appends to the log and a roller task rolls the log into the inbox every `roll_ms`."""

    def __init__(
        self,
        folder: str,
        *,
        batch_rows: int = DEFAULT_BATCH_ROWS,
        batch_ms: float = DEFAULT_BATCH_MS,
        write: WriteFn = durable_append,
        wal: WriteAheadLog | None = None,
        roll_ms: float = DEFAULT_ROLL_MS,
        clock: Callable[[], float] = time.monotonic,
        flushes: int | None = None,
    ) -> None:
        if flushes is None:
            # Appends to one log go one at a time; an S3 PUT is slow enough to want two in flight.
            flushes = S3_FLUSHES if is_s3(folder) and wal is None else LOCAL_FLUSHES
        if batch_rows < 1 or batch_ms < 0 or flushes < 1 or roll_ms <= 0:
            raise ValueError("batch_rows and flushes must be >= 1, batch_ms >= 0, roll_ms > 0")
        self.flushes = flushes
        self.folder = folder
        self.batch_rows = batch_rows
        self.batch_s = batch_ms / 1000
        self.roll_s = roll_ms / 1000
        self.wal = wal
        self.stats = WriterStats()
        self._write = write
        self._clock = clock
        self._open: _Batch | None = None
        self._wake = asyncio.Event()
        self._draining = False  # flush at once from now on (shutting down)
        self._arriving = 0  # requests being read or parsed: reports that may yet join the open batch
        self._closed = False
        self._prepared = False
        self._task: asyncio.Task[None] | None = None
        self._roller: asyncio.Task[None] | None = None
        self._roll_wake = asyncio.Event()
        self._flushing: set[asyncio.Task[None]] = set()
        self._busy = 0  # flushes under way (a slot frees before its requests are answered: `_freed`)
        self._executor: ThreadPoolExecutor | None = None
        self._roll_executor: ThreadPoolExecutor | None = None

    def prepare(self) -> None:
        """Create the local inbox and make its entry durable, take the log and roll what a previous process
        left in it: fails early if the inbox cannot be written or the log is another process's."""
        if self._prepared:
            return
        if not is_s3(self.folder):
            durable_mkdir(to_local_path(self.folder))
        if self.wal is not None:
            self.wal.open()
            self._roll()  # before anything new: what the last process acknowledged reaches the inbox first
        self._prepared = True

    async def start(self) -> None:
        self.prepare()
        self._executor = ThreadPoolExecutor(max_workers=self.flushes, thread_name_prefix="dlr-writer")
        self._task = asyncio.create_task(self._run(), name="dlr-writer")
        if self.wal is not None:
            self._roll_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dlr-roller")
            self._roller = asyncio.create_task(self._rolls(), name="dlr-roller")

    @property
    def held(self) -> int:
        """Reports in the batch not yet being written."""
        return 0 if self._open is None else len(self._open.reports)

    @property
    def in_arrival(self) -> int:
        """Requests being read or parsed."""
        return self._arriving

    def arriving(self) -> None:
        """A request has started: its reports (if any) may join the open batch soon."""
        self._arriving += 1

    def arrived(self) -> None:
        """That request has been read and parsed (its reports, if any, go to `submit` right after)."""
        self._arriving -= 1
        if self._arriving == 0 and self._open is not None:
            self._wake.set()

    async def submit(self, reports: Sequence[Report]) -> None:
        """Add `reports` to the open batch and wait until it is written. Raises WriteFailed or WriterClosed."""
        if self._closed or self._task is None:
            raise WriterClosed("the receiver is shutting down")
        batch = self._open
        if batch is None:
            batch = self._open = _Batch(self._clock(), asyncio.get_running_loop().create_future())
            self._wake.set()
        held = batch.reports
        for report in reports:
            if report.report_id in held:
                batch.duplicates += 1
            else:
                held[report.report_id] = report
        if len(held) >= self.batch_rows:
            self._wake.set()
        # shield: a request cancelled while waiting leaves its reports in the batch, which is still written.
        failure = await asyncio.shield(batch.future)
        if failure is not None:
            raise WriteFailed(failure)

    def drain(self) -> None:
        """From now on flush at once, without waiting for a batch to fill (the server is stopping)."""
        self._draining = True
        self._wake.set()

    async def close(self) -> None:
        """Flush what is held, roll the log into the inbox, then stop: later submits raise WriterClosed."""
        self._closed = True
        self.drain()
        if self._task is not None:
            await self._task
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        if self._roller is not None:
            self._roll_wake.set()
            await self._roller
        if self.wal is not None and self._prepared:
            # A clean stop leaves the log empty; if the roll fails, the next start rolls what is left.
            await asyncio.get_running_loop().run_in_executor(self._roll_executor, self._roll)
            self.wal.close()
        if self._roll_executor is not None:
            self._roll_executor.shutdown(wait=True)

    async def roll(self) -> None:
        """Roll the log into the inbox now (what was acknowledged so far becomes readable there)."""
        if self.wal is not None:
            await asyncio.get_running_loop().run_in_executor(self._roll_executor, self._roll)

    async def _rolls(self) -> None:
        while not self._closed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._roll_wake.wait(), self.roll_s)
            if self._closed:
                break
            await asyncio.get_running_loop().run_in_executor(self._roll_executor, self._roll)

    def _roll(self) -> None:
        """One roll; a failure is logged and left for the next (the reports are safe in the log)."""
        assert self.wal is not None
        if not self.wal.pending[0]:
            return
        began = time.perf_counter()
        try:
            result = self.wal.roll()
        except Exception as exc:  # the storage's errors are many; the log keeps everything for the next roll
            self.stats.failed_rolls += 1
            segments, reports = self.wal.pending
            log.warning(
                "dlr: rolling the log into %s failed (%d segments, %d+ reports wait in %s; retrying): %s",
                redact(self.folder),
                segments,
                reports,
                self.wal.directory,
                redact(f"{type(exc).__name__}: {exc}")[:500],
            )
            return
        self.stats.rolled += result.reports
        self.stats.parts += result.parts
        if result.segments and log.isEnabledFor(logging.DEBUG):
            log.debug(
                "dlr: rolled %d reports from %d log segments into %d parts in %.1f ms",
                result.reports,
                result.segments,
                result.parts,
                (time.perf_counter() - began) * 1000,
            )

    async def _run(self) -> None:
        while True:
            batch = self._open
            if batch is None and self._closed:
                break
            if batch is None or self._busy >= self.flushes:
                # Nothing to write, or no writer free: a new batch or a finished write wakes us; meanwhile
                # the open batch keeps taking reports.
                self._wake.clear()
                await self._wake.wait()
                continue
            if not self._draining and self._arriving > 0 and len(batch.reports) < self.batch_rows:
                remaining = batch.opened + self.batch_s - self._clock()
                if remaining > 0:
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), remaining)
                    continue
            self._open = None
            self._busy += 1
            flush = asyncio.create_task(self._flush(batch))
            self._flushing.add(flush)
            flush.add_done_callback(self._flushing.discard)
        if self._flushing:
            await asyncio.wait(self._flushing)

    async def _flush(self, batch: _Batch) -> None:
        reports = list(batch.reports.values())
        began = time.perf_counter()
        loop = asyncio.get_running_loop()
        try:
            uri = await loop.run_in_executor(self._executor, self._write_part, reports)
        except Exception as exc:  # the storage's errors are many; the provider retries them all alike
            self._freed()
            reason = redact(f"{type(exc).__name__}: {exc}")[:500]
            self.stats.failed_flushes += 1
            self.stats.failed_reports += len(reports)
            log.warning(
                "dlr: writing %d reports failed (answered 503, providers retry): %s", len(reports), reason
            )
            batch.future.set_result(f"could not record the reports: {reason}")
            return
        self._freed()
        self.stats.reports += len(reports)
        self.stats.duplicates += batch.duplicates
        if self.wal is None:
            self.stats.parts += 1
        batch.future.set_result(None)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "dlr: flushed %d reports (%d duplicates dropped) in %.1f ms, %.1f ms after the first: %s",
                len(reports),
                batch.duplicates,
                (time.perf_counter() - began) * 1000,
                (self._clock() - batch.opened) * 1000,
                uri,
            )

    def _freed(self) -> None:
        """The slot is free: wake the writer before answering this batch, so that the next batch goes to disk
        while the loop answers this one (callbacks run in the order they were scheduled)."""
        self._busy -= 1
        self._wake.set()

    def _write_part(self, reports: list[Report]) -> str | None:
        if self.wal is not None:
            return self.wal.append(_columns(reports))
        return self._write(self.folder, frame(reports))
