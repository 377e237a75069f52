"""The sent.dm emulator over real loopback HTTP (one sandbox subprocess for the module, reset per test),
and the adapter against it."""

from __future__ import annotations

from typing import Any

import httpx
import polars as pl
import pytest
from support import sandbox_clock

from smscast.campaign import CampaignSpec
from smscast.errors import BatchRejectedError, CampaignStopError
from smscast.providers.base import Batch
from smscast.providers.sent_dm import REJECTED_CODE, SentDmProvider
from smscast.sandbox.client import SandboxClient
from smscast.servers.sandbox import SandboxServer
from smscast.settings import ProviderSettings, Secret
from smscast.status import Status

pytestmark = pytest.mark.integration

KEY = "sdm-emulator-key"
EMULATOR, API_KEY = "sent-dm", KEY  # the fixtures: tests/providers/conftest.py
PATH = "/v3/messages"


def phones(n: int, start: int = 0) -> list[str]:
    return [f"+1415555{i:04d}" for i in range(start, start + n)]


def payload(to: list[Any], template: str = "tmpl_welcome", **params: str) -> dict[str, Any]:
    return {
        "to": to,
        "template": {"id": template, "parameters": params or {"name": "all"}},
        "channel": ["sms"],
    }


def post(http: httpx.Client, body: Any, key: str | None = None, api_key: str | None = KEY) -> httpx.Response:
    headers = {} if api_key is None else {"x-api-key": api_key}
    if key is not None:
        headers["Idempotency-Key"] = key
    return http.post(PATH, json=body, headers=headers)


