"""Delivery reports (DLRs): the sandbox POSTs each state transition of a message to the `dlr_url` knob.

For the emulators whose vendor documents delivery callbacks (`Emulator.dlr_route`: instasent, sent-dm, and
smscast's generic API), accepting a request schedules two reports per new message: `pending` at acceptance
and the final outcome (sandbox/truth.py) when it is reached, `dlr_delay_ms` later on the sandbox clock. Each
goes to `dlr_url` with `/<route>` appended to its path (query kept), in the vendor's wire shape
(`Emulator.dlr_report`); the generic API groups up to `dlr_group` reports in one JSON array.

Posting never holds up a send: scheduling is a heap push, and one background task (started with the first
report) releases due reports and POSTs them, at most MAX_IN_FLIGHT at a time. A POST that fails (non-2xx,
connection error, timeout) is retried with exponential backoff for `dlr_retry_window_s`, as a real provider
does, so a receiver that restarts loses nothing; past the window the POST is abandoned. The backoff and the
window run on real time, not the sandbox clock: a frozen clock must not stop retries.

Counters (admin stats, `callbacks`), per route and in total: `reports` (queued to post, copies included),
`posted` (POST attempts), `acknowledged` (POSTs answered 2xx), `retried` (failed attempts followed by
another), `abandoned` (POSTs given up), `reports_acknowledged`, `reports_abandoned`; and the work left:
`scheduled` (reports not yet due), `queued` (reports due, not yet acknowledged or abandoned).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import orjson

from smscast.sandbox.clock import Clock
from smscast.sandbox.ledger import Ledger
from smscast.sandbox.truth import PENDING, Outcome, chance

MAX_IN_FLIGHT = 8
POST_TIMEOUT_S = 10.0
FIRST_BACKOFF_S = 0.05
MAX_BACKOFF_S = 2.0

log = logging.getLogger(__name__)


def route_url(dlr_url: str, route: str) -> str:
    """`dlr_url` with `/<route>` appended to its path, query string kept."""
    parts = urlsplit(dlr_url)
    return urlunsplit(parts._replace(path=f"{parts.path.rstrip('/')}/{route}"))


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Report:
    """One state transition of one message, for an emulator's `dlr_report` to put in its vendor's shape."""

    message_id: str
    key: str | None  # the client's per-message key (Instasent's clientId, the generic API's ref), if any
    outcome: Outcome  # pending, or the final outcome
    at: float  # sandbox time the state was reached

    @property
    def at_iso(self) -> str:
        return iso(self.at)


Build = Callable[[Report], Any]


@dataclass(frozen=True, slots=True)
class _Route:
    name: str
    build: Build
    group: int  # 0: one JSON object per POST; n: a JSON array of up to n reports


@dataclass(order=True, slots=True)
class _Due:
    """A batch's reports of one kind (pending or final), due at `at`; what the knobs said at acceptance."""

    at: float
    order: int
    provider: str = field(compare=False)
    batch_no: int = field(compare=False)
    final: bool = field(compare=False)
    url: str = field(compare=False)
    seed: int = field(compare=False)
    duplicate_share: float = field(compare=False)
    window_s: float = field(compare=False)


@dataclass(slots=True)
class _Item:
    url: str
    route: _Route
    payload: Any
    window_s: float


def _tally() -> dict[str, int]:
    return dict.fromkeys(
        (
            "reports",
            "posted",
            "acknowledged",
            "retried",
            "abandoned",
            "reports_acknowledged",
            "reports_abandoned",
        ),
        0,
    )


