"""What the shard threads of one campaign run share, and the process-wide registry they find it in:

* `Stop`, the stop signal: set once (a campaign-stopping refusal, a lost lock), checked before every request;
* `Progress`: a throttled log line on the terminal and a Prefect progress artifact, both at most every
  `every` seconds so that reporting never slows sending;
* `Budget`: the spend cap's running account (smscast/pricing.py), reserved before every request;
* `Runtime`, the three together, registered under a key (`register`/`lookup`/`unregister`): a Prefect task
  takes only serialisable parameters, so the shard tasks get the key and look their run's runtime up;
* `SharedStop`, the stop signal across processes and machines (shards on a Dask cluster): a marker file on
  the results storage that any process may set and every process polls (smscast/dask_runner.py).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import TracebackType

from smscast import storage

log = logging.getLogger("smscast.runtime")

# How often a shard in another process looks for a stop set elsewhere: it then stops sending within about
# this long (plus one storage read), and each look is one small read (a GET on S3).
STOP_POLL = 0.5


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


Check = Callable[[], tuple[str, str] | None]  # (code, reason) once sending must stop, else None


class SharedStop(Stop):
    """A `Stop` that crosses processes: `set` here also writes `marker` (first writer wins, so every process
    reports the same first cause), and a marker written by another process sets it here. A thread looks
    every `every` seconds (at once after a local `set`), so a stop anywhere reaches every shard within about
    that long; `checks` (e.g. a shard's view of the campaign's lease, a storage read) run there too, never
    on the senders' event loops. `is_set` stays a memory read. Use it as a context manager: entering looks
    once (a shard that starts after a stop sends nothing) and starts the thread; leaving stops the thread
    and looks once more."""

    def __init__(
        self,
        marker: str,
        *watched: Callable[[], bool],
        checks: Sequence[Check] = (),
        every: float = STOP_POLL,
    ) -> None:
        super().__init__(*watched)
        self.marker = marker
        self._checks = tuple(checks)
        self._every = every
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._published = False
        self._thread: threading.Thread | None = None

    def set(self, code: str, reason: str) -> None:
        super().set(code, reason)
        self._wake.set()  # publish now rather than at the next look

    def poll(self) -> None:
        """One look: publish this process's stop, or adopt another's, or run the checks."""
        if not self.is_set():
            for check in self._checks:
                if (found := check()) is not None:
                    self.set(*found)
                    break
        if self.is_set():
            if not self._published:
                self.publish()
            return
        held = storage.get_versioned(self.marker)
        if held is not None:
            code, reason = _parse_marker(held[0])
            self._published = True  # it is on record already: only the first cause is kept
            super().set(code, reason)

    def publish(self) -> None:
        """Put this stop on record for every other process (a no-op if one is there already)."""
        record = {
            "code": self.code,
            "reason": self.reason,
            "at": time.time(),
            "by": f"{socket.gethostname()}:{os.getpid()}",
        }
        storage.put_if(self.marker, json.dumps(record).encode(), None)
        self._published = True

    def _run(self) -> None:
        while not self._closed.is_set():
            try:
                self.poll()
            except Exception:  # a storage hiccup: look again next time
                log.debug("stop marker %s: look failed", self.marker, exc_info=True)
            if self._wake.wait(self._every):
                self._wake.clear()

    def __enter__(self) -> SharedStop:
        self.poll()
        self._thread = threading.Thread(target=self._run, name="smscast-stop", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._closed.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        try:
            # A last look: this process's stop goes on record before its shard returns, and the flow learns
            # of a stop a shard set just before the end (it fails the run then, as on threads).
            self.poll()
        except Exception:
            log.warning("could not read or record the campaign stop at %s", self.marker, exc_info=True)


def _parse_marker(raw: bytes) -> tuple[str, str]:
    try:
        record = json.loads(raw)
        return str(record["code"]), str(record["reason"])
    except (ValueError, KeyError, TypeError):  # written whole, so only a foreign file reads so
        return "stopped", "the campaign was stopped by another process"


class Budget:
    """The spend cap's running account, in integer units (smscast/pricing.py SCALE), shared by every shard
    thread and every batch in their event loops: a batch reserves its cost before its request is posted and
    gets back only the cost of rows the provider certainly did not take. The first batch that does not fit
    exhausts it: the campaign stops sending there, rather than picking smaller batches that still fit."""

    def __init__(self, limit: int, spent: int = 0) -> None:
        self.limit = limit
        self._spent = spent
        self._refused = False
        self._lock = threading.Lock()

    @property
    def spent(self) -> int:
        """Committed so far: what was spent before this run, plus every reservation not refunded."""
        with self._lock:
            return self._spent

    @property
    def exhausted(self) -> bool:
        with self._lock:
            return self._refused

    def reserve(self, amount: int) -> bool:
        with self._lock:
            if self._refused or self._spent + amount > self.limit:
                self._refused = True
                return False
            self._spent += amount
            return True

    def refund(self, amount: int) -> None:
        with self._lock:
            self._spent -= amount


class Reservation:
    """One request's hold on the budget: `take` before posting it (once: a request retried with the same keys
    is charged once), `keep` once it may have been accepted (never refunded then), `settle` with its rows'
    outcomes to give back the cost of rows the provider certainly did not take."""

    def __init__(self, budget: Budget, costs: Mapping[int, int], kept: frozenset[int] = frozenset()) -> None:
        self._budget = budget
        self._costs = costs  # row_index -> units
        self._kept_rows = kept  # rows whose cost stays spent whatever this request makes of them
        self._held = 0
        self._taken = False
        self._kept = False

    def take(self) -> bool:
        if self._taken:
            return True
        amount = sum(self._costs.values())
        if not self._budget.reserve(amount):
            return False
        self._held, self._taken = amount, True
        return True

    def keep(self) -> None:
        self._kept = True

    def refund_all(self) -> None:
        """The request was refused whole: its parts reserve for themselves when they are posted."""
        if not self._kept:
            self._budget.refund(self._held)
            self._held = 0

    def settle(self, rows: Iterable[tuple[int, bool]]) -> None:
        """`rows`: (row_index, may have been accepted) for each row the request carried."""
        if self._kept or not self._held:
            return
        back = sum(self._costs.get(i, 0) for i, spent in rows if not spent and i not in self._kept_rows)
        self._budget.refund(back)
        self._held -= back


class Runtime:
    """What the shard threads of one run share: the stop signal, the progress and the spend cap's budget."""

    def __init__(
        self,
        progress: Progress,
        stop: Stop | None = None,
        budget: Budget | None = None,
        *,
        shards_at_once: int | None = None,
    ) -> None:
        self.stop = stop or Stop()
        self.progress = progress
        self.budget = budget
        # How many shards send side by side across the run (None: the thread pool's SHARD_WORKERS): the
        # provider's concurrency is shared between them. On a Dask cluster, every worker thread of it.
        self.shards_at_once = shards_at_once


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
