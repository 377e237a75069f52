"""Instasent adapter: request shape, response parsing and pre-send rules, with httpx.MockTransport."""

from __future__ import annotations

import asyncio
import json
import time
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
from smscast.providers.base import Batch, Idempotency, Rejection
from smscast.providers.instasent import InstasentProvider
from smscast.settings import ProviderSettings, Secret
from smscast.status import Status
from smscast.tasks.plan import plan_campaign
from smscast.tasks.send_batch import RetryPolicy
from smscast.tasks.send_engine import send_rows
from smscast.tasks.validate import validate_recipients

BASE = "https://instasent.test"
SETTINGS = ProviderSettings(base_url=BASE, api_key=Secret("ins-token-1"))
FAST = RetryPolicy(max_attempts=4, max_throttled=10, backoff_base=0.001, backoff_cap=0.01)


def spec_(**kw: Any) -> CampaignSpec:
    args: dict[str, Any] = dict(
        campaign_id="ins1",
        provider="instasent",
        source="x",
        results="r",
        sender="Instasent",
        body="{{text}}",
        rate=10_000,
    )
    args.update(kw)
    return CampaignSpec(**args)


def batch_of(texts: list[str], spec: CampaignSpec | None = None) -> Batch:
    spec = spec or spec_()
    provider = InstasentProvider(SETTINGS)
    df = pl.DataFrame(
        {
            "row_index": list(range(len(texts))),
            "phone_raw": [f"+3460000{i:04d}" for i in range(len(texts))],
            "text": texts,
        }
    )
    checked = validate_recipients(df, spec, provider.caps, provider)
    rows = plan_campaign(checked, spec, provider.caps, provider).rows.filter(pl.col("status").is_null())
    return Batch(spec.campaign_id, "ins1-a1-b000000", "scb-x", rows, spec)


def items_of(request: httpx.Request) -> list[dict[str, Any]]:
    body = json.loads(request.read())
    assert isinstance(body, list), "the body is a top-level JSON array"
    return body


def created(payload: object, **kw: Any) -> httpx.Response:
    return httpx.Response(
        201, json=payload, request=httpx.Request("POST", f"{BASE}/transactional/v1/sms/bulk"), **kw
    )


def entity(key: str, i: int, status: str = "enqueued") -> dict[str, Any]:
    return {"id": f"id-{i}", "clientId": key, "from": "Instasent", "to": f"+3460000{i:04d}", "status": status}


# ---- capabilities and request ----------------------------------------------------------------------------


def test_capabilities() -> None:
    caps = InstasentProvider.caps
    assert (caps.min_rows, caps.max_rows) == (1, 100)
    assert caps.idempotency is Idempotency.CLIENT_ID and caps.resend_safe
    assert caps.rejection is Rejection.PER_ROW
    assert caps.default_base_url == "https://api.instasent.com"


def test_request_is_a_top_level_array_with_client_ids_and_allow_unicode() -> None:
    provider = InstasentProvider(SETTINGS)
    batch = batch_of(["Hello one", "Price: 5€ {ok}", "Olá ✓", "Emoji 🎉"])
    request = provider.build_request(batch)
    assert request.method == "POST"
    assert str(request.url) == f"{BASE}/transactional/v1/sms/bulk"
    assert request.headers["authorization"] == "Bearer ins-token-1"
    assert request.headers["content-type"] == "application/json"
    items = items_of(request)
    keys = batch.rows["idempotency_key"].to_list()
    assert items == [
        {
            "from": "Instasent",
            "to": "+34600000000",
            "text": "Hello one",
            "allowUnicode": False,
            "clientId": keys[0],
        },
        # € { } are GSM-7 extension characters: no Unicode needed
        {
            "from": "Instasent",
            "to": "+34600000001",
            "text": "Price: 5€ {ok}",
            "allowUnicode": False,
            "clientId": keys[1],
        },
        {
            "from": "Instasent",
            "to": "+34600000002",
            "text": "Olá ✓",
            "allowUnicode": True,
            "clientId": keys[2],
        },
        {
            "from": "Instasent",
            "to": "+34600000003",
            "text": "Emoji 🎉",
            "allowUnicode": True,
            "clientId": keys[3],
        },
    ]
    assert all(len(k) <= 40 and k.startswith("sc-") for k in keys)  # "≤40 chars"


# ---- responses ---------------------------------------------------------------------------------------------


