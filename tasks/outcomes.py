"""What a shard's requests came back with, as the send engine makes it and the journal records it.

Its own module so that the engine (tasks/send_engine.py) and the journal (tasks/journal.py) both build on it
without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import polars as pl

from smscast.providers.base import Batch, RowOutcome
from smscast.results import OUTCOME_SCHEMA


@dataclass(frozen=True, slots=True)
class SentBatch:
    """The outcome of one request (a batch, or a part of one after bisection), kept per batch rather than
    per row: a shard of 25,000 rows makes 25 of these, not 25,000 objects."""

    batch_id: str
    row_index: list[int]
    outcomes: list[RowOutcome]
    submitted_at: datetime


@dataclass(frozen=True)
class Recovered:
    """What a resumed shard finds in its journal."""

    done: list[pl.DataFrame]  # outcome frames recorded before the interruption
    uncertain: list[SentBatch]  # intent recorded, outcome not: unknown
    todo: list[Batch]  # never started, or to be sent again


def outcomes_frame(parts: list[SentBatch]) -> pl.DataFrame:
    """Columnar outcomes (the shard's durable record), one row per sent row."""
    schema = {**OUTCOME_SCHEMA, "batch_id": pl.String()}
    outcomes = [o for p in parts for o in p.outcomes]
    if not outcomes:
        return pl.DataFrame(schema=schema)
    status, code, message, message_id, batch_ref = zip(*outcomes, strict=True)  # transposed in C
    per_row = _per_row(parts)
    return pl.DataFrame(
        {
            "row_index": [i for p in parts for i in p.row_index],
            "batch_id": per_row.get_column("batch_id"),
            "status": [str(s) for s in status],
            "error_code": code,
            "error_message": message,
            "provider_message_id": message_id,
            "provider_batch_ref": batch_ref,
            "submitted_at": per_row.get_column("submitted_at"),
        },
        schema=schema,
    )


def _per_row(parts: list[SentBatch]) -> pl.DataFrame:
    """batch_id and submitted_at repeated once per row each part holds."""
    per_part = pl.DataFrame(
        {
            "batch_id": [p.batch_id for p in parts],
            "submitted_at": [p.submitted_at for p in parts],
            "n": [len(p.row_index) for p in parts],
        },
        schema={"batch_id": pl.String(), "submitted_at": OUTCOME_SCHEMA["submitted_at"], "n": pl.Int64()},
    )
    return per_part.select(pl.col("batch_id", "submitted_at").repeat_by("n").explode())
