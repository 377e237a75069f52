"""One run per campaign at a time: a lease lock stored beside the results.

    <results>/_work/campaign=<id>/lock.json   {"owner": "...", "expires_at": <epoch s>, "acquired_at": ...}

Taken with a conditional create, renewed by a heartbeat thread with compare-and-swap, released by its holder.
A holder that dies (kill -9, a lost worker) stops renewing, and the lease runs out after `lease` seconds; a
later run then takes the lock over (again by compare-and-swap, so two late-comers cannot both win).

It lives in storage rather than in Prefect: two `smscast send` processes each start their own temporary
Prefect API, and a lock must hold between them. If the heartbeat finds the lock taken by someone else (this
process stalled past its lease), `lost` is set and sending stops: a stale holder must not keep sending.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from types import TracebackType

from smscast import storage
from smscast.errors import SmscastError

DEFAULT_LEASE = float(os.environ.get("SMSCAST_LOCK_LEASE_SECONDS", "60"))


class CampaignLockedError(SmscastError):
    """Another run holds the campaign."""


def lock_uri(results: str, campaign_id: str) -> str:
    return f"{results.rstrip('/')}/_work/campaign={campaign_id}/lock.json"


class CampaignLock:
    def __init__(self, results: str, campaign_id: str, *, lease: float = DEFAULT_LEASE) -> None:
        self.uri = lock_uri(results, campaign_id)
        self.campaign_id = campaign_id
        self.lease = lease
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.lost = threading.Event()
        # Stop sending a little before others may take over: clocks and in-flight requests need the slack.
        self._margin = min(1.0, lease / 4)
        self.valid_until = 0.0  # this holder's own view of its lease; past it, it must assume the worst
        self._version: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _record(self) -> bytes:
        now = time.time()
        return json.dumps({"owner": self.owner, "acquired_at": now, "expires_at": now + self.lease}).encode()

    def held(self) -> bool:
        """Whether this run may still act as the campaign's only sender. False once another run took the lock
        over, and also once the lease ran out without a renewal (storage unreachable, or this process was
        frozen): by then another run may have taken over without this one being able to see it."""
        if not self.lost.is_set() and time.time() > self.valid_until:
            self.lost.set()
        return not self.lost.is_set()

    def acquire(self) -> None:
        current = storage.get_versioned(self.uri)
        if current is None:
            version = storage.put_if(self.uri, self._record(), None)
        else:
            held = json.loads(current[0])
            if held.get("expires_at", 0) > time.time():
                until = time.strftime("%H:%M:%S", time.localtime(held["expires_at"]))
                raise CampaignLockedError(
                    f"campaign {self.campaign_id!r} is being sent by another run ({held.get('owner')}); "
                    f"if that run died, its lease ends at {until} and this command will then resume the campaign"
                )
            version = storage.put_if(self.uri, self._record(), current[1])  # take over an expired lease
        if version is None:
            raise CampaignLockedError(f"campaign {self.campaign_id!r} was locked by another run a moment ago")
        self._version = version
        # Counted from before the write, so our view never outlasts the lease others read.
        self.valid_until = time.time() + self.lease - self._margin
        self._thread = threading.Thread(target=self._heartbeat, name=f"lock-{self.campaign_id}", daemon=True)
        self._thread.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.lease / 3):
            started = time.time()
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

    def __enter__(self) -> CampaignLock:
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
