"""The fault mixes, and the back-off measures (see test_fault_mixes.py for what each proves).

How back-off is measured. The sandbox counts every request it answers, so a window's request rate is the
difference of its counters at the window's ends divided by the window's length.

* storm429: 50 % of requests are answered 429 (Retry-After: 1) for 4 seconds in the middle of the send.
  `--rate` is the binding limit (the sandbox answers in about a millisecond, far below what --concurrency
  could push), so a client that did not back off would keep sending at --rate — or faster, retrying at
  once. The measure is the storm's request rate against --rate; it must stay under half of it.
* ratelimit: the provider's own token bucket (5/s) sits under our --rate (40/s). A client that ignored the
  429s would see about 7 refusals per acceptance; the measure is 429s per accepted request over the whole
  campaign, and it must stay under one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from reliability.processes import CliRun
from reliability.settings import START_KNOBS, Sizes
from reliability.soak import Campaign, Soak

# What `smscast retry` runs under: the transient faults gone, the refusals (permanent) kept.
CLEAR: dict[str, Any] = {
    "next_429": 0, "next_5xx": 0, "next_timeout": 0, "next_drop_before": 0, "next_drop_after": 0,
    "rate_429": 0, "rate_5xx": 0, "rate_timeout": 0, "rate_drop_before": 0, "rate_drop_after": 0,
    "transient_suffixes": [], **START_KNOBS,
}  # fmt: skip


@dataclass(frozen=True)
class Mix:
    name: str
    knobs: Callable[[Soak], dict[str, Any]]
    args: tuple[str, ...] = ()
    rejects: bool = False  # refusals injected (reject_suffixes; textingline: compliance-marked bodies)
    batch_size: int | None = None
    rate: float = 400.0
    rows: Callable[[Sizes], int] = field(default=lambda s: s.mix_rows)


MIXES: dict[str, Mix] = {
    m.name: m
    for m in (
        Mix("storm429", lambda s: {}, batch_size=20, rate=20.0, rows=lambda s: min(s.mix_rows, 2000)),
        Mix(
            "ratelimit",
            lambda s: {"rate_limit_rps": 5, "rate_limit_burst": 5},
            batch_size=20,
            rate=40.0,
            rows=lambda s: min(s.mix_rows, 1000),
        ),
        Mix("burst5xx", lambda s: {"next_5xx": 6, "rate_5xx": 0.1}),
        Mix(
            "timeouts",
            lambda s: {"next_timeout": 3, "rate_timeout": 0.03, "timeout_delay_s": 3},
            args=("--request-timeout", "1"),
        ),
        Mix(
            "drops",
            lambda s: {
                "next_drop_before": 2,
                "next_drop_after": 2,
                "rate_drop_before": 0.02,
                "rate_drop_after": 0.02,
            },
        ),
        Mix("rejections", lambda s: {"reject_suffixes": [s.facts.soak.reject_suffix]}, rejects=True),
        Mix("transient", lambda s: {"transient_suffixes": [s.facts.soak.transient_suffix]}),
        Mix(
            "combined",
            lambda s: {
                "next_5xx": 3,
                "next_timeout": 2,
                "next_drop_before": 2,
                "next_drop_after": 2,
                "rate_5xx": 0.03,
                "rate_drop_after": 0.01,
                "timeout_delay_s": 3,
                "reject_suffixes": [s.facts.soak.reject_suffix],
                "transient_suffixes": [s.facts.soak.transient_suffix],
            },
            args=("--request-timeout", "1"),
            rejects=True,
        ),
    )
}


def markers_for(soak: Soak, mix: Mix, n: int) -> list[int]:
    """textingline refuses a whole request for a compliance-marked body: the rejections it can be given."""
    if not (mix.rejects and soak.facts.soak.marker_rejects):
        return []
    return list(range(7, n, 500))


def apply(soak: Soak, mix: Mix, seed: int, **extra: Any) -> dict[str, Any]:
    """A clean sandbox with the mix's knobs (plus `extra`, e.g. latency) for the provider."""
    soak.reset()
    soak.client.set_faults(seed=seed)  # the sandbox's draws for the rate_* knobs
    knobs = {**mix.knobs(soak), **extra}
    if knobs:
        soak.client.set_faults(provider=soak.emu, **knobs)
    return knobs


