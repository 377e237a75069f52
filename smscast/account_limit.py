"""One provider account, one rate limit, shared by every run and process that sends through it.

An account is (provider, endpoint, key). Where a Prefect server is there to hold its limit — a run against a
configured PREFECT_API_URL (deployments, `smscast server start`), or shards on Dask, which talk to their
flow's API — the limit is one of Prefect's global concurrency limits in rate-limit mode, created on first use
and named so that a person finds it on the UI's Concurrency page:

    smscast:robase:api.robase.io:3f9a2c1b (1 request = 100 slots)

(the last part is a short hash of the endpoint and the key, never the key). Elsewhere — the temporary server
of a single `smscast send`, or the engine used without Prefect — the in-process bucket (smscast/ratelimit.py)
is the limit, as before. `SMSCAST_ACCOUNT_LIMITS=prefect|local` forces one or the other.

The limit's numbers (`shape_for`), from the account's rate R (`--rate`, else the provider's documented rate)
and the bucket B the provider is assumed to keep (max(burst, ceil(R)) requests, as the sandbox does):

* slot decay: 98 % of R. The provider refills at R, so the other 2 % accumulate at the provider as room for
  timing noise. (A request is 100 slots: `SLOTS_PER_REQUEST` says why.)
* limit: half of B (at least one request). The other half absorbs requests that reach the provider late
  after their permit (a busy event loop, a slow network): up to (B - limit) / decay, 0.5 s at 4/s.

A limit that exists is never changed: a person may have set it on purpose on the Concurrency page, and
smscast follows it (the limit is read before every draw: a new rate applies within one block, a limit of 0
pauses sending, an inactive one hands sending back to the in-process bucket).
"""

from __future__ import annotations

import contextvars
import hashlib
import logging
import math
import os
import random
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

import httpx

from smscast.errors import ConfigError
from smscast.ratelimit import Permits, TokenBucket, shared_bucket

if TYPE_CHECKING:
    from smscast.campaign import CampaignSpec
    from smscast.providers.base import Provider
    from smscast.runtime import Stop

log = logging.getLogger("smscast.account_limit")

MODE_VAR = "SMSCAST_ACCOUNT_LIMITS"
# The server floors the decay each time it writes the limit, and every grant and every refusal writes it: with
# one slot per request a fraction of a request was lost at each write, measured at 20-80 % of a 4/s limit with
# one to three processes asking. A hundredth of a request is noise.
SLOTS_PER_REQUEST = 100
RATE_SHARE = 0.98  # of the account's rate, for the limit's slot decay (see the module docstring)
BLOCK_SECONDS = 0.1  # one draw takes this much of the limit's traffic (at least one request)
IDLE_SECONDS = 10.0  # the feeder's thread ends (and closes its client) after this long without demand
RECHECK_SECONDS = 5.0  # a limit that is not in force (inactive, no decay) is read again after this long
JITTER_SECONDS = 0.05  # spreads the processes that wait for the same moment
API_TIMEOUT = 10.0  # a call to Prefect that hangs this long is given up and made again

# The stop of the shard that asked for the bucket, for the tasks it starts: while they wait for the account,
# a stopped campaign gives up its turn instead of drawing on a limit other campaigns share.
_STOP: contextvars.ContextVar[Stop | None] = contextvars.ContextVar("smscast_account_stop", default=None)


@dataclass(frozen=True)
class Account:
    provider: str
    endpoint: str
    fingerprint: str  # a short hash of endpoint and key: tells accounts apart, never gives the key away

    @classmethod
    def of(cls, provider: Provider) -> Account:
        key = provider.settings.api_key
        endpoint = provider.settings.base_url.rstrip("/")
        material = f"smscast account\0{endpoint}\0{key.reveal() if key is not None else ''}"
        return cls(provider.caps.name, endpoint, hashlib.sha256(material.encode()).hexdigest()[:8])

    @property
    def limit_name(self) -> str:
        parts = urlsplit(self.endpoint)
        host = (parts.hostname or "unknown") + (f":{parts.port}" if parts.port else "")
        return f"smscast:{self.provider}:{host}:{self.fingerprint} (1 request = {SLOTS_PER_REQUEST} slots)"


