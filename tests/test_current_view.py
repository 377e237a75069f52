"""The current view (tasks/current.py): each input row once, its latest attempt's outcome with reconciliation's
settlement applied, joined with its latest delivery fact. Built on a results folder written here: attempt
parts in the results schema, and delivery and settled parts through smscast.delivery.append."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from smscast import delivery, storage
from smscast.delivery import DELIVERY_SCHEMA, SETTLED_SCHEMA
from smscast.errors import SourceError
from smscast.results import RESULT_COLUMNS, CampaignPaths, conform
from smscast.tasks.current import DELIVERY_COLUMNS, current_results, current_view, resendable

CID = "camp"
T0 = datetime(2025, 6, 12, 10, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def write_attempt(results: Path, attempt: int, rows: list[dict[str, Any]], *, shard: int = 0) -> None:
    """One attempt part: each row needs row_index and status; the rest has defaults a sent row would have."""
    base = {
        "campaign_id": CID,
        "attempt": attempt,
        "provider": "sandbox",
        "submitted_at": T0,
        "error_code": None,
        "error_message": None,
        "provider_message_id": None,
    }
    frame = pl.DataFrame(
        [
            {
                **base,
                "phone": f"+4474009{r['row_index']:05d}",
                "provider_message_id": f"m{attempt}-{r['row_index']}",
                **r,
            }
            for r in rows
        ],
        infer_schema_length=None,
    )
    storage.write_parquet(conform(frame), CampaignPaths(str(results), CID).attempt(attempt).part(shard))


def add_facts(results: Path, facts: list[dict[str, Any]]) -> None:
    """One delivery part: each fact needs row_index, delivery_status and reported_at (attempt defaults to 1)."""
    frame = pl.DataFrame(
        [{"campaign_id": CID, "attempt": 1, "source": "webhook", **f} for f in facts],
        infer_schema_length=None,
    )
    delivery.append(CampaignPaths(str(results), CID).delivery, frame, DELIVERY_SCHEMA)


def add_settlements(results: Path, settled: list[dict[str, Any]]) -> None:
    frame = pl.DataFrame(
        [{"campaign_id": CID, "attempt": 1, "settled_at": T0, **s} for s in settled], infer_schema_length=None
    )
    delivery.append(CampaignPaths(str(results), CID).settled, frame, SETTLED_SCHEMA)


def by_row(frame: pl.DataFrame) -> dict[int, dict[str, Any]]:
    return {r["row_index"]: r for r in frame.iter_rows(named=True)}


def test_settlements_replace_the_outcome_of_the_attempt_they_name(tmp_path: Path) -> None:
    write_attempt(
        tmp_path,
        1,
        [
            {"row_index": 0, "status": "accepted"},
            {"row_index": 1, "status": "unknown", "error_code": "read_timeout", "provider_message_id": None},
            {"row_index": 2, "status": "unknown", "error_code": "read_timeout", "provider_message_id": None},
            {"row_index": 3, "status": "accepted"},
        ],
    )
    add_settlements(
        tmp_path,
        [
            # found at the provider: accepted, with the id the lookup gave
            {"row_index": 1, "status": "accepted", "provider_message_id": "found-1"},
            # proven absent: failed, so a retry re-sends it
            {
                "row_index": 2,
                "status": "failed",
                "error_code": "not_found",
                "error_message": "no such message",
            },
            # an accepted async job the provider failed later; no id given: the row keeps its own
            {"row_index": 3, "status": "failed", "error_code": "job_failed"},
        ],
    )
    current = current_results(str(tmp_path), CID)
    rows = by_row(current)
    assert list(current.columns) == list(RESULT_COLUMNS)  # settlements change values, never the columns
    assert rows[0]["status"] == "accepted" and rows[0]["provider_message_id"] == "m1-0"
    assert (rows[1]["status"], rows[1]["error_code"], rows[1]["provider_message_id"]) == (
        "accepted",
        None,
        "found-1",
    )
    assert (rows[2]["status"], rows[2]["error_code"], rows[2]["error_message"]) == (
        "failed",
        "not_found",
        "no such message",
    )
    assert (rows[3]["status"], rows[3]["error_code"], rows[3]["provider_message_id"]) == (
        "failed",
        "job_failed",
        "m1-3",
    )
    # retry reads exactly this: the settled-failed rows are re-sent, the found one is not
    assert resendable(current, resend_safe=True)["row_index"].to_list() == [2, 3]


def test_a_later_attempt_supersedes_an_older_settlement(tmp_path: Path) -> None:
    write_attempt(
        tmp_path,
        1,
        [{"row_index": i, "status": "unknown", "error_code": "read_timeout"} for i in range(3)],
    )
    write_attempt(
        tmp_path, 2, [{"row_index": i, "status": "unknown", "error_code": "connection_lost"} for i in (0, 1)]
    )
    add_settlements(
        tmp_path,
        [
            {"row_index": 0, "attempt": 1, "status": "accepted"},  # about the message attempt 2 replaced
            {"row_index": 1, "attempt": 2, "status": "failed", "error_code": "old", "settled_at": at(1)},
            {"row_index": 1, "attempt": 2, "status": "accepted", "settled_at": at(2)},  # the latest wins
            {"row_index": 2, "attempt": 1, "status": "accepted"},
        ],
    )
    rows = by_row(current_results(str(tmp_path), CID))
    assert (rows[0]["attempt"], rows[0]["status"], rows[0]["error_code"]) == (2, "unknown", "connection_lost")
    assert (rows[1]["attempt"], rows[1]["status"], rows[1]["error_code"]) == (2, "accepted", None)
    assert (rows[2]["attempt"], rows[2]["status"]) == (1, "accepted")


def test_the_view_holds_each_rows_latest_fact_once(tmp_path: Path) -> None:
    write_attempt(tmp_path, 1, [{"row_index": i, "status": "accepted"} for i in range(7)])
    write_attempt(tmp_path, 2, [{"row_index": 5, "status": "accepted"}])
    # Parts arrive in this order; reports come out of order.
    add_facts(
        tmp_path,
        [
            {"row_index": 0, "delivery_status": "delivered", "reported_at": at(10)},
            {"row_index": 1, "delivery_status": "pending", "reported_at": at(5)},
            {"row_index": 3, "delivery_status": "delivered", "reported_at": at(30), "source": "lookup"},
            {"row_index": 3, "delivery_status": "delivered", "reported_at": at(30), "source": "lookup"},
        ],
    )
    add_facts(
        tmp_path,
        [
            {"row_index": 0, "delivery_status": "pending", "reported_at": at(60)},  # late, but not final
            {"row_index": 1, "delivery_status": "undelivered", "reported_at": at(4), "error_code": "30003"},
            {"row_index": 2, "delivery_status": "pending", "reported_at": at(1)},
            {"row_index": 2, "delivery_status": "pending", "reported_at": at(9), "error_code": "queued"},
            {"row_index": 3, "delivery_status": "delivered", "reported_at": at(30), "source": "lookup"},
            {"row_index": 4, "delivery_status": "expired", "reported_at": at(99), "source": "window"},
            {"row_index": 5, "delivery_status": "delivered", "reported_at": at(7)},  # attempt 1's message
        ],
    )
    view = current_view(str(tmp_path), CID)
    assert view.height == 7 and view["row_index"].to_list() == list(range(7))
    assert list(view.columns) == [*RESULT_COLUMNS, *DELIVERY_COLUMNS]
    rows = by_row(view)
    expected = {
        0: ("delivered", at(10), "webhook", None),  # final beats a later pending
        1: (
            "undelivered",
            at(4),
            "webhook",
            "30003",
        ),  # final beats an earlier-reported, earlier-read pending
        2: ("pending", at(9), "webhook", "queued"),  # among pendings, the latest
        3: ("delivered", at(30), "lookup", None),  # three copies of one report count once
        4: ("expired", at(99), "window", None),
        5: (None, None, None, None),  # re-sent in attempt 2: attempt 1's report is about another message
        6: (None, None, None, None),  # no word yet
    }
    for i, (status, reported, source, code) in expected.items():
        r = rows[i]
        got = (
            r["delivery_status"],
            r["delivery_reported_at"],
            r["delivery_source"],
            r["delivery_error_code"],
        )
        assert got == (status, reported, source, code), i


def test_a_view_without_delivery_or_settlements_is_the_current_results_with_empty_columns(
    tmp_path: Path,
) -> None:
    write_attempt(tmp_path, 1, [{"row_index": i, "status": "accepted"} for i in range(3)], shard=1)
    write_attempt(
        tmp_path, 1, [{"row_index": 3, "status": "invalid", "error_code": "phone_invalid"}], shard=0
    )
    view = current_view(str(tmp_path), CID)
    assert view["row_index"].to_list() == [0, 1, 2, 3]
    assert view.select(*DELIVERY_COLUMNS).null_count().row(0) == (4,) * len(DELIVERY_COLUMNS)
    assert view.schema["delivery_reported_at"] == pl.Datetime("us", "UTC")
    assert view.drop(*DELIVERY_COLUMNS).equals(current_results(str(tmp_path), CID))


def test_no_results_is_a_source_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no results"):
        current_view(str(tmp_path), "nobody")
