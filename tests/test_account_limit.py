"""al.Account-wide rate limits (smscast/account_limit.py, smscast/ratelimit.py `Permits`): the feeder against an
in-memory Prefect limit that answers as the server's rate-limit mode does; under Prefect's test harness, the
choice of limit inside a run, and three processes sending through one robase account of the sandbox at once.

No throughput measured on the wall clock is asserted (a loaded machine only makes sending slower): only what a
slow machine cannot break (what was drawn and handed out, 429s, upper bounds). benchmarks/rate_limit.py
measures the shares of the limit."""

from __future__ import annotations

import asyncio
import contextvars
import json
import math
import os
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from subprocess import PIPE
from typing import Any

import httpx
import pytest
from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from pytest import MonkeyPatch

from smscast import account_limit as al
from smscast.campaign import CampaignSpec
from smscast.errors import ConfigError
from smscast.providers.registry import make_provider
from smscast.runtime import Stop
from smscast.servers.sandbox import SandboxServer

WAIT = 60.0  # bound on anything a test waits for: generous, a loaded machine is slow, never wrong


# ---- an in-memory Prefect limit ----------------------------------------------------------------------------


@dataclass
class _Limit:  # what a read answers (and, with `updated`, what the server stores)
    limit: int
    slot_decay_per_second: float
    active_slots: int
    active: bool
    updated: float = 0.0


class FakeLimits:
    """The three calls the feeder makes, as Prefect's server answers them in rate-limit mode."""

    def __init__(self) -> None:
        self.limits: dict[str, _Limit] = {}
        self.calls: Counter[str] = Counter()
        self.granted = 0  # slots
        self.busy = 0  # the next reads answer 503
        self._lock = threading.Lock()

    def _decayed(self, lim: _Limit) -> int:  # floored, as the server does at each write
        decay = lim.slot_decay_per_second * (time.monotonic() - lim.updated)
        return max(0, lim.active_slots - math.floor(decay))

    def read_global_concurrency_limit_by_name(self, name: str) -> _Limit:
        with self._lock:
            self.calls["read"] += 1
            if self.busy:
                self.busy -= 1
                raise al.ServerBusy("the Prefect API answered 503")
            if name not in self.limits:
                raise ObjectNotFound(http_exc=Exception(name))
            lim = self.limits[name]
            return _Limit(lim.limit, lim.slot_decay_per_second, self._decayed(lim), lim.active)

    def create_global_concurrency_limit(self, concurrency_limit: Any) -> None:
        with self._lock:
            self.calls["create"] += 1
            if concurrency_limit.name in self.limits:
                raise ObjectAlreadyExists(http_exc=Exception(concurrency_limit.name))
            self.add(concurrency_limit.name, concurrency_limit.limit, concurrency_limit.slot_decay_per_second)

    def increment_concurrency_slots(self, names: list[str], slots: int, mode: str) -> httpx.Response:
        assert mode == "rate_limit"
        with self._lock:
            self.calls["increment"] += 1
            if (lim := self.limits.get(names[0])) is None:
                return httpx.Response(200, json=[])
            if lim.active:
                level = self._decayed(lim)
                if level + slots > lim.limit:
                    request = httpx.Request("POST", "http://prefect/api/v2/concurrency_limits/increment")
                    raise httpx.HTTPStatusError("423", request=request, response=httpx.Response(423))
                lim.active_slots, lim.updated = level + slots, time.monotonic()
                self.granted += slots
            return httpx.Response(200, json=[{"name": names[0], "limit": lim.limit}])

    def add(self, name: str, limit: int, decay: float, *, active: bool = True) -> None:
        self.limits[name] = _Limit(limit, decay, 0, active, time.monotonic())

    def client(self) -> Callable[[], AbstractContextManager[al.LimitClient]]:
        return lambda: nullcontext(self)


NAME = "smscast:test:example:00000000 (1 request = 100 slots)"
FAST = al.Shape(200, 5000.0)  # 2 requests at once, 50 a second: quick tests


def feeder(fake: FakeLimits, shape: al.Shape = FAST) -> al.Feeder:
    return al.Feeder(NAME, shape, contextvars.copy_context(), client=fake.client())


