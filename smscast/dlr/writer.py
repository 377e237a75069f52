"""Group commit: the receiver's requests hand their reports to one writer and wait for the flush of the batch
that holds them; only then is the provider answered 2xx.

A batch is flushed when it holds `batch_rows` reports or `batch_ms` after its first report arrived, whichever
comes first, as one Parquet part (smscast.delivery.append) under the inbox; and sooner when no other request is
on its way in (`arriving` is 0), since waiting could then add nothing. Providers post DLRs over a fixed number of
connections, each waiting for our answer before the next post: a timer alone would make every one of them wait
`batch_ms` per report for company that cannot come. Parts are written in threads
(at most `flushes` at a time) while the event loop keeps taking requests: while parts are being written the
next batch fills, so under load batches grow by themselves and parts per second stay bounded by write time.

Durability: a local part is written to a hidden temporary file, fsynced, renamed, and its folder fsynced
(smscast/storage.py), so the part and its name are on disk before anyone is answered. An S3 part is one PUT,
durable when it returns. A request is acknowledged only after that, so a kill -9 at any moment loses
nothing that was acknowledged: at worst reports that were never answered, which the provider sends again.
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
from smscast.locations import is_s3, redact, to_local_path
from smscast.storage import fsync_dir

__all__ = [
    "DEFAULT_BATCH_MS",
    "DEFAULT_BATCH_ROWS",
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


_TIME_COLUMNS = frozenset(n for n, dtype in delivery.REPORT_SCHEMA.items() if isinstance(dtype, pl.Datetime))


def frame(reports: Sequence[Report]) -> pl.DataFrame:
    """Reports as a REPORT_SCHEMA frame, built column by column, times from their integers: Polars converts
    Python datetimes one by one, which costs more than writing the whole part."""
    columns = list(zip(*reports, strict=True)) if reports else [()] * len(delivery.REPORT_SCHEMA)
    return pl.DataFrame(
        [
            pl.Series(name, values, pl.Int64()).cast(dtype)
            if name in _TIME_COLUMNS
            else pl.Series(name, values, dtype)
            for (name, dtype), values in zip(delivery.REPORT_SCHEMA.items(), columns, strict=True)
        ]
    )


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
    """One writer per receiver. `submit` returns once the reports are durably recorded (or raises)."""

    def __init__(
        self,
        folder: str,
        *,
        batch_rows: int = DEFAULT_BATCH_ROWS,
        batch_ms: float = DEFAULT_BATCH_MS,
        write: WriteFn = durable_append,
        clock: Callable[[], float] = time.monotonic,
        flushes: int | None = None,
    ) -> None:
        if flushes is None:
            flushes = S3_FLUSHES if is_s3(folder) else LOCAL_FLUSHES
        if batch_rows < 1 or batch_ms < 0 or flushes < 1:
            raise ValueError("batch_rows and flushes must be >= 1, batch_ms >= 0")
        self.flushes = flushes
        self.folder = folder
        self.batch_rows = batch_rows
        self.batch_s = batch_ms / 1000
        self.stats = WriterStats()
        self._write = write
        self._clock = clock
        self._open: _Batch | None = None
        self._wake = asyncio.Event()
        self._draining = False  # flush at once from now on (shutting down)
        self._arriving = 0  # requests being read or parsed: reports that may yet join the open batch
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        self._flushing: set[asyncio.Task[None]] = set()
        self._executor: ThreadPoolExecutor | None = None

    def prepare(self) -> None:
        """Create the local inbox and make its entry durable; fails early if it cannot be written."""
        if is_s3(self.folder):
            return
        path = to_local_path(self.folder)
        path.mkdir(parents=True, exist_ok=True)
        for directory in (path, path.parent):
            fsync_dir(directory)

    async def start(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=self.flushes, thread_name_prefix="dlr-writer")
        self._task = asyncio.create_task(self._run(), name="dlr-writer")

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
        """Flush what is held, then stop: later submits raise WriterClosed."""
        self._closed = True
        self.drain()
        if self._task is not None:
            await self._task
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    async def _run(self) -> None:
        while True:
            batch = self._open
            if batch is None and self._closed:
                break
            if batch is None or len(self._flushing) >= self.flushes:
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
            flush = asyncio.create_task(self._flush(batch))
            self._flushing.add(flush)
            flush.add_done_callback(self._flushed)
        if self._flushing:
            await asyncio.wait(self._flushing)

    def _flushed(self, flush: asyncio.Task[None]) -> None:
        self._flushing.discard(flush)
        self._wake.set()

    async def _flush(self, batch: _Batch) -> None:
        reports = list(batch.reports.values())
        began = time.perf_counter()
        loop = asyncio.get_running_loop()
        try:
            uri = await loop.run_in_executor(self._executor, self._write_part, reports)
        except Exception as exc:  # the storage's errors are many; the provider retries them all alike
            reason = redact(f"{type(exc).__name__}: {exc}")[:500]
            self.stats.failed_flushes += 1
            self.stats.failed_reports += len(reports)
            log.warning(
                "dlr: writing %d reports failed (answered 503, providers retry): %s", len(reports), reason
            )
            batch.future.set_result(f"could not record the reports: {reason}")
            return
        self.stats.reports += len(reports)
        self.stats.duplicates += batch.duplicates
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

    def _write_part(self, reports: list[Report]) -> str | None:
        return self._write(self.folder, frame(reports))