class Callbacks:
    """The delivery report scheduler and poster of one sandbox process (one event loop, no locks)."""

    def __init__(self, clock: Clock, ledger: Ledger) -> None:
        self.clock = clock
        self.ledger = ledger
        self._routes: dict[str, _Route] = {}
        self._heap: list[_Due] = []
        self._order = 0
        self._outbox: deque[_Item] = deque()
        self._in_flight: dict[asyncio.Task[None], int] = {}  # POST task -> its number of reports
        self._tallies: dict[str, dict[str, int]] = {}
        self._task: asyncio.Task[None] | None = None
        self._event: asyncio.Event | None = None
        self._client: httpx.AsyncClient | None = None
        clock.subscribe(self._wake)

    def register(self, provider: str, route: str, build: Build, group: int = 0) -> None:
        self._routes[provider] = _Route(route, build, group)
        self._tallies.setdefault(route, _tally())

    # ---- scheduling (called by request handlers: never awaits) -------------------------------------------

    def schedule(
        self,
        provider: str,
        batch_no: int,
        dlr_url: str,
        accepted_at: float,
        due: float,
        *,
        seed: int,
        duplicate_share: float,
        window_s: float,
    ) -> None:
        """The pending and final reports of the messages of ledger batch `batch_no` (read when they are
        released, once the request has added all its messages)."""
        route = self._routes[provider]
        url = route_url(dlr_url, route.name)
        for at, final in ((accepted_at, False), (due, True)):
            self._order += 1
            item = _Due(at, self._order, provider, batch_no, final, url, seed, duplicate_share, window_s)
            heapq.heappush(self._heap, item)
        self._start()
        self._wake()

    def _start(self) -> None:
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            self._event = asyncio.Event()
            self._client = httpx.AsyncClient(timeout=POST_TIMEOUT_S, trust_env=False)
            self._task = loop.create_task(self._run(self._client), name="sandbox-dlr")

    def _wake(self) -> None:
        if self._event is not None:
            self._event.set()

    # ---- the background task ---------------------------------------------------------------------------

    async def _run(self, client: httpx.AsyncClient) -> None:
        try:
            await self._loop()
        finally:  # cancelled as the server's event loop ends
            await client.aclose()

    async def _loop(self) -> None:
        assert self._event is not None
        event = self._event
        while True:
            event.clear()
            try:
                self._release(self.clock.time())
                self._launch()
            except Exception:  # a bug here must not end every later report
                log.exception("sandbox delivery reports")
            wait = None
            if self._heap and not self.clock.frozen:
                wait = max(0.0, self._heap[0].at - self.clock.time())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), wait)

    def _release(self, now: float) -> None:
        """Due reports into the outbox, each copy of a duplicated one after the originals."""
        ledger = self.ledger
        while self._heap and self._heap[0].at <= now:
            due = heapq.heappop(self._heap)
            route = self._routes[due.provider]
            tally = self._tallies[route.name]
            copies: list[_Item] = []
            for pos in ledger.positions(due.batch_no):
                outcome = ledger.outcome(pos) if due.final else PENDING
                message_id = ledger.message_id(pos)
                report = Report(message_id, ledger.key(pos), outcome, due.at)
                item = _Item(due.url, route, route.build(report), due.window_s)
                self._outbox.append(item)
                tally["reports"] += 1
                if chance(due.seed, due.duplicate_share, "dup", due.provider, message_id, outcome.status):
                    copies.append(item)
                    tally["reports"] += 1
            self._outbox.extend(copies)

    def _launch(self) -> None:
        outbox = self._outbox
        while outbox and len(self._in_flight) < MAX_IN_FLIGHT:
            first = outbox.popleft()
            if first.route.group:
                payloads = [first.payload]
                while (
                    outbox
                    and len(payloads) < first.route.group
                    and outbox[0].route is first.route
                    and outbox[0].url == first.url
                ):
                    payloads.append(outbox.popleft().payload)
                body, n = orjson.dumps(payloads), len(payloads)
            else:
                body, n = orjson.dumps(first.payload), 1
            task = asyncio.get_running_loop().create_task(self._post(first, body, n))
            self._in_flight[task] = n
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._in_flight.pop(task, None)
        self._wake()

    async def _post(self, item: _Item, body: bytes, n: int) -> None:
        assert self._client is not None
        tally = self._tallies[item.route.name]
        deadline = time.monotonic() + item.window_s
        backoff = FIRST_BACKOFF_S
        while True:
            tally["posted"] += 1
            try:
                response = await self._client.post(
                    item.url, content=body, headers={"content-type": "application/json"}
                )
                ok = 200 <= response.status_code < 300
            except httpx.HTTPError:
                ok = False
            if ok:
                tally["acknowledged"] += 1
                tally["reports_acknowledged"] += n
                return
            if time.monotonic() + backoff > deadline:
                tally["abandoned"] += 1
                tally["reports_abandoned"] += n
                return
            tally["retried"] += 1
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_S)

    # ---- admin --------------------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget scheduled and queued reports, stop the POSTs in flight, zero the counters."""
        self._heap.clear()
        self._outbox.clear()
        for task in list(self._in_flight):
            task.cancel()
        self._in_flight.clear()
        for route in self._tallies:
            self._tallies[route] = _tally()

    def stats(self) -> dict[str, Any]:
        scheduled = sum(len(self.ledger.positions(d.batch_no)) for d in self._heap)
        queued = len(self._outbox) + sum(self._in_flight.values())
        totals = _tally()
        for tally in self._tallies.values():
            for name, value in tally.items():
                totals[name] += value
        return {**totals, "scheduled": scheduled, "queued": queued, "routes": dict(self._tallies)}
