"""The delivery-report receiver's ASGI app (Starlette), served by `smscast dlr serve` (smscast/dlr/cli.py).

    POST /dlr/instasent    one Instasent DLR                     }  each answered 200 {"recorded": n, "ignored": k}
    POST /dlr/sent-dm      one sent.dm webhook event             }  once its reports are durably recorded
    POST /dlr/generic      one report or an array (ours)         }  (smscast/dlr/writer.py, wal.py)
    GET  /healthz          {"status": "ok", "pid", counters}     no token: it tells nothing about reports

The report routes are plain ASGI apps (`_ReportRoute`), reached straight from `_ReceiverApp` for their exact
POSTs, past Starlette's middleware and router (which still serve /healthz, the lifespan, and the routes'
other methods); see `_ReportRoute` for why.

Every POST needs the shared secret, as query parameter `token` or header X-Smscast-Token (providers' webhook
settings often allow only a URL). Answers: 401 without a valid token, 413 for a body over the limit, 400 for
a body that can never become valid (what is wrong, by field), 503 when the batch could not be written or the
receiver is stopping (providers retry it). The token is never logged: the access log is off (uvicorn prints
query strings) and nothing here logs a URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import orjson
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from smscast.dlr.parse import PARSERS, BadReport, Parsed, Parser
from smscast.dlr.wal import WriteAheadLog
from smscast.dlr.writer import (
    DEFAULT_BATCH_MS,
    DEFAULT_BATCH_ROWS,
    DEFAULT_ROLL_MS,
    GroupCommitWriter,
    WriteFailed,
    WriteFn,
    WriterClosed,
    durable_append,
)
from smscast.results import dlr_inbox

__all__ = ["MAX_BODY_BYTES", "TOKEN_HEADER", "Receiver", "create_app"]

log = logging.getLogger("smscast.dlr")

TOKEN_HEADER = "x-smscast-token"
_TOKEN_HEADER_RAW = TOKEN_HEADER.encode()
TOKEN_PARAM = "token"
MAX_BODY_BYTES = 8 * 1024 * 1024
SUMMARY_INTERVAL = 60.0  # seconds between two summaries at info (only when something changed)


def _now_us() -> int:
    return time.time_ns() // 1000


def _json(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(payload), status, headers, media_type="application/json")


# An answer to a report POST: status, JSON payload, extra headers.
_Answer = tuple[int, dict[str, Any], dict[str, str] | None]


class Receiver:
    """The routes, the shared secret, and the counters the summaries print."""

    def __init__(
        self,
        writer: GroupCommitWriter,
        secret: str,
        *,
        now_us: Callable[[], int] = _now_us,
        max_body: int = MAX_BODY_BYTES,
    ) -> None:
        if not secret:
            raise ValueError("the receiver needs a shared secret")
        self.writer = writer
        # Compared as digests: equal length whatever was sent, so the comparison's time says nothing either.
        self._secret_digest = hashlib.sha256(secret.encode()).digest()
        self._now_us = now_us
        self.max_body = max_body
        self.requests = 0  # answered 2xx
        self.reports = 0  # reports in those requests (before in-batch de-duplication)
        self.ignored = 0  # events acknowledged but not recorded (not delivery reports)
        self.rejected: Counter[str] = Counter()

    def routes(self) -> list[Route]:
        routes = [Route(path, route, methods=["POST"]) for path, route in self.report_routes().items()]
        routes.append(Route("/healthz", self.healthz, methods=["GET"]))
        return routes

    def report_routes(self) -> dict[str, _ReportRoute]:
        return {f"/dlr/{name}": _ReportRoute(self, parse) for name, parse in PARSERS.items()}

    def snapshot(self) -> dict[str, Any]:
        s = self.writer.stats
        wal = self.writer.wal
        segments, logged = (0, 0) if wal is None else wal.pending
        return {
            "requests": self.requests,
            "reports": self.reports,
            "recorded": s.reports,
            "duplicates_in_batch": s.duplicates,
            "ignored_events": self.ignored,
            "parts": s.parts,
            "failed_flushes": s.failed_flushes,
            "rejected": dict(self.rejected),
            "arriving": self.writer.in_arrival,
            "held": self.writer.held,
            # The write-ahead log: reports acknowledged, not yet rolled into the inbox (0 without a log).
            "log": wal is not None,
            "log_segments": segments,
            "log_reports": logged,
            "rolled": s.rolled,
            "failed_rolls": s.failed_rolls,
        }

    def summary(self) -> str:
        s = self.writer.stats
        rejected = ", ".join(f"{k} {v}" for k, v in sorted(self.rejected.items())) or "none"
        where = (
            f"{s.parts} parts"
            if self.writer.wal is None
            else f"the log, {s.rolled} rolled into {s.parts} parts"
        )
        return (
            f"dlr: {self.reports} reports taken in {self.requests} requests, {s.reports} recorded in "
            f"{where}, {s.duplicates} duplicates in batch, {self.ignored} events ignored, "
            f"{s.failed_flushes} failed flushes, {s.failed_rolls} failed rolls; rejected requests: {rejected}"
        )

    async def healthz(self, request: Request) -> Response:
        return _json({"status": "ok", "pid": os.getpid(), **self.snapshot()})

    def _authorized(self, scope: Scope) -> bool:
        given: str | None = None
        for name, value in scope["headers"]:
            if name == _TOKEN_HEADER_RAW:
                given = value.decode("latin-1")  # as Starlette reads a header
                break
        if given is None:
            # As Starlette's query_params would: percent-decoded, the last of repeated names.
            pairs = parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
            given = next((v for k, v in reversed(pairs) if k == TOKEN_PARAM), None)
        if not given:
            return False
        digest = hashlib.sha256(given.encode("utf-8", "surrogateescape")).digest()
        return hmac.compare_digest(digest, self._secret_digest)

    async def _body(self, scope: Scope, receive: Receive) -> bytes | None:
        """The body, or None when it is over the limit (read no further than the limit). Raises
        ClientDisconnect if the client goes away first."""
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.max_body:
                return None
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnect()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _reject(
        self, reason: str, status: int, message: str, headers: dict[str, str] | None = None
    ) -> _Answer:
        self.rejected[reason] += 1
        return status, {"error": {"code": reason, "message": message}}, headers

    async def _take(self, scope: Scope, receive: Receive, parse: Parser) -> Parsed | _Answer:
        """The request's reports, or the answer that refuses it."""
        try:
            body = await self._body(scope, receive)
        except ClientDisconnect:  # gone before its body arrived: nobody to answer
            return self._reject("disconnected", 400, "the client went away")
        if body is None:
            return self._reject("too_large", 413, f"the body is over {self.max_body} bytes")
        try:
            return parse(orjson.loads(body), self._now_us())
        except orjson.JSONDecodeError as exc:
            return self._reject("invalid_json", 400, f"the body is not JSON: {exc}")
        except BadReport as exc:
            return self._reject("invalid_report", 400, str(exc))

    async def answer(self, scope: Scope, receive: Receive, parse: Parser) -> _Answer:
        """One POST of reports, read, parsed, recorded: its answer."""
        if not self._authorized(scope):
            return self._reject(
                "unauthorized",
                401,
                f"a valid token is required (query `{TOKEN_PARAM}` or header X-Smscast-Token)",
            )
        # Until it is parsed, the writer holds its batch for this request's reports (writer.py).
        self.writer.arriving()
        try:
            parsed = await self._take(scope, receive, parse)
        finally:
            self.writer.arrived()
        if not isinstance(parsed, Parsed):
            return parsed
        if parsed.reports:
            try:
                await self.writer.submit(parsed.reports)
            except WriteFailed:
                return self._reject(
                    "write_failed", 503, "the report could not be recorded; retry", {"Retry-After": "5"}
                )
            except WriterClosed:
                return self._reject(
                    "shutting_down", 503, "the receiver is stopping; retry", {"Retry-After": "5"}
                )
        self.requests += 1
        self.reports += len(parsed.reports)
        self.ignored += parsed.ignored
        return 200, {"recorded": len(parsed.reports), "ignored": parsed.ignored}, None


