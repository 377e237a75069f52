"""Issue 14, the send stage's columnar path: the sandbox's answer read as columns reads exactly as the row-by-row
reading does, requests built by Polars carry the same JSON as dicts through orjson, outcomes kept as columns
make the same results frame as tuples, a shard sends from the plan its run just wrote exactly as from the
recorded plan, and the collector's setting during sending is given back (no network: httpx.MockTransport)."""

from __future__ import annotations

import asyncio
import gc
import io
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import polars as pl
import pytest

import smscast.providers.sandbox as sandbox_module
from smscast import storage
from smscast.campaign import CampaignSpec
from smscast.providers.base import Batch, Outcomes, RowOutcome
from smscast.providers.sandbox import SandboxProvider
from smscast.results import OUTCOME_SCHEMA, AttemptPaths
from smscast.settings import ProviderSettings, Secret
from smscast.status import Status
from smscast.tasks.outcomes import SentBatch, outcomes_frame
from smscast.tasks.persist import save_plan
from smscast.tasks.plan import plan_campaign
from smscast.tasks.send import RunMemory, _memory, remembered
from smscast.tasks.send_engine import fewer_collections, send_rows
from smscast.tasks.validate import validate_recipients

SETTINGS = ProviderSettings(base_url="http://sandbox.test", api_key=Secret("k" * 16))


def sandbox_spec(results: str = "r", **kw: Any) -> CampaignSpec:
    """Campaign "c" to the sandbox from sender ACME; `kw` sets the rest."""
    return CampaignSpec(campaign_id="c", provider="sandbox", source="s", results=results, sender="ACME", **kw)


def batch(n: int, bodies: list[str] | None = None) -> Batch:
    rows = pl.DataFrame(
        {
            "row_index": list(range(n)),
            "phone": [f"+4474009{i:05d}" for i in range(n)],
            "body": bodies or [f"hi {i}" for i in range(n)],
            "idempotency_key": [f"sc-{i}" for i in range(n)],
        }
    )
    spec = sandbox_spec()
    return Batch("c", "c-b0", "scb-0", rows, spec)


def answer(results: Any, ref: Any = "bat_1") -> httpx.Response:
    return httpx.Response(200, content=orjson.dumps({"batch": ref, "results": results}))


def accepted(n: int) -> list[dict[str, Any]]:
    return [{"index": i, "status": "accepted", "message_id": f"sbx_{i}"} for i in range(n)]


ANSWERS: dict[str, Any] = {
    "all accepted": accepted(4),
    "all accepted, ids missing or null": [
        {"index": 0, "status": "accepted"},
        {"index": 1, "status": "accepted", "message_id": None},
        {"index": 2, "status": "accepted", "message_id": "sbx_2"},
        {"index": 3, "status": "accepted", "message_id": "sbx_3", "duplicate": True},
    ],
    "one refused": [
        *accepted(3),
        {"index": 3, "status": "rejected", "code": "invalid_number", "message": "no"},
    ],
    "out of order": list(reversed(accepted(4))),
    "one missing": accepted(3),
    "one extra": [*accepted(4), {"index": 4, "status": "accepted", "message_id": "sbx_4"}],
    "duplicate index": [*accepted(3), {"index": 2, "status": "accepted", "message_id": "again"}],
    "float index": [*accepted(3), {"index": 3.0, "status": "accepted", "message_id": "sbx_3"}],
    "bool index": [{"index": False, "status": "accepted"}, *accepted(4)[1:]],
    "string index": [*accepted(3), {"index": "3", "status": "accepted"}],
    "no status": [*accepted(3), {"index": 3, "message_id": "sbx_3"}],
    "unknown state": [*accepted(3), {"index": 3, "status": "pondering", "message_id": "sbx_3"}],
    "carrier unavailable": [*accepted(3), {"index": 3, "status": "rejected", "code": "carrier_unavailable"}],
}


