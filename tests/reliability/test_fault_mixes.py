"""Faults (issue 4, item 4), proved with the sandbox ledger (item 5).

Each mix: the sandbox injects its faults into one provider's API, a real `smscast send` runs the campaign,
the faults meant to be transient are cleared, `smscast retry` runs while rows remain that it would re-send,
and the ledger invariants must hold (see harness.check_campaign). Mixes:

    storm429    50 % of requests answered 429 for a few seconds      -> the request rate must back off
    ratelimit   the provider's own limit far below our --rate         -> few 429s, not a retry storm
    burst5xx    a burst of 503s, then 10 % of requests                -> retried inside the run
    timeouts    responses held past --request-timeout 1 s (accepted!) -> re-sent with keys / `unknown`
    drops       connections dropped before and after processing       -> likewise
    rejections  per-row refusals (textingline: whole-batch refusals)  -> `rejected`, the rest accepted
    transient   per-row transient refusals                            -> `failed`, then accepted by retry
    combined    a bit of everything above but the throttling

How back-off is measured. The sandbox counts every request it answers, so the test reads its counters at
the start and end of a window and divides by the window's length. In `storm429` the window is the storm:
`--rate` is the binding limit (the sandbox answers in ~1 ms, and --rate is set below what --concurrency could
push), so a client that did not back off would keep sending at --rate or, retrying at once, faster; the
measure is the storm's request rate against --rate, and it must stay under half of it. In `ratelimit` the
sandbox's own token bucket (5/s) sits under our --rate (40/s): a client that ignored 429s would see about
7 refusals per acceptance; the measure is 429s per accepted request over the whole campaign, and it must
stay under one.

Short variant (CI): `combined` for every provider, `storm429` for the generic sandbox API. Long variant
(`-m slow`): every mix for every provider (SMSCAST_SOAK_MIXES narrows it).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from reliability.harness import (
    START_KNOBS,
    Campaign,
    Report,
    Sizes,
    Soak,
    StormMeasure,
    check_campaign,
    measure_window,
    rng_for,
    selected_providers,
    total_requests,
    wait_for_first_request,
)

pytestmark = pytest.mark.integration

CLEAR: dict[str, Any] = {
    "next_429": 0, "next_5xx": 0, "next_timeout": 0, "next_drop_before": 0, "next_drop_after": 0,
    "rate_429": 0, "rate_5xx": 0, "rate_timeout": 0, "rate_drop_before": 0, "rate_drop_after": 0,
    "transient_suffixes": [], **START_KNOBS,
}  # fmt: skip


@dataclass(frozen=True)
class Mix:
    name: str
    knobs: Callable[[Soak, bool], dict[str, Any]]
    args: tuple[str, ...] = ()
    rejects: bool = False  # reject_suffixes set (kept across retries: refusals are permanent)
    batch_size: int | None = None
    rate: float = 400.0
    rows: Callable[[Sizes], int] = field(default=lambda s: s.mix_rows)


def _reject(soak: Soak, long: bool) -> list[str]:
    return [soak.setup.long_reject_suffix if long else soak.setup.reject_suffix]


MIXES: dict[str, Mix] = {
    m.name: m
    for m in (
        Mix("storm429", lambda s, long: {}, batch_size=20, rate=20.0, rows=lambda s: min(s.mix_rows, 3000)),
        Mix(
            "ratelimit",
            lambda s, long: {"rate_limit_rps": 5, "rate_limit_burst": 5},
            batch_size=20,
            rate=40.0,
            rows=lambda s: min(s.mix_rows, 1000),
        ),
        Mix("burst5xx", lambda s, long: {"next_5xx": 6, "rate_5xx": 0.1}),
        Mix(
            "timeouts",
            lambda s, long: {"next_timeout": 3, "rate_timeout": 0.03, "timeout_delay_s": 3},
            args=("--request-timeout", "1"),
        ),
        Mix(
            "drops",
            lambda s, long: {
                "next_drop_before": 2, "next_drop_after": 2, "rate_drop_before": 0.02, "rate_drop_after": 0.02,
            },  # fmt: skip
        ),
        Mix("rejections", lambda s, long: {"reject_suffixes": _reject(s, long)}, rejects=True),
        Mix("transient", lambda s, long: {"transient_suffixes": [s.setup.transient_suffix]}),
        Mix(
            "combined",
            lambda s, long: {
                "next_5xx": 3, "next_timeout": 2, "next_drop_before": 2, "next_drop_after": 2,
                "rate_5xx": 0.03, "rate_drop_after": 0.01, "timeout_delay_s": 3,
                "reject_suffixes": _reject(s, long), "transient_suffixes": [s.setup.transient_suffix],
            },  # fmt: skip
            args=("--request-timeout", "1"),
            rejects=True,
        ),
    )
}


def markers_for(soak: Soak, mix: Mix, n: int) -> list[int]:
    """textingline refuses a whole request for a marked body: the rejections it can be given."""
    if not (mix.rejects and soak.setup.marker_rejects):
        return []
    return list(range(7, n, 500))


def run_mix(soak: Soak, report: Report, mix: Mix, sizes: Sizes, *, long: bool) -> None:
    name = soak.setup.name
    rng = rng_for("mix", name, mix.name, long)
    n = mix.rows(sizes)
    c = soak.campaign(
        f"mix-{mix.name}-{'long' if long else 'short'}",
        n,
        long=long,
        extra_args=mix.args,
        markers=markers_for(soak, mix, n),
        batch_size=mix.batch_size,
        rate=mix.rate,
    )
    soak.reset()
    soak.client.set_faults(seed=rng.randrange(1 << 30))  # the sandbox's draws for the rate_* knobs
    knobs = mix.knobs(soak, long)
    if knobs:
        soak.client.set_faults(provider=soak.emu, **knobs)
    started = time.monotonic()
    backoff = ""
    if mix.name == "storm429":
        backoff = storm(soak, c)
    else:
        soak.complete(c)
        if mix.name == "ratelimit":
            backoff = throttling(soak, c)
    soak.retry_until_done(c, before_retry=lambda: soak.client.set_faults(provider=soak.emu, **CLEAR))
    verdict = check_campaign(soak, c, reject_suffixes=knobs.get("reject_suffixes", ()))
    tally = report.tally(name)
    tally.mixes.append(mix.name)
    if backoff:
        tally.backoff.append(f"{mix.name}: {backoff}")
    report.add_verdict(verdict)
    stats = soak.stats()
    print(f"{verdict.summary()} · {time.monotonic() - started:.0f}s · sandbox requests {stats['requests']}")
    assert not verdict.problems, verdict.summary() + "\n" + "\n".join(verdict.problems)


def storm(soak: Soak, c: Campaign) -> str:
    """A 429 storm for a few seconds in the middle of the send; returns the back-off measure."""
    run = soak.start(c, "send")
    wait_for_first_request(soak, run)
    _, calm = measure_window(soak, 1.0, c.rate)
    soak.client.set_faults(provider=soak.emu, rate_429=0.5, retry_after_s=1)
    counts, during = measure_window(soak, 4.0, c.rate)
    soak.client.set_faults(provider=soak.emu, rate_429=0)
    still_running = run.poll() is None
    rc = run.wait(600)
    assert rc == 0, run.tail()
    print(f"storm429: before {calm.describe()}; during {during.describe()}; {counts}")
    assert still_running, "the campaign ended before the storm did: the measure would be meaningless"
    assert during.throttled > 0, f"the storm produced no 429s: {counts}"
    # A client that did not back off would keep sending at --rate (or faster, retrying at once).
    assert during.rate <= 0.5 * c.rate, f"no back-off under a 429 storm: {during.describe()}"
    return f"{during.rate:.1f} req/s in the storm vs --rate {c.rate:g}"


def throttling(soak: Soak, c: Campaign) -> str:
    stats = soak.stats()["requests"]
    n429 = int(stats.get("429", 0))
    ok = sum(int(v) for k, v in stats.items() if k.startswith("2"))
    print(f"ratelimit: {n429} x 429 for {ok} accepted requests; all requests {total_requests(soak.stats())}")
    # Ignoring the 429s at --rate 40 against the provider's 5/s would mean ~7 refusals per acceptance.
    assert n429 <= ok, f"a retry storm against the provider's rate limit: {n429} x 429 for {ok} accepted"
    return f"{n429}x429/{ok} ok at limit 5/s, --rate {c.rate:g}"


SHORT_CASES = [(p, "combined") for p in selected_providers()]
if "sandbox" in selected_providers():
    SHORT_CASES.insert(0, ("sandbox", "storm429"))
LONG_MIXES = [m for m in (os.environ.get("SMSCAST_SOAK_MIXES") or ",".join(MIXES)).split(",") if m]
LONG_CASES = [(p, m) for p in selected_providers() for m in LONG_MIXES]


@pytest.mark.parametrize(
    ("soak", "mix"), SHORT_CASES, indirect=["soak"], ids=[f"{p}-{m}" for p, m in SHORT_CASES]
)
def test_fault_mix(soak: Soak, soak_report: Report, mix: str) -> None:
    run_mix(soak, soak_report, MIXES[mix], Sizes.short(), long=False)


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize(
    ("soak", "mix"), LONG_CASES, indirect=["soak"], ids=[f"{p}-{m}" for p, m in LONG_CASES]
)
def test_fault_mix_long(soak: Soak, soak_report: Report, mix: str) -> None:
    run_mix(soak, soak_report, MIXES[mix], Sizes.long(), long=True)
