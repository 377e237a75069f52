"""Auth helpers of the emulators: each checks one request against the one key its provider accepts."""

from __future__ import annotations

import base64
import binascii
import hmac
from typing import Protocol

from starlette.requests import Request


class Auth(Protocol):
    def check(self, request: Request, expected: str) -> bool: ...


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


class BearerAuth:
    """`Authorization: Bearer <key>`."""

    def check(self, request: Request, expected: str) -> bool:
        raw = request.headers.get("authorization", "")
        scheme, _, token = raw.partition(" ")
        return scheme.lower() == "bearer" and _same(token.strip(), expected)


class HeaderKeyAuth:
    """The key in a header of its own, e.g. `x-api-key: <key>`."""

    def __init__(self, header: str = "x-api-key") -> None:
        self.header = header.lower()

    def check(self, request: Request, expected: str) -> bool:
        return _same(request.headers.get(self.header, ""), expected)


class BasicAuth:
    """HTTP basic auth; the configured key is `user:password` (e.g. textingline's `key_id:secret`)."""

    def check(self, request: Request, expected: str) -> bool:
        raw = request.headers.get("authorization", "")
        scheme, _, token = raw.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            given = base64.b64decode(token.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return False
        return _same(given, expected)
