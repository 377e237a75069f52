"""Faults (issue 4, item 4), proved with the sandbox ledger (item 5).

Each mix (mixes.py): the sandbox injects its faults into one provider's API, a real `smscast send` runs the
campaign, the faults meant to be transient are cleared, `smscast retry` runs while rows remain that it would
re-send, and the ledger invariants must hold (invariants.check_campaign).

    storm429    50 % of requests answered 429 for 4 s mid-send        -> the request rate must back off
    ratelimit   the provider's own limit (5/s) far below our --rate   -> few 429s, not a retry storm
    burst5xx    a burst of 503s, then 10 % of requests                -> retried inside the run
    timeouts    responses held past --request-timeout 1 s (accepted!) -> re-sent with keys / `unknown`
    drops       connections dropped before and after processing       -> likewise
    rejections  per-row refusals (textingline: whole-batch refusals)  -> `rejected`, the rest accepted
    transient   per-row transient refusals                            -> `failed`, then accepted by retry
    combined    a bit of everything above but the throttling

Short variant (CI): `storm429` for the generic sandbox API; `combined` runs in CI for every provider as
test_kill_resume's short test (with a kill on top). Long variant (`-m slow`): every mix for every provider
(SMSCAST_SOAK_MIXES narrows it).
"""

from __future__ import annotations

import os
import time

import pytest
from reliability.invariants import check_campaign
from reliability.mixes import MIXES, Mix, apply, clear_transient, markers_for, storm, throttling
from reliability.report import Report
from reliability.settings import Sizes, rng_for, selected_providers
from reliability.soak import Soak

pytestmark = pytest.mark.integration


def run_mix(soak: Soak, report: Report, mix: Mix, sizes: Sizes, *, long: bool) -> None:
    name = soak.facts.name
    rng = rng_for("mix", name, mix.name, long)
    n = mix.rows(sizes)
    c = soak.campaign(
        f"mix-{mix.name}-{'long' if long else 'short'}",
        n,
        long=long,
        extra_args=mix.args,
        markers=markers_for(soak, mix, n),
        # Batches of 100 also in the long run: enough requests per campaign for the per-request fault rates.
        batch_size=mix.batch_size or soak.default_batch(long=False),
        rate=mix.rate,
    )
    knobs = apply(soak, mix, rng.randrange(1 << 30))
    started = time.monotonic()
    backoff = ""
    if mix.name == "storm429":
        backoff = storm(soak, c)
    else:
        soak.complete(c)
        if mix.name == "ratelimit":
            backoff = throttling(soak, c)
    soak.retry_until_done(c, before_retry=lambda: clear_transient(soak))
    verdict = check_campaign(
        soak,
        c,
        reject_suffixes=knobs.get("reject_suffixes", ()),
        transient_suffixes=knobs.get("transient_suffixes", ()),
    )
    tally = report.tally(name)
    tally.mixes.append(mix.name)
    if backoff:
        tally.backoff.append(f"{mix.name}: {backoff}")
    report.add_verdict(verdict)
    print(
        f"{verdict.summary()} · {time.monotonic() - started:.0f}s · sandbox requests {soak.stats()['requests']}"
    )
    assert not verdict.problems, verdict.summary() + "\n" + "\n".join(verdict.problems)


SHORT_CASES = [("sandbox", "storm429")] if "sandbox" in selected_providers() else []
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
