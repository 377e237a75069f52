"""The Instasent emulator over real loopback HTTP (one `python -m smscast.sandbox` for the module)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from support import sandbox_clock

from smscast.sandbox.client import SandboxClient
from smscast.servers.sandbox import SandboxServer

pytestmark = pytest.mark.integration

KEY = "ins-emulator-key"
EMULATOR, API_KEY = "instasent", KEY  # the fixtures: tests/providers/conftest.py
AUTH = {"Authorization": f"Bearer {KEY}"}
PATH = "/transactional/v1/sms/bulk"


def items(n: int, start: int = 0, **over: Any) -> list[dict[str, Any]]:
    out = [
        {
            "from": "Instasent",
            "to": f"+3460000{start + i:04d}",
            "text": f"Hello {start + i}",
            "clientId": f"cid-{start + i}",
        }
        for i in range(n)
    ]
    for item in out:
        item.update(over)
    return out


def post(http: httpx.Client, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    return http.post(PATH, json=body, headers=AUTH if headers is None else headers)


def test_happy_path_and_ledger(admin: SandboxClient, http: httpx.Client) -> None:
    r = post(http, items(3))
    assert r.status_code == 201
    body = r.json()
    assert body["errors"] == []
    assert [(e["clientId"], e["to"], e["from"], e["text"]) for e in body["entities"]] == [
        (f"cid-{i}", f"+3460000{i:04d}", "Instasent", f"Hello {i}") for i in range(3)
    ]
    ledger = admin.ledger(provider="instasent")
    assert [(e["to"], e["key"], e["message_id"]) for e in ledger] == [
        (e["to"], e["clientId"], e["id"]) for e in body["entities"]
    ]
    assert {e["batch"] for e in ledger} == {ledger[0]["batch"]} and ledger[0]["batch"].startswith("bulk_")


def test_exactly_100_items_and_one_more(admin: SandboxClient, http: httpx.Client) -> None:
    assert post(http, items(100)).status_code == 201
    r = post(http, items(101, start=100))
    assert r.status_code == 413 and "100" in r.json()["message"]
    assert post(http, []).status_code == 422
    assert len(admin.ledger(provider="instasent")) == 100


def test_a_wrapper_object_or_bad_json_is_refused(admin: SandboxClient, http: httpx.Client) -> None:
    r = post(http, {"messages": items(2)})  # pitfall #1
    assert r.status_code == 400 and r.json() == {"message": "Body should be a JSON array"}
    r = http.post(PATH, content=b"[{", headers={**AUTH, "content-type": "application/json"})
    assert r.status_code == 400 and r.json() == {"message": "Problems parsing JSON"}
    assert admin.ledger(provider="instasent") == []


@pytest.mark.parametrize(
    ("field", "at_limit", "over"),
    [
        ("from", "ABCDEFGHIJK", "ABCDEFGHIJKL"),  # up to 11 alphanumeric
        ("from", "12345678901234", "123456789012345"),  # up to 14 digits
        ("from", "ABC", "AB"),  # at least 3
        ("clientId", "c" * 40, "c" * 41),  # ≤ 40 chars
    ],
)
def test_field_limits(admin: SandboxClient, http: httpx.Client, field: str, at_limit: str, over: str) -> None:
    ok, bad = items(1, start=0), items(1, start=1)
    ok[0][field], bad[0][field] = at_limit, over
    r = post(http, ok + bad)
    assert r.status_code == 201
    body = r.json()
    assert [e["to"] for e in body["entities"]] == ["+34600000000"]
    assert list(body["errors"][0]["fields"]) == [field]


def test_allow_unicode_is_required_for_non_gsm_text(admin: SandboxClient, http: httpx.Client) -> None:
    msgs = items(4)
    msgs[0]["text"] = "Olá 🎉"
    msgs[1]["text"], msgs[1]["allowUnicode"] = "Olá 🎉", True
    msgs[2]["text"] = "5€ [ok] {fine}"  # GSM-7 extension table: no Unicode needed
    msgs[3]["text"] = "Привет"
    r = post(http, msgs)
    body = r.json()
    assert [e["clientId"] for e in body["entities"]] == ["cid-1", "cid-2"]
    assert [list(e["fields"]) for e in body["errors"]] == [["text"], ["text"]]
    assert "allowUnicode" in body["errors"][0]["fields"]["text"][0]


def test_errors_have_no_index_and_follow_input_order(admin: SandboxClient, http: httpx.Client) -> None:
    msgs = items(6)
    msgs[1]["to"] = "0034600000001"
    msgs[3]["text"] = "   "
    msgs[4]["from"] = ""
    msgs[4]["to"] = "+1"
    r = post(http, msgs)
    assert r.status_code == 201  # "A 201 means the batch was processed — not that every item was accepted"
    body = r.json()
    assert [e["clientId"] for e in body["entities"]] == ["cid-0", "cid-2", "cid-5"]
    assert body["errors"] == [
        {"fields": {"to": ["This value is not valid."]}},
        {"fields": {"text": ["This value should not be blank."]}},
        {"fields": {"from": ["This value should not be blank."], "to": ["This value is not valid."]}},
    ]
    assert len(admin.ledger(provider="instasent")) == 3


def test_reject_suffix_knob(admin: SandboxClient, http: httpx.Client) -> None:
    admin.set_faults(provider="instasent", reject_suffixes=["0002"])
    body = post(http, items(4)).json()
    assert [e["clientId"] for e in body["entities"]] == ["cid-0", "cid-1", "cid-3"]
    assert body["errors"] == [{"fields": {"to": ["This number cannot receive SMS."]}}]


def test_a_repeated_client_id_creates_no_second_message(admin: SandboxClient, http: httpx.Client) -> None:
    first = post(http, items(3)).json()["entities"]
    again = post(http, items(3) + items(1, start=3)).json()["entities"]
    assert [e["id"] for e in again[:3]] == [e["id"] for e in first]  # the first messages, echoed back
    ledger = admin.ledger(provider="instasent")
    assert len(ledger) == 4 and [e["key"] for e in ledger] == ["cid-0", "cid-1", "cid-2", "cid-3"]
    assert admin.stats()["providers"]["instasent"]["duplicates"] == 3


def test_auth_failure(admin: SandboxClient, http: httpx.Client) -> None:
    r = post(http, items(1), headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401
    assert post(http, items(1), headers={}).status_code == 401
    assert admin.ledger(provider="instasent") == []


def test_429_past_the_default_rate_with_x_ratelimit_reset(
    admin: SandboxClient, server: SandboxServer
) -> None:
    async def burst(n: int) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=30.0) as client:
            return list(
                await asyncio.gather(
                    *(client.post(PATH, json=items(1, start=i), headers=AUTH) for i in range(n))
                )
            )

    # A bucket of 5 refilling at 5 per second; the sandbox's clock stands still, so no token comes back
    # while the 9 requests are being served, however long that takes.
    now = sandbox_clock(server.base_url, freeze=True)["time"]
    answers = asyncio.run(burst(9))
    ok = [r for r in answers if r.status_code == 201]
    limited = [r for r in answers if r.status_code == 429]
    assert len(ok) == 5 and len(limited) == 4
    r = limited[0]
    assert r.content == b"" and "retry-after" not in r.headers  # Instasent: empty body, no Retry-After
    assert r.headers["x-ratelimit-remaining"] == "0"
    # Epoch seconds of the next token (0.2 s away), in whole seconds rounded up.
    assert 0 < int(r.headers["x-ratelimit-reset"]) - now <= 2
    assert len(admin.ledger(provider="instasent")) == 5
    sandbox_clock(server.base_url, advance=0.21)  # one token back: one of the next two gets through
    assert sorted(a.status_code for a in asyncio.run(burst(2))) == [201, 429]
