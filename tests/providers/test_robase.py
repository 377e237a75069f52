"""robase adapter: request shape, response parsing, status mapping and pre-send rules, through
httpx.MockTransport (no network)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httpx
import polars as pl
import pytest

from smscast import ratelimit
from smscast.campaign import CampaignSpec
from smscast.errors import (
    AmbiguousError,
    AuthError,
    BatchRejectedError,
    ConfigError,
    RateLimitedError,
    TransientError,
)
from smscast.providers.base import Batch
from smscast.providers.robase import RobaseProvider
from smscast.settings import ProviderSettings, Secret
from smscast.status import Status
from smscast.tasks.plan import plan_campaign
from smscast.tasks.send_batch import RetryPolicy
from smscast.tasks.send_engine import batches_of, send_rows
from smscast.tasks.validate import validate_recipients

SETTINGS = ProviderSettings(base_url="http://robase.test", api_key=Secret("rb_live_secret"))
FAST = RetryPolicy(max_attempts=3, max_throttled=5, backoff_base=0.001, backoff_cap=0.01)


def provider() -> RobaseProvider:
    return RobaseProvider(SETTINGS)


def spec(**kw: Any) -> CampaignSpec:
    base: dict[str, Any] = {
        "campaign_id": "rb1",
        "provider": "robase",
        "source": "x",
        "results": "r",
        "sender": "SHUTTLERS",
        "body": "Hi {{name}}, ride at {{time}}.",
        "rate": 10_000,
    }
    return CampaignSpec(**(base | kw))


def recipients(n: int, **cols: list[Any]) -> pl.DataFrame:
    data: dict[str, Any] = {
        "row_index": list(range(n)),
        "phone_raw": [f"+23480123{i:05d}" for i in range(n)],
        "name": [f"N{i}" for i in range(n)],
        "time": ["10:00am"] * n,
    }
    data |= {k: (v * n)[:n] for k, v in cols.items()}
    return pl.DataFrame(data)


def plan(df: pl.DataFrame, s: CampaignSpec) -> tuple[pl.DataFrame, list[Batch]]:
    p = provider()
    checked = validate_recipients(df, s, p.caps, p)
    planned = plan_campaign(checked, s, p.caps, p)
    return planned.rows, batches_of(planned.rows.filter(pl.col("shard").is_not_null()), s)


def one_batch(n: int = 3, s: CampaignSpec | None = None) -> Batch:
    _, batches = plan(recipients(n), s or spec())
    assert len(batches) == 1
    return batches[0]


def sms(i: int, status: str = "queued") -> dict[str, Any]:
    return {"index": i, "sms": {"id": f"sms_{i}", "status": status, "to": "+234…"}}


def err(i: int, kind: str, field: str | None = "to") -> dict[str, Any]:
    return {"index": i, "error": {"type": kind, "message": f"{kind} happened", "field": field}}


def answer(*data: dict[str, Any]) -> httpx.Response:
    failed = sum("error" in d for d in data)
    return httpx.Response(
        200,
        json={"accepted": len(data) - failed, "failed": failed, "success": failed == 0, "data": list(data)},
    )


# ---- request shape ---------------------------------------------------------------------------------------


def test_request_is_the_documented_batch_call_with_per_row_keys() -> None:
    batch = one_batch(2)
    req = provider().build_request(batch)
    assert req.method == "POST" and str(req.url) == "http://robase.test/v1/sms/batch"
    assert req.headers["authorization"] == "Bearer rb_live_secret"
    assert req.headers["content-type"] == "application/json"
    assert "idempotency-key" not in req.headers  # robase keys rows, not requests
    keys = batch.rows["idempotency_key"].to_list()
    assert all(k.startswith("sc-") and len(k) <= 40 for k in keys)
    assert json.loads(req.content) == {
        "from": "SHUTTLERS",
        "messages": [
            {"to": "+2348012300000", "body": "Hi N0, ride at 10:00am.", "idempotency_key": keys[0]},
            {"to": "+2348012300001", "body": "Hi N1, ride at 10:00am.", "idempotency_key": keys[1]},
        ],
    }


def test_template_mode_shares_the_template_and_sends_variables_per_row() -> None:
    s = spec(body=None, template="ride-reminder", template_vars=("name", "time"))
    batch = one_batch(2, s)
    body = json.loads(provider().build_request(batch).content)
    keys = batch.rows["idempotency_key"].to_list()
    assert body == {
        "from": "SHUTTLERS",
        "template": "ride-reminder",
        "messages": [
            {
                "to": "+2348012300000",
                "variables": {"name": "N0", "time": "10:00am"},
                "idempotency_key": keys[0],
            },
            {
                "to": "+2348012300001",
                "variables": {"name": "N1", "time": "10:00am"},
                "idempotency_key": keys[1],
            },
        ],
    }
    bare = one_batch(1, spec(body=None, template="hello"))
    assert json.loads(provider().build_request(bare).content)["messages"][0].keys() == {
        "to",
        "idempotency_key",
    }


def test_send_at_is_batch_level_so_batches_are_grouped_by_it() -> None:
    at = ["2026-05-01T08:00:00.000Z", None, "2026-05-01T09:00:00+01:00", ""]
    _, batches = plan(recipients(8, send_at=at), spec())
    assert len(batches) == 3  # two schedules, and "now" (null and empty alike)
    seen = {}
    for b in batches:
        body = json.loads(provider().build_request(b).content)
        seen[body.get("send_at")] = sorted(m["to"][-1] for m in body["messages"])
    assert seen == {
        "2026-05-01T08:00:00.000Z": ["0", "4"],
        "2026-05-01T09:00:00+01:00": ["2", "6"],
        None: ["1", "3", "5", "7"],
    }


def test_a_batch_mixing_send_at_is_split_rather_than_sent() -> None:
    p = provider()
    df = validate_recipients(recipients(2, send_at=["2026-05-01T08:00:00Z", None]), spec(), p.caps, p)
    batch = Batch("rb1", "b", "scb-1", df.with_columns(idempotency_key=pl.lit("sc-1")), spec())
    with pytest.raises(BatchRejectedError) as exc:
        p.build_request(batch)
    assert exc.value.retryable_split


# ---- rules before sending --------------------------------------------------------------------------------


def test_body_limit_send_at_format_media_and_sender() -> None:
    p = provider()
    s = spec(body=None)  # bodies from the source's body column
    df = recipients(5).with_columns(
        body=pl.Series(["x" * 1600, "é" * 1601, "ok", "ok", "ok"]),
        send_at=pl.Series([None, None, "2026-05-01 09:00", "2026-05-01T09:00:00+0100", "tomorrow"]),
        media_url=pl.Series([None, None, None, None, "https://x/y.png"]),
    )
    out = validate_recipients(df, s, p.caps, p).sort("row_index")
    assert out["error_code"].to_list() == [
        None,
        "body_too_long",
        "send_at_invalid",
        None,
        "send_at_invalid;media_unsupported",
    ]
    with pytest.raises(ConfigError, match="--sender"):
        p.check_spec(spec(sender=None))
    p.check_spec(spec())


# ---- parsing ---------------------------------------------------------------------------------------------


def test_all_rows_accepted_with_their_sms_ids() -> None:
    batch = one_batch(3)
    out = provider().parse_response(batch, answer(sms(2), sms(0), sms(1, "scheduled")))
    assert [o.status for o in out] == [Status.ACCEPTED] * 3
    assert [o.provider_message_id for o in out] == ["sms_0", "sms_1", "sms_2"]
    assert all(o.error_code is None for o in out)


def test_partial_success_maps_each_row_by_index() -> None:
    batch = one_batch(6)
    resp = answer(
        sms(0),
        err(1, "phone_invalid"),
        err(2, "carrier_unavailable"),
        err(3, "quantum_interference"),
        sms(4, "teleported"),
    )  # row 5 not mentioned
    out = provider().parse_response(batch, resp)
    assert [o.status for o in out] == [
        Status.ACCEPTED,
        Status.REJECTED,
        Status.FAILED,
        Status.REJECTED,  # an error type we do not know is still robase refusing the row
        Status.UNKNOWN,  # an sms (it exists) in a state we do not know
        Status.UNKNOWN,  # no word on the row
    ]
    assert (
        out[1].error_code == "phone_invalid" and out[1].error_message == "phone_invalid happened (field to)"
    )
    assert out[2].error_code == "carrier_unavailable"
    assert out[3].error_code == "quantum_interference"
    assert out[3].error_message == "quantum_interference happened (field to)"
    assert out[4].error_code == "teleported" and out[4].provider_message_id == "sms_4"
    assert out[5].error_code == "missing_in_response"


def test_status_map() -> None:
    assert RobaseProvider.state_status("queued") is Status.ACCEPTED
    assert RobaseProvider.state_status("scheduled") is Status.ACCEPTED
    assert RobaseProvider.state_status("undelivered") is Status.REJECTED
    assert RobaseProvider.state_status("no_such_state") is Status.UNKNOWN
    for kind in ("phone_invalid", "body_too_long", "template_not_found", "idempotency_key_conflict"):
        assert RobaseProvider.refusal_status(kind) is Status.REJECTED
    assert RobaseProvider.refusal_status("carrier_unavailable") is Status.FAILED
    # The codes, absent from the document: refused, so rejected, never unknown.
    unlisted: tuple[str | None, ...] = ("phone_blocked", "opted_out", "country_not_supported", None)
    for unlisted_kind in unlisted:
        assert RobaseProvider.refusal_status(unlisted_kind) is Status.REJECTED


def test_an_unknown_error_type_is_rejected_with_its_message_redacted() -> None:
    p = RobaseProvider(ProviderSettings(base_url="http://robase.test", api_key=Secret("rb_live_secret_123")))
    resp = answer(sms(0), {"index": 1, "error": {"type": "opted_out", "message": "echo rb_live_secret_123"}})
    out = p.parse_response(one_batch(2), resp)
    assert (out[1].status, out[1].error_code) == (Status.REJECTED, "opted_out")
    assert out[1].error_message == "echo ********"
    untyped = p.parse_response(one_batch(1), answer({"index": 0, "error": {"message": "no"}}))
    assert (untyped[0].status, untyped[0].error_code) == (Status.REJECTED, "row_error")


def request_error(status: int, kind: str, headers: dict[str, str] | None = None) -> httpx.Response:
    body = {"success": False, "error": {"type": kind, "message": "no", "field": "messages"}}
    return httpx.Response(status, headers=headers, json=body)


def test_whole_request_refusals() -> None:
    p, batch = provider(), one_batch(2)
    with pytest.raises(BatchRejectedError) as exc:
        p.parse_response(batch, request_error(422, "batch_too_large"))
    assert exc.value.code == "batch_too_large" and exc.value.retryable_split  # halves fit
    for kind in ("validation_error", "send_at_invalid", "batch_empty"):
        with pytest.raises(BatchRejectedError) as exc:
            p.parse_response(batch, request_error(422, kind))
        assert exc.value.code == kind and not exc.value.retryable_split
    # A type robase's table makes transient is retried (then `failed`), not rejected for good.
    with pytest.raises(TransientError) as transient:
        p.parse_response(batch, request_error(402, "insufficient_balance"))
    assert transient.value.code == "insufficient_balance"
    with pytest.raises(AuthError):
        p.parse_response(batch, request_error(401, "unauthorized"))
    with pytest.raises(RateLimitedError) as rl:
        p.parse_response(batch, request_error(429, "rate_limited", {"Retry-After": "2"}))
    assert rl.value.retry_after == 2.0
    with pytest.raises(RateLimitedError) as rl:
        p.parse_response(batch, request_error(429, "rate_limited"))
    assert rl.value.retry_after is None  # the engine then waits one token's time
    with pytest.raises(AmbiguousError):
        p.parse_response(batch, httpx.Response(200, text="upstream timeout"))
    with pytest.raises(AmbiguousError):
        p.parse_response(batch, httpx.Response(200, json={"accepted": 2}))


# ---- through the send engine -----------------------------------------------------------------------------


def run(
    rows: pl.DataFrame, s: CampaignSpec, handler: Callable[[httpx.Request], httpx.Response]
) -> pl.DataFrame:
    ratelimit._BUCKETS.clear()
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    out, _ = asyncio.run(send_rows(provider(), rows, s, policy=FAST, client=client))
    return out.sort("row_index")


def test_engine_records_per_row_outcomes_and_resends_a_lost_answer_with_the_same_keys() -> None:
    s = spec(batch_size=5)
    planned, _ = plan(recipients(10), s)
    rows = planned.filter(pl.col("shard").is_not_null())
    sent_keys: list[list[str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        msgs = json.loads(request.content)["messages"]
        sent_keys.append([m["idempotency_key"] for m in msgs])
        if len(sent_keys) == 1:
            raise httpx.ReadTimeout("lost", request=request)  # may have been accepted: re-send, same keys
        data = [
            err(i, "phone_invalid")
            if m["to"].endswith("3")
            else {"index": i, "sms": {"id": m["idempotency_key"]}}
            for i, m in enumerate(msgs)
        ]
        return answer(*data)

    out = run(rows, s, handler)
    assert out.filter(pl.col("status") == "rejected")["row_index"].to_list() == [3]
    accepted = out.filter(pl.col("status") == "accepted")
    assert accepted.height == 9
    keys = dict(zip(rows["row_index"].to_list(), rows["idempotency_key"].to_list(), strict=True))
    assert accepted["provider_message_id"].to_list() == [keys[i] for i in accepted["row_index"]]
    assert len(sent_keys) == 3 and sent_keys[0] in sent_keys[1:]  # the timed-out batch went again, same keys