def take(feeders: list[al.Feeder], each: int, stop: Stop | None = None, senders: int = 4) -> list[int]:
    """`senders` tasks per feeder (one event loop each, as shards have) take permits until each feeder's
    senders have had `each` between them; how many waits each feeder's senders saw end."""

    def one(f: al.Feeder, got: list[int]) -> None:
        claimed = [0]

        async def sender() -> None:
            while claimed[0] < each:
                claimed[0] += 1  # before waiting: the senders of one feeder share `each`
                await f.permit(stop)
                got[0] += 1

        async def main() -> None:
            await asyncio.wait_for(asyncio.gather(*(sender() for _ in range(senders))), WAIT)

        asyncio.run(main())

    counts = [[0] for _ in feeders]
    threads = [threading.Thread(target=one, args=(f, c)) for f, c in zip(feeders, counts, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT + 5)
    return [c[0] for c in counts]


# ---- naming and shape --------------------------------------------------------------------------------------


def name_of(url: str, key: str) -> str:
    with MonkeyPatch.context() as mp:
        mp.setenv("SMSCAST_ROBASE_API_KEY", key)
        return al.Account.of(make_provider("robase", base_url=url)).limit_name


def test_the_limit_is_named_for_its_account_and_never_shows_the_key() -> None:
    name = name_of("https://api.robase.dev", "rb_live_SECRET")
    assert re.fullmatch(r"smscast:robase:api\.robase\.dev:[0-9a-f]{8} \(1 request = 100 slots\)", name), name
    assert "SECRET" not in name and not set("/%&<>") & set(name)  # Prefect refuses these in a name
    assert name_of("https://api.robase.dev/", "rb_live_SECRET") == name
    key, url, local = "rb_live_OTHER", "https://api.robase.dev/v2", "http://127.0.0.1:8123"
    others = [name_of("https://api.robase.dev", key), name_of(url, "rb_live_SECRET"), name_of(local, "k")]
    assert len({name, *others}) == 4 and ":127.0.0.1:8123:" in others[2]


def test_shape_leaves_half_the_providers_bucket_for_late_requests() -> None:
    # robase: 4 requests/s; the provider's bucket is taken to hold 4 (its burst of 1 is the lesser).
    assert al.shape_for(4.0, 1) == al.Shape(200, 392.0)
    assert al.nominal_rate(392.0) == pytest.approx(4.0)
    assert al.shape_for(200.0, 20) == al.Shape(10_000, 19_600.0)  # the sandbox
    textingline = al.shape_for(5 / 60, 1)  # one at a time
    assert textingline.limit == 100 and textingline.decay == pytest.approx(98 * 5 / 60)
    for rate, burst in [(4.0, 1), (8.0, 1), (10.0, 1), (200 / 60, 20), (200.0, 20)]:
        shape = al.shape_for(rate, burst)
        provider_bucket = max(burst, math.ceil(rate)) * al.SLOTS_PER_REQUEST
        # Requests that reach the provider up to 0.4 s after their permit still find room in its bucket.
        assert shape.limit + shape.decay * 0.4 <= provider_bucket, (rate, burst)
        assert shape.decay < rate * al.SLOTS_PER_REQUEST


def test_the_shared_limit_is_used_only_where_prefect_can_hold_it(monkeypatch: MonkeyPatch) -> None:
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    monkeypatch.delenv(al.MODE_VAR, raising=False)
    assert not al.uses_account_limits(None)  # the engine outside any run: its own bucket
    monkeypatch.setenv(al.MODE_VAR, "prefect")
    assert al.uses_account_limits(None)
    monkeypatch.setenv(al.MODE_VAR, "local")
    assert not al.uses_account_limits(None)
    monkeypatch.setenv(al.MODE_VAR, "shared")
    with pytest.raises(ConfigError, match="auto, prefect or local"):
        al.uses_account_limits(None)


# ---- the feeder ------------------------------------------------------------------------------------------


def test_creates_the_limit_on_first_use_and_hands_out_what_it_draws() -> None:
    fake = FakeLimits()
    fake.busy = 3  # the first reads meet a busy server: only a delay
    f = feeder(fake)
    assert take([f], 30) == [30]
    assert fake.calls["read"] >= 3 + 30
    assert fake.limits[NAME].limit == FAST.limit and fake.limits[NAME].slot_decay_per_second == FAST.decay
    assert fake.calls["create"] == 1
    # Every permit handed out was granted by the limit; beyond them, a block drawn ahead and one in flight.
    assert 30 <= f.drawn <= fake.granted / al.SLOTS_PER_REQUEST <= 30 + 2 * 2


def test_an_existing_limit_is_followed_never_changed() -> None:
    fake = FakeLimits()
    fake.add(NAME, 300, 1234.0)  # a person's numbers, on the Concurrency page
    f = feeder(fake)  # would create 200 slots at 50/s
    bucket = al.AccountBucket(f, None, rate=4.0, burst=1)
    own = al.AccountBucket(f, 2.0, rate=2.0, burst=1)

    async def go() -> None:
        await asyncio.wait_for(bucket.acquire(), WAIT)
        await asyncio.wait_for(own.acquire(), WAIT)

    asyncio.run(go())
    assert fake.calls["create"] == 0
    assert (fake.limits[NAME].limit, fake.limits[NAME].slot_decay_per_second) == (300, 1234.0)
    assert f.decay == 1234.0
    assert bucket.target_rate == pytest.approx(al.nominal_rate(1234.0))  # follows the limit…
    assert own.target_rate == 2.0  # …unless the campaign set its own --rate

    fake.limits[NAME].slot_decay_per_second = 2000.0  # changed in the UI while sending
    take([f], 5)
    asyncio.run(go())
    assert bucket.target_rate == pytest.approx(al.nominal_rate(2000.0))


def test_processes_drawing_on_one_limit_never_get_more_than_it_grants() -> None:
    fake = FakeLimits()
    processes = [feeder(fake) for _ in range(3)]  # three processes' feeders, one limit
    started = time.monotonic()
    assert take(processes, 20) == [20, 20, 20]
    drawn = sum(p.drawn for p in processes)  # before `granted`: a grant is counted there first
    granted, elapsed = fake.granted, time.monotonic() - started
    assert 60 <= drawn <= granted / al.SLOTS_PER_REQUEST
    # The limit's own bound, whatever the machine's speed: its capacity plus its decay over the time taken.
    assert granted <= FAST.limit + FAST.decay * elapsed


def test_a_429_holds_the_processs_draws_for_its_pause() -> None:
    fake = FakeLimits()
    f = feeder(fake)
    bucket = al.AccountBucket(f, None, rate=50.0, burst=1)
    started = time.monotonic()
    bucket.penalise(1.0)  # Retry-After: 1
    assert take([f], 1) == [1]  # a sender that was already waiting for the account
    assert time.monotonic() - started >= 0.9  # (a slow machine only adds to it)
    assert f.drawn >= 1


def test_a_stopped_campaign_stops_waiting_for_the_account(caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeLimits()
    fake.add(NAME, 0, 100.0)  # a limit of 0: a person paused the account
    f = feeder(fake)
    stop = Stop()
    threading.Timer(0.3, stop.set, args=("circuit_open", "test")).start()
    assert take([f], 3, stop=stop) == [3]  # each of them returned, without a permit
    assert fake.granted == 0 and f.drawn == 0
    assert "has a limit of 0" in caplog.text


def test_an_inactive_limit_hands_pacing_back_to_the_process(caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeLimits()
    fake.add(NAME, 100, 1.0, active=False)  # switched off on the Concurrency page
    f = feeder(fake)
    assert take([f], 50) == [50]  # at 1 slot a second, most of an hour
    assert fake.calls["increment"] == 0 and f.drawn == 0
    assert "inactive" in caplog.text


def test_a_sender_cancelled_while_waiting_loses_nothing() -> None:
    fake = FakeLimits()
    fake.add(NAME, 100, 50.0)  # one request at a time, one every 2 s
    f = feeder(fake)

    async def go() -> float:
        await asyncio.wait_for(f.permit(None), WAIT)  # the first, at once
        cancelled = asyncio.ensure_future(f.permit(None))
        await asyncio.sleep(0.05)
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        await asyncio.wait_for(f.permit(None), WAIT)  # the block drawn meanwhile goes to the next sender
        return f.drawn

    # Checked as soon as it has its permit: the next block cannot come for another 2 s.
    assert asyncio.run(go()) == 2


# ---- under Prefect ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prefect_api() -> Iterator[str]:
    from prefect.settings import PREFECT_API_URL
    from support import prefect_harness

    with prefect_harness():
        yield str(PREFECT_API_URL.value())


@pytest.mark.integration
def test_a_run_against_a_prefect_api_shares_the_account(prefect_api: str, monkeypatch: MonkeyPatch) -> None:
    from prefect import flow, task

    monkeypatch.delenv(al.MODE_VAR, raising=False)
    monkeypatch.setenv("SMSCAST_ROBASE_API_KEY", "rb_live_flow")
    fields = {"provider": "robase", "source": "x.csv", "results": "r", "sender": "ACME", "body": "Hi"}
    spec = CampaignSpec.model_validate({"campaign_id": "acct-flow", **fields})

    @task
    def in_a_task() -> tuple[bool, str, str]:
        provider = make_provider("robase", base_url="http://127.0.0.1:9")
        sending, lookups = al.account_bucket(provider, spec), al.account_bucket(provider, None)
        assert isinstance(sending, al.AccountBucket) and isinstance(lookups, al.AccountBucket)
        return al.uses_account_limits(spec), sending.feeder.name, lookups.feeder.name

    @flow
    def a_run() -> tuple[bool, str, str]:
        return in_a_task()

    shared, sending, lookups = a_run()
    assert shared and sending == lookups  # reconcile's lookups draw on the limit sending draws on
    assert not al.uses_account_limits(spec)  # outside the run


DRIVER = """
import asyncio, json, os, sys, time
import httpx
from smscast import account_limit, campaign
from smscast.providers.registry import make_provider
from smscast.tasks import load, plan, send_engine, validate
url, source, rate, ready, everyone = sys.argv[1:6]
provider = make_provider("robase", base_url=url)
spec = campaign.CampaignSpec(campaign_id=os.path.basename(source), provider="robase", source=source, results=ready,
                             base_url=url, sender="ACME", body="Hi {{name}}", batch_size=1, rate=float(rate))
checked = validate.validate_recipients(load.load_recipients(spec), spec, provider.caps, provider)
rows = plan.plan_campaign(checked, spec, provider.caps, provider).rows.sort("row_index")
open(ready, "w").close()
while not all(os.path.exists(p) for p in everyone.split(",")):
    time.sleep(0.05)  # the three processes start sending together (the test's timeout bounds this)
responses = []
async def hook(response):
    responses.append([time.time(), response.status_code])
async def main():
    async with httpx.AsyncClient(event_hooks={"response": [hook]}) as client:
        return await send_engine.send_rows(provider, rows, spec, client=client)
out, _ = asyncio.run(main())
drawn = account_limit.account_bucket(provider, spec).feeder.drawn
print(json.dumps({"statuses": out["status"].to_list(), "responses": responses, "drawn": drawn}))
"""


@pytest.mark.integration
def test_three_processes_on_one_account_stay_under_its_limit(prefect_api: str, tmp_path: Path) -> None:
    rate, rows, key = 8.0, 20, "rb_live_three"  # 60 requests: some 6 s at the limit after its burst
    shape = al.shape_for(rate, 1)  # robase's burst is 1: the provider's bucket is taken to hold ceil(8)
    # The sandbox's bucket holds twice what smscast assumes: a request delayed by a stalled process (a loaded
    # machine) must not fail the test. Without a shared limit the three would still send at 3 x 8/s.
    knobs = {"rate_limit_rps": rate, "rate_limit_burst": 2 * math.ceil(rate)}
    sandbox = SandboxServer(emulators=["robase"], api_keys={"robase": key}, provider_knobs={"robase": knobs})
    with sandbox:
        env = {**os.environ, "PREFECT_API_URL": prefect_api, "SMSCAST_ROBASE_API_KEY": key}
        env[al.MODE_VAR] = "prefect"
        ready = [str(tmp_path / f"ready-{i}") for i in range(3)]
        procs = []
        for i in range(3):
            source = tmp_path / f"three-{i}.csv"
            source.write_text("phone,name\n" + "".join(f"+44740{i}9{n:05d},P{n}\n" for n in range(rows)))
            args = [sandbox.base_url, str(source), str(rate), ready[i], ",".join(ready)]
            procs.append(subprocess.Popen([sys.executable, "-c", DRIVER, *args], env=env, stdout=PIPE))
        outputs = [json.loads(p.communicate(timeout=240)[0]) for p in procs]
        ledger = sandbox.client.ledger(provider="robase")
        name = name_of(sandbox.base_url, key)

    assert all(o["statuses"] == ["accepted"] * rows for o in outputs)
    phones = sorted(f"+44740{i}9{n:05d}" for i in range(3) for n in range(rows))
    assert sorted(e["to"] for e in ledger) == phones  # each once

    # No 429 at all (the sandbox has room for 1.5 s of lateness): every request waited for the account's
    # permit. Without the shared limit the three would draw 429s within the first second.
    responses = sorted((t, s) for o in outputs for t, s in o["responses"])
    assert [s for _, s in responses if s == 429] == []
    # Every request took a permit: over any 2 s, together they never asked for more than the limit grants in
    # 3 s (its capacity, then its decay), whatever a stalled process bunched up meanwhile.
    busiest = max(sum(t <= u < t + 2.0 for u, _ in responses) for t, _ in responses)
    assert busiest <= (shape.limit + shape.decay * 3.0) / al.SLOTS_PER_REQUEST, busiest
    assert sum(o["drawn"] for o in outputs) >= len(responses)

    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name(name)
    assert (limit.limit, limit.slot_decay_per_second) == (shape.limit, shape.decay)