def assert_envelope(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()
    assert body["success"] is False and body["data"] is None
    assert body["error"]["code"] == code and body["error"]["message"]
    assert set(body["meta"]) == {"request_id", "timestamp", "version"} and body["meta"]["version"] == "v3"
    return body


def test_exactly_1000_recipients_then_one_more(admin: SandboxClient, http: httpx.Client) -> None:
    r = post(http, payload(phones(1000)), key="k-1000")
    assert r.status_code == 200
    data = r.json()["data"]
    assert data["status"] == "QUEUED" and len(data["recipients"]) == 1000
    assert [x["to"] for x in data["recipients"]] == phones(1000)
    assert {x["channel"] for x in data["recipients"]} == {"sms"}
    assert len({x["message_id"] for x in data["recipients"]}) == 1000

    over = post(http, payload(phones(1001, start=2000)), key="k-1001")
    body = assert_envelope(over, 400, "VALIDATION_001")
    assert "to" in body["error"]["details"]
    ledger = admin.ledger(provider="sent-dm")
    assert len(ledger) == 1000 and {e["batch_key"] for e in ledger} == {"k-1000"}
    assert {e["batch"] for e in ledger} == {r.json()["meta"]["request_id"]}
    assert ledger[0]["body"] == '{"template":"tmpl_welcome","parameters":{"name":"all"}}'


def test_auth_failures(admin: SandboxClient, http: httpx.Client) -> None:
    for api_key in (None, "wrong", "Bearer " + KEY):
        assert_envelope(post(http, payload(phones(1)), api_key=api_key), 401, "AUTH_002")
    # The key belongs in x-api-key, not in a bearer token.
    r = http.post(PATH, json=payload(phones(1)), headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 401
    assert admin.ledger(provider="sent-dm") == []


def test_repeated_key_replays_and_creates_nothing(admin: SandboxClient, http: httpx.Client) -> None:
    first = post(http, payload(phones(5)), key="scb-abc")
    again = post(http, payload(phones(5)), key="scb-abc")
    assert first.status_code == again.status_code == 200
    assert again.content == first.content  # the first answer, byte for byte
    assert again.headers.get("idempotent-replayed") == "true"
    assert len(admin.ledger(provider="sent-dm")) == 5
    assert admin.stats()["providers"]["sent-dm"]["duplicates"] == 5

    # Same key, different request: refused, nothing recorded.
    other = post(http, payload(phones(5), name="someone else"), key="scb-abc")
    assert_envelope(other, 422, "IDEMPOTENCY_001")
    assert len(admin.ledger(provider="sent-dm")) == 5
    # A key outside sent.dm's alphabet is a validation error.
    assert_envelope(post(http, payload(phones(1)), key="scb-abc.L"), 400, "VALIDATION_001")


def test_rate_limit_is_200_per_minute_with_retry_after(
    admin: SandboxClient, http: httpx.Client, server: SandboxServer
) -> None:
    knobs = admin.faults()["providers"]["sent-dm"]
    assert knobs["rate_limit_rps"] == pytest.approx(200 / 60) and knobs["rate_limit_burst"] == 200
    # The sandbox's clock stands still: 200 requests take no time, however slow the machine is.
    sandbox_clock(server.base_url, freeze=True)
    statuses = [post(http, payload(phones(1, start=i))).status_code for i in range(200)]
    assert statuses == [200] * 200
    limited = post(http, payload(phones(1, start=500)))
    assert_envelope(limited, 429, "RATE_LIMIT_001")
    assert limited.headers["retry-after"] == "1"  # one token every 0.3 s, in whole seconds rounded up
    # Just short of a refill: still refused; once 0.3 s have passed, exactly one more gets through.
    sandbox_clock(server.base_url, advance=0.29)
    assert post(http, payload(phones(1, start=501))).status_code == 429
    sandbox_clock(server.base_url, advance=0.02)
    assert post(http, payload(phones(1, start=502))).status_code == 200
    assert_envelope(post(http, payload(phones(1, start=503))), 429, "RATE_LIMIT_001")
    assert len(admin.ledger(provider="sent-dm")) == 201


def test_refused_recipients_are_left_out_and_the_adapter_rejects_them(
    admin: SandboxClient, server: SandboxServer
) -> None:
    admin.set_faults(provider="sent-dm", reject_suffixes=["3"])
    spec = CampaignSpec(
        campaign_id="c1",
        provider="sent-dm",
        source="x",
        results="r",
        template="tmpl_welcome",
        template_vars=("name",),
    )
    rows = pl.DataFrame(
        {
            "row_index": list(range(6)),
            "phone": phones(6),
            "name": ["all"] * 6,
            "idempotency_key": [f"sc-{i}" for i in range(6)],
        }
    )
    batch = Batch("c1", "c1-a1-b000000", "scb-0001", rows, spec)
    prov = SentDmProvider(ProviderSettings(server.base_url, Secret(KEY)))
    with httpx.Client(timeout=30.0) as client:
        out = prov.parse_response(batch, client.send(prov.build_request(batch)))
    assert [o.status for o in out] == [Status.ACCEPTED] * 3 + [Status.REJECTED] + [Status.ACCEPTED] * 2
    assert out[3].error_code == REJECTED_CODE
    ledger = admin.ledger(provider="sent-dm")
    assert [e["to"] for e in ledger] == [p for p in phones(6) if not p.endswith("3")]
    assert [e["message_id"] for e in ledger] == [
        o.provider_message_id for o in out if o.status is Status.ACCEPTED
    ]
    assert {e["batch_key"] for e in ledger} == {"scb-0001"}


def test_whole_request_refusals(admin: SandboxClient, http: httpx.Client, server: SandboxServer) -> None:
    bad = post(http, payload(["+14155550000", "0044 7700", "+14155550002"]))
    body = assert_envelope(bad, 400, "VALIDATION_001")
    assert list(body["error"]["details"]) == ["to[1]"]
    prov = SentDmProvider(ProviderSettings(server.base_url, Secret(KEY)))
    with pytest.raises(BatchRejectedError) as exc:
        prov.parse_response(_dummy_batch(), bad)
    assert exc.value.retryable_split  # a bad recipient: bisection isolates it

    missing = post(http, payload(phones(2), template="missing_tmpl"))
    assert_envelope(missing, 404, "RESOURCE_001")
    # An unknown template: every batch of the campaign would meet it, so the campaign stops (rows `failed`).
    with pytest.raises(CampaignStopError) as stop:
        prov.parse_response(_dummy_batch(), missing)
    assert stop.value.code == "RESOURCE_001"

    assert_envelope(post(http, {"to": phones(1)}), 400, "VALIDATION_001")  # no template
    assert_envelope(post(http, {**payload(phones(1)), "channel": ["fax"]}), 400, "VALIDATION_001")
    assert_envelope(http.post(PATH, content=b"{nope", headers={"x-api-key": KEY}), 400, "VALIDATION_001")
    assert_envelope(post(http, payload([])), 400, "VALIDATION_001")
    assert admin.ledger(provider="sent-dm") == []


def test_transient_suffix_fails_the_whole_request_upstream(admin: SandboxClient, http: httpx.Client) -> None:
    admin.set_faults(provider="sent-dm", transient_suffixes=["9"])
    assert_envelope(post(http, payload(phones(10))), 502, "UPSTREAM_001")
    assert admin.ledger(provider="sent-dm") == []
    assert post(http, payload(phones(9))).status_code == 200


def test_fault_knobs_speak_the_envelope(admin: SandboxClient, http: httpx.Client) -> None:
    admin.set_faults(provider="sent-dm", next_5xx=1, next_429=1, retry_after_s=3)
    limited = post(http, payload(phones(1)))
    assert_envelope(limited, 429, "RATE_LIMIT_001")
    assert limited.headers["retry-after"] == "3"
    assert_envelope(post(http, payload(phones(1))), 503, "SERVICE_001")
    assert post(http, payload(phones(1))).status_code == 200


def _dummy_batch() -> Batch:
    spec = CampaignSpec(campaign_id="c1", provider="sent-dm", source="x", results="r", template="t")
    rows = pl.DataFrame({"row_index": [0], "phone": phones(1), "idempotency_key": ["sc-0"]})
    return Batch("c1", "b", "scb-1", rows, spec)
