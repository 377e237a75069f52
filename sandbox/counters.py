"""Per-provider request and row counters of the sandbox (the admin stats' `providers`), kept apart from the
ledger's storage."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Counters:
    """Per-provider counters (messages accepted are the ledger's own count). `requests` is keyed by HTTP
    status as a string, plus the pseudo statuses ``drop_before``, ``drop_after`` (connection closed with no
    response) and ``timeout`` (response held back)."""

    requests: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0  # rows answered from the idempotency index, no new entry
    rejected: int = 0  # rows refused one by one (permanent and transient)
    rejected_codes: dict[str, int] = field(default_factory=dict)

    def request(self, status: int | str) -> None:
        k = str(status)
        self.requests[k] = self.requests.get(k, 0) + 1

    def reject(self, code: str, n: int = 1) -> None:
        self.rejected += n
        self.rejected_codes[code] = self.rejected_codes.get(code, 0) + n

    def as_dict(self, accepted: int) -> dict[str, Any]:
        return {
            "requests": dict(self.requests),
            "accepted": accepted,
            "duplicates": self.duplicates,
            "rejected": self.rejected,
            "rejected_codes": dict(self.rejected_codes),
        }
