"""The robase emulator over real loopback HTTP (one sandbox subprocess for the module, reset per test), and
the adapter against it."""

from __future__ import annotations

import json
from typing import Any

import httpx
import polars as pl
import pytest
from support import sandbox_clock

from smscast.campaign import CampaignSpec
from smscast.providers.base import Batch
from smscast.providers.robase import RobaseProvider
from smscast.sandbox.client import SandboxClient
from smscast.servers.sandbox import SandboxServer
from smscast.settings import ProviderSettings, Secret
from smscast.status import Status

pytestmark = pytest.mark.integration

KEY = "rb_live_emulator"
EMULATOR, API_KEY = "robase", KEY  # the fixtures: tests/providers/conftest.py
PATH = "/v1/sms/batch"


def rows(n: int, start: int = 0, key: str | None = "k", body: str = "Hi") -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i in range(start, start + n):
        m: dict[str, Any] = {"to": f"+23480123{i:05d}", "body": f"{body} {i}"}
        if key is not None:
            m["idempotency_key"] = f"{key}-{i}"
        out.append(m)
    return out


def post(http: httpx.Client, messages: list[Any], token: str | None = KEY, **extra: Any) -> httpx.Response:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    return http.post(PATH, json={"from": "SHUTTLERS", "messages": messages, **extra}, headers=headers)


