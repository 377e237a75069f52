"""One run per campaign at a time: a lease lock stored beside the results.

    <results>/_work/campaign=<id>/lock.json
    {"owner": "...", "expires_at": <epoch s>, "acquired_at": ..., "lease": 60.0,
     "host": "<hostname>", "machine": "<boot id>/<pid namespace>", "pid": 1234, "started": <start ticks>}

Taken with a conditional create, renewed by a heartbeat thread with compare-and-swap, released by its holder.
A holder that dies (kill -9, a lost worker) stops renewing. A later run takes the lock over (again by
compare-and-swap, so two late-comers cannot both win) when either

* the holder is provably dead: it ran on this machine (same host name, boot and pid namespace) and its
  process is gone, or its pid now belongs to a process that started at another moment (pids are reused).
  Nothing is gained by waiting for a process that no longer exists: the takeover is immediate;
* or its lease has run out. This is the only test across machines, where no process can be inspected.

A live holder's lease can be waited for (`wait`) instead of failing at once.

It lives in storage rather than in Prefect: two `smscast send` processes each start their own temporary
Prefect API, and a lock must hold between them. If the heartbeat finds the lock taken by someone else (this
process stalled past its lease), `lost` is set and sending stops: a stale holder must not keep sending.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from smscast import storage
from smscast.errors import SmscastError
from smscast.results import CampaignPaths

DEFAULT_LEASE = float(os.environ.get("SMSCAST_LOCK_LEASE_SECONDS", "60"))
MAX_POLL = 5.0  # while waiting, a released lock is noticed within this many seconds

log = logging.getLogger("smscast.lock")


class CampaignLockedError(SmscastError):
    """Another run holds the campaign."""


# ---- is a process alive? ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Process:
    """What identifies a process beyond its pid. `machine` is None where it cannot be read (not Linux)."""

    host: str
    machine: str | None
    pid: int
    started: int | None  # clock ticks after boot (/proc/<pid>/stat field 22); None where unreadable


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            return fh.read().strip()
    except OSError:
        return None


def machine_id() -> str | None:
    """The boot and the pid namespace: a host name alone does not say that two processes see the same pids
    (containers may share a host name; a rebooted machine reuses every pid)."""
    boot = _read("/proc/sys/kernel/random/boot_id")
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return None
    return f"{boot}/{namespace}" if boot else None


GONE = -1  # what process_start returns for a process that no longer runs


def process_start(pid: int) -> int | None:
    """GONE if no process `pid` runs (a zombie counts as gone: it can never act again), else its start time in
    clock ticks after boot, or None if it runs but its start time cannot be read (not Linux)."""
    if pid <= 0:
        return GONE
    stat = _read(f"/proc/{pid}/stat")
    if stat is not None:
        # "pid (comm) state ... starttime ...": comm may hold spaces and parentheses, so split after the last ')'.
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) < 20 or fields[0] in ("Z", "X"):
            return GONE
        return int(fields[19])  # field 22 of the line, counted from 1; fields[0] is field 3
    if os.path.isdir("/proc/self"):
        return GONE  # a /proc without this pid: no such process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return GONE
    except PermissionError:
        return None  # it exists, owned by someone else
    return None


def this_process() -> Process:
    pid = os.getpid()
    started = process_start(pid)
    return Process(socket.gethostname(), machine_id(), pid, None if started == GONE else started)


def dead_holder(held: dict[str, Any], me: Process) -> str | None:
    """Why the holder recorded in `held` provably no longer runs, or None if that cannot be proved (another
    machine, a lock written without the holder's identity, or a process that is still there)."""
    host, machine, pid, started = held.get("host"), held.get("machine"), held.get("pid"), held.get("started")
    if host != me.host or machine != me.machine or not isinstance(pid, int):
        return None
    now = process_start(pid)
    if now == GONE:
        return f"its process {pid} on this machine is gone"
    if isinstance(started, int) and now is not None and now != started:
        return f"its pid {pid} now belongs to another process"
    return None


# ---- the lock -----------------------------------------------------------------------------------------------


class LeaseLock:
    """A lease lock on one object in storage (see the module's docstring). `subject` names what it guards in
    the messages people read ("campaign 'x'"), `busy` what its holder is doing (the class's default unless
    given). `wait`: seconds to wait at most for a live holder's lease to end (0: fail at once; math.inf: no
    bound). `clock` and `sleep` are injectable for tests; `logger` receives the takeover and waiting notices."""

    busy = "is held by another run"

    def __init__(
        self,
        uri: str,
        subject: str,
        *,
        busy: str | None = None,
        lease: float = DEFAULT_LEASE,
        wait: float = 0.0,
        logger: logging.Logger | logging.LoggerAdapter[logging.Logger] | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.uri = uri
        self.subject = subject
        self.busy = busy or self.busy
        self.lease = lease
        self.wait = wait
        self.me = this_process()
        self.owner = f"{self.me.host}:{self.me.pid}:{uuid.uuid4().hex[:8]}"
        self.lost = threading.Event()
        self.takeover: str | None = None  # after acquire: whose lock was taken over and why, if any
        self._log = logger or log
        self._clock = clock
        self._sleep = sleep
        # Stop sending a little before others may take over: clocks and in-flight requests need the slack.
        self._margin = min(1.0, lease / 4)
        self.valid_until = 0.0  # this holder's own view of its lease; past it, it must assume the worst
        self._acquired_at = 0.0
        self._version: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _record(self) -> bytes:
        now = self._clock()
        return json.dumps(
            {
                "owner": self.owner,
                "acquired_at": self._acquired_at or now,
                "expires_at": now + self.lease,
                "lease": self.lease,
                "host": self.me.host,
                "machine": self.me.machine,
                "pid": self.me.pid,
                "started": self.me.started,
            }
        ).encode()

    def held(self) -> bool:
        """Whether this run may still act as the campaign's only sender. False once another run took the lock
        over, and also once the lease ran out without a renewal (storage unreachable, or this process was
        frozen): by then another run may have taken over without this one being able to see it."""
        if not self.lost.is_set() and self._clock() > self.valid_until:
            self.lost.set()
        return not self.lost.is_set()

    def acquire(self, wait: float | None = None) -> None:
        """Take the lock: free, expired, or held by a provably dead process. Otherwise wait up to `wait`
        seconds (default: the constructor's) for the holder's lease to end, then CampaignLockedError."""
        wait = self.wait if wait is None else wait
        deadline = self._clock() + wait
        waiting = False
        while True:
            started = self._clock()
            current = storage.get_versioned(self.uri)
            if current is None:
                version = storage.put_if(self.uri, self._record(), None)
                reason = None
            else:
                held = _parse(current[0])
                reason = self._may_take(held, started)
                if reason is None:  # a live holder, within its lease
                    if started >= deadline:
                        raise CampaignLockedError(self._refusal(held, waited=waiting))
                    if not waiting:
                        waiting = True
                        self._log.info(
                            "%s %s (%s); waiting for its lease to end (%s)",
                            self.subject,
                            self.busy,
                            held.get("owner"),
                            "no time limit" if math.isinf(wait) else f"at most {wait:.0f} s",
                        )
                    self._sleep(self._poll_interval(held, started, deadline))
                    continue
                version = storage.put_if(self.uri, self._record(), current[1])
            if version is not None:
                break
            # Someone else wrote the lock between our read and our write.
            if self._clock() >= deadline:
                raise CampaignLockedError(f"{self.subject} was locked by another run a moment ago")
        self._version = version
        self._acquired_at = started
        if reason is not None:
            self.takeover = reason
            self._log.warning("%s: took the lock over from a run that %s", self.subject, reason)
        # Counted from before the write, so our view never outlasts the lease others read.
        self.valid_until = started + self.lease - self._margin
        self._thread = threading.Thread(target=self._heartbeat, name=f"lock-{self.uri}", daemon=True)
        self._thread.start()

    def _may_take(self, held: dict[str, Any], now: float) -> str | None:
        """Why the current holder's lock may be taken over, or None while it must be respected."""
        owner = held.get("owner")
        expires = held.get("expires_at", 0)
        if not isinstance(expires, int | float) or expires <= now:
            return f"died or stopped renewing ({owner}; its lease ended)"
        dead = dead_holder(held, self.me)
        if dead is not None:
            return f"died ({owner}: {dead})"
        return None

    def _poll_interval(self, held: dict[str, Any], now: float, deadline: float) -> float:
        # The lease's own timing: its holder renews every third of it, and it can end no sooner than
        # expires_at. A release may come any time, so look again at least every MAX_POLL seconds.
        lease = held.get("lease")
        lease = float(lease) if isinstance(lease, int | float) and lease > 0 else self.lease
        until_expiry = float(held.get("expires_at", now)) - now
        interval = min(lease / 3, until_expiry + 0.05, MAX_POLL, max(0.0, deadline - now))
        return max(0.05, interval)

    def _refusal(self, held: dict[str, Any], *, waited: bool) -> str:
        until = time.strftime("%H:%M:%S", time.localtime(float(held.get("expires_at", 0))))
        text = f"{self.subject} {self.busy} ({held.get('owner')}); "
        if waited:
            return text + f"its lease was still renewed after waiting {self.wait:.0f} s (now until {until})"
        return text + f"if that run died, its lease ends at {until}"

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.lease / 3):
            started = self._clock()
            try:
                version = storage.put_if(self.uri, self._record(), self._version)
            except Exception:
                # A storage hiccup: try again next beat. If the lease runs out meanwhile, `held()` says so.
                if not self.held():
                    return
                continue
            if version is None:
                self.lost.set()
                return
            self._version = version
            self.valid_until = started + self.lease - self._margin

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._version is not None and not self.lost.is_set():
            # Check-then-delete: a takeover between the two would need this process to have stalled for a
            # whole lease inside release(), and `lost` would already be set by then.
            storage.delete_if(self.uri, self._version)
        self._version = None

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


class CampaignLock(LeaseLock):
    """One run per campaign: the lock at the campaign's `lock.json` (smscast/results.py)."""

    busy = "is being sent by another run"

    def __init__(
        self,
        results: str,
        campaign_id: str,
        *,
        lease: float = DEFAULT_LEASE,
        wait: float = 0.0,
        logger: logging.Logger | logging.LoggerAdapter[logging.Logger] | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__(
            CampaignPaths(results, campaign_id).lock,
            f"campaign {campaign_id!r}",
            lease=lease,
            wait=wait,
            logger=logger,
            clock=clock,
            sleep=sleep,
        )
        self.campaign_id = campaign_id

    def _refusal(self, held: dict[str, Any], *, waited: bool) -> str:
        text = super()._refusal(held, waited=waited)
        # A later run of the same command resumes the campaign once the holder's lease ends.
        if waited:
            return text
        return text + " and this command will then resume the campaign (--wait-for-lock waits for it)"


def _parse(raw: bytes) -> dict[str, Any]:
    try:
        held = json.loads(raw)
    except ValueError:
        return {}  # unreadable: treated as expired, like a lock with no lease
    return held if isinstance(held, dict) else {}
