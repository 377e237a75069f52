"""Fault knobs: latency, rate limits, injected errors, timeouts, dropped connections, per-row refusals.

Knobs are set at start (`SandboxConfig.knobs`, CLI options) and at run time (`POST /_sandbox/faults`, a
partial update). Every knob has a global value; a provider may override any of them (`provider=` in the admin
call).

Knobs (defaults in `Knobs`):

    latency_ms, latency_jitter_ms   added before processing (uniform jitter in [0, jitter])
    rate_limit_rps, rate_limit_burst  token bucket per provider and rate scope; 0 rps = off;
                                    burst 0 = ceil(rps). Past it: 429, with `Retry-After` in whole
                                    seconds rounded up where the vendor sends one
    next_429                        the next N requests get 429 (Retry-After: retry_after_s)
    next_5xx                        the next N requests get `status_5xx` (503) without being processed
    next_timeout                    the next N requests are processed and ACCEPTED, then the response is held
                                    for timeout_delay_s (or until the client hangs up): the client's read
                                    timeout fires although the messages are in the ledger
    next_drop_before                the next N requests: connection closed with no response, nothing processed
    next_drop_after                 the next N requests: processed and accepted, then the connection is closed
                                    with no response. `next_drop` is an alias of next_drop_after:
                                    the dangerous, ambiguous case
    rate_429, rate_5xx, rate_timeout, rate_drop_before, rate_drop_after
                                    probability per request of the same faults, drawn from a RNG
                                    seeded by `seed`
    reject_suffixes                 phones ending in one of these digit strings are refused per row
                                    (permanent; `invalid_number` in the generic API)
    transient_suffixes              same, transient (`carrier_unavailable` in the generic API)

Delivery truth (sandbox/truth.py, sandbox/callbacks.py), read when a message is accepted:

    undelivered_share               share of accepted messages whose final outcome is `undelivered` (with an
                                    error code of the vendor's); the rest are `delivered`. Decided by a hash
                                    of the message id and `seed` (0 when unset), so the same run agrees
                                    with itself everywhere and after a restart
    dlr_delay_ms                    the final state is reached this long after acceptance, on the sandbox
                                    clock; before that lookups and the ledger's callbacks say `pending`
    dlr_url                         where delivery reports are POSTed (None: none are), with
                                    /instasent, /sent-dm or /generic appended to its path
    dlr_duplicate_share             share of reports posted twice
    dlr_retry_window_s              how long (real time) a report is retried before it is abandoned
    async_reject_share              textingline: share of a queued job's recipients that the job fails
                                    itself (never sent, not in the ledger, re-sendable)

One-shot counters set for a provider are used before the global ones. The order of checks per request is:
auth, drop_before, rate limiter, 429, 5xx, latency, processing, drop_after, timeout.
"""

from __future__ import annotations

import copy
import math
import random
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from enum import Enum
from typing import Any


class KnobError(ValueError):
    """A knob name or value the sandbox does not understand (the admin endpoint answers 400)."""


@dataclass(slots=True)
class Knobs:
    latency_ms: float = 0.0
    latency_jitter_ms: float = 0.0
    rate_limit_rps: float = 0.0
    rate_limit_burst: int = 0
    retry_after_s: int = 1
    next_429: int = 0
    next_5xx: int = 0
    next_timeout: int = 0
    next_drop_before: int = 0
    next_drop_after: int = 0
    timeout_delay_s: float = 65.0
    status_5xx: int = 503
    rate_429: float = 0.0
    rate_5xx: float = 0.0
    rate_timeout: float = 0.0
    rate_drop_before: float = 0.0
    rate_drop_after: float = 0.0
    seed: int | None = None
    reject_suffixes: tuple[str, ...] = field(default=())
    transient_suffixes: tuple[str, ...] = field(default=())
    undelivered_share: float = 0.0
    dlr_delay_ms: float = 0.0
    dlr_url: str | None = None
    dlr_duplicate_share: float = 0.0
    dlr_retry_window_s: float = 300.0
    async_reject_share: float = 0.0


KNOB_NAMES: tuple[str, ...] = tuple(f.name for f in fields(Knobs))
SHOTS: tuple[str, ...] = ("next_429", "next_5xx", "next_timeout", "next_drop_before", "next_drop_after")
RATES: tuple[str, ...] = ("rate_429", "rate_5xx", "rate_timeout", "rate_drop_before", "rate_drop_after")
ALIASES: dict[str, str] = {"next_drop": "next_drop_after"}
GLOBAL_ONLY: frozenset[str] = frozenset({"seed"})


def _nonneg_float(name: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float | str):
        raise KnobError(f"{name}: expected a number, got {v!r}")
    try:
        f = float(v)
    except ValueError:
        raise KnobError(f"{name}: expected a number, got {v!r}") from None
    if not math.isfinite(f) or f < 0:
        raise KnobError(f"{name}: expected a finite number >= 0, got {v!r}")
    return f