@dataclass(frozen=True)
class Shape:
    """A limit as Prefect stores it: `limit` slots at once, `decay` slots per second."""

    limit: int
    decay: float


def shape_for(rate: float, burst: int) -> Shape:
    """The limit smscast creates for an account of `rate` requests/s whose provider allows `burst` at once."""
    if rate <= 0:
        raise ValueError("rate must be positive")
    provider_bucket = max(burst, math.ceil(rate))
    at_once = max(1, math.ceil(provider_bucket / 2))
    return Shape(at_once * SLOTS_PER_REQUEST, round(rate * RATE_SHARE * SLOTS_PER_REQUEST, 6))


def nominal_rate(decay: float) -> float:
    """The account rate (requests/s) a limit's slot decay stands for: the inverse of `shape_for`."""
    return decay / SLOTS_PER_REQUEST / RATE_SHARE


def block_slots(limit: int, decay: float) -> int:
    """One draw: a tenth of a second of traffic in whole requests, at least one request, at most the limit (a
    person may set a limit under one request: then a request takes several draws)."""
    requests = max(1, math.floor(decay * BLOCK_SECONDS / SLOTS_PER_REQUEST))
    return min(limit, requests * SLOTS_PER_REQUEST)


class LimitState(Protocol):
    """What a read of the limit tells (prefect's GlobalConcurrencyLimitResponse)."""

    limit: int
    active_slots: int  # after the decay until now
    slot_decay_per_second: float
    active: bool


class LimitClient(Protocol):
    """The calls of prefect's SyncPrefectClient the feeder makes (a fake one in the unit tests)."""

    def read_global_concurrency_limit_by_name(self, name: str) -> Any: ...
    def create_global_concurrency_limit(self, concurrency_limit: Any) -> Any: ...
    def increment_concurrency_slots(self, names: list[str], slots: int, mode: str) -> httpx.Response: ...


class ServerBusy(Exception):
    """A busy Prefect server's answer (503 and the like)."""


def _fail_fast(response: httpx.Response) -> None:
    # Raised from a response hook, so that it reaches the feeder at once: Prefect's client sleeps 2 s, then 4 s,
    # before it answers (even with no retries left), while permits are due every quarter of a second.
    if response.status_code in (408, 429, 502, 503):
        raise ServerBusy(f"the Prefect API answered {response.status_code}")


@contextmanager
def prefect_client() -> Iterator[LimitClient]:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_CLIENT_MAX_RETRIES, temporary_settings

    # The feeder retries itself, sooner than Prefect's client would. Settings of its own also make the client
    # its own, never the run's (get_client hands a run's client to anyone who asks without settings, and that
    # one is the engine's, busy, and closed with the run).
    settings = {"timeout": httpx.Timeout(API_TIMEOUT), "event_hooks": {"response": [_fail_fast]}}
    with (
        temporary_settings({PREFECT_CLIENT_MAX_RETRIES: 0}),
        get_client(httpx_settings=settings, sync_client=True) as client,
    ):
        yield client