def clear_transient(soak: Soak) -> None:
    soak.client.set_faults(provider=soak.emu, **CLEAR)


def storm(soak: Soak, c: Campaign) -> str:
    """Send with a 429 storm of 4 seconds a second into the send; returns the back-off measure."""
    run = soak.start(c, "send")
    wait_for_first_request(soak, run)
    _, calm = measure_window(soak, 1.0, c.rate)
    soak.client.set_faults(provider=soak.emu, rate_429=0.5, retry_after_s=1)
    counts, during = measure_window(soak, 4.0, c.rate)
    soak.client.set_faults(provider=soak.emu, rate_429=0)
    still_running = run.poll() is None
    t0 = time.monotonic()
    rc = run.wait(600)
    assert rc == 0, run.tail()
    print(
        f"storm429: before {calm.describe()}; during {during.describe()}; {counts}; "
        f"finished {time.monotonic() - t0:.1f}s after the storm"
    )
    assert still_running, "the campaign ended before the storm did: the measure would be meaningless"
    assert during.throttled > 0, f"the storm produced no 429s: {counts}"
    # A client that did not back off would keep sending at --rate (or faster, retrying at once).
    assert during.rate <= 0.5 * c.rate, f"no back-off under a 429 storm: {during.describe()}"
    return f"storm {during.rate:.1f} req/s vs --rate {c.rate:g} ({during.throttled}x429)"


def throttling(soak: Soak, c: Campaign) -> str:
    stats = soak.stats()
    n429 = int(stats["requests"].get("429", 0))
    ok = sum(int(v) for k, v in stats["requests"].items() if k.startswith("2"))
    print(f"ratelimit: {n429} x 429 for {ok} accepted requests; all requests {total_requests(stats)}")
    # Ignoring the 429s at --rate 40 against the provider's 5/s would mean ~7 refusals per acceptance.
    assert n429 <= ok, f"a retry storm against the provider's rate limit: {n429} x 429 for {ok} accepted"
    return f"limit 5/s: {n429}x429 per {ok} ok"


# ---- storm measures ----------------------------------------------------------------------------------------


def total_requests(stats: Mapping[str, Any]) -> int:
    return sum(int(v) for v in stats["requests"].values())


@dataclass
class StormMeasure:
    seconds: float
    requests: int
    throttled: int  # 429s answered
    ok: int  # 2xx answered
    configured_rate: float

    @property
    def rate(self) -> float:
        return self.requests / max(self.seconds, 1e-9)

    def describe(self) -> str:
        return (
            f"{self.requests} requests in {self.seconds:.1f}s = {self.rate:.1f}/s vs --rate "
            f"{self.configured_rate:g}/s ({self.throttled} x 429, {self.ok} x 2xx)"
        )


def measure_window(soak: Soak, seconds: float, configured_rate: float) -> tuple[dict[str, int], StormMeasure]:
    """Counters over a window of `seconds` from now."""
    s0, t0 = soak.stats()["requests"], time.monotonic()
    time.sleep(seconds)
    s1, t1 = soak.stats()["requests"], time.monotonic()
    diff = {k: int(s1.get(k, 0)) - int(s0.get(k, 0)) for k in set(s0) | set(s1)}
    return diff, StormMeasure(
        seconds=t1 - t0,
        requests=sum(diff.values()),
        throttled=diff.get("429", 0),
        ok=sum(v for k, v in diff.items() if k.startswith("2")),
        configured_rate=configured_rate,
    )


def wait_for_first_request(soak: Soak, run: CliRun, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while total_requests(soak.stats()) == 0:
        if run.poll() is not None:
            raise AssertionError(f"the run ended before its first request:\n{run.tail()}")
        if time.monotonic() > deadline:
            raise AssertionError("no request reached the sandbox")
        time.sleep(0.02)