def _nonneg_int(name: str, v: Any) -> int:
    f = _nonneg_float(name, v)
    if f != int(f):
        raise KnobError(f"{name}: expected a whole number, got {v!r}")
    return int(f)


def _probability(name: str, v: Any) -> float:
    f = _nonneg_float(name, v)
    if f > 1:
        raise KnobError(f"{name}: expected a probability in [0, 1], got {v!r}")
    return f


def _status_5xx(name: str, v: Any) -> int:
    i = _nonneg_int(name, v)
    if not 500 <= i <= 599:
        raise KnobError(f"{name}: expected an HTTP status 500-599, got {v!r}")
    return i


def _seed(name: str, v: Any) -> int | None:
    return None if v is None else _nonneg_int(name, v)


def _suffixes(name: str, v: Any) -> tuple[str, ...]:
    if isinstance(v, str):
        items = [s.strip() for s in v.split(",")]
    elif isinstance(v, list | tuple):
        items = [str(s).strip() if isinstance(s, int | str) and not isinstance(s, bool) else "!" for s in v]
    else:
        raise KnobError(f"{name}: expected a list of digit strings, got {v!r}")
    out = tuple(s for s in items if s)
    for s in out:
        if not (s.isascii() and s.isdigit()):
            raise KnobError(f"{name}: {s!r} is not a digit string")
    return out


def _url(name: str, v: Any) -> str | None:
    if v is None:
        return None
    if not isinstance(v, str) or not re.fullmatch(r"https?://[^\s/?#]+[^\s]*", v, re.ASCII | re.IGNORECASE):
        raise KnobError(f"{name}: expected an http(s) URL, got {v!r}")
    return v


_PARSERS: dict[str, Callable[[str, Any], Any]] = {
    "latency_ms": _nonneg_float,
    "latency_jitter_ms": _nonneg_float,
    "rate_limit_rps": _nonneg_float,
    "rate_limit_burst": _nonneg_int,
    "retry_after_s": _nonneg_int,
    "timeout_delay_s": _nonneg_float,
    "status_5xx": _status_5xx,
    "seed": _seed,
    "reject_suffixes": _suffixes,
    "transient_suffixes": _suffixes,
    "undelivered_share": _probability,
    "dlr_delay_ms": _nonneg_float,
    "dlr_url": _url,
    "dlr_duplicate_share": _probability,
    "dlr_retry_window_s": _nonneg_float,
    "async_reject_share": _probability,
    **{name: _nonneg_int for name in SHOTS},
    **{name: _probability for name in RATES},
}
if set(_PARSERS) != set(KNOB_NAMES):  # pragma: no cover - a knob added without a parser
    raise RuntimeError("sandbox.faults: every knob needs a parser")


def parse_knobs(raw: Mapping[str, Any], *, allow_none: bool = False) -> dict[str, Any]:
    """Validate and coerce knob values; `None` passes through when `allow_none` (it means "unset")."""
    out: dict[str, Any] = {}
    for given, value in raw.items():
        name = ALIASES.get(given, given)
        parser = _PARSERS.get(name)
        if parser is None:
            raise KnobError(f"unknown knob {given!r}; known: {', '.join((*KNOB_NAMES, *ALIASES))}")
        out[name] = None if value is None and allow_none and name != "seed" else parser(name, value)
    return out


class Verdict(Enum):
    PASS = "pass"
    DROP_BEFORE = "drop_before"
    RATE_LIMITED = "rate_limited"  # the token bucket said no
    INJECTED_429 = "injected_429"
    ERROR_5XX = "error_5xx"
    DROP_AFTER = "drop_after"
    TIMEOUT = "timeout"


class TokenBucket:
    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = now

    def take(self, now: float) -> float:
        """Take a token: 0.0 when admitted, else the seconds until one is available."""
        tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if tokens >= 1.0:
            self.tokens = tokens - 1.0
            return 0.0
        self.tokens = tokens
        return (1.0 - tokens) / self.rate


def retry_after_seconds(wait: float) -> int:
    """Retry-After as whole seconds, rounded up, never 0."""
    return max(1, math.ceil(wait - 1e-9))


