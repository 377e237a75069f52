"""A token bucket shared by every shard of a campaign in this process, with AIMD back-off.

Prefect's global concurrency limits cost ~0.1 s per acquisition and degrade under contention (docs/design.md), so
the limiter lives in-process: shard task runs are threads, each with its own event loop, all drawing from one
bucket per (provider, endpoint). On a 429 the bucket pauses everyone until Retry-After and halves its rate;
each success adds back a little, so a storm of 429s slows us down instead of turning into a retry storm.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable


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