class Feeder(Permits):
    """This process's draw on one account's shared limit: a thread takes permits from Prefect a block at a
    time, ahead of need (smscast/ratelimit.py `Permits` hands them out), so that a sender does not wait for a
    round trip to Prefect when a permit could have been ready.

    The thread reads the limit (a read writes nothing: it neither contends nor loses decay), sleeps until a
    block fits, then asks for it; a refusal means another process was first, and it reads again."""

    def __init__(
        self,
        name: str,
        create: Shape,
        context: contextvars.Context,
        client: Callable[[], AbstractContextManager[LimitClient]] = prefect_client,
    ) -> None:
        super().__init__()
        self.name = name
        self.create = create  # the shape to create the limit with if it does not exist
        self.decay: float | None = None  # the limit's slot decay per second, as last read
        self.drawn = 0.0  # requests' worth of permits drawn from the shared limit
        self._context = context
        self._client = client
        self._thread: threading.Thread | None = None
        self._warned: set[str] = set()

    def prime(self) -> None:
        """Draw a first block now, ahead of the first sender."""
        with self._lock:
            self._ahead = True
            self._start_locked()

    def _start_locked(self) -> None:
        if self._thread is None:
            # A fresh copy each time: a context cannot be entered by two threads, and the last thread may
            # not have left it yet.
            self._thread = threading.Thread(
                target=self._context.copy().run, args=(self._run,), name="smscast-account-limit", daemon=True
            )
            self._thread.start()

    def _run(self) -> None:
        failures = 0
        while True:
            try:
                with self._client() as client:
                    while self._wait_for_demand(IDLE_SECONDS):
                        permits = self._draw(client)
                        failures = 0
                        with self._lock:
                            self._add_locked(permits)
            except Exception as exc:  # the API down, a 5xx, the limit deleted meanwhile: try again
                failures += 1
                self._warn("error", "%s: cannot draw on it (%s); sending waits", self.name, exc)
                if self._pause(min(5.0, 0.05 * 2**failures)):
                    continue
            with self._lock:
                if not self._wanted_locked():  # else a sender came just now: carry on
                    self._thread = None
                    return

    def _draw(self, client: LimitClient) -> float:
        """One block of permits (in requests) from the shared limit; 0 when nobody needs it any more."""
        while self._pause(0):
            if (held := self._held_until - time.monotonic()) > 0:
                if not self._pause(held):
                    return 0.0
                continue
            try:
                permits = self._try_draw(client)
            except ServerBusy:  # at once, and soon again: a stall here is a stall in sending
                self._pause(random.uniform(0, JITTER_SECONDS))
                continue
            if permits is not None:
                return permits
        return 0.0

    def _try_draw(self, client: LimitClient) -> float | None:
        """One attempt of `_draw`: None to read again (it waited for room, or another process was first)."""
        state = self._read(client)
        if state is None:  # not a rate limit now: this process paces itself for a while
            self._free_for(RECHECK_SECONDS)
            return 0.0
        size = block_slots(state.limit, state.slot_decay_per_second)
        if size <= 0:
            self._warn("zero", "%s has a limit of 0: sending waits until it is raised", self.name)
            return None if self._pause(1.0) else 0.0
        short = state.active_slots + size - state.limit
        if short > 0:
            # Until the block fits, then a read again: of the processes waiting for the same moment, the first
            # to wake takes it and the others see so, rather than all asking at once (each refusal is a write,
            # and writes at once are what make a SQLite-backed server answer 503).
            spread = random.uniform(0, min(JITTER_SECONDS, size / state.slot_decay_per_second / 4))
            return None if self._pause(short / state.slot_decay_per_second + spread) else 0.0
        try:
            answer = client.increment_concurrency_slots(names=[self.name], slots=size, mode="rate_limit")
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code == 423:  # another process was first
                return None if self._pause(random.uniform(0, JITTER_SECONDS)) else 0.0
            raise
        if not answer.json():  # deleted since the read: the next read creates it again
            return None
        self.drawn += size / SLOTS_PER_REQUEST
        return size / SLOTS_PER_REQUEST

    def _read(self, client: LimitClient) -> LimitState | None:
        """The limit as it stands (created first if missing); None while it is not a rate limit."""
        from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
        from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

        try:
            state: LimitState = client.read_global_concurrency_limit_by_name(self.name)
        except ObjectNotFound:
            create = GlobalConcurrencyLimitCreate(
                name=self.name, limit=self.create.limit, slot_decay_per_second=self.create.decay
            )
            try:
                client.create_global_concurrency_limit(create)
                log.info(
                    "created the Prefect global concurrency limit %s: %g requests/s, %g at once",
                    self.name,
                    self.create.decay / SLOTS_PER_REQUEST,
                    self.create.limit / SLOTS_PER_REQUEST,
                )
            except ObjectAlreadyExists:  # another process created it a moment ago: its numbers stand
                pass
            state = client.read_global_concurrency_limit_by_name(self.name)
        if not state.active or state.slot_decay_per_second <= 0:
            self._warn(
                "inert",
                "%s is inactive or has no slot decay: this process paces itself alone until it is a rate "
                "limit again",
                self.name,
            )
            return None
        if self.decay is not None and state.slot_decay_per_second != self.decay:
            log.info(
                "%s changed: now %g requests/s", self.name, state.slot_decay_per_second / SLOTS_PER_REQUEST
            )
        self.decay = state.slot_decay_per_second
        return state

    def _warn(self, kind: str, message: str, *args: object) -> None:
        if kind not in self._warned:  # once per feeder: a stuck limit must not flood the log
            self._warned.add(kind)
            log.warning(message, *args)