class Faults:
    """The knob state of one sandbox process. Not thread-safe; the server runs a single event loop."""

    def __init__(
        self,
        knobs: Mapping[str, Any] | None = None,
        per_provider: Mapping[str, Mapping[str, Any]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._start_global = asdict(Knobs()) | parse_knobs(knobs or {})
        self._start_overrides = {p: parse_knobs(k) for p, k in (per_provider or {}).items()}
        self.reset()

    def set_provider_defaults(self, provider: str, knobs: Mapping[str, Any]) -> None:
        """A provider's own start values (e.g. its vendor's documented rate limit), under whatever the
        configuration already set for it; they survive `reset`."""
        if not knobs:
            return
        merged = parse_knobs(knobs) | self._start_overrides.get(provider, {})
        self._start_overrides[provider] = merged
        self._overrides[provider] = copy.deepcopy(merged) | self._overrides.get(provider, {})
        self._effective.pop(provider, None)

    def reset(self) -> None:
        """Back to the knobs given at start; rate limit buckets emptied, RNG re-seeded."""
        self._global: dict[str, Any] = copy.deepcopy(self._start_global)
        self._overrides: dict[str, dict[str, Any]] = copy.deepcopy(self._start_overrides)
        self._effective: dict[str, Knobs] = {}
        self._buckets: dict[tuple[str, str], TokenBucket] = {}
        self._rng = random.Random(self._global["seed"])

    # ---- configuration ----------------------------------------------------------------------------------

    def update(self, changes: Mapping[str, Any], provider: str | None = None) -> None:
        """Partial update. Globally, `null` restores a knob's default; for a provider, `null` removes the
        override (the global value applies again)."""
        parsed = parse_knobs(changes, allow_none=True)
        if provider is not None:
            bad = GLOBAL_ONLY & parsed.keys()
            if bad:
                raise KnobError(f"{', '.join(sorted(bad))}: global only, not per provider")
            over = self._overrides.setdefault(provider, {})
            for name, value in parsed.items():
                if value is None:
                    over.pop(name, None)
                else:
                    over[name] = value
            if not over:
                del self._overrides[provider]
        else:
            defaults = asdict(Knobs())
            for name, value in parsed.items():
                self._global[name] = defaults[name] if value is None and name != "seed" else value
            if "seed" in parsed:
                self._rng = random.Random(parsed["seed"])
        self._effective.clear()
        if {"rate_limit_rps", "rate_limit_burst"} & parsed.keys():
            self._buckets.clear()

    def knobs(self, provider: str) -> Knobs:
        """Effective knobs of a provider (global values with its overrides). One-shot counters in it are the
        values at the time it was built; use `consume` to use them."""
        k = self._effective.get(provider)
        if k is None:
            over = self._overrides.get(provider, {})
            k = self._effective[provider] = Knobs(**(self._global | over))
        return k

    def snapshot(self) -> dict[str, Any]:
        def jsonable(d: Mapping[str, Any]) -> dict[str, Any]:
            return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

        return {
            "global": jsonable(self._global),
            "providers": {p: jsonable(o) for p, o in self._overrides.items()},
        }

    def effective(self, provider: str) -> dict[str, Any]:
        over = self._overrides.get(provider, {})
        d = self._global | over
        for name in SHOTS:
            d[name] = over.get(name, 0) + self._global[name]
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    # ---- decisions --------------------------------------------------------------------------------------

    def consume(self, provider: str, name: str) -> bool:
        """Use one shot of a one-shot counter (the provider's first, then the global one)."""
        over = self._overrides.get(provider)
        if over is not None and over.get(name, 0) > 0:
            over[name] -= 1
            return True
        if self._global[name] > 0:
            self._global[name] -= 1
            return True
        return False

    def _chance(self, p: float) -> bool:
        return p > 0.0 and self._rng.random() < p

    def admit(self, provider: str, scope: str = "") -> tuple[Verdict, int]:
        """Before processing: (verdict, retry_after seconds for 429s)."""
        k = self.knobs(provider)
        if self.consume(provider, "next_drop_before") or self._chance(k.rate_drop_before):
            return Verdict.DROP_BEFORE, 0
        if k.rate_limit_rps > 0:
            bucket = self._buckets.get((provider, scope))
            now = self._clock()
            if bucket is None:
                burst = k.rate_limit_burst or max(1, math.ceil(k.rate_limit_rps))
                bucket = self._buckets[(provider, scope)] = TokenBucket(k.rate_limit_rps, burst, now)
            wait = bucket.take(now)
            if wait > 0:
                return Verdict.RATE_LIMITED, retry_after_seconds(wait)
        if self.consume(provider, "next_429") or self._chance(k.rate_429):
            return Verdict.INJECTED_429, max(1, k.retry_after_s)
        if self.consume(provider, "next_5xx") or self._chance(k.rate_5xx):
            return Verdict.ERROR_5XX, 0
        return Verdict.PASS, 0

    def latency(self, provider: str) -> float:
        """Seconds to wait before processing."""
        k = self.knobs(provider)
        ms = k.latency_ms
        if k.latency_jitter_ms > 0:
            ms += self._rng.uniform(0.0, k.latency_jitter_ms)
        return ms / 1000.0

    def after(self, provider: str) -> Verdict:
        """After processing: PASS, DROP_AFTER or TIMEOUT."""
        k = self.knobs(provider)
        if self.consume(provider, "next_drop_after") or self._chance(k.rate_drop_after):
            return Verdict.DROP_AFTER
        if self.consume(provider, "next_timeout") or self._chance(k.rate_timeout):
            return Verdict.TIMEOUT
        return Verdict.PASS

    def row_suffixes(self, provider: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(reject_suffixes, transient_suffixes) for per-row refusals: `phone.endswith(t)` is true when a
        suffix in `t` matches (str.endswith takes a tuple, so the per-row cost is one call)."""
        k = self.knobs(provider)
        return k.reject_suffixes, k.transient_suffixes
