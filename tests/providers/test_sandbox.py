"""smscast's own sandbox adapter, and the base rules for refusals and states it shares with every provider:
response parsing with hand-made answers (no network)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import httpx
import polars as pl
import pytest

from smscast.campaign import CampaignSpec
from smscast.errors import AmbiguousError, BatchRejectedError, CampaignStopError, TransientError
from smscast.providers.base import Batch, Provider
from smscast.providers.sandbox import SandboxProvider
from smscast.settings import ProviderSettings, Secret
from smscast.status import Status

KEY = "sandbox-secret-key"


def provider() -> SandboxProvider:
    return SandboxProvider(ProviderSettings(base_url="http://sandbox.test", api_key=Secret(KEY)))


def batch(n: int) -> Batch:
    rows = pl.DataFrame(
        {
            "row_index": list(range(n)),
            "phone": [f"+4474009000{i:02d}" for i in range(n)],
            "body": ["hi"] * n,
            "idempotency_key": [f"sc-{i}" for i in range(n)],
        }
    )
    spec = CampaignSpec(campaign_id="c", provider="sandbox", source="s", results="r", sender="ACME")
    return Batch("c", "c-b0", "scb-0", rows, spec)


def results(*items: dict[str, Any]) -> httpx.Response:
    return httpx.Response(200, json={"batch": "bat_1", "results": list(items)})


def test_every_refusal_is_rejected_or_failed_and_only_an_unknown_state_is_unknown() -> None:
    out = provider().parse_response(
        batch(6),
        results(
            {"index": 0, "status": "accepted", "message_id": "sbx_0"},
            {"index": 1, "status": "rejected", "code": "phone_blocked", "message": f"blocked; key {KEY}"},
            {"index": 2, "status": "rejected", "code": "body_missing", "message": "`body` is required"},
            {"index": 3, "status": "rejected", "code": "carrier_unavailable", "message": "later"},
            {"index": 4, "status": "rejected"},  # a refusal without a code is still a refusal
            {"index": 5, "status": "pondering", "message_id": "sbx_5"},  # a state we do not know
        ),
    )
    assert [(o.status, o.error_code) for o in out] == [
        (Status.ACCEPTED, None),
        (Status.REJECTED, "phone_blocked"),
        (Status.REJECTED, "body_missing"),
        (Status.FAILED, "carrier_unavailable"),
        (Status.REJECTED, "rejected"),
        (Status.UNKNOWN, "pondering"),
    ]
    assert out[1].error_message == "blocked; key ********"  # server text is redacted
    assert out[1].provider_batch_ref == "bat_1" and out[5].provider_message_id == "sbx_5"


def test_a_row_absent_from_the_answer_is_unknown() -> None:
    out = provider().parse_response(batch(2), results({"index": 0, "status": "accepted", "message_id": "m"}))
    assert [o.status for o in out] == [Status.ACCEPTED, Status.UNKNOWN]
    assert out[1].error_code == "missing_in_response"


@pytest.mark.parametrize(
    ("status", "body", "error", "code"),
    [
        (400, {"error": {"code": "batch_too_large", "message": "1001 messages"}}, BatchRejectedError, None),
        (404, "not found", CampaignStopError, "http_404"),  # nothing there: a wrong base URL
        (408, "", TransientError, "http_408"),
        (409, {"error": {"code": "conflict"}}, AmbiguousError, "conflict"),  # per-row refs: resend-safe
    ],
)
def test_whole_request_answers(status: int, body: object, error: type[Exception], code: str | None) -> None:
    response = (
        httpx.Response(status, json=body)
        if isinstance(body, dict)
        else httpx.Response(status, text=str(body))
    )
    with pytest.raises(error) as raised:
        provider().parse_response(batch(2), response)
    assert raised.value.code == (code or "batch_too_large")  # type: ignore[attr-defined]
    if isinstance(raised.value, BatchRejectedError):
        assert not raised.value.retryable_split
    assert not isinstance(raised.value, AmbiguousError) or status == 409


def test_a_refusal_table_cannot_say_unknown_or_accepted() -> None:
    with pytest.raises(TypeError, match="REFUSALS"):

        class Careless(Provider):
            REFUSALS: ClassVar[Mapping[str, Status]] = {"mystery": Status.UNKNOWN}

    assert Provider.refusal_status("anything") is Status.REJECTED
    assert Provider.refusal_status(None) is Status.REJECTED
    assert Provider.state_status("anything") is Status.UNKNOWN
