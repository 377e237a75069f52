"""The delivery-report receiver's ASGI app (Starlette), served by `smscast dlr serve` (smscast/dlr/cli.py).

    POST /dlr/instasent    one Instasent DLR                     }  each answered 200 {"recorded": n, "ignored": k}
    POST /dlr/sent-dm      one sent.dm webhook event             }  once its reports are durably recorded
    POST /dlr/generic      one report or an array (ours)         }  (smscast/dlr/writer.py)
    GET  /healthz          {"status": "ok", "pid", counters}     no token: it tells nothing about reports

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
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from smscast.dlr.parse import PARSERS, BadReport, Parsed, Parser
from smscast.dlr.writer import (
    DEFAULT_BATCH_MS,
    DEFAULT_BATCH_ROWS,
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
TOKEN_PARAM = "token"
MAX_BODY_BYTES = 8 * 1024 * 1024
SUMMARY_INTERVAL = 60.0  # seconds between two summaries at info (only when something changed)


def _now_us() -> int:
    return time.time_ns() // 1000


def _json(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(payload), status, headers, media_type="application/json")


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    return _json({"error": {"code": code, "message": message}}, status, headers)


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
        routes = [
            Route(f"/dlr/{name}", self._endpoint(parse), methods=["POST"]) for name, parse in PARSERS.items()
        ]
        routes.append(Route("/healthz", self.healthz, methods=["GET"]))
        return routes

    def snapshot(self) -> dict[str, Any]:
        s = self.writer.stats
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
        }

    def summary(self) -> str:
        s = self.writer.stats
        rejected = ", ".join(f"{k} {v}" for k, v in sorted(self.rejected.items())) or "none"
        return (
            f"dlr: {self.reports} reports taken in {self.requests} requests, {s.reports} recorded in "
            f"{s.parts} parts, {s.duplicates} duplicates in batch, {self.ignored} events ignored, "
            f"{s.failed_flushes} failed flushes; rejected requests: {rejected}"
        )

    async def healthz(self, request: Request) -> Response:
        return _json({"status": "ok", "pid": os.getpid(), **self.snapshot()})

    def _authorized(self, request: Request) -> bool:
        given = request.headers.get(TOKEN_HEADER)
        if given is None:
            given = request.query_params.get(TOKEN_PARAM)
        if not given:
            return False
        digest = hashlib.sha256(given.encode("utf-8", "surrogateescape")).digest()
        return hmac.compare_digest(digest, self._secret_digest)

    async def _body(self, request: Request) -> bytes | None:
        """The body, or None when it is over the limit (read no further than the limit)."""
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit():
            if int(declared) > self.max_body:
                return None
            return await request.body()
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body:
                return None
            chunks.append(chunk)
        return b"".join(chunks)

    def _reject(
        self, reason: str, status: int, message: str, headers: dict[str, str] | None = None
    ) -> Response:
        self.rejected[reason] += 1
        return _error(status, reason, message, headers)

    async def _take(self, request: Request, parse: Parser) -> Parsed | Response:
        """The request's reports, or the answer that refuses it."""
        try:
            body = await self._body(request)
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

    def _endpoint(self, parse: Parser) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            if not self._authorized(request):
                return self._reject(
                    "unauthorized",
                    401,
                    f"a valid token is required (query `{TOKEN_PARAM}` or header X-Smscast-Token)",
                )
            # Until it is parsed, the writer holds its batch for this request's reports (writer.py).
            self.writer.arriving()
            try:
                parsed = await self._take(request, parse)
            finally:
                self.writer.arrived()
            if isinstance(parsed, Response):
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
            return _json({"recorded": len(parsed.reports), "ignored": parsed.ignored})

        return endpoint


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
    write: WriteFn = durable_append,
    max_body: int = MAX_BODY_BYTES,
) -> Starlette:
    """The receiver for a results location: reports go to `dlr_inbox(results)`. `app.state.receiver` is the
    Receiver (its writer at `.writer`); `app.state.loop` is the loop serving it once started."""
    writer = GroupCommitWriter(dlr_inbox(results), batch_rows=batch_rows, batch_ms=batch_ms, write=write)
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

    app = Starlette(routes=receiver.routes(), lifespan=lifespan)
    app.state.receiver = receiver
    return app
