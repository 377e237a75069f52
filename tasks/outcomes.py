"""What a shard's requests came back with, as the send engine makes it and the journal records it.

Its own module so that the engine (tasks/send_batch.py) and the journal (tasks/journal.py) both build on it
without importing each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import chain
from typing import Any

import polars as pl

from smscast.providers.base import Batch, Outcomes, RowOutcome
from smscast.results import OUTCOME_SCHEMA


@dataclass(frozen=True, slots=True)
class SentBatch:
    """The outcome of one request (a batch, or a part of one after bisection), kept per batch rather than
    per row: a shard of 25,000 rows makes 25 of these, not 25,000 objects. The engine's `outcomes` are
    `Outcomes` (columns); any sequence of RowOutcome is read the same way."""

    batch_id: str
    row_index: list[int]
    outcomes: Sequence[RowOutcome]
    submitted_at: datetime


@dataclass(frozen=True)
class Recovered:
    """What a resumed shard finds in its journal."""

    done: list[pl.DataFrame]  # outcome frames recorded before the interruption
    uncertain: list[SentBatch]  # intent recorded, outcome not: unknown
    todo: list[Batch]  # never started, or to be sent again


def outcomes_frame(parts: list[SentBatch]) -> pl.DataFrame:
    """Columnar outcomes (the shard's durable record), one row per sent row.

    Built with as few Python objects read one by one as the outcomes allow: a column that is the same
    throughout each part (the status, code and message of an accepted or refused request, its batch ref) is
    made from one value per part, repeated by Polars; only the others (row indexes, message ids) are read
    element by element, each part's list appended to one list in C."""
    schema = {**OUTCOME_SCHEMA, "batch_id": pl.String()}
    parts = [p for p in parts if p.row_index]
    if not parts:
        return pl.DataFrame(schema=schema)
    outcomes = [Outcomes.of(p.outcomes) for p in parts]
    per_part: dict[str, list[Any]] = {
        "batch_id": [p.batch_id for p in parts],
        "submitted_at": [p.submitted_at for p in parts],
    }
    per_row: dict[str, list[Any]] = {"row_index": list(chain.from_iterable(p.row_index for p in parts))}
    for name in _OUTCOME_COLUMNS:
        chunks: list[list[Any]] = [getattr(o, name) for o in outcomes]
        if all(c.count(c[0]) == len(c) for c in chunks):
            per_part[name] = [c[0] for c in chunks]
        else:
            per_row[name] = list(chain.from_iterable(chunks))
    repeated = pl.DataFrame(
        {**per_part, "_n": [len(p.row_index) for p in parts]},
        schema={**{k: schema[k] for k in per_part}, "_n": pl.Int64()},
    ).select(pl.exclude("_n").repeat_by("_n").explode())
    one_by_one = pl.DataFrame(per_row, schema={k: schema[k] for k in per_row})
    return pl.concat([repeated, one_by_one], how="horizontal").select(list(schema))


# Outcomes' columns, by their name in the results (RowOutcome's fields).
_OUTCOME_COLUMNS = ("status", "error_code", "error_message", "provider_message_id", "provider_batch_ref")
