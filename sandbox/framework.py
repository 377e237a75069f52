"""What every emulator module builds on: configuration and shared state, the request pipeline (auth
(sandbox/auth.py), fault knobs, rate limiter, latency, processing, dropped connections, held responses), an
idempotency store for request-level keys, delivery truth and reports, and fast JSON.

An emulator module under `sandbox/emulators/` defines one `Emulator` subclass and exposes it as `EMULATOR`:

    class RobaseEmulator(Emulator):
        name = "robase"                       # the provider name used by the ledger, stats, faults and keys
        auth = BearerAuth()                   # or HeaderKeyAuth("x-api-key"), BasicAuth()
        sends_retry_after = True              # whether the vendor's 429 carries Retry-After
        error_codes = (("unreachable", "…"),) # the vendor's reasons for an undelivered message

        def message_id(self, seq: int) -> str: ...   # the vendor's id spelling, from the ledger's sequence
        def error(self, status, code, message, headers=None) -> Response: ...  # the vendor's error body
        def rate_scope(self, request) -> str: ...    # e.g. Postman limits per campaign
        def routes(self): return [self.endpoint("/v1/sms/batch", self.send_batch)]

        async def send_batch(self, request: Request) -> Response:
            payload = await read_json(request)        # RequestRefused(400, "invalid_json") on bad JSON
            ...                                       # validate rows; self.open_batch(...) -> add(...)
            return json_response({...})

`endpoint()` wraps the handler in the pipeline, so a module only knows its own wire format. Also at hand:
`default_knobs` (the vendor's documented rate limit, say), `row_fault(phone)` / `row_suffixes()` for the
per-row refusal knobs, `self.ledger.index(name, scope)` + `self.open_batch()` for row keys and delivery truth,
`dlr_route` + `dlr_report()` for delivery reports, `self.idempotency` for request-level keys, `ledger.state()`
for status lookups (routes made with `endpoint(..., methods=("GET",), faults=False)`), `reset()` for module
state, and `self.clock` (sandbox/clock.py) for any reading of time, so that tests can freeze and advance it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from smscast.sandbox.auth import Auth, BearerAuth
from smscast.sandbox.callbacks import Callbacks, Report
from smscast.sandbox.clock import Clock
from smscast.sandbox.counters import Counters
from smscast.sandbox.emulators import canonical_provider
from smscast.sandbox.faults import Faults, Knobs, Verdict
from smscast.sandbox.idempotency import IdempotencyStore
from smscast.sandbox.ledger import Adder, Ledger
from smscast.sandbox.truth import DELIVERED, ErrorCodes, Fate

DEFAULT_API_KEY = "sandbox-key"

# Scope extension set by `SandboxApp` (sandbox/app.py): (asyncio transport, uvicorn request cycle).
CONNECTION_EXTENSION = "sandbox.connection"


# ---- configuration and state ------------------------------------------------------------------------------


@dataclass
class SandboxConfig:
    """How a sandbox process starts. Provider names may be given by alias (`sandbox` for `generic`)."""

    api_keys: dict[str, str] = field(default_factory=dict)  # provider -> the one key it accepts
    default_key: str = DEFAULT_API_KEY
    knobs: dict[str, Any] = field(default_factory=dict)  # global fault knobs at start
    provider_knobs: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-provider overrides
    emulators: tuple[str, ...] | None = None  # registry names to mount; None mounts all

    def __post_init__(self) -> None:
        self.api_keys = {canonical_provider(p): k for p, k in self.api_keys.items()}
        self.provider_knobs = {canonical_provider(p): dict(k) for p, k in self.provider_knobs.items()}
        if self.emulators is not None:
            self.emulators = tuple(canonical_provider(p) for p in self.emulators)

    def key_for(self, provider: str) -> str:
        return self.api_keys.get(provider, self.default_key)


class SandboxState:
    """Everything one sandbox process shares between its emulators and the admin endpoints."""

    def __init__(self, config: SandboxConfig | None = None, clock: Clock | None = None) -> None:
        self.config = config or SandboxConfig()
        self.clock = clock or Clock()  # the only time source of the sandbox (sandbox/clock.py)
        self.ledger = Ledger(clock=self.clock.time)
        self.faults = Faults(self.config.knobs, self.config.provider_knobs, clock=self.clock.monotonic)
        self.idempotency = IdempotencyStore()
        self.emulators: dict[str, Emulator] = {}
        self.held_responses = 0  # responses held back by the timeout knob right now
        self.dlr = Callbacks(self.clock, self.ledger)  # delivery reports (sandbox/callbacks.py)

    def reset(self, *, faults: bool = True) -> None:
        """Forget the ledger, counters and stored responses (and, by default, restore the start knobs); a
        frozen clock runs again, so that no test leaves the next one in a stopped world."""
        self.clock.resume()
        self.ledger.reset()
        self.dlr.reset()
        self.idempotency.clear()
        if faults:
            self.faults.reset()
        for emulator in self.emulators.values():
            emulator.reset()


# ---- responses --------------------------------------------------------------------------------------------


def json_response(payload: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(orjson.dumps(payload), status_code=status, media_type="application/json", headers=headers)


class RequestRefused(Exception):
    """Raised inside a handler to refuse the whole request; the pipeline renders it with `Emulator.error`."""

    def __init__(
        self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


async def read_json(request: Request) -> Any:
    body = await request.body()
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise RequestRefused(400, "invalid_json", f"request body is not valid JSON: {exc}") from None


class DropResponse(Response):
    """Close the connection without sending a byte of response.

    uvicorn answers 500 when an app raises before starting a response, so raising is no way to drop.
    Instead the app (`SandboxApp`) puts the connection's asyncio transport in the scope; this aborts it, then
    yields to the event loop until uvicorn's `connection_lost` has marked the request cycle disconnected, so
    that uvicorn neither logs an error nor tries to write a 500. The request body has been read in full by
    then (the pipeline reads it first), so the kernel closes with a FIN rather than a RST, and the client
    sees the connection end with no response: httpx raises `RemoteProtocolError` ("Server disconnected
    without sending a response").
    """

    def __init__(self) -> None:
        super().__init__(b"", status_code=599)  # never sent

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        conn = (scope.get("extensions") or {}).get(CONNECTION_EXTENSION)
        if conn is None:
            raise RuntimeError("cannot drop the connection: not served by uvicorn through SandboxApp")
        transport, cycle = conn
        transport.abort()
        for _ in range(1000):
            if getattr(cycle, "disconnected", True):
                break
            await asyncio.sleep(0)


async def hold_until_disconnect(request: Request, seconds: float) -> None:
    """Wait `seconds`, or less if the client hangs up first (its read timeout fired)."""
    try:
        async with asyncio.timeout(seconds):
            while (await request.receive())["type"] != "http.disconnect":
                pass
    except TimeoutError:
        pass


# ---- the emulator base class ------------------------------------------------------------------------------

Handler = Callable[[Request], Awaitable[Response]]


class Emulator:
    """Base class of the emulator modules. See the module docstring."""

    name: ClassVar[str]
    auth: ClassVar[Auth] = BearerAuth()
    sends_retry_after: ClassVar[bool] = True
    mount_at_root: ClassVar[bool] = True  # also mounted under /<name>/ in any case
    # Knobs this provider starts with, e.g. its documented rate limit {"rate_limit_rps": 5 / 60,
    # "rate_limit_burst": 5}; the configuration's per-provider knobs win over them.
    default_knobs: ClassVar[Mapping[str, Any]] = {}
    # Delivery truth (sandbox/truth.py): the vendor's (code, message) reasons for an undelivered message;
    # and, where the vendor posts delivery reports, the route appended to `dlr_url`, and how many reports
    # one POST carries (0: one JSON object; n: a JSON array of up to n), each shaped by `dlr_report`.
    error_codes: ClassVar[ErrorCodes] = ()
    dlr_route: ClassVar[str | None] = None
    dlr_group: ClassVar[int] = 0

    def __init__(self, state: SandboxState) -> None:
        self.state = state
        self.clock = state.clock  # timestamps in answers: `self.clock.iso()`, never datetime.now()
        self.ledger = state.ledger
        self.faults = state.faults
        self.idempotency = state.idempotency
        self.api_key = state.config.key_for(self.name)
        self.ledger.register(self.name, self.message_id)
        self.faults.set_provider_defaults(self.name, self.default_knobs)
        if self.dlr_route is not None:
            state.dlr.register(self.name, self.dlr_route, self.dlr_report, self.dlr_group)

    # ---- what a module fills in -----------------------------------------------------------------------

    def routes(self) -> Sequence[BaseRoute]:
        raise NotImplementedError

    def message_id(self, seq: int) -> str:
        return f"{self.name}_{seq}"

    def error(
        self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None
    ) -> Response:
        """The vendor's whole-request error body; the default is `{"error": {"code", "message"}}`."""
        return json_response({"error": {"code": code, "message": message}}, status, headers)

    def rate_scope(self, request: Request) -> str:
        """What the vendor's rate limit counts per (an account, a campaign…); one bucket per provider by
        default."""
        return ""

    def reset(self) -> None:
        """Forget module-specific state (async job tables…) on `POST /_sandbox/reset`."""

    def dlr_report(self, report: Report) -> Any:
        """One delivery report in the vendor's wire shape (JSON-able), for a module with a `dlr_route`."""
        raise NotImplementedError

    def stats(self) -> dict[str, Any]:
        """Module-specific counters for the admin stats (`emulators`), if any."""
        return {}

    # ---- helpers ----------------------------------------------------------------------------------------

    def fate(self, knobs: Knobs | None = None) -> Fate:
        """The delivery outcome of this provider's messages under the knobs of now (or `knobs`)."""
        k = knobs or self.faults.knobs(self.name)
        return Fate(self.name, k.seed or 0, k.undelivered_share, self.error_codes)

    def open_batch(
        self, batch: str, batch_key: str | None = None, index: dict[str, int] | None = None
    ) -> Adder:
        """Open a ledger batch for a request's new messages (see `Ledger.adder`). The knobs of this moment
        decide each message's delivery truth as it is added, when it is reached, and its delivery reports."""
        k = self.faults.knobs(self.name)
        ledger = self.ledger
        now, delay = self.clock.time(), k.dlr_delay_ms / 1000.0
        batch_no = ledger.open_batch(self.name, batch, batch_key, accepted_at=now, delay=delay)
        add = ledger.adder(batch_no, index)
        if self.dlr_route is not None and k.dlr_url is not None:
            self.state.dlr.schedule(
                self.name,
                batch_no,
                k.dlr_url,
                now,
                now + delay,
                seed=k.seed or 0,
                duplicate_share=k.dlr_duplicate_share,
                window_s=k.dlr_retry_window_s,
            )
        fate = self.fate(k)
        if fate.share <= 0.0:
            return add  # every message delivered: nothing to store, the hot path stays as it was
        message_id, set_outcome = ledger.message_id, ledger.set_outcome

        def add_and_decide(to: str, body: str | None, key: str | None = None) -> int:
            pos = add(to, body, key)
            outcome = fate(message_id(pos))
            if outcome is not DELIVERED:
                set_outcome(pos, outcome)
            return pos

        return add_and_decide

    def endpoint(
        self, path: str, handler: Handler, methods: Sequence[str] = ("POST",), *, faults: bool = True
    ) -> Route:
        """A route whose handler runs inside the pipeline (auth, knobs, counters). `faults=False` (e.g. for
        a status lookup) keeps auth and counters but leaves the fault knobs to the send endpoints."""

        async def run(request: Request) -> Response:
            return await self.pipeline(request, handler, faults=faults)

        return Route(path, run, methods=list(methods), name=f"{self.name}:{path}")

    def row_suffixes(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(reject, transient) suffix tuples for a hot per-row loop: `phone.endswith(reject)`."""
        return self.faults.row_suffixes(self.name)

    def row_fault(self, phone: str) -> str | None:
        """Whether a suffix knob refuses this phone: "reject" (for good), "transient", or None."""
        reject, transient = self.faults.row_suffixes(self.name)
        if reject and phone.endswith(reject):
            return "reject"
        if transient and phone.endswith(transient):
            return "transient"
        return None

    async def pipeline(self, request: Request, handler: Handler, *, faults: bool = True) -> Response:
        name = self.name
        counters = self.ledger.counters(name)
        await request.body()  # read in full first: a dropped connection then closes cleanly (FIN)
        if not self.auth.check(request, self.api_key):
            counters.request(401)
            return self.error(401, "unauthorized", "missing or invalid API key")
        if not faults:
            try:
                response = await handler(request)
            except RequestRefused as refused:
                response = self.error(refused.status, refused.code, refused.message, refused.headers)
            counters.request(response.status_code)
            return response
        return await self._faulty(request, handler, counters)

    async def _faulty(self, request: Request, handler: Handler, counters: Counters) -> Response:
        name = self.name
        faults = self.faults

        verdict, retry_after = faults.admit(name, self.rate_scope(request))
        if verdict is not Verdict.PASS:
            if verdict is Verdict.DROP_BEFORE:
                counters.request("drop_before")
                return DropResponse()
            if verdict is Verdict.ERROR_5XX:
                status = faults.knobs(name).status_5xx
                counters.request(status)
                return self.error(
                    status, "service_unavailable", "injected server error, nothing was processed"
                )
            counters.request(429)
            headers = {"Retry-After": str(retry_after)} if self.sends_retry_after else None
            return self.error(429, "rate_limited", "too many requests", headers)

        delay = faults.latency(name)
        if delay > 0:
            await asyncio.sleep(delay)
        try:
            response = await handler(request)
        except RequestRefused as refused:
            response = self.error(refused.status, refused.code, refused.message, refused.headers)
        except Exception:
            counters.request(500)
            raise

        after = faults.after(name)
        if after is Verdict.DROP_AFTER:
            counters.request("drop_after")
            return DropResponse()
        if after is Verdict.TIMEOUT:
            counters.request("timeout")
            self.state.held_responses += 1
            try:
                await hold_until_disconnect(request, faults.knobs(name).timeout_delay_s)
            finally:
                self.state.held_responses -= 1
            return response  # to a client that has usually gone by now
        counters.request(response.status_code)
        return response
