"""Delivery truth: what becomes of each message an emulator accepted, decided when it is accepted.

Every accepted message ends `delivered` or `undelivered` (with an error code from its vendor's vocabulary,
`Emulator.error_codes`), in smscast's delivery vocabulary (smscast/delivery.py; the values are repeated
here so that the sandbox process never imports polars). The choice is a pure function of the message id,
the `seed` knob and the `undelivered_share` knob of the moment of acceptance: a hash, not a random number
generator, so the ledger, a status lookup and a delivery report always say the same thing about a message,
and a restarted sandbox given the same seed and the same requests says it again. The final state is
reached `dlr_delay_ms` after acceptance on the sandbox clock; until then the message is `pending`.

The ledger stores the outcomes (sandbox/ledger.py); lookups read them (`Ledger.state`); delivery reports
are posted from them (sandbox/callbacks.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import NamedTuple

# smscast/delivery.py's DeliveryStatus values (tests/test_sandbox_delivery.py checks that they agree).
PENDING_STATUS = "pending"
DELIVERED_STATUS = "delivered"
UNDELIVERED_STATUS = "undelivered"
EXPIRED_STATUS = "expired"
STATUSES: tuple[str, ...] = (PENDING_STATUS, DELIVERED_STATUS, UNDELIVERED_STATUS, EXPIRED_STATUS)

_SCALE = float(1 << 64)


class Outcome(NamedTuple):
    status: str  # one of STATUSES
    error_code: str | None = None  # the vendor's code when not delivered
    error_message: str | None = None


DELIVERED = Outcome(DELIVERED_STATUS)
PENDING = Outcome(PENDING_STATUS)

# (code, message) pairs: a vendor's reasons for an undelivered message.
ErrorCodes = Sequence[tuple[str, str]]


def draw(seed: int, *parts: str) -> tuple[float, int]:
    """A uniform number in [0, 1) and a free 64-bit integer, both fixed by `seed` and `parts`."""
    digest = hashlib.blake2b("\x1f".join((str(seed), *parts)).encode(), digest_size=16).digest()
    return int.from_bytes(digest[:8], "big") / _SCALE, int.from_bytes(digest[8:], "big")


def chance(seed: int, share: float, *parts: str) -> bool:
    """Whether the draw for `parts` falls in the first `share` of [0, 1)."""
    return share > 0.0 and draw(seed, *parts)[0] < share


class Fate:
    """The outcome of a provider's messages under the knobs of one moment (one accepted request)."""

    __slots__ = ("codes", "provider", "seed", "share")

    def __init__(self, provider: str, seed: int, share: float, codes: ErrorCodes) -> None:
        if share > 0.0 and not codes:
            raise ValueError(f"{provider}: an undelivered share needs the vendor's error codes")
        self.provider = provider
        self.seed = seed
        self.share = share
        self.codes = codes

    def __call__(self, message_id: str, salt: str = "") -> Outcome:
        """`delivered`, or `undelivered` with one of the vendor's codes; `salt` tells one attempt of the same
        message from another (Postman's Retry Batch Send sends a message again under its id)."""
        if self.share <= 0.0:
            return DELIVERED
        u, k = draw(self.seed, "fate", self.provider, message_id, salt)
        if u >= self.share:
            return DELIVERED
        code, message = self.codes[k % len(self.codes)]
        return Outcome(UNDELIVERED_STATUS, code, message)
