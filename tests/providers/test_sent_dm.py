"""sent.dm adapter: request shape, response parsing, status mapping and pre-send rules, through
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
    CampaignStopError,
    ConfigError,
    RateLimitedError,
    ServerError,
)
from smscast.providers.base import Batch
from smscast.providers.sent_dm import REJECTED_CODE, SentDmProvider, idempotency_key
from smscast.settings import ProviderSettings, Secret
from smscast.status import Status
from smscast.tasks.plan import plan_campaign
from smscast.tasks.send_batch import RetryPolicy
from smscast.tasks.send_engine import batches_of, send_rows
from smscast.tasks.validate import validate_recipients

SETTINGS = ProviderSettings(base_url="http://sent.test", api_key=Secret("sdm-key-1"))
FAST = RetryPolicy(max_attempts=3, max_throttled=5, backoff_base=0.001, backoff_cap=0.01)


def provider() -> SentDmProvider:
    return SentDmProvider(SETTINGS)


def spec(**kw: Any) -> CampaignSpec:
    base: dict[str, Any] = {
        "campaign_id": "sdm1",
        "provider": "sent-dm",
        "source": "x",
        "results": "r",
        "template": "tmpl_announcement",
        "template_vars": ("announcement",),
        "rate": 10_000,
    }
    return CampaignSpec(**(base | kw))


def recipients(n: int, **cols: list[Any]) -> pl.DataFrame:
    data: dict[str, Any] = {"row_index": list(range(n)), "phone_raw": [f"+1415555{i:04d}" for i in range(n)]}
    data |= {k: (v * n)[:n] for k, v in cols.items()}
    return pl.DataFrame(data)


def plan(df: pl.DataFrame, s: CampaignSpec) -> tuple[pl.DataFrame, list[Batch]]:
    p = provider()
    checked = validate_recipients(df, s, p.caps, p)
    planned = plan_campaign(checked, s, p.caps, p)
    rows = planned.rows.filter(pl.col("shard").is_not_null())
    return planned.rows, batches_of(rows, s)


def ok_response(
    batch: Batch, *, drop: frozenset[str] = frozenset(), status: str = "QUEUED"
) -> httpx.Response:
    phones = [p for p in batch.rows["phone"].to_list() if p not in drop]
    return httpx.Response(
        200,
        json={
            "success": True,
            "data": {
                "status": status,
                "template_id": "7ba7b820",
                "template_name": "announcement",
                "recipients": [
                    {"message_id": f"msg_{p[-4:]}", "to": p, "channel": "sms"} for p in reversed(phones)
                ],
            },  # order is not the request's
            "error": None,
            "meta": {"request_id": "req_batch_001", "timestamp": "2026-03-04T11:28:25Z", "version": "v3"},
        },
    )


def envelope(
    status: int, code: str, details: Any = None, headers: dict[str, str] | None = None
) -> httpx.Response:
    return httpx.Response(
        status,
        headers=headers,
        json={
            "success": False,
            "data": None,
            "error": {"code": code, "message": "refused", "details": details, "doc_url": None},
            "meta": {"request_id": "req_x", "timestamp": "2026-03-04T11:28:25Z", "version": "v3"},
        },
    )


def one_batch(n: int = 3) -> Batch:
    _, batches = plan(recipients(n, announcement=["New feature launched!"]), spec())
    assert len(batches) == 1
    return batches[0]


# ---- request shape ---------------------------------------------------------------------------------------


def test_request_is_the_documented_v3_messages_call() -> None:
    batch = one_batch(3)
    req = provider().build_request(batch)
    assert req.method == "POST" and str(req.url) == "http://sent.test/v3/messages"
    assert req.headers["x-api-key"] == "sdm-key-1"
    assert "authorization" not in req.headers
    assert req.headers["idempotency-key"] == batch.batch_key and batch.batch_key.startswith("scb-")
    assert req.headers["content-type"] == "application/json"
    assert json.loads(req.content) == {
        "to": ["+14155550000", "+14155550001", "+14155550002"],
        "template": {"id": "tmpl_announcement", "parameters": {"announcement": "New feature launched!"}},
        "channel": ["sms"],
    }


def test_sub_batch_keys_are_made_header_safe() -> None:
    # sent.dm keys: 1-255 of [A-Za-z0-9_-]; bisection appends "-L"/"-R" to the batch key.
    batch = one_batch(4).subset([0, 1], "L").subset([0], "R")
    key = provider().build_request(batch).headers["idempotency-key"]
    assert key == batch.batch_key and key.endswith("-L-R")
    assert idempotency_key("a.b" * 200) == ("a_b" * 200)[:255]


def test_template_without_parameters_sends_an_empty_object() -> None:
    _, batches = plan(recipients(2), spec(template_vars=()))
    body = json.loads(provider().build_request(batches[0]).content)
    assert body["template"] == {"id": "tmpl_announcement", "parameters": {}}


def test_a_batch_mixing_parameters_is_refused_before_sending_so_it_gets_split() -> None:
    p = provider()
    df = validate_recipients(recipients(2, announcement=["a", "b"]), spec(), p.caps, p)
    rows = df.with_columns(idempotency_key=pl.lit("sc-x"))
    batch = Batch("sdm1", "b0", "scb-0", rows, spec())
    with pytest.raises(BatchRejectedError) as exc:
        p.build_request(batch)
    assert exc.value.retryable_split and exc.value.code == "template_parameters_differ"


# ---- campaign rules and planning -------------------------------------------------------------------------


def test_check_spec_requires_a_template_and_refuses_a_sender() -> None:
    p = provider()
    with pytest.raises(ConfigError, match="--template"):
        p.check_spec(spec(template=None, template_vars=(), body="Hello"))
    with pytest.raises(ConfigError, match="--sender"):
        p.check_spec(spec(sender="ACME"))
    p.check_spec(spec())  # fine


def test_batches_group_rows_with_equal_template_parameters() -> None:
    values = ["gold", "silver", "gold", "bronze", "silver", "gold"]
    _, batches = plan(recipients(12, tier=values), spec(template_vars=("tier",), batch_size=3))
    # gold 6 rows -> 3+3, silver 4 -> 2+2 (balanced), bronze 2 -> 2: never two tiers in one request.
    assert sorted(len(b) for b in batches) == [2, 2, 2, 3, 3]
    for b in batches:
        assert b.rows["tier"].n_unique() == 1
        assert json.loads(provider().build_request(b).content)["template"]["parameters"] == {
            "tier": b.rows["tier"][0]
        }
    assert sum(len(b) for b in batches) == 12


def test_rows_with_send_at_or_media_are_quarantined() -> None:
    p = provider()
    df = recipients(3, announcement=["x"]).with_columns(
        send_at=pl.Series([None, "2026-05-01T09:00:00Z", ""]),
        media_url=pl.Series([None, None, "https://x/y.png"]),
    )
    out = validate_recipients(df, spec(), p.caps, p).sort("row_index")
    assert out["error_code"].to_list() == [None, "send_at_unsupported", "media_unsupported"]
    assert out["status"].to_list() == [None, "invalid", "invalid"]


# ---- parsing ---------------------------------------------------------------------------------------------


def test_every_listed_recipient_is_accepted_with_its_message_id() -> None:
    batch = one_batch(3)
    out = provider().parse_response(batch, ok_response(batch))
    assert [o.status for o in out] == [Status.ACCEPTED] * 3
    # Matched by `to`, although the response lists them in another order.
    assert [o.provider_message_id for o in out] == ["msg_0000", "msg_0001", "msg_0002"]
    assert {o.provider_batch_ref for o in out} == {"req_batch_001"}
    assert all(o.error_code is None for o in out)


def test_recipients_missing_from_the_response_are_rejected() -> None:
    batch = one_batch(4)
    out = provider().parse_response(
        batch, ok_response(batch, drop=frozenset({"+14155550001", "+14155550003"}))
    )
    assert [o.status for o in out] == [Status.ACCEPTED, Status.REJECTED, Status.ACCEPTED, Status.REJECTED]
    assert out[1].error_code == REJECTED_CODE and out[1].provider_message_id is None
    assert "Some recipients were rejected" in (out[1].error_message or "")


def test_recipients_are_matched_whatever_the_spelling_of_to() -> None:
    batch = one_batch(1)
    resp = httpx.Response(
        200,
        json={
            "success": True,
            "data": {
                "status": "QUEUED",
                "recipients": [{"message_id": "m1", "to": "14155550000", "channel": "sms"}],
            },
            "meta": {},
        },
    )
    assert provider().parse_response(batch, resp)[0].provider_message_id == "m1"


def test_status_mapping_and_unknown_codes() -> None:
    assert SentDmProvider.state_status("QUEUED") is Status.ACCEPTED
    assert SentDmProvider.refusal_status(REJECTED_CODE) is Status.REJECTED
    assert SentDmProvider.refusal_status("RECIPIENT_OPTED_OUT") is Status.REJECTED
    assert SentDmProvider.state_status("SOMETHING_NEW") is Status.UNKNOWN
    assert SentDmProvider.state_status(None) is Status.UNKNOWN
    batch = one_batch(2)
    out = provider().parse_response(batch, ok_response(batch, status="PENDING_REVIEW"))
    assert [o.status for o in out] == [Status.UNKNOWN, Status.UNKNOWN]
    assert out[0].error_code == "PENDING_REVIEW" and out[0].provider_message_id == "msg_0000"


@pytest.mark.parametrize(
    ("response", "exc_type", "code", "split"),
    [
        (
            envelope(400, "VALIDATION_001", {"to[2]": ["must be E.164"]}),
            BatchRejectedError,
            "VALIDATION_001",
            True,
        ),
        (
            envelope(400, "VALIDATION_001", {"to": ["at most 1000"]}),
            BatchRejectedError,
            "VALIDATION_001",
            True,
        ),
        (
            envelope(400, "VALIDATION_001", [{"field": "to[0]", "message": "bad"}]),
            BatchRejectedError,
            "VALIDATION_001",
            True,
        ),
        (
            envelope(400, "VALIDATION_001", {"template.id": ["required"]}),
            BatchRejectedError,
            "VALIDATION_001",
            False,
        ),
        # An unknown template (or endpoint): every batch would meet it, so the campaign stops.
        (envelope(404, "RESOURCE_001"), CampaignStopError, "RESOURCE_001", None),
        (envelope(422, "IDEMPOTENCY_001"), BatchRejectedError, "IDEMPOTENCY_001", False),
        (envelope(200, "VALIDATION_001"), BatchRejectedError, "VALIDATION_001", False),
        (envelope(409, "CONFLICT_001"), AmbiguousError, "CONFLICT_001", None),
        (envelope(401, "AUTH_002"), AuthError, "http_401", None),
        (envelope(403, "AUTH_005"), AuthError, "http_403", None),
        (envelope(502, "UPSTREAM_001"), ServerError, "http_502", None),
        (httpx.Response(200, text="<html>gateway</html>"), AmbiguousError, "unreadable_response", None),
        (
            httpx.Response(200, json={"success": True, "data": {"status": "QUEUED"}}),
            AmbiguousError,
            "unreadable_response",
            None,
        ),
    ],
)
def test_whole_request_refusals(
    response: httpx.Response, exc_type: type[Exception], code: str, split: bool | None
) -> None:
    with pytest.raises(exc_type) as exc:
        provider().parse_response(one_batch(3), response)
    assert exc.value.code == code  # type: ignore[attr-defined]
    if split is not None:
        assert exc.value.retryable_split is split  # type: ignore[attr-defined]
    assert "sdm-key-1" not in str(exc.value)


def test_429_carries_retry_after() -> None:
    with pytest.raises(RateLimitedError) as exc:
        provider().parse_response(one_batch(1), envelope(429, "RATE_LIMIT_001", headers={"retry-after": "7"}))
    assert exc.value.retry_after == 7.0


# ---- through the send engine -----------------------------------------------------------------------------


def run(
    rows: pl.DataFrame, s: CampaignSpec, handler: Callable[[httpx.Request], httpx.Response]
) -> pl.DataFrame:
    ratelimit._BUCKETS.clear()
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    out, _ = asyncio.run(send_rows(provider(), rows, s, policy=FAST, client=client))
    return out.sort("row_index")


def test_engine_bisects_a_request_refused_for_one_recipient() -> None:
    s = spec()
    planned, _ = plan(recipients(8, announcement=["x"]), s)
    rows = planned.filter(pl.col("shard").is_not_null())
    bad = "+14155550005"
    seen: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        seen.append({"to": body["to"], "key": request.headers["idempotency-key"]})
        if bad in body["to"]:
            return envelope(400, "VALIDATION_001", {f"to[{body['to'].index(bad)}]": ["not reachable"]})
        return httpx.Response(
            200,
            json={
                "success": True,
                "data": {
                    "status": "QUEUED",
                    "recipients": [
                        {"message_id": f"m{t[-2:]}", "to": t, "channel": "sms"} for t in body["to"]
                    ],
                },
                "meta": {"request_id": f"r{len(seen)}"},
            },
        )

    out = run(rows, s, handler)
    assert out.filter(pl.col("status") == "accepted").height == 7
    refused = out.filter(pl.col("status") == "rejected")
    assert refused["row_index"].to_list() == [5] and refused["error_code"].item() == "VALIDATION_001"
    keys = [r["key"] for r in seen]
    assert len(set(keys)) == len(keys)  # every sub-request has its own key
    assert all(k.replace("_", "").replace("-", "").isalnum() for k in keys)
