"""Request-level idempotency (a key per request, e.g. sent.dm's `Idempotency-Key` header, textingline's batch
key): the first response is stored with a fingerprint of the request, and a repeat replays it."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from starlette.responses import Response


class IdempotencyStore:
    """Request-level idempotency (a key per request, e.g. sent.dm's `Idempotency-Key` header): the first
    response is stored with a fingerprint of the request; a repeat replays it. What a repeat with a different
    request means (replay, 409, 422) is the emulator's choice, so `get` returns the stored fingerprint too."""

    def __init__(self) -> None:
        self._store: dict[tuple[str, str, str], StoredResponse] = {}

    def get(self, provider: str, key: str, scope: str = "") -> StoredResponse | None:
        return self._store.get((provider, scope, key))

    def put(self, provider: str, key: str, fingerprint: str, response: Response, scope: str = "") -> None:
        self._store[(provider, scope, key)] = StoredResponse(
            fingerprint=fingerprint,
            status=response.status_code,
            body=bytes(response.body),
            media_type=response.media_type or "application/json",
        )

    def clear(self) -> None:
        self._store.clear()

    def __len__(self) -> int:
        return len(self._store)


@dataclass(frozen=True, slots=True)
class StoredResponse:
    fingerprint: str
    status: int
    body: bytes
    media_type: str

    def replay(self, headers: Mapping[str, str] | None = None) -> Response:
        return Response(self.body, status_code=self.status, media_type=self.media_type, headers=headers)


def fingerprint(body: bytes) -> str:
    return hashlib.blake2b(body, digest_size=16).hexdigest()
