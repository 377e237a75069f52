"""The closed vocabulary of per-recipient statuses (docs/contracts.md, statuses).

Every provider answer maps onto one of these, by one of two rules (providers/base.py, `Provider`):

* an explicit refusal ("not this row, code X") is never UNKNOWN: a code we do not know is REJECTED, with the
  provider's code and message kept, because the provider said it did not take the row; only its own document
  can make a code transient (FAILED);
* a state of a message the provider holds ("queued", "delivered", …) that we do not know is UNKNOWN, because
  it may well mean accepted and we cannot tell.

UNKNOWN is kept for exactly that: the provider may have accepted the row and we cannot tell (a lost answer,
an unreadable 2xx, a state we cannot read). A non-2xx answer refuses the whole request: its rows are REJECTED
(FAILED where the request never got through whole, HTTP 408).
"""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    ACCEPTED = "accepted"  # the provider took the message (sync id or async job reference)
    INVALID = "invalid"  # failed our validation; never sent
    SUPPRESSED = (
        "suppressed"  # contact policy forbids messaging it in this campaign; never sent, never retried
    )
    HELD = "held"  # contact policy allows it, but not now (quiet hours): a release sends it at `release_at`
    REJECTED = "rejected"  # the provider refused it for good; re-sending will not help
    FAILED = "failed"  # transient failure, never accepted: safe to re-send
    UNKNOWN = "unknown"  # sent, outcome not known: reconcile, never blindly re-send


STATUSES: tuple[str, ...] = tuple(s.value for s in Status)

# The statuses a contact policy gives (tasks/policy.py). Summaries show them only where a policy applied, so
# that the summaries and `smscast.campaign.finished` events of campaigns without one keep their shape.
POLICY: frozenset[Status] = frozenset({Status.SUPPRESSED, Status.HELD})

# Statuses every summary counts even at zero.
COUNTED: tuple[str, ...] = tuple(s for s in STATUSES if s not in POLICY)

# Statuses no attempt ever sends or re-sends: smscast itself decided the row is not to be messaged.
NEVER_SENT: frozenset[Status] = frozenset({Status.INVALID, Status.SUPPRESSED})

# Statuses this attempt did not send: the ones above, and HELD, which a later release attempt sends.
NOT_SENT: frozenset[Status] = NEVER_SENT | {Status.HELD}

# Statuses the retry flow may re-send. UNKNOWN is retriable only for providers whose idempotency
# makes a re-send harmless; that decision lives with the provider's capabilities, not here.
RETRIABLE: frozenset[Status] = frozenset({Status.FAILED})