def test_all_accepted_matched_by_client_id_whatever_the_order() -> None:
    provider = InstasentProvider(SETTINGS)
    batch = batch_of(["a", "b", "c"])
    keys = batch.rows["idempotency_key"].to_list()
    out = provider.parse_response(
        batch,
        created({"entities": [entity(keys[2], 2), entity(keys[0], 0), entity(keys[1], 1)], "errors": []}),
    )
    assert [(o.status, o.provider_message_id) for o in out] == [
        (Status.ACCEPTED, "id-0"),
        (Status.ACCEPTED, "id-1"),
        (Status.ACCEPTED, "id-2"),
    ]


def test_partial_failure_errors_follow_the_input_order_of_the_refused_rows() -> None:
    provider = InstasentProvider(SETTINGS)
    batch = batch_of(["a", "b", "c", "d", "e"])
    keys = batch.rows["idempotency_key"].to_list()
    payload = {
        "entities": [entity(keys[0], 0), entity(keys[2], 2), entity(keys[4], 4)],
        "errors": [
            {"fields": {"to": ["This value is not valid"]}},
            {
                "fields": {
                    "text": ["This value contains characters outside GSM-7; set allowUnicode to true."],
                    "from": ["This value should not be blank."],
                }
            },
        ],
    }
    out = provider.parse_response(batch, created(payload))
    assert [o.status for o in out] == [
        Status.ACCEPTED,
        Status.REJECTED,
        Status.ACCEPTED,
        Status.REJECTED,
        Status.ACCEPTED,
    ]
    assert out[1].error_code == "to:invalid"
    assert out[1].error_message == "to: This value is not valid"
    assert out[3].error_code == "text:needs_unicode;from:missing"
    assert out[3].provider_message_id is None


def test_counts_that_do_not_add_up_leave_the_unplaced_rows_failed_or_unknown() -> None:
    provider = InstasentProvider(SETTINGS)
    batch = batch_of(["a", "b", "c", "d"])
    keys = batch.rows["idempotency_key"].to_list()
    # 2 entities + 1 error for 4 items: which of rows 1 and 3 was refused cannot be told, but every accepted
    # message is ours and accounted for, so neither was accepted: failed (re-sendable), not unknown.
    short = {"entities": [entity(keys[0], 0), entity(keys[2], 2)], "errors": [{"fields": {"to": ["bad"]}}]}
    out = provider.parse_response(batch, created(short))
    assert [o.status for o in out] == [Status.ACCEPTED, Status.FAILED, Status.ACCEPTED, Status.FAILED]
    assert out[1].error_code == "response_mismatch"
    # An entity that is not ours (or lost its clientId) also breaks the count: never silently accepted.
    odd = {
        "entities": [entity(keys[0], 0), entity("someone-else", 9), {"id": "x", "clientId": None}],
        "errors": [{"fields": {"to": ["bad"]}}],
    }
    out = provider.parse_response(batch, created(odd))
    assert [o.status for o in out] == [Status.ACCEPTED, Status.UNKNOWN, Status.UNKNOWN, Status.UNKNOWN]


def test_entity_statuses_and_the_status_map() -> None:
    provider = InstasentProvider(SETTINGS)
    batch = batch_of(["a", "b", "c"])
    keys = batch.rows["idempotency_key"].to_list()
    ents = [
        entity(keys[0], 0, "rejected"),
        entity(keys[1], 1, "something-new"),
        {"id": "i2", "clientId": keys[2]},
    ]
    out = provider.parse_response(batch, created({"entities": ents, "errors": []}))
    assert [o.status for o in out] == [Status.REJECTED, Status.ACCEPTED, Status.ACCEPTED]
    assert out[0].error_code == "rejected"
    assert InstasentProvider.state_status("delivered") is Status.ACCEPTED
    assert InstasentProvider.state_status("expired") is Status.REJECTED
    assert InstasentProvider.state_status("unknown") is Status.UNKNOWN
    assert InstasentProvider.state_status("never-heard-of-it") is Status.UNKNOWN


def test_every_refused_item_is_rejected_with_its_code() -> None:
    provider = InstasentProvider(SETTINGS)
    batch = batch_of(["a", "b", "c"])
    keys = batch.rows["idempotency_key"].to_list()
    errors = [
        {"fields": {"country": ["Destination country not supported"]}},  # a field we never send
        {"code": "opted_out", "message": "The recipient opted out"},  # no fields, a code of its own
    ]
    out = provider.parse_response(batch, created({"entities": [entity(keys[1], 1)], "errors": errors}))
    assert [(o.status, o.error_code) for o in out] == [
        (Status.REJECTED, "country:invalid"),
        (Status.ACCEPTED, None),
        (Status.REJECTED, "opted_out"),
    ]
    assert out[2].error_message == "The recipient opted out"


