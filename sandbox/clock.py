"""The sandbox's one time source: monotonic time for the rate limiter, wall time for timestamps.

Every emulator, the fault knobs and the ledger read time through the `Clock` of their `SandboxState`, never
from `time` or `datetime` directly. The clock runs in real time unless a test freezes it
(`POST /_sandbox/clock {"freeze": true}`) and moves it on by hand (`{"advance": 0.3}`): the sandbox runs in a
subprocess, so this admin call is how a test makes "200 requests in the same instant" or "one refill later"
hold exactly, however slowly a loaded machine gets through the requests. `POST /_sandbox/reset` lets it run
again.

Wall and monotonic time move together: both are the real readings plus one offset (the time advanced by
hand, and the time spent frozen taken away), so neither ever goes backwards.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

Timespec = Literal["milliseconds", "microseconds"]


class Clock:
    """Real time plus an offset; optionally frozen. Not thread-safe: the sandbox runs one event loop."""

    def __init__(
        self, wall: Callable[[], float] = time.time, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self._wall = wall
        self._mono = monotonic
        self._offset = 0.0
        self._frozen_at: float | None = None  # the real monotonic reading when it was frozen
        self._frozen_wall = 0.0  # the real wall reading then: a frozen clock reads exactly the same each time
        # Called after every freeze, resume or advance: whoever waits for a moment of sandbox time (the
        # delivery report scheduler) must look again, since a frozen clock never gets there by itself.
        self._listeners: list[Callable[[], None]] = []

    def subscribe(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def _changed(self) -> None:
        for listener in self._listeners:
            listener()

    @property
    def frozen(self) -> bool:
        return self._frozen_at is not None

    def monotonic(self) -> float:
        real = self._mono() if self._frozen_at is None else self._frozen_at
        return real + self._offset

    def time(self) -> float:
        """Seconds since the epoch, as `time.time()`."""
        wall = self._wall() if self._frozen_at is None else self._frozen_wall
        return wall + self._offset

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.time(), UTC)

    def iso(self, timespec: Timespec = "milliseconds") -> str:
        """Now as the vendors write it: ISO 8601 in UTC with a `Z`."""
        return self.now().isoformat(timespec=timespec).replace("+00:00", "Z")

    def freeze(self) -> None:
        if self._frozen_at is None:
            self._frozen_at, self._frozen_wall = self._mono(), self._wall()
            self._changed()

    def resume(self) -> None:
        """Run again from the frozen reading (the time spent frozen is skipped, not caught up)."""
        if self._frozen_at is not None:
            self._offset -= self._mono() - self._frozen_at
            self._frozen_at = None
            self._changed()

    def advance(self, seconds: float) -> None:
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"advance: expected a finite number of seconds >= 0, got {seconds!r}")
        self._offset += seconds
        if seconds:
            self._changed()

    def update(self, changes: dict[str, Any]) -> None:
        """The admin call's partial update: {"freeze": bool, "advance": seconds}, freezing first."""
        unknown = set(changes) - {"freeze", "advance"}
        if unknown:
            raise ValueError(f"unknown clock field(s) {', '.join(sorted(unknown))}; known: freeze, advance")
        freeze = changes.get("freeze")
        if freeze is not None and not isinstance(freeze, bool):
            raise ValueError(f"freeze: expected true or false, got {freeze!r}")
        advance = changes.get("advance", 0)
        if isinstance(advance, bool) or not isinstance(advance, int | float):
            raise ValueError(f"advance: expected a number of seconds, got {advance!r}")
        if not math.isfinite(advance) or advance < 0:
            raise ValueError(f"advance: expected a finite number of seconds >= 0, got {advance!r}")
        if freeze is True:
            self.freeze()
        elif freeze is False:
            self.resume()
        self.advance(float(advance))

    def snapshot(self) -> dict[str, Any]:
        return {"frozen": self.frozen, "time": self.time(), "monotonic": self.monotonic()}
