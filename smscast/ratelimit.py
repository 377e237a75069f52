"""Rate limits in this process: a token bucket shared by every shard of a campaign, with AIMD back-off; and
`Permits`, the hand-out of permits drawn from a limit that other processes share (smscast/account_limit.py).

Shard task runs are threads, each with its own event loop, all drawing from one bucket per (provider,
endpoint). On a 429 the bucket pauses everyone until Retry-After and halves its rate; each success adds back
a little, so a storm of 429s slows us down instead of turning into a retry storm.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from smscast.runtime import Stop

HOLD_SECONDS = 0.25  # permits drawn ahead and not taken within this long are dropped: no late bursts
STOP_POLL = 0.25  # how often the campaign stops of waiting senders are looked at


class TokenBucket:
    def __init__(
        self,
        rate: float,
        burst: int = 1,
        *,
        min_rate: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        """`clock` and `sleep` go together: a test gives a fake clock and a sleep that advances it, so waits
        are exact and cost no real time."""
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.target_rate = rate
        self.rate = rate
        self.burst = max(1, burst)
        self.min_rate = min_rate if min_rate is not None else max(rate / 64, 0.05)
        self._clock = clock
        self._sleep = sleep
        self._tokens = float(self.burst)
        self._stamp = clock()
        self._paused_until = 0.0
        self._lock = threading.Lock()
        self.throttled = 0  # 429s seen, for the summary

    def _reserve(self) -> float:
        """Take a token if one is free and return 0, else return how long to wait before asking again."""
        with self._lock:
            now = self._clock()
            if now > self._stamp:  # during a pause _stamp is in the future: nothing refills
                self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
                self._stamp = now
            if now < self._paused_until:
                return self._paused_until - now
            if self._tokens >= 1:
                self._tokens -= 1
                return 0.0
            return (1 - self._tokens) / self.rate

    async def acquire(self) -> None:
        while (wait := self._reserve()) > 0:
            await self._sleep(wait)

    async def pause_over(self) -> None:
        """Return once no 429 pause is running (taking nothing)."""
        while (left := self._paused_until - self._clock()) > 0:
            await self._sleep(left)

    def penalise(self, retry_after: float | None) -> None:
        """A 429: pause every caller for Retry-After (or one token's time) and halve the rate."""
        with self._lock:
            now = self._clock()
            pause = retry_after if retry_after is not None else 1.0 / self.rate
            self._paused_until = max(self._paused_until, now + pause)
            self.rate = max(self.min_rate, self.rate / 2)
            # Refill only once the pause is over, so that its end is not a burst at the provider.
            self._tokens = 0.0
            self._stamp = max(self._stamp, self._paused_until)
            self.throttled += 1

    def reward(self) -> None:
        """A success: additive increase towards the configured rate."""
        with self._lock:
            if self.rate < self.target_rate:
                self.rate = min(self.target_rate, self.rate + self.target_rate / 20)

    def retarget(self, rate: float) -> None:
        """A new configured rate (the shared limit was changed): a bucket backing off stays under it."""
        with self._lock:
            backing_off = self.rate < self.target_rate
            self.target_rate = rate
            self.rate = min(self.rate, rate) if backing_off else rate
            self.min_rate = max(rate / 64, 0.05)


_BUCKETS: dict[tuple[str, str], TokenBucket] = {}
_BUCKETS_LOCK = threading.Lock()


def shared_bucket(provider: str, endpoint: str, rate: float, burst: int) -> TokenBucket:
    """The process-wide bucket for one provider endpoint (created on first use)."""
    with _BUCKETS_LOCK:
        bucket = _BUCKETS.get((provider, endpoint))
        if bucket is None or bucket.target_rate != rate or bucket.burst != max(1, burst):
            bucket = TokenBucket(rate, burst)
            _BUCKETS[(provider, endpoint)] = bucket
        return bucket


# ---- permits from a limit shared with other processes ------------------------------------------------------


@dataclass(eq=False)
class _Waiter:
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[None]
    stop: Stop | None


class Permits:
    """Permits drawn from a shared limit by a producer thread (a subclass's `_start_locked` starts it; its
    `_add_locked` puts what it drew here), handed to senders waiting on any event loop: each shard has its
    own. The producer draws ahead of need: a sender that finds none ready sets `_ahead`, so the next one is
    ready before it is asked for, and permits nobody took within HOLD_SECONDS are dropped, so that permits
    drawn at a quiet moment never go out later in a burst on top of other processes' traffic."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)  # the producer sleeps on it
        self._waiters: deque[_Waiter] = deque()
        self._reserve = 0.0  # permits drawn and not handed out yet (a part of one while a limit is tiny)
        self._reserve_until = 0.0
        self._ahead = False  # a sender found no permit ready: have the next block ready
        self._free_until = 0.0  # the shared limit is not in force until then: permits cost nothing
        self._held_until = 0.0  # a 429 paused this process until then: nothing is drawn meanwhile

    async def permit(self, stop: Stop | None) -> None:
        """Wait for a permit; return without one once `stop` is set (its caller checks it before sending)."""
        if stop is not None and stop.is_set():
            return
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._take_locked():
                return
            waiter = _Waiter(loop, loop.create_future(), stop)
            self._waiters.append(waiter)
            self._start_locked()
            self._wake.notify_all()
        try:
            await waiter.future
        except asyncio.CancelledError:
            with self._lock:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
                elif waiter.future.done() and not waiter.future.cancelled():
                    self._give_back_locked()  # handed over, never used
            raise

    def hold(self, until: float) -> None:
        """Draw nothing until `until` (time.monotonic()): the provider asked this process to wait, and its
        senders queued here would only hold permits, which other processes could use, through the pause."""
        with self._lock:
            self._held_until = max(self._held_until, until)

    def _start_locked(self) -> None:
        raise NotImplementedError

    # ---- for the producer --------------------------------------------------------------------------------

    def _wait_for_demand(self, idle: float) -> bool:
        """Until a sender needs a permit (True), or `idle` seconds without one (False)."""
        deadline = time.monotonic() + idle
        with self._lock:
            while not self._wanted_locked():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._wake.wait(left)
            return True

    def _pause(self, seconds: float) -> bool:
        """Sleep, releasing senders whose campaign stops meanwhile; False as soon as nobody needs a permit."""
        deadline = time.monotonic() + seconds
        with self._lock:
            while self._wanted_locked():
                left = deadline - time.monotonic()
                if left <= 0:
                    return True
                self._wake.wait(min(left, STOP_POLL))
            return False

    def _free_for(self, seconds: float) -> None:
        """The shared limit is not in force: hand out permits freely for a while (the bucket still paces)."""
        with self._lock:
            self._free_until = time.monotonic() + seconds
            self._hand_locked()

    # ---- under the lock ----------------------------------------------------------------------------------

    def _take_locked(self) -> bool:
        now = time.monotonic()
        if now < self._free_until:
            return True
        if now > self._reserve_until:
            self._reserve -= math.floor(self._reserve)  # stale whole permits go; a part of one waits for more
        if self._reserve >= 1:
            self._reserve -= 1
            if self._reserve < 1:
                self._ahead = True
                self._start_locked()
                self._wake.notify_all()
            return True
        self._ahead = True
        return False

    def _wanted_locked(self) -> bool:
        self._release_stopped_locked()
        if time.monotonic() < self._free_until:
            return False
        if self._waiters:
            return True
        return self._ahead and (self._reserve < 1 or time.monotonic() > self._reserve_until)

    def _add_locked(self, permits: float) -> None:
        now = time.monotonic()
        if now > self._reserve_until:
            self._reserve -= math.floor(self._reserve)
        self._reserve += permits
        self._hand_locked()
        if self._reserve >= 1:
            self._ahead = False
        self._reserve_until = now + HOLD_SECONDS

    def _give_back_locked(self) -> None:
        self._reserve += 1
        self._hand_locked()

    def _hand_locked(self) -> None:
        while self._waiters:
            free = time.monotonic() < self._free_until
            if not free and self._reserve < 1:
                return
            waiter = self._waiters.popleft()
            if not free:
                self._reserve -= 1
            self._deliver_later(waiter, counted=not free)

    def _release_stopped_locked(self) -> None:
        stopped = [w for w in self._waiters if w.stop is not None and w.stop.is_set()]
        for waiter in stopped:
            self._waiters.remove(waiter)
            self._deliver_later(waiter, counted=False)

    def _deliver_later(self, waiter: _Waiter, *, counted: bool) -> None:
        try:
            waiter.loop.call_soon_threadsafe(self._deliver, waiter, counted)
        except RuntimeError:  # its loop is closed: nobody waits there any more
            if counted:
                self._reserve += 1

    def _deliver(self, waiter: _Waiter, counted: bool) -> None:  # on the waiter's loop
        if not waiter.future.done():
            waiter.future.set_result(None)
        elif counted:  # cancelled meanwhile
            with self._lock:
                self._give_back_locked()
