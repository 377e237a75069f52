"""The closed vocabulary of per-recipient statuses (DESIGN.md, results dataset).

Every provider code maps onto one of these; a code we do not know maps to UNKNOWN rather than raising,
because an unrecognised answer from a provider means "we cannot say whether it was sent".
"""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    ACCEPTED = "accepted"  # the provider took the message (sync id or async job reference)
    INVALID = "invalid"  # failed our validation; never sent
    REJECTED = "rejected"  # the provider refused it for good; re-sending will not help
    FAILED = "failed"  # transient failure, never accepted: safe to re-send
    UNKNOWN = "unknown"  # sent, outcome not known: reconcile, never blindly re-send


STATUSES: tuple[str, ...] = tuple(s.value for s in Status)

# Statuses the retry flow may re-send. UNKNOWN is retriable only for providers whose idempotency
# makes a re-send harmless; that decision lives with the provider's capabilities, not here.
RETRIABLE: frozenset[Status] = frozenset({Status.FAILED})
