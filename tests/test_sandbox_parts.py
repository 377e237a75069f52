"""The sandbox's parts in process, without a server: the app over ASGI, the ledger, the fault knobs and the
clock."""

from __future__ import annotations

import httpx
import pytest

from smscast.sandbox.app import create_app
from smscast.sandbox.clock import Clock
from smscast.sandbox.faults import Faults, Verdict
from smscast.sandbox.framework import SandboxConfig
from smscast.sandbox.ledger import Ledger

PATH = "/sandbox/v1/messages/batch"
AUTH = {"Authorization": "Bearer sandbox-key"}


def rows(n: int) -> list[dict[str, str]]:
    return [{"to": f"+4474009{i:05d}", "body": f"Hello {i}", "ref": f"ref-{i}"} for i in range(n)]


async def test_api_key_override_in_process() -> None:
    app = create_app(SandboxConfig(api_keys={"sandbox": "s3cret"}, knobs={"reject_suffixes": ["0"]}))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://sandbox") as client:
        refused = await client.post(PATH, json={"messages": rows(1)}, headers=AUTH)
        assert refused.status_code == 401
        ok = await client.post(PATH, json={"messages": rows(2)}, headers={"Authorization": "Bearer s3cret"})
        assert [x["status"] for x in ok.json()["results"]] == ["rejected", "accepted"]
        assert len(app.sandbox.ledger) == 1


def test_ledger_columns_round_trip() -> None:
    ledger = Ledger()
    ledger.register("p", lambda seq: f"p-{seq:04d}")
    index = ledger.index("p", scope="campaign-1")
    add = ledger.adder(ledger.open_batch("p", "b1", "bk", accepted_at=0.0), index)
    positions = [add("+447400900001", "héllo ✓", "k1"), add("6591234567", None, None), add("+012", "x", "k2")]
    assert positions == [0, 1, 2]
    assert ledger.lookup("p", "k1", scope="campaign-1") == 0 and ledger.lookup("p", "k1") is None
    entries = list(ledger.iter_entries())
    assert [(e["to"], e["body"], e["key"], e["message_id"]) for e in entries] == [
        ("+447400900001", "héllo ✓", "k1", "p-0001"),
        ("6591234567", None, None, "p-0002"),
        ("+012", "x", "k2", "p-0003"),
    ]
    assert entries[0]["accepted_at"] == "1970-01-01T00:00:00.000000Z"
    assert list(ledger.batch_positions("p", "b1")) == [0, 1, 2]
    assert ledger.columns()["body"] == ["héllo ✓", None, "x"]
    ledger.reset()
    add = ledger.adder(ledger.open_batch("p", "b2"), ledger.index("p"))
    assert ledger.message_id(add("+447400900001", "again")) == "p-0004"  # ids are never reused


def test_fault_defaults_and_order() -> None:
    faults = Faults({"next_5xx": 1}, {"robase": {"rate_limit_burst": 3}}, clock=lambda: 100.0)
    faults.set_provider_defaults("robase", {"rate_limit_rps": 1, "rate_limit_burst": 1})
    assert faults.effective("robase")["rate_limit_burst"] == 3  # the configuration wins over the defaults
    verdicts = [faults.admit("robase")[0] for _ in range(5)]
    # a 5xx comes after the rate limiter: the first request takes a token, then the global next_5xx fires
    assert verdicts == [
        Verdict.ERROR_5XX,
        Verdict.PASS,
        Verdict.PASS,
        Verdict.RATE_LIMITED,
        Verdict.RATE_LIMITED,
    ]
    faults.reset()
    assert faults.effective("robase")["rate_limit_rps"] == 1.0
    assert faults.effective("other")["rate_limit_rps"] == 0.0


def test_clock_moves_wall_and_monotonic_together_and_never_backwards() -> None:
    real, wall = [1000.0], [5000.0]
    clock = Clock(wall=lambda: wall[0], monotonic=lambda: real[0])
    clock.freeze()
    real[0] += 10
    wall[0] += 10
    assert (clock.monotonic(), clock.time()) == (1000.0, 5000.0)
    clock.advance(2.5)
    assert (clock.monotonic(), clock.time()) == (1002.5, 5002.5)
    assert clock.iso() == "1970-01-01T01:23:22.500Z"
    clock.resume()  # runs on from where it stood: the frozen 10 s are skipped, nothing goes back
    assert (clock.monotonic(), clock.time()) == (1002.5, 5002.5)
    real[0] += 1
    wall[0] += 1
    assert (clock.monotonic(), clock.time()) == (1003.5, 5003.5)
    with pytest.raises(ValueError):
        clock.update({"advance": float("nan")})