def refused(r: httpx.Response, status: int, kind: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()
    assert body["success"] is False and body["error"]["type"] == kind and body["error"]["message"]
    return body


def test_exactly_1000_rows_then_one_more(admin: SandboxClient, http: httpx.Client) -> None:
    r = post(http, rows(1000))
    assert r.status_code == 200
    body = r.json()
    assert (body["accepted"], body["failed"], body["success"]) == (1000, 0, True)
    assert [d["index"] for d in body["data"]] == list(range(1000))
    assert all(d["sms"]["status"] == "queued" for d in body["data"])

    over = refused(post(http, rows(1001, start=5000)), 422, "batch_too_large")
    assert over["error"]["field"] == "messages"
    assert len(admin.ledger(provider="robase")) == 1000


def test_body_at_the_limit_and_one_over(admin: SandboxClient, http: httpx.Client) -> None:
    at_limit = {"to": "+2348012300001", "body": "é" * 1600, "idempotency_key": "b-1"}
    over = {"to": "+2348012300002", "body": "é" * 1601, "idempotency_key": "b-2"}
    r = post(http, [at_limit, over])
    assert r.status_code == 200  # "Batch always returns HTTP 200 — even when some rows fail"
    body = r.json()
    assert (body["accepted"], body["failed"], body["success"]) == (1, 1, False)
    assert "sms" in body["data"][0]
    assert body["data"][1] == {
        "index": 1,
        "error": {
            "type": "body_too_long",
            "message": "`body` has 1601 characters; at most 1600",
            "field": "body",
        },
    }
    ledger = admin.ledger(provider="robase")
    assert [(e["to"], e["body"], e["key"]) for e in ledger] == [("+2348012300001", "é" * 1600, "b-1")]


def test_auth_failures(admin: SandboxClient, http: httpx.Client) -> None:
    for token in (None, "rb_live_wrong"):
        refused(post(http, rows(1), token=token), 401, "unauthorized")
    r = http.post(PATH, json={"from": "X", "messages": rows(1)}, headers={"x-api-key": KEY})
    assert r.status_code == 401
    assert admin.ledger(provider="robase") == []


def test_row_keys_make_a_resend_create_nothing(admin: SandboxClient, http: httpx.Client) -> None:
    first = post(http, rows(5)).json()
    again = post(http, rows(7)).json()  # 5 seen before + 2 new
    assert [d["sms"]["id"] for d in again["data"][:5]] == [d["sms"]["id"] for d in first["data"]]
    assert again["accepted"] == 7 and again["failed"] == 0
    ledger = admin.ledger(provider="robase")
    assert len(ledger) == 7 and [e["key"] for e in ledger] == [f"k-{i}" for i in range(7)]
    assert admin.stats()["providers"]["robase"]["duplicates"] == 5
    # The same key for a different message is refused for that row only.
    clash = post(http, [{"to": "+2348012300000", "body": "changed", "idempotency_key": "k-0"}]).json()
    assert clash["data"][0]["error"]["type"] == "idempotency_key_conflict"
    assert len(admin.ledger(provider="robase")) == 7


def test_rate_limit_4_calls_per_second_with_retry_after(
    admin: SandboxClient, http: httpx.Client, server: SandboxServer
) -> None:
    knobs = admin.faults()["providers"]["robase"]
    assert knobs["rate_limit_rps"] == 4 and knobs["rate_limit_burst"] == 4
    sandbox_clock(server.base_url, freeze=True)  # the 5 calls happen in the same instant, however slow
    statuses = [post(http, rows(1, start=i)).status_code for i in range(4)]
    assert statuses == [200] * 4
    limited = refused(post(http, rows(1, start=99)), 429, "rate_limited")
    assert limited["error"]["type"] == "rate_limited"
    r = post(http, rows(1, start=98))
    assert r.status_code == 429 and r.headers["Retry-After"] == "1"
    assert len(admin.ledger(provider="robase")) == 4
    sandbox_clock(server.base_url, advance=0.26)  # one token refilled: one call, then refused again
    assert post(http, rows(1, start=98)).status_code == 200
    refused(post(http, rows(1, start=97)), 429, "rate_limited")
    assert len(admin.ledger(provider="robase")) == 5


def test_per_row_refusals_and_the_adapter_reading_them(admin: SandboxClient, server: SandboxServer) -> None:
    admin.set_faults(provider="robase", reject_suffixes=["3"], transient_suffixes=["5"])
    spec = CampaignSpec(campaign_id="c", provider="robase", source="x", results="r", sender="ACME", body="x")
    frame = pl.DataFrame(
        {
            "row_index": list(range(7)),
            "phone": [f"+23480123{i:05d}" for i in range(6)] + ["+234"],
            "body": ["hello"] * 7,
            "idempotency_key": [f"sc-{i}" for i in range(7)],
        }
    )
    batch = Batch("c", "c-a1-b000000", "scb-1", frame, spec)
    prov = RobaseProvider(ProviderSettings(server.base_url, Secret(KEY)))
    with httpx.Client(timeout=30.0) as client:
        response = client.send(prov.build_request(batch))
    assert response.status_code == 200
    out = prov.parse_response(batch, response)
    assert [o.status for o in out] == [
        Status.ACCEPTED,
        Status.ACCEPTED,
        Status.ACCEPTED,
        Status.REJECTED,
        Status.ACCEPTED,
        Status.FAILED,
        Status.REJECTED,
    ]
    assert [o.error_code for o in out][3:] == ["phone_invalid", None, "carrier_unavailable", "phone_invalid"]
    ledger = admin.ledger(provider="robase")
    assert [e["key"] for e in ledger] == ["sc-0", "sc-1", "sc-2", "sc-4"]
    assert [e["message_id"] for e in ledger] == [
        o.provider_message_id for o in out if o.status is Status.ACCEPTED
    ]
    assert {e["batch_key"] for e in ledger} == {None}


def test_send_at_and_templates(admin: SandboxClient, http: httpx.Client) -> None:
    admin.set_faults(provider="robase", rate_limit_rps=1000, rate_limit_burst=1000)  # many calls here
    refused(post(http, rows(2), send_at="2026-05-01T09:00:00"), 422, "send_at_invalid")  # no zone
    r = post(http, rows(1), send_at="2026-05-01T09:00:00+01:00").json()
    assert r["data"][0]["sms"]["status"] == "scheduled"
    assert r["data"][0]["sms"]["send_at"] == "2026-05-01T08:00:00.000Z"

    messages = [
        {"to": "+2348012300010", "variables": {"name": "Chidi"}, "idempotency_key": "t-1"},
        {"to": "+2348012300011", "template": "missing-vip", "variables": {}, "idempotency_key": "t-2"},
        {"to": "+2348012300012", "variables": ["not", "an", "object"], "idempotency_key": "t-3"},
        {"to": "+2348012300013", "idempotency_key": "t-4", "body": "and a body"},
    ]
    data = post(http, messages, template="ride-reminder").json()["data"]
    assert "sms" in data[0]
    assert [d["error"]["type"] for d in data[1:]] == [
        "template_not_found",
        "variables_invalid",
        "validation_error",
    ]
    entry = admin.ledger(provider="robase")[-1]
    assert json.loads(entry["body"] or "") == {"template": "ride-reminder", "variables": {"name": "Chidi"}}
    refused(post(http, []), 422, "batch_empty")
    refused(
        http.post(PATH, json={"messages": rows(1)}, headers={"Authorization": f"Bearer {KEY}"}),
        422,
        "validation_error",
    )
    refused(http.post(PATH, content=b"{", headers={"Authorization": f"Bearer {KEY}"}), 400, "invalid_json")
