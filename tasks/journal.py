"""A per-shard journal of batch outcomes, so that a resumed shard sends only what has no recorded outcome.

    <work>/journal/shard=00003/outcomes-<run>-<seq>.parquet   the outcomes of one or more batches, with the
                                                             batch each row belongs to (`journal_batch`)
    <work>/journal/shard=00003/<batch_id>.<run>.intent       write-ahead journals only (providers without
                                                             idempotency): written before a batch's request,
                                                             withdrawn when the answer proves it unprocessed

Outcomes are written by a background thread, so journalling never holds up a request: batches answered
while a write is under way (and, with idempotency, within LINGER of the previous write) go together into
the next file, so a fast campaign makes a few writes a second rather than one per batch, while a slow one
writes each outcome as it comes. What that costs is a window, after an answer, in which a crash loses its
outcome. With idempotency (every provider but Postman) a lost outcome only means that the batch is sent
again with the same keys and the provider answers from its record. Without, the batch's intent is on
record (written synchronously, before the request): it comes back `unknown`, to be reconciled, never
re-sent blindly.

A resumed shard sorts its batches: outcome recorded -> keep it; intent only (write-ahead) -> `unknown`;
neither -> send. Batches whose every row may be re-sent anyway (`failed`; `unknown` too with idempotency)
are not recorded: a resume simply sends them again, as a retry would.

Once the shard's results part is written, the part is its record and the journal is removed (`discard`).
Everything here is a file written whole (atomic rename locally, one PUT on S3), so a crash leaves files or
no files, never half of one; an unreadable file is ignored, which errs towards re-sending (with idempotency)
or `unknown` (its intent is still there).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import polars as pl

from smscast import storage
from smscast.providers.base import Batch, RowOutcome
from smscast.status import Status
from smscast.tasks.outcomes import Recovered, SentBatch, outcomes_frame

BATCH_COLUMN = "journal_batch"  # the top-level batch a journalled row belongs to (rows may be bisected)
LINGER = 0.1  # seconds between writes at most; with idempotency a lost outcome costs only a re-send
MAX_WRITE_FAILURES = 3  # consecutive failed writes before the pending outcomes are given up on

log = logging.getLogger("smscast.journal")


@dataclass(frozen=True)
class _Item:
    batch_id: str
    parts: list[SentBatch]
    keep: bool  # worth writing: not every row of it may simply be sent again

    @property
    def rows(self) -> int:
        return sum(len(p.row_index) for p in self.parts)


class Journal:
    def __init__(self, root: str, *, write_ahead: bool, linger: float | None = None) -> None:
        """`write_ahead`: record each batch's intent before its request (providers without idempotency).
        `linger`: the least time between two writes (default: LINGER with idempotency, none without, where
        every unrecorded outcome would be an `unknown` to reconcile)."""
        self.root = root.rstrip("/")
        self.write_ahead = write_ahead
        self.linger = (0.0 if write_ahead else LINGER) if linger is None else linger
        # Several runs may write one shard's journal (a stale one and its heir): their names must not collide.
        self._token = uuid.uuid4().hex[:8]
        self._seq = 0
        self._pending: list[_Item] = []
        self._last_write = 0.0  # monotonic time the writer last took what was queued
        self._frames: list[pl.DataFrame] = []  # every recorded batch's outcomes, written or not
        self._queued_rows = 0
        self._cond = threading.Condition()
        self._closing = False
        self._thread: threading.Thread | None = None
        self.files_written = 0

    def _intent(self, batch_id: str) -> str:
        # Named per run, so that a stale run withdrawing its own intent never removes its heir's.
        return f"{self.root}/{batch_id}.{self._token}.intent"

    # -- the write-ahead part (synchronous: durable before the request goes out) --

    def intend(self, batch: Batch) -> None:
        if self.write_ahead:
            storage.put_bytes(self._intent(batch.batch_id), datetime.now(UTC).isoformat().encode())

    def forget(self, batch: Batch) -> None:
        """The request was refused unprocessed (429, 503, never connected): nothing can have been sent."""
        if self.write_ahead:
            storage.delete(self._intent(batch.batch_id))

    # -- outcomes (asynchronous) --

    def record(self, batch: Batch, parts: list[SentBatch]) -> None:
        """Queue a batch's outcome; returns at once. The writer makes it part of the shard's outcomes
        (`outcomes()`) and writes it, unless every row of it may be re-sent anyway: a resume then simply
        sends it again (ShardSender withdraws its intent where the answer proved it unprocessed)."""
        retriable = {Status.FAILED} if self.write_ahead else {Status.FAILED, Status.UNKNOWN}
        keep = not all(o.status in retriable for p in parts for o in p.outcomes)
        item = _Item(batch.batch_id, parts, keep)
        with self._cond:
            self._queued_rows += item.rows
            if not self._closing:
                self._pending.append(item)
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="journal", daemon=True)
                    self._thread.start()
                self._cond.notify()
                return
        self._commit([item])  # close() has begun: the writer may be gone already

    def close(self) -> None:
        """Write what is queued, then stop the writer; later records are written at once. Idempotent."""
        with self._cond:
            self._closing = True
            self._cond.notify()
            thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()

    def outcomes(self) -> pl.DataFrame | None:
        """After close(): the outcomes of every recorded batch, as `outcomes_frame` makes them (the writer
        has built them already: the shard need not build them twice). None if some are missing."""
        with self._cond:
            frames, built = list(self._frames), sum(f.height for f in self._frames)
            if built != self._queued_rows:
                return None
        if not frames:
            return outcomes_frame([])
        return pl.concat(frames).drop(BATCH_COLUMN)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closing:
                    self._cond.wait()
                if not self._pending:
                    return
                # At most one write per `linger`: when answers come faster, they gather for the next one;
                # when they come slower, each is written as soon as it comes.
                due = self._last_write + self.linger
                while not self._closing and (left := due - time.monotonic()) > 0:
                    self._cond.wait(left)
                items, self._pending = self._pending, []
                self._last_write = time.monotonic()
            self._commit(items)

    def _commit(self, items: list[_Item]) -> None:
        rows = pl.DataFrame(
            {BATCH_COLUMN: [i.batch_id for i in items], "n": [i.rows for i in items]},
            schema_overrides={"n": pl.Int64},
        )
        frame = outcomes_frame([p for i in items for p in i.parts]).with_columns(
            rows.select(pl.col(BATCH_COLUMN).repeat_by("n").explode()).to_series()
        )
        with self._cond:
            self._frames.append(frame)
            self._seq += 1
            uri = f"{self.root}/outcomes-{self._token}-{self._seq:06d}.parquet"
        kept = [i.batch_id for i in items if i.keep]
        if len(kept) < len(items):
            frame = frame.filter(pl.col(BATCH_COLUMN).is_in(kept))
        for attempt in range(1, MAX_WRITE_FAILURES + 1):
            if frame.is_empty():
                return
            try:
                storage.write_parquet(frame, uri, statistics=False)  # read whole, by a resume only
                self.files_written += 1
                return
            except Exception as exc:
                if attempt == MAX_WRITE_FAILURES or self._closing:
                    # Not fatal: the shard's results part is the record that counts. A crash before it would
                    # re-send these batches (idempotency) or find them `unknown` (their intents).
                    log.warning(
                        "journal %s: outcomes of %d batches not recorded: %s", self.root, len(kept), exc
                    )
                    return
                with self._cond:
                    self._cond.wait(timeout=0.5 * attempt)  # close() cuts the wait short

    # -- resume and clean-up --

    def recover(self, batches: list[Batch]) -> Recovered:
        files = storage.list_files(f"{self.root}/")
        intents: set[str] = set()
        if self.write_ahead:
            for f in files:
                if f.endswith(".intent"):
                    name = f.rsplit("/", 1)[-1].removesuffix(".intent")
                    intents |= {name, name.rsplit(".", 1)[0]}  # <batch>.<run>, or <batch> (earlier smscast)
        recorded = self._recorded([f for f in files if f.endswith(".parquet")], {b.batch_id for b in batches})
        done: list[pl.DataFrame] = []
        if recorded is not None:
            schema = outcomes_frame([]).schema
            done.append(recorded.select(list(schema)).cast(schema))
            have = set(recorded.get_column(BATCH_COLUMN).unique().to_list())
        else:
            have = set()
        uncertain: list[SentBatch] = []
        todo: list[Batch] = []
        for batch in batches:
            if batch.batch_id in have:
                continue
            if batch.batch_id in intents:
                outcome = RowOutcome(
                    Status.UNKNOWN,
                    "interrupted_unrecorded",
                    "sent just before an interruption and its outcome was not recorded; this provider has no "
                    "idempotency, so it is not re-sent: reconcile with the provider's status lookup",
                )
                rows = batch.rows.get_column("row_index").to_list()
                uncertain.append(SentBatch(batch.batch_id, rows, [outcome] * len(rows), datetime.now(UTC)))
            else:
                todo.append(batch)
        return Recovered(done, uncertain, todo)

    def _recorded(self, files: list[str], wanted: set[str]) -> pl.DataFrame | None:
        """The recorded outcomes of the wanted batches, each batch from one file only (a stale run and its heir
        may both have recorded one)."""
        frames: list[pl.DataFrame] = []
        for n, uri in enumerate(files):
            try:
                frame = storage.read_parquet(uri)
            except Exception as exc:
                log.warning("journal file %s unreadable, ignored: %s", uri, exc)
                continue
            if BATCH_COLUMN not in frame.columns:
                # Written by an earlier smscast, one file per batch and named after it.
                name = uri.rsplit("/", 1)[-1].removesuffix(".parquet")
                frame = frame.with_columns(pl.lit(name).alias(BATCH_COLUMN))
            frames.append(frame.with_columns(pl.lit(n).alias("_file")))
        if not frames:
            return None
        rows = pl.concat(frames, how="diagonal_relaxed").filter(pl.col(BATCH_COLUMN).is_in(list(wanted)))
        rows = rows.filter(pl.col("_file") == pl.col("_file").min().over(BATCH_COLUMN)).drop("_file")
        return rows if rows.height else None

    def discard(self) -> None:
        """Remove the journal: only once the shard's results part is written, which makes it redundant."""
        storage.delete_tree(self.root)
