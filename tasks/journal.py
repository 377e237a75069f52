"""A write-ahead journal per batch, for providers without idempotency (Postman).

With idempotency keys, a batch whose outcome was lost in a crash is simply sent again: the provider
recognises it. Without them, a blind re-send could text everyone in it twice. So before such a batch goes
out its intent is recorded, and after it its outcome:

    <work>/journal/shard=00003/<batch_id>.intent     written before each request, withdrawn when the answer
                                                     proves it was not processed (429, 503, no connection)
    <work>/journal/shard=00003/<batch_id>.parquet    its rows' outcomes, written after the last

A resumed shard then sorts its batches: outcome recorded -> keep it; intent only -> `unknown` (it may have
been accepted: reconcile, never re-send blindly); neither -> send.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import polars as pl

from providers.base import Batch, RowOutcome
from smscast import storage
from smscast.status import Status
from tasks.send_engine import SentBatch, outcomes_frame


@dataclass(frozen=True)
class Recovered:
    done: list[pl.DataFrame]  # outcome frames recorded before the interruption
    uncertain: list[SentBatch]  # intent recorded, outcome not: unknown
    todo: list[Batch]  # never started


class Journal:
    def __init__(self, root: str) -> None:
        self.root = root.rstrip("/")

    def _intent(self, batch_id: str) -> str:
        return f"{self.root}/{batch_id}.intent"

    def _outcome(self, batch_id: str) -> str:
        return f"{self.root}/{batch_id}.parquet"

    def intend(self, batch: Batch) -> None:
        storage.put_bytes(self._intent(batch.batch_id), datetime.now(UTC).isoformat().encode())

    def forget(self, batch: Batch) -> None:
        """The request was refused unprocessed (429, 503, never connected): nothing can have been sent."""
        storage.delete(self._intent(batch.batch_id))

    def record(self, batch: Batch, parts: list[SentBatch]) -> None:
        storage.write_parquet(outcomes_frame(parts), self._outcome(batch.batch_id))

    def recover(self, batches: list[Batch]) -> Recovered:
        existing = set(storage.list_files(f"{self.root}/"))
        done: list[pl.DataFrame] = []
        uncertain: list[SentBatch] = []
        todo: list[Batch] = []
        for batch in batches:
            if self._outcome(batch.batch_id) in existing:
                done.append(storage.read_parquet(self._outcome(batch.batch_id)))
            elif self._intent(batch.batch_id) in existing:
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
