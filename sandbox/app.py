"""The sandbox ASGI app: every emulator in the registry (sandbox/emulators/__init__.py) plus admin endpoints.

Each emulator's routes are served at the root (its vendor's own paths, e.g. `/sandbox/v1/messages/batch`) and
also under `/<provider>/` (e.g. `/generic/sandbox/v1/messages/batch`), should two vendors ever share a path.

Admin endpoints (no auth; the sandbox binds loopback only):

    GET  /_sandbox/health                     {"status": "ok", "providers": [...], "entries": n, "pid": …}
    GET  /_sandbox/ledger?provider=&batch=&format=json|ndjson|parquet&offset=&limit=
                                              json: a JSON array of entries (streamed); ndjson: one entry per
                                              line (streamed); parquet: one file, accepted_at and delivery_at
                                              as timestamps. Each entry carries its message's delivery truth:
                                              delivery_status, delivery_error_code, delivery_at
    GET  /_sandbox/stats                      ledger size, per-provider counters, responses held back by the
                                              timeout knob, knobs, delivery report counters (`callbacks`,
                                              sandbox/callbacks.py), emulators' own counters (`emulators`)
    GET  /_sandbox/faults                     {"global": {...knobs}, "providers": {name: {...overrides}}}
    POST /_sandbox/faults                     {"provider"?: name, <knob>: value, ...}: partial update; answers
                                              the new state (400 on an unknown knob or a bad value)
    POST /_sandbox/reset                      ledger, counters, stored responses and knobs back to the start,
                                              the clock running; {"keep_faults": true} keeps the current knobs
    GET  /_sandbox/clock                      {"frozen": bool, "time": epoch s, "monotonic": s}
    POST /_sandbox/clock                      {"freeze"?: bool, "advance"?: seconds}: stop or restart the
                                              sandbox's clock, move it on (sandbox/clock.py); answers its state
"""

from __future__ import annotations

import importlib
import io
import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import Receive, Scope, Send

from smscast.sandbox.clock import Clock
from smscast.sandbox.emulators import EMULATORS, canonical_provider
from smscast.sandbox.faults import KnobError
from smscast.sandbox.framework import (
    CONNECTION_EXTENSION,
    Emulator,
    SandboxConfig,
    SandboxState,
    json_response,
)
from smscast.sandbox.ledger import LedgerEntry

LEDGER_CHUNK = 5000


class SandboxApp(Starlette):
    """Starlette, plus the connection's transport in the scope so that an emulator can drop it (see
    `framework.DropResponse`). uvicorn's `send` is a bound method of its request cycle, which holds the
    transport; it is only seen here, before Starlette's middleware wraps `send`."""

    sandbox: SandboxState

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            cycle = getattr(send, "__self__", None)
            transport = getattr(cycle, "transport", None)
            if transport is not None:
                extensions = scope.get("extensions")
                if extensions is None:
                    extensions = scope["extensions"] = {}
                extensions[CONNECTION_EXTENSION] = (transport, cycle)
        await super().__call__(scope, receive, send)


def load_emulator(name: str) -> type[Emulator]:
    try:
        module_path = EMULATORS[name]
    except KeyError:
        raise ValueError(f"unknown emulator {name!r}; registered: {', '.join(EMULATORS)}") from None
    cls: type[Emulator] = importlib.import_module(module_path).EMULATOR
    return cls


def _error(status: int, code: str, message: str) -> Response:
    return json_response({"error": {"code": code, "message": message}}, status)


async def _json_object(request: Request, expected: str) -> dict[str, Any] | Response:
    """An admin call's JSON object body (empty: {}), or the 400 answer that says what was expected."""
    try:
        payload = orjson.loads(await request.body() or b"{}")
    except orjson.JSONDecodeError as exc:
        return _error(400, "invalid_json", str(exc))
    if not isinstance(payload, dict):
        return _error(400, "invalid_request", expected)
    return payload