class AccountBucket(TokenBucket):
    """This process's bucket (pacing, a pause on 429 with halving) in front of the account's shared limit: a
    request goes once both let it. `--rate` caps this campaign whatever the account allows; without it the
    bucket follows the shared limit's rate."""

    def __init__(self, feeder: Feeder, own_rate: float | None, rate: float, burst: int) -> None:
        super().__init__(rate, burst)
        self.feeder = feeder
        self.own_rate = own_rate

    def penalise(self, retry_after: float | None) -> None:
        super().penalise(retry_after)
        self.feeder.hold(self._paused_until)

    async def acquire(self) -> None:
        # The account's permit first: held by a sender that waits here, it is never dropped as stale. Not
        # during a 429 pause, though: a process told to wait must not draw on what others could use.
        await self.pause_over()
        await self.feeder.permit(_STOP.get())
        decay = self.feeder.decay  # as the feeder last read it
        if self.own_rate is None and decay is not None and nominal_rate(decay) != self.target_rate:
            self.retarget(nominal_rate(decay))
        await super().acquire()


_LOCK = threading.Lock()
_FEEDERS: dict[tuple[str, str], Feeder] = {}
_ACCOUNT_BUCKETS: dict[tuple[str, str, float | None, int], AccountBucket] = {}


def account_bucket(provider: Provider, spec: CampaignSpec | None, *, stop: Stop | None = None) -> TokenBucket:
    """The bucket a request to `provider` waits for: the account's shared limit where Prefect holds it
    (`uses_account_limits`), else the process-wide in-process bucket. `stop`, the calling shard's campaign
    stop, is remembered for the calling task and the tasks it starts (see `_STOP`)."""
    caps = provider.caps
    own = spec.rate if spec is not None else None
    rate = own or caps.rate_per_second
    if not uses_account_limits(spec):
        return shared_bucket(caps.name, provider.settings.base_url, rate, caps.burst)
    from prefect.settings import PREFECT_API_URL

    _STOP.set(stop)
    name = Account.of(provider).limit_name
    api = str(PREFECT_API_URL.value() or "")  # several servers in one process (tests): one feeder each
    with _LOCK:
        feeder = _FEEDERS.get((api, name))
        if feeder is None:
            # The caller's context carries the Prefect settings (the API to talk to) into the feeder's thread.
            feeder = Feeder(name, shape_for(rate, caps.burst), contextvars.copy_context())
            _FEEDERS[(api, name)] = feeder
        key = (api, name, own, max(1, caps.burst))
        bucket = _ACCOUNT_BUCKETS.get(key)
        if bucket is None:
            bucket = _ACCOUNT_BUCKETS[key] = AccountBucket(feeder, own, rate, caps.burst)
    feeder.prime()  # the first permits are on their way while the shard gets going
    return bucket


def uses_account_limits(spec: CampaignSpec | None) -> bool:
    """Whether sending draws on a Prefect global concurrency limit: inside a Prefect run with a configured
    API (the temporary server of a single command ends with it, and has nobody to share with), or with
    shards on Dask (other processes, which share their flow's API). The engine called outside any run (its
    unit tests, a script) keeps the in-process bucket."""
    mode = (os.environ.get(MODE_VAR) or "auto").strip().lower()
    if mode not in ("auto", "prefect", "local"):
        raise ConfigError(f"{MODE_VAR}={mode!r}: use auto, prefect or local")
    if mode != "auto":
        return mode == "prefect"
    if "prefect.context" not in sys.modules:  # Prefect not even imported: certainly not in a run
        return False
    from prefect.context import FlowRunContext, TaskRunContext
    from prefect.settings import PREFECT_API_URL

    if TaskRunContext.get() is None and FlowRunContext.get() is None:
        return False
    return bool(PREFECT_API_URL.value()) or (spec is not None and spec.runner == "dask")
