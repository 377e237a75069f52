"""What the shard threads of one campaign run share, and the process-wide registry they find it in:

* `Stop`, the stop signal: set once (a campaign-stopping refusal, a lost lock), checked before every request;
* `Progress`: a throttled log line on the terminal and a Prefect progress artifact, both at most every
  `every` seconds so that reporting never slows sending;
* `Runtime`, the two together, registered under a key (`register`/`lookup`/`unregister`): a Prefect task
  takes only serialisable parameters, so the shard tasks get the key and look their run's runtime up.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable


class Progress:
    def __init__(
        self,
        total: int,
        logger: logging.Logger | logging.LoggerAdapter[logging.Logger],
        *,
        every: float = 2.0,
        publish: Callable[[float], None] | None = None,
    ) -> None:
        self.total = max(total, 0)
        self.done = 0
        self.counts: dict[str, int] = {}
        self._logger = logger
        self._every = every
        self._publish = publish
        self._lock = threading.Lock()
        self._start = time.monotonic()
        self._last = 0.0

    def update(self, rows: int, counts: dict[str, int]) -> None:
        with self._lock:
            self.done += rows
            for k, v in counts.items():
                self.counts[k] = self.counts.get(k, 0) + v
            now = time.monotonic()
            if now - self._last < self._every and self.done < self.total:
                return
            self._last = now
            done, counts_now = self.done, dict(self.counts)
        self._report(done, counts_now, now)

    def _report(self, done: int, counts: dict[str, int], now: float) -> None:
        pct = 100.0 * done / self.total if self.total else 100.0
        rate = done / max(now - self._start, 1e-9)
        detail = " ".join(f"{k} {v:,}" for k, v in sorted(counts.items()))
        self._logger.info(
            "sent %s/%s (%.1f%%) · %s rows/s · %s",
            f"{done:,}",
            f"{self.total:,}",
            pct,
            f"{rate:,.0f}",
            detail,
        )
        if self._publish is not None:
            try:
                self._publish(pct)
            except Exception:  # progress is a courtesy; never let it fail a send
                self._logger.debug("progress artifact update failed", exc_info=True)


class Stop:
    """The campaign-wide stop signal: set by the first batch that meets a campaign-stopping refusal, or by
    the lock's heartbeat if this run lost its lock. Batches check it before every request."""

    def __init__(self, *watched: Callable[[], bool]) -> None:
        self._event = threading.Event()
        self._watched = watched  # each returns True while sending may go on (e.g. CampaignLock.held)
        self.code: str | None = None
        self.reason: str | None = None

    def set(self, code: str, reason: str) -> None:
        if not self._event.is_set():
            self.code, self.reason = code, reason
            self._event.set()

    def is_set(self) -> bool:
        if not self._event.is_set() and not all(ok() for ok in self._watched):
            self.set(
                "lock_lost", "another run took over this campaign (or may have: this run's lease ran out)"
            )
        return self._event.is_set()


class Runtime:
    """What the shard threads of one run share: the stop signal and the progress."""

    def __init__(self, progress: Progress, stop: Stop | None = None) -> None:
        self.stop = stop or Stop()
        self.progress = progress


_RUNTIMES: dict[str, Runtime] = {}
_LOCK = threading.Lock()


def register(key: str, runtime: Runtime) -> None:
    with _LOCK:
        _RUNTIMES[key] = runtime


def lookup(key: str) -> Runtime | None:
    with _LOCK:
        return _RUNTIMES.get(key)


def unregister(key: str) -> None:
    with _LOCK:
        _RUNTIMES.pop(key, None)
