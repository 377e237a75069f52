"""The sandbox over real loopback HTTP: one `python -m smscast.sandbox` subprocess for the module, reset before each
test."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pyarrow.parquet as pq
import pytest
from support import sandbox_clock

from smscast.sandbox.client import SandboxAdminError, SandboxClient
from smscast.servers.sandbox import SandboxServer

pytestmark = pytest.mark.integration

PATH = "/sandbox/v1/messages/batch"
AUTH = {"Authorization": "Bearer sandbox-key"}


@pytest.fixture(scope="module")
def server() -> Iterator[SandboxServer]:
    with SandboxServer() as sbx:
        yield sbx


@pytest.fixture
def admin(server: SandboxServer) -> SandboxClient:
    server.client.reset()
    return server.client


@pytest.fixture
def http(server: SandboxServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=10.0) as client:
        yield client


def rows(n: int, start: int = 0, ref: str = "ref") -> list[dict[str, Any]]:
    return [
        {"to": f"+4474009{i:05d}", "body": f"Hello {i}", "ref": f"{ref}-{i}"} for i in range(start, start + n)
    ]


def send(
    http: httpx.Client, messages: list[dict[str, Any]], key: str | None = "batch-1", **kw: Any
) -> httpx.Response:
    headers = dict(AUTH)
    if key is not None:
        headers["Idempotency-Key"] = key
    return http.post(PATH, json={"sender": "ACME", "messages": messages}, headers=headers, **kw)


def test_happy_path_and_ledger(admin: SandboxClient, http: httpx.Client) -> None:
    messages = rows(3)
    r = send(http, messages, key="camp-1:b-0")
    assert r.status_code == 200
    payload = r.json()
    assert payload["batch"].startswith("bat_")
    results = payload["results"]
    assert [x["index"] for x in results] == [0, 1, 2]
    assert all(x["status"] == "accepted" and "duplicate" not in x for x in results)
    ids = [x["message_id"] for x in results]
    assert len(set(ids)) == 3 and all(i.startswith("sbx_") for i in ids)

    ledger = admin.ledger()
    assert [(e["to"], e["body"], e["key"], e["message_id"]) for e in ledger] == [
        (m["to"], m["body"], m["ref"], i) for m, i in zip(messages, ids, strict=True)
    ]
    assert {e["provider"] for e in ledger} == {"generic"}
    assert {e["batch"] for e in ledger} == {payload["batch"]}
    assert {e["batch_key"] for e in ledger} == {"camp-1:b-0"}
    assert all(e["accepted_at"].endswith("Z") for e in ledger)
    assert admin.ledger(provider="sandbox") == ledger  # smscast's name for the generic API
    assert admin.ledger(batch=payload["batch"]) == ledger
    assert admin.ledger(offset=1, limit=1) == ledger[1:2]

    stats = admin.stats()["providers"]["generic"]
    assert stats["requests"] == {"200": 1}
    assert (stats["accepted"], stats["duplicates"], stats["rejected"]) == (3, 0, 0)
    assert admin.health()["entries"] == 3

    # the same API under the provider's prefix, and the ledger as a JSON array and as Parquet
    r2 = http.post(f"/generic{PATH}", json={"messages": rows(1, 10)}, headers=AUTH)
    assert r2.status_code == 200 and r2.json()["results"][0]["status"] == "accepted"
    as_json = http.get("/_sandbox/ledger").json()
    assert [e["to"] for e in as_json] == [m["to"] for m in messages] + ["+447400900010"]
    table = pq.read_table(io.BytesIO(admin.ledger_parquet()))
    assert table.num_rows == 4
    assert table.column("message_id").to_pylist() == [e["message_id"] for e in as_json]


def test_per_row_validation_and_suffix_rejections(admin: SandboxClient, http: httpx.Client) -> None:
    admin.set_faults(reject_suffixes=["13"], transient_suffixes="99,098")
    messages: list[Any] = [
        {"to": "+447400900001", "body": "ok", "ref": "a"},
        {"to": "+447400900013", "body": "refused for good", "ref": "b"},
        {"to": "+447400900099", "body": "carrier down", "ref": "c"},
        {"to": "07400900002", "body": "not E.164", "ref": "d"},
        {"to": "+447400900003", "body": "x" * 1601, "ref": "e"},
        {"to": "+447400900004", "ref": "f"},
        {"to": "+447400900005", "body": "ok too"},
        "not an object",
    ]
    r = send(http, messages)
    assert r.status_code == 200
    got = [(x["status"], x.get("code")) for x in r.json()["results"]]
    assert got == [
        ("accepted", None),
        ("rejected", "invalid_number"),
        ("rejected", "carrier_unavailable"),
        ("rejected", "invalid_number"),
        ("rejected", "body_too_long"),
        ("rejected", "body_missing"),
        ("accepted", None),
        ("rejected", "invalid_message"),
    ]
    assert all(x["message"] for x in r.json()["results"] if x["status"] == "rejected")
    assert [(e["to"], e["key"]) for e in admin.ledger()] == [("+447400900001", "a"), ("+447400900005", None)]
    stats = admin.stats()["providers"]["generic"]
    assert stats["rejected"] == 6
    assert stats["rejected_codes"] == {
        "invalid_number": 2,
        "carrier_unavailable": 1,
        "body_too_long": 1,
        "body_missing": 1,
        "invalid_message": 1,
    }

    # a transient refusal records nothing: once the carrier is back, the same ref goes through
    admin.set_faults(transient_suffixes=[])
    r2 = send(http, [messages[2]])
    assert r2.json()["results"][0]["status"] == "accepted"
    assert len(admin.ledger()) == 3


def test_resend_is_idempotent(admin: SandboxClient, http: httpx.Client) -> None:
    first = send(http, rows(4), key="k1").json()
    ids = [x["message_id"] for x in first["results"]]

    again = send(http, rows(4), key="k1").json()
    assert [x["message_id"] for x in again["results"]] == ids
    assert all(x["duplicate"] is True and x["status"] == "accepted" for x in again["results"])

    # overlap: two known refs, one new, and the new one repeated inside the request
    mixed = send(http, [*rows(2, 2), *rows(1, 4), *rows(1, 4)], key="k2").json()["results"]
    assert [x["message_id"] for x in mixed[:2]] == ids[2:]
    assert [x.get("duplicate", False) for x in mixed] == [True, True, False, True]
    assert mixed[3]["message_id"] == mixed[2]["message_id"] not in ids

    ledger = admin.ledger()
    assert len(ledger) == 5
    assert len({e["key"] for e in ledger}) == 5
    assert [e["batch_key"] for e in ledger] == ["k1"] * 4 + ["k2"]
    assert admin.stats()["providers"]["generic"]["duplicates"] == 7


def test_auth_failures(admin: SandboxClient, http: httpx.Client) -> None:
    body = {"messages": rows(1)}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "sandbox-key"}):
        r = http.post(PATH, json=body, headers=headers)
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "unauthorized"
    assert admin.ledger() == []
    assert admin.stats()["providers"]["generic"]["requests"] == {"401": 3}


def test_whole_request_400s(admin: SandboxClient, http: httpx.Client) -> None:
    cases = [
        (b"{not json", "invalid_json"),
        (orjson.dumps({"messages": []}), "empty_batch"),
        (orjson.dumps({"messages": rows(1001)}), "batch_too_large"),
        (orjson.dumps({"messages": {"to": "+447400900001"}}), "invalid_request"),
        (orjson.dumps([1, 2]), "invalid_request"),
        (orjson.dumps({"sender": "MUCH TOO LONG SENDER", "messages": rows(1)}), "invalid_sender"),
    ]
    for content, code in cases:
        r = http.post(PATH, content=content, headers={**AUTH, "Content-Type": "application/json"})
        assert r.status_code == 400, code
        assert r.json()["error"]["code"] == code
        assert r.json()["error"]["message"]
    assert admin.ledger() == []
    assert admin.stats()["providers"]["generic"]["requests"] == {"400": len(cases)}
    assert send(http, rows(1000)).status_code == 200  # the limit itself is fine


def test_rate_limit_answers_429_with_retry_after(
    admin: SandboxClient, http: httpx.Client, server: SandboxServer
) -> None:
    sandbox_clock(server.base_url, freeze=True)  # no refill but the one this test makes
    admin.set_faults(rate_limit_rps=0.25, rate_limit_burst=2)
    statuses = [send(http, rows(1, i)).status_code for i in range(2)]
    limited = send(http, rows(1, 2))
    assert statuses == [200, 200]
    assert limited.status_code == 429
    assert limited.headers["Retry-After"] == "4"  # 1 token at 0.25/s, whole seconds rounded up
    assert limited.json()["error"]["code"] == "rate_limited"
    assert [e["key"] for e in admin.ledger()] == ["ref-0", "ref-1"]

    admin.set_faults(rate_limit_rps=4, rate_limit_burst=1)
    assert send(http, rows(1, 3)).status_code == 200
    fast = send(http, rows(1, 4))
    assert fast.status_code == 429 and fast.headers["Retry-After"] == "1"
    sandbox_clock(server.base_url, advance=0.2)  # 0.8 of a token
    assert send(http, rows(1, 4)).status_code == 429
    sandbox_clock(server.base_url, advance=0.06)
    assert send(http, rows(1, 4)).status_code == 200
    assert send(http, rows(1, 5)).status_code == 429


def test_clock_can_be_frozen_and_advanced_and_reset_restarts_it(
    admin: SandboxClient, http: httpx.Client, server: SandboxServer
) -> None:
    frozen = sandbox_clock(server.base_url, freeze=True)
    assert frozen["frozen"] is True
    send(http, rows(1, 0), key="b0")
    later = sandbox_clock(server.base_url, advance=90.5)
    assert later["time"] == pytest.approx(frozen["time"] + 90.5)
    assert later["monotonic"] == pytest.approx(frozen["monotonic"] + 90.5)
    send(http, rows(1, 1), key="b1")
    table = pq.read_table(io.BytesIO(admin.ledger_parquet()))
    stamps = [t.timestamp() for t in table.column("accepted_at").to_pylist()]
    assert stamps == [pytest.approx(frozen["time"], abs=1e-5), pytest.approx(frozen["time"] + 90.5, abs=1e-5)]
    for bad in ({"advance": -1}, {"advance": "soon"}, {"freeze": "yes"}, {"rewind": 1}, [1]):
        r = http.post("/_sandbox/clock", json=bad)
        assert r.status_code == 400 and r.json()["error"]["code"] in ("invalid_clock", "invalid_request")
    assert http.get("/_sandbox/clock").json()["frozen"] is True  # a refused update changes nothing
    admin.reset()
    running = http.get("/_sandbox/clock").json()
    assert running["frozen"] is False and running["monotonic"] >= later["monotonic"]  # never goes back


def test_latency_knob(admin: SandboxClient, http: httpx.Client) -> None:
    admin.set_faults(latency_ms=150, latency_jitter_ms=50)
    started = time.monotonic()
    assert send(http, rows(1)).status_code == 200
    # The real wait is the point here; the upper bound only tells milliseconds from seconds, with room for a
    # loaded machine.
    assert 0.15 <= time.monotonic() - started < 30


def test_next_429_knob(admin: SandboxClient, http: httpx.Client) -> None:
    admin.set_faults(next_429=2, retry_after_s=7)
    first, second, third = (send(http, rows(1, i)) for i in range(3))
    assert (first.status_code, second.status_code, third.status_code) == (429, 429, 200)
    assert first.headers["Retry-After"] == "7"
    assert [e["key"] for e in admin.ledger()] == ["ref-2"]
    assert admin.faults()["global"]["next_429"] == 0


def test_next_5xx_processes_nothing(admin: SandboxClient, http: httpx.Client) -> None:
    admin.set_faults(next_5xx=1)
    r = send(http, rows(2))
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "service_unavailable"
    assert admin.ledger() == []
    ok = send(http, rows(2))
    assert ok.status_code == 200
    assert len(admin.ledger()) == 2
    assert admin.stats()["providers"]["generic"]["requests"] == {"503": 1, "200": 1}


def test_next_timeout_is_ambiguous(admin: SandboxClient, http: httpx.Client) -> None:
    # The response is held for 5 minutes; the client gives up after 2 s. Both bounds below are far from
    # either figure, so they hold on a loaded machine and still fail if the hold were not cut short.
    admin.set_faults(next_timeout=1, timeout_delay_s=300)
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        send(http, rows(3), timeout=httpx.Timeout(30.0, read=2.0))
    assert time.monotonic() - started < 120
    # the server stops holding the response as soon as the client hangs up
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        stats = admin.stats()
        if stats["providers"]["generic"]["requests"] == {"timeout": 1} and not stats["held_responses"]:
            break
        time.sleep(0.02)
    assert admin.stats()["held_responses"] == 0
    # the client saw nothing, yet the messages were accepted
    ledger = admin.ledger()
    assert [e["key"] for e in ledger] == ["ref-0", "ref-1", "ref-2"]
    assert admin.stats()["providers"]["generic"]["requests"] == {"timeout": 1}
    # re-sending with the same refs is how the client resolves it: same ids, nothing new
    again = send(http, rows(3)).json()["results"]
    assert [x["message_id"] for x in again] == [e["message_id"] for e in ledger]
    assert all(x["duplicate"] for x in again)
    assert len(admin.ledger()) == 3


def test_drop_before_processing(admin: SandboxClient, http: httpx.Client) -> None:
    admin.set_faults(next_drop_before=1)
    with pytest.raises(httpx.RemoteProtocolError):
        send(http, rows(2))
    assert admin.ledger() == []
    assert admin.stats()["providers"]["generic"]["requests"] == {"drop_before": 1}
    assert send(http, rows(2)).status_code == 200


def test_drop_after_processing(admin: SandboxClient, http: httpx.Client) -> None:
    admin.set_faults(next_drop=1)  # alias of next_drop_after
    with pytest.raises(httpx.RemoteProtocolError):
        send(http, rows(2))
    ledger = admin.ledger()
    assert [e["key"] for e in ledger] == ["ref-0", "ref-1"]
    assert admin.stats()["providers"]["generic"]["requests"] == {"drop_after": 1}
    again = send(http, rows(2)).json()["results"]
    assert [x["message_id"] for x in again] == [e["message_id"] for e in ledger]
    assert all(x["duplicate"] for x in again)


def test_provider_scoped_knobs_and_validation(admin: SandboxClient, http: httpx.Client) -> None:
    state = admin.set_faults(provider="sandbox", next_5xx=1, latency_ms=1)
    assert state["providers"]["generic"] == {"next_5xx": 1, "latency_ms": 1.0}
    assert send(http, rows(1)).status_code == 503
    assert send(http, rows(1)).status_code == 200
    with pytest.raises(SandboxAdminError, match="unknown knob"):
        admin.set_faults(next_50x=1)
    with pytest.raises(SandboxAdminError, match="probability"):
        admin.set_faults(rate_5xx=2)
    with pytest.raises(SandboxAdminError, match="unknown provider"):
        admin.set_faults(provider="nope", next_5xx=1)
    admin.set_faults(provider="generic", latency_ms=None)
    assert admin.faults()["providers"]["generic"] == {"next_5xx": 0}


def test_random_faults_are_reproducible_with_a_seed(admin: SandboxClient, http: httpx.Client) -> None:
    def run() -> list[int]:
        admin.set_faults(seed=7, rate_5xx=0.3, rate_429=0.2)
        return [send(http, rows(1, i)).status_code for i in range(20)]

    first = run()
    admin.reset()
    assert run() == first
    assert {429, 503, 200} <= set(first)
    assert len(admin.ledger()) == first.count(200)


def test_reset(admin: SandboxClient, http: httpx.Client) -> None:
    before = send(http, rows(2)).json()["results"]
    admin.set_faults(next_5xx=3, reject_suffixes=["1"])
    admin.reset()
    assert admin.ledger() == []
    stats = admin.stats()
    assert stats["entries"] == 0
    assert stats["providers"]["generic"] == {
        "requests": {},
        "accepted": 0,
        "duplicates": 0,
        "rejected": 0,
        "rejected_codes": {},
    }
    assert stats["faults"]["global"]["next_5xx"] == 0
    assert stats["faults"]["global"]["reject_suffixes"] == []
    # the refs are forgotten, but message ids are never reused within the process
    after = send(http, rows(2)).json()["results"]
    assert not any(x.get("duplicate") for x in after)
    assert {x["message_id"] for x in after}.isdisjoint(x["message_id"] for x in before)

    admin.set_faults(next_5xx=1)
    admin.reset(keep_faults=True)
    assert admin.faults()["global"]["next_5xx"] == 1