@pytest.mark.parametrize("name", sorted(ANSWERS))
def test_the_answer_read_as_columns_reads_as_the_row_by_row_reading(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider = SandboxProvider(SETTINGS)
    fast = provider.parse_response(batch(4), answer(ANSWERS[name]))
    monkeypatch.setattr(sandbox_module, "_all_accepted", lambda *_: None)  # the row-by-row reading only
    slow = provider.parse_response(batch(4), answer(ANSWERS[name]))
    assert isinstance(slow, list)
    assert list(fast) == slow
    # Only the plain answer takes the columnar path; anything else is read row by row.
    assert isinstance(fast, Outcomes) == name.startswith("all accepted")


def test_an_all_accepted_answer_is_read_as_columns_with_every_message_id() -> None:
    out = SandboxProvider(SETTINGS).parse_response(batch(1000), answer(accepted(1000), ref="bat_9"))
    assert isinstance(out, Outcomes)
    assert out.provider_message_id == [f"sbx_{i}" for i in range(1000)]
    assert set(out.status) == {Status.ACCEPTED} and set(out.provider_batch_ref) == {"bat_9"}
    assert out.counts() == {"accepted": 1000}


def test_the_request_body_is_the_json_orjson_makes_of_the_rows() -> None:
    tricky = ['a"b', "back\\slash", "ctl\x01\x1f", "nl\nr\rt\t", "é 中 😀", "\u2028\u2029", "</script>", ""]
    b = batch(len(tricky), bodies=tricky)
    request = SandboxProvider(SETTINGS).build_request(b)
    sent = json.loads(request.content)
    expected = b.rows.select(to="phone", body="body", ref="idempotency_key").to_dicts()
    assert sent == {"sender": "ACME", "messages": expected}
    assert request.headers["Idempotency-Key"] == "scb-0"
    assert request.headers["Content-Type"] == "application/json"


def test_outcomes_read_as_rows_and_count_and_compare_like_a_list() -> None:
    rows = [
        RowOutcome(Status.ACCEPTED, None, None, "m0", "b"),
        RowOutcome(Status.REJECTED, "invalid_number", "no", None, "b"),
        RowOutcome(Status.ACCEPTED, None, None, "m2", "b"),
    ]
    cols = Outcomes.of(rows)
    assert list(cols) == rows and cols == rows and cols[1] == rows[1] and list(cols[1:]) == rows[1:]
    assert Outcomes.of(cols) is cols and len(cols) == 3
    assert cols.counts() == {"accepted": 2, "rejected": 1}
    assert cols.uniform() is None
    same = Outcomes.same(3, RowOutcome(Status.FAILED, "http_503", "later"))
    assert same.uniform() == RowOutcome(Status.FAILED, "http_503") and list(same)[2].error_message == "later"
    assert Outcomes.of([]).uniform() is None and list(Outcomes.of([])) == []
    with pytest.raises(ValueError, match="lengths"):
        Outcomes([Status.ACCEPTED], [], [], [], [])


def test_outcomes_as_columns_make_the_same_results_frame_as_tuples() -> None:
    when = datetime(2026, 12, 1, tzinfo=UTC)
    rows = [RowOutcome(Status.ACCEPTED, None, None, f"m{i}", "b") for i in range(3)]
    mixed = [
        RowOutcome(Status.ACCEPTED, None, None, "m9", "b"),
        RowOutcome(Status.REJECTED, "x", "no", None, "b"),
    ]
    refused = RowOutcome(Status.REJECTED, "invalid_number", "no")
    expected = pl.DataFrame(
        {
            "row_index": [0, 1, 2, 9, 8, 5, 4],
            "status": ["accepted"] * 4 + ["rejected"] * 3,
            "error_code": [None] * 4 + ["x", "invalid_number", "invalid_number"],
            "error_message": [None] * 4 + ["no"] * 3,
            "provider_message_id": ["m0", "m1", "m2", "m9", None, None, None],
            "provider_batch_ref": ["b"] * 5 + [None, None],
            "submitted_at": [when] * 7,
            "batch_id": ["b1"] * 3 + ["b2"] * 2 + ["b3"] * 2,
        },
        schema={**OUTCOME_SCHEMA, "batch_id": pl.String()},
    )
    as_tuples = [
        SentBatch("b1", [0, 1, 2], rows, when),
        SentBatch("b2", [9, 8], mixed, when),
        SentBatch("b3", [5, 4], [refused] * 2, when),
    ]
    as_columns = [
        SentBatch("b1", [0, 1, 2], Outcomes.accepted(["m0", "m1", "m2"], "b"), when),
        SentBatch("empty", [], Outcomes.of([]), when),  # contributes no row
        SentBatch("b2", [9, 8], Outcomes.of(mixed), when),
        SentBatch("b3", [5, 4], Outcomes.same(2, refused), when),
    ]
    assert outcomes_frame(as_tuples).equals(expected)
    assert outcomes_frame(as_columns).equals(expected)
    assert outcomes_frame([]).equals(expected.clear())
    assert outcomes_frame([SentBatch("b", [], Outcomes.of([]), when)]).equals(expected.clear())


def test_a_run_sends_from_the_plan_it_wrote_exactly_as_from_the_recorded_plan(tmp_path: Path) -> None:
    provider = SandboxProvider(SETTINGS)
    spec = sandbox_spec(str(tmp_path / "res"), body="hi {{name}}", batch_size=7, shard_batches=3)
    n = 50
    df = pl.DataFrame(
        {
            "row_index": list(range(n)),
            "phone_raw": [f"+4474009{i:05d}" if i % 9 else "nonsense" for i in range(n)],
            "name": [f"n{i}" for i in range(n)],
        }
    )
    planned = plan_campaign(
        validate_recipients(df, spec, provider.caps, provider), spec, provider.caps, provider
    )
    paths = AttemptPaths.of(spec)
    manifest = save_plan.fn(paths, planned)
    assert len(manifest.shards) > 1
    memory = RunMemory(planned.rows)
    with remembered("run-1", memory):
        assert _memory("run-1") is memory and _memory("another-run") is None and _memory(None) is None
        for shard in manifest.shards:
            from_memory = memory.shard_plan(shard.shard)
            assert from_memory is not None
            assert from_memory.equals(storage.read_parquet(paths.plan_shard(shard.shard)))
    assert _memory("run-1") is None
    assert RunMemory(None).shard_plan(0) is None  # a resumed run reads its recorded plan
    # Written with light compression and no statistics; read as every plan file is.
    raw = storage.get_bytes(paths.plan_shard(manifest.shards[0].shard))
    assert pl.read_parquet(io.BytesIO(raw)).height == manifest.shards[0].rows

    # Every planned row is in exactly one plan file, in plan order.
    recorded = pl.concat(
        [
            *(storage.read_parquet(paths.plan_shard(s.shard)) for s in manifest.shards),
            storage.read_parquet(paths.plan_unsent),
        ]
    ).sort("row_index")
    assert recorded.equals(planned.rows.sort("row_index"))


def test_sending_sets_the_collector_aside_and_gives_it_back() -> None:
    before = gc.get_threshold()
    frozen = gc.get_freeze_count()
    with fewer_collections():
        with fewer_collections():  # a second shard at once
            assert gc.get_threshold() == (50_000, 20, 20)
        assert gc.get_threshold() == (50_000, 20, 20)  # the first is still sending
    assert gc.get_threshold() == before and gc.get_freeze_count() == frozen


def test_a_shard_sent_through_the_columnar_path_records_every_row(tmp_path: Path) -> None:
    provider = SandboxProvider(SETTINGS)
    spec = sandbox_spec(str(tmp_path), body="hi", batch_size=10, rate=10_000, concurrency=2)
    df = pl.DataFrame({"row_index": list(range(35)), "phone_raw": [f"+4474009{i:05d}" for i in range(35)]})
    rows = plan_campaign(
        validate_recipients(df, spec, provider.caps, provider), spec, provider.caps, provider
    ).rows

    def handler(request: httpx.Request) -> httpx.Response:
        messages = json.loads(request.content)["messages"]
        if messages[0]["to"].endswith("00000"):  # the first batch: one row refused, read row by row
            return answer([*accepted(len(messages) - 1), {"index": len(messages) - 1, "status": "rejected"}])
        return answer(accepted(len(messages)))

    async def go() -> pl.DataFrame:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            return (await send_rows(provider, rows, spec, client=client))[0]

    out = asyncio.run(go()).sort("row_index")
    assert out["row_index"].to_list() == list(range(35))
    assert out.group_by("status").len().sort("status").rows() == [("accepted", 34), ("rejected", 1)]
    assert out.filter(pl.col("status") == "accepted")["provider_message_id"].null_count() == 0
