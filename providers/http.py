"""Reading and writing HTTP for provider modules: JSON in and out, Retry-After, times."""

from __future__ import annotations

import email.utils
import time
from datetime import datetime
from typing import Any

import httpx
import orjson
import polars as pl


def retry_after(response: httpx.Response) -> float | None:
    """Retry-After as seconds, from either delta-seconds or an HTTP date; None when absent or unreadable."""
    raw = response.headers.get("retry-after")
    if raw is None:
        return None
    raw = raw.strip()
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def json_request(method: str, url: str, payload: Any, headers: dict[str, str]) -> httpx.Request:
    """A JSON request serialised with orjson (httpx's `json=` uses the standard library, ~5x slower for a
    batch of a thousand messages)."""
    return httpx.Request(
        method, url, content=orjson.dumps(payload), headers={**headers, "Content-Type": "application/json"}
    )


def json_rows(frame: pl.DataFrame) -> orjson.Fragment:
    """The rows of `frame` as a JSON array of objects keyed by its column names, to place in a payload for
    `json_request`. Polars writes it in one call, where `to_dicts()` made a dict per row for orjson to
    walk (nearly three times the CPU for a batch of a thousand). For columns of strings, numbers, booleans and nulls
    only: other types (times) are written in Polars' own way, which is not orjson's."""
    return orjson.Fragment(frame.write_json())


def json_body(response: httpx.Response) -> Any:
    """The response's JSON, or None when it is not JSON (a proxy's HTML error page, an empty body)."""
    try:
        return orjson.loads(response.content)
    except ValueError:
        return None


def iso_time(value: Any) -> datetime | None:
    """An ISO 8601 time with its zone (`2026-05-01T14:30:00.000Z`), else None: a time we cannot place in
    UTC is not used."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None