def test_a_duplicate_client_id_error_means_already_accepted() -> None:
    provider = InstasentProvider(SETTINGS)
    batch = batch_of(["a", "b"])
    keys = batch.rows["idempotency_key"].to_list()
    payload = {
        "entities": [entity(keys[0], 0)],
        "errors": [{"fields": {"clientId": ["This value is already used."]}}],
    }
    out = provider.parse_response(batch, created(payload))
    assert [o.status for o in out] == [Status.ACCEPTED, Status.ACCEPTED]
    assert out[1].error_code == "clientId:duplicate"


@pytest.mark.parametrize("status", [400, 413, 422])
def test_whole_request_refusals_are_not_split(status: int) -> None:
    provider = InstasentProvider(SETTINGS)
    with pytest.raises(BatchRejectedError) as exc:
        provider.parse_response(
            batch_of(["a"]), httpx.Response(status, json={"message": "Request Too Large"})
        )
    assert not exc.value.retryable_split and exc.value.code == f"http_{status}"


def test_no_such_endpoint_stops_the_campaign() -> None:
    provider = InstasentProvider(SETTINGS)
    with pytest.raises(CampaignStopError) as exc:
        provider.parse_response(batch_of(["a"]), httpx.Response(404, json={"message": "Not Found"}))
    assert exc.value.code == "http_404" and "base URL" in str(exc.value)


def test_auth_balance_rate_limit_and_server_errors() -> None:
    provider = InstasentProvider(SETTINGS)
    batch = batch_of(["a"])
    with pytest.raises(AuthError) as auth:
        provider.parse_response(batch, httpx.Response(401))
    assert "ins-token-1" not in str(auth.value)
    with pytest.raises(AuthError) as broke:
        provider.parse_response(batch, httpx.Response(402))
    assert broke.value.code == "http_402"
    reset = int(time.time()) + 3
    with pytest.raises(RateLimitedError) as limited:
        provider.parse_response(batch, httpx.Response(429, headers={"X-RateLimit-Reset": str(reset)}))
    assert limited.value.retry_after is not None and 1.5 < limited.value.retry_after <= 3.0
    with pytest.raises(RateLimitedError) as after:
        provider.parse_response(batch, httpx.Response(429, headers={"Retry-After": "7"}))
    assert after.value.retry_after == 7.0
    with pytest.raises(ServerError):
        provider.parse_response(batch, httpx.Response(500))
    with pytest.raises(AmbiguousError):
        provider.parse_response(batch, created([{"id": "x"}]))  # a wrapper-less 201 we cannot read


# ---- pre-send rules ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sender", "ok"),
    [
        ("Instasent", True),
        ("ABC", True),
        ("ABCDEFGHIJK", True),  # 11 alphanumeric
        ("ABCDEFGHIJKL", False),  # 12
        ("12345678901234", True),  # 14 digits
        ("123456789012345", False),  # 15
        ("AB", False),
        ("My Shop", False),
        ("+34600000000", False),
    ],
)
def test_check_spec_sender(sender: str, ok: bool) -> None:
    provider = InstasentProvider(SETTINGS)
    if ok:
        provider.check_spec(spec_(sender=sender))
    else:
        with pytest.raises(ConfigError):
            provider.check_spec(spec_(sender=sender))


def test_check_spec_needs_a_sender_and_no_template() -> None:
    provider = InstasentProvider(SETTINGS)
    with pytest.raises(ConfigError):
        provider.check_spec(spec_(sender=None))
    with pytest.raises(ConfigError):
        provider.check_spec(spec_(body=None, template="t1"))


# ---- through the send engine ----------------------------------------------------------------------------


def run(
    rows: pl.DataFrame, spec: CampaignSpec, handler: Callable[[httpx.Request], httpx.Response]
) -> pl.DataFrame:
    ratelimit._BUCKETS.clear()
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    out, _ = asyncio.run(send_rows(InstasentProvider(SETTINGS), rows, spec, policy=FAST, client=client))
    return out.sort("row_index")


def test_batches_of_at_most_100_and_a_timeout_resent_with_the_same_client_ids() -> None:
    spec = spec_()
    batch = batch_of([f"m{i}" for i in range(150)], spec)
    seen: list[list[str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        items = items_of(request)
        seen.append([i["clientId"] for i in items])
        if len(seen) == 1:
            raise httpx.ReadTimeout("slow", request=request)  # may have been queued
        return httpx.Response(
            201,
            json={
                "entities": [{"id": f"id-{i['clientId']}", "clientId": i["clientId"]} for i in items],
                "errors": [],
            },
        )

    out = run(batch.rows, spec, handler)
    assert out["status"].to_list() == ["accepted"] * 150
    assert max(len(s) for s in seen) <= 100 and len(seen) == 3
    retried = [s for s in seen[1:] if s == seen[0]]
    assert retried, "the timed-out request was re-sent with the same clientIds"
