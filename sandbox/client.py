"""A small typed client for the sandbox's admin endpoints (sandbox/app.py), for tests, the demo and the
benchmark."""

from __future__ import annotations

from types import TracebackType
from typing import Any

import httpx
import orjson

from smscast.sandbox.ledger import LedgerEntry


class SandboxAdminError(RuntimeError):
    """The sandbox refused an admin call (unknown knob, unknown provider…)."""


class SandboxClient:
    def __init__(self, base_url: str, timeout: float = 60.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> SandboxClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @staticmethod
    def _json(response: httpx.Response) -> Any:
        if response.status_code >= 400:
            try:
                err = orjson.loads(response.content)["error"]
                detail = f"{err['code']}: {err['message']}"
            except (orjson.JSONDecodeError, KeyError, TypeError):
                detail = response.text[:500]
            raise SandboxAdminError(
                f"{response.request.method} {response.request.url.path}: HTTP {response.status_code} {detail}"
            )
        return orjson.loads(response.content)

    def health(self) -> dict[str, Any]:
        result: dict[str, Any] = self._json(self._http.get("/_sandbox/health"))
        return result

    def ledger(
        self,
        provider: str | None = None,
        batch: str | None = None,
        *,
        offset: int = 0,
        limit: int | None = None,
    ) -> list[LedgerEntry]:
        """Ledger entries in acceptance order (streamed as NDJSON), each with its message's delivery truth:
        `delivery_status` (the final outcome: delivered | undelivered | expired), `delivery_error_code` (the
        vendor's code, None unless undelivered) and `delivery_at` (when it is reached; pending before)."""
        params: dict[str, str | int] = {"format": "ndjson", "offset": offset}
        if provider is not None:
            params["provider"] = provider
        if batch is not None:
            params["batch"] = batch
        if limit is not None:
            params["limit"] = limit
        entries: list[LedgerEntry] = []
        with self._http.stream("GET", "/_sandbox/ledger", params=params) as response:
            if response.status_code >= 400:
                response.read()
                self._json(response)
            for line in response.iter_lines():
                if line:
                    entries.append(orjson.loads(line))
        return entries

    def ledger_parquet(self, provider: str | None = None) -> bytes:
        """The ledger as one Parquet file (read it with polars.read_parquet(io.BytesIO(data)))."""
        params = {"format": "parquet", **({"provider": provider} if provider else {})}
        response = self._http.get("/_sandbox/ledger", params=params)
        if response.status_code >= 400:
            self._json(response)
        return response.content

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self._json(self._http.get("/_sandbox/stats"))
        return result

    def callbacks(self) -> dict[str, Any]:
        """Delivery report counters (sandbox/callbacks.py): reports, posted, acknowledged, retried, abandoned,
        reports_acknowledged, reports_abandoned, scheduled, queued, and the same per route."""
        result: dict[str, Any] = self.stats()["callbacks"]
        return result

    def faults(self) -> dict[str, Any]:
        result: dict[str, Any] = self._json(self._http.get("/_sandbox/faults"))
        return result

    def set_faults(self, provider: str | None = None, **knobs: Any) -> dict[str, Any]:
        """Partial update of the fault knobs (globally, or for one provider); answers the new state."""
        payload = dict(knobs)
        if provider is not None:
            payload["provider"] = provider
        result: dict[str, Any] = self._json(
            self._http.post("/_sandbox/faults", content=orjson.dumps(payload))
        )
        return result

    def reset(self, *, keep_faults: bool = False) -> None:
        self._json(self._http.post("/_sandbox/reset", content=orjson.dumps({"keep_faults": keep_faults})))

    def clock(self, *, freeze: bool | None = None, advance: float = 0.0) -> dict[str, Any]:
        """Freeze (or restart) the sandbox's clock and move it on by `advance` seconds; answers its state.
        A test of a rate limit freezes it, so that a loaded machine's slowness never reads as time passing."""
        payload: dict[str, Any] = {"advance": advance} | ({} if freeze is None else {"freeze": freeze})
        result: dict[str, Any] = self._json(self._http.post("/_sandbox/clock", content=orjson.dumps(payload)))
        return result