class _Admin:
    def __init__(self, state: SandboxState) -> None:
        self.state = state
        self.started = state.clock.monotonic()

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/_sandbox/health", self.health, methods=["GET"]),
            Route("/_sandbox/ledger", self.ledger, methods=["GET"]),
            Route("/_sandbox/stats", self.stats, methods=["GET"]),
            Route("/_sandbox/faults", self.get_faults, methods=["GET"]),
            Route("/_sandbox/faults", self.set_faults, methods=["POST"]),
            Route("/_sandbox/reset", self.reset, methods=["POST"]),
            Route("/_sandbox/clock", self.get_clock, methods=["GET"]),
            Route("/_sandbox/clock", self.set_clock, methods=["POST"]),
        ]

    def _provider(self, raw: str | None) -> str | None:
        if raw is None or raw == "":
            return None
        name = canonical_provider(raw)
        if name not in self.state.emulators:
            raise KnobError(f"unknown provider {raw!r}; mounted: {', '.join(self.state.emulators)}")
        return name

    async def health(self, request: Request) -> Response:
        return json_response(
            {
                "status": "ok",
                "pid": os.getpid(),
                "providers": list(self.state.emulators),
                "entries": len(self.state.ledger),
                "uptime_s": round(self.state.clock.monotonic() - self.started, 3),
            }
        )

    async def ledger(self, request: Request) -> Response:
        q = request.query_params
        try:
            provider = self._provider(q.get("provider"))
            offset = int(q.get("offset", "0"))
            limit = int(q["limit"]) if q.get("limit") else None
        except (KnobError, ValueError) as exc:
            return _error(400, "invalid_request", str(exc))
        batch = q.get("batch") or None
        fmt = q.get("format", "json")
        ledger = self.state.ledger
        if fmt == "parquet":
            return Response(
                self._parquet(provider, batch, offset, limit), media_type="application/vnd.apache.parquet"
            )
        if fmt not in ("json", "ndjson"):
            return _error(400, "invalid_request", "format: json, ndjson or parquet")
        entries = ledger.iter_entries(provider, batch, offset, limit)
        if fmt == "ndjson":
            return StreamingResponse(_ndjson(entries), media_type="application/x-ndjson")
        return StreamingResponse(_json_array(entries), media_type="application/json")

    def _parquet(self, provider: str | None, batch: str | None, offset: int, limit: int | None) -> bytes:
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        cols = self.state.ledger.columns(provider, batch)
        stop = None if limit is None else offset + limit
        cols = {k: v[offset:stop] for k, v in cols.items()}

        def stamps(name: str) -> pa.Array:
            micros = pc.round(pc.multiply(pa.array(cols[name], pa.float64()), 1_000_000))
            return micros.cast(pa.int64()).cast(pa.timestamp("us", tz="UTC"))

        table = pa.table(
            {
                "seq": pa.array(cols["seq"], pa.int64()),
                **{
                    k: pa.array(cols[k], pa.string()) for k in ("provider", "batch", "batch_key", "key", "to")
                },
                "body": pa.array(cols["body"], pa.string()),
                "message_id": pa.array(cols["message_id"], pa.string()),
                "accepted_at": stamps("accepted_at"),
                "delivery_status": pa.array(cols["delivery_status"], pa.string()),
                "delivery_error_code": pa.array(cols["delivery_error_code"], pa.string()),
                "delivery_at": stamps("delivery_at"),
            }
        )
        sink = io.BytesIO()
        pq.write_table(table, sink, compression="zstd")
        return sink.getvalue()

    async def stats(self, request: Request) -> Response:
        state = self.state
        payload = state.ledger.stats()
        payload["stored_responses"] = len(state.idempotency)
        payload["held_responses"] = state.held_responses
        payload["faults"] = state.faults.snapshot()
        payload["callbacks"] = state.dlr.stats()
        payload["emulators"] = {name: s for name, e in state.emulators.items() if (s := e.stats())}
        return json_response(payload)

    async def get_faults(self, request: Request) -> Response:
        return json_response(self.state.faults.snapshot())

    async def set_faults(self, request: Request) -> Response:
        payload = await _json_object(request, "a JSON object of knobs")
        if isinstance(payload, Response):
            return payload
        try:
            provider = self._provider(payload.pop("provider", None))
            self.state.faults.update(payload, provider)
        except KnobError as exc:
            return _error(400, "invalid_knob", str(exc))
        return json_response(self.state.faults.snapshot())

    async def reset(self, request: Request) -> Response:
        raw = await request.body()
        try:
            payload = orjson.loads(raw) if raw.strip() else {}
        except orjson.JSONDecodeError as exc:
            return _error(400, "invalid_json", str(exc))
        keep = bool(isinstance(payload, dict) and payload.get("keep_faults"))
        self.state.reset(faults=not keep)
        return json_response({"status": "reset", "kept_faults": keep})

    async def get_clock(self, request: Request) -> Response:
        return json_response(self.state.clock.snapshot())

    async def set_clock(self, request: Request) -> Response:
        payload = await _json_object(request, 'a JSON object: {"freeze"?: bool, "advance"?: seconds}')
        if isinstance(payload, Response):
            return payload
        try:
            self.state.clock.update(payload)
        except ValueError as exc:
            return _error(400, "invalid_clock", str(exc))
        return json_response(self.state.clock.snapshot())


def _chunks(entries: Iterator[LedgerEntry]) -> Iterator[list[LedgerEntry]]:
    chunk: list[LedgerEntry] = []
    for e in entries:
        chunk.append(e)
        if len(chunk) >= LEDGER_CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


async def _ndjson(entries: Iterator[LedgerEntry]) -> AsyncIterator[bytes]:
    dumps = orjson.dumps
    for chunk in _chunks(entries):
        yield b"\n".join(map(dumps, chunk)) + b"\n"


async def _json_array(entries: Iterator[LedgerEntry]) -> AsyncIterator[bytes]:
    yield b"["
    first = True
    for chunk in _chunks(entries):
        text = orjson.dumps(chunk)[1:-1]
        yield text if first else b"," + text
        first = False
    yield b"]"


def create_app(config: SandboxConfig | None = None, clock: Clock | None = None) -> SandboxApp:
    """Build the sandbox: the emulators named in `config.emulators` (default: all registered) and the admin
    endpoints. The shared state is at `app.sandbox`; `clock` (default: real time) is its only time source."""
    config = config or SandboxConfig()
    state = SandboxState(config, clock)
    names = config.emulators if config.emulators is not None else tuple(EMULATORS)
    routes: list[BaseRoute] = list(_Admin(state).routes())
    root_paths: dict[tuple[str, str], str] = {}
    for name in names:
        emulator = load_emulator(name)(state)
        state.emulators[name] = emulator
        own = list(emulator.routes())
        routes.append(Mount(f"/{name}", routes=own))
        if not emulator.mount_at_root:
            continue
        for route in own:
            if isinstance(route, Route):
                for method in route.methods or ():
                    other = root_paths.setdefault((route.path, method), name)
                    if other != name:
                        raise ValueError(
                            f"{name} and {other} both serve {method} {route.path}; set mount_at_root = False"
                        )
        routes.extend(own)
    app = SandboxApp(routes=routes)
    app.sandbox = state
    app.state.sandbox = state
    return app


def app_factory() -> SandboxApp:
    """For `uvicorn --factory smscast.sandbox.app:app_factory`: default configuration."""
    return create_app()