class _ReportRoute:
    """A report route as a plain ASGI app: under load Starlette's Request, Response and middleware cost as
    much CPU as the rest of the request, so `_ReceiverApp` sends a route's exact POSTs straight here (the
    Router still serves its other methods and paths: 405, redirects)."""

    def __init__(self, receiver: Receiver, parse: Parser) -> None:
        self.receiver = receiver
        self.parse = parse

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        status, payload, extra = await self.receiver.answer(scope, receive, self.parse)
        body = orjson.dumps(payload)
        headers = [(b"content-length", str(len(body)).encode()), (b"content-type", b"application/json")]
        headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (extra or {}).items()]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class _ReceiverApp(Starlette):
    def __init__(self, fast: dict[str, _ReportRoute], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._fast = fast

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            route = self._fast.get(scope["path"])
            if route is not None:
                await route(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


async def _summaries(receiver: Receiver, interval: float) -> None:
    last = ""
    while True:
        await asyncio.sleep(interval)
        line = receiver.summary()
        if line != last:
            log.info("%s", line)
            last = line


def create_app(
    results: str,
    secret: str,
    *,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    batch_ms: float = DEFAULT_BATCH_MS,
    summary_interval: float = SUMMARY_INTERVAL,
    write: WriteFn | None = None,
    wal_dir: Path | None = None,
    roll_ms: float = DEFAULT_ROLL_MS,
    max_body: int = MAX_BODY_BYTES,
) -> Starlette:
    """The receiver for a results location: reports go to `dlr_inbox(results)`, through the write-ahead log
    in `wal_dir` (rolled every `roll_ms`), or without one (wal_dir None) as a part per batch, written by
    `write` (default: smscast.delivery.append). `app.state.receiver` is the Receiver (its writer at
    `.writer`); `app.state.loop` is the loop serving it once started."""
    inbox = dlr_inbox(results)
    if wal_dir is not None and write is not None:
        raise ValueError("`write` writes parts without a log: pass one of wal_dir and write")
    writer = GroupCommitWriter(
        inbox,
        batch_rows=batch_rows,
        batch_ms=batch_ms,
        write=write or durable_append,
        wal=None if wal_dir is None else WriteAheadLog(wal_dir, inbox),
        roll_ms=roll_ms,
    )
    receiver = Receiver(writer, secret, max_body=max_body)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.loop = asyncio.get_running_loop()
        await writer.start()
        periodic = (
            asyncio.create_task(_summaries(receiver, summary_interval)) if summary_interval > 0 else None
        )
        try:
            yield
        finally:
            # What the stopping server still holds is written before the process ends.
            await writer.close()
            if periodic is not None:
                periodic.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await periodic
            log.info("%s (closing)", receiver.summary())

    app = _ReceiverApp(receiver.report_routes(), routes=receiver.routes(), lifespan=lifespan)
    app.state.receiver = receiver
    return app
