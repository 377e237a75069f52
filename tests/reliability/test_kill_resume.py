"""Resume after kill -9 (issue 4, item 2), proved with the sandbox ledger (item 5).

Per provider: a campaign sent by a real `smscast send` process, killed with SIGKILL (process group and all,
Prefect's temporary API included) at seeded random moments — during start-up, while planning, mid-send,
while persisting — then `smscast send` again with the same campaign id until it completes (at once: the
dead run was on this machine, so its lock is taken over without waiting for its lease), `smscast retry`
while rows remain that it would re-send, and the invariants: every input row has one current result; no
phone twice in the ledger; every accepted row in the ledger exactly once; with idempotency every valid row
accepted; without (Postman) the interrupted batches `unknown`, never re-sent.

Short variant (CI): SMSCAST_SOAK_ROWS=3,000 recipients, SMSCAST_SOAK_KILLS=1 kill per provider, the kill
moments spread over the phases across providers, and the campaign runs under the `combined` fault mix
(mixes.py: 503s, held responses past a 1 s timeout, connections dropped before and after processing, per-row
refusals and transient failures), so that one CI scenario per provider covers resume and faults together.
Long variant (`-m slow`): 50,000 recipients and 4 kills per provider, the first mid-send, the others
anywhere, without faults (test_fault_mixes.py runs each mix on its own).
"""

from __future__ import annotations

import random

import pytest
from provider_facts import FACTS
from reliability.invariants import check_campaign
from reliability.mixes import MIXES, Mix, apply, clear_transient, markers_for
from reliability.report import Report
from reliability.settings import Sizes, rng_for, selected_providers, soak_seed
from reliability.soak import Soak

pytestmark = pytest.mark.integration

SHORT_FIRST_KILLS = ("send", "persist", "plan", "send", "startup")
PHASE_WEIGHTS = {"send": 5, "persist": 2, "plan": 2, "startup": 1}


def kill_phases(provider: str, kills: int, rng: random.Random, long: bool) -> list[str]:
    """The first kill of a short run cycles through the phases across providers (offset by the seed), so
    that one CI run covers them all; Postman's always lands mid-send, where its journal is at stake. Later
    kills (and the long run's after the first) are drawn by weight."""
    if long or provider == "postman":
        first = "send"
    else:
        first = SHORT_FIRST_KILLS[(list(FACTS).index(provider) + soak_seed()) % len(SHORT_FIRST_KILLS)]
    rest = rng.choices(list(PHASE_WEIGHTS), weights=list(PHASE_WEIGHTS.values()), k=max(0, kills - 1))
    return [first, *rest][:kills]


def kill_and_finish(soak: Soak, report: Report, sizes: Sizes, *, long: bool, mix: Mix | None = None) -> None:
    name = soak.facts.name
    rng = rng_for("kill", name, long, mix.name if mix else "clean")
    cid = f"kill-{'long' if long else 'short'}" + (f"-{mix.name}" if mix else "")
    markers = markers_for(soak, mix, sizes.rows) if mix else []
    c = soak.campaign(cid, sizes.rows, long=long, extra_args=mix.args if mix else (), markers=markers)
    latency = soak.latency_for(c, sizes.send_seconds)
    knobs = apply(soak, mix, rng.randrange(1 << 30), latency_ms=latency) if mix else {}
    if mix is None:
        soak.reset(latency_ms=latency)
    phases = kill_phases(name, sizes.kills, rng, long)
    for phase in phases:
        if soak.phase_on_disk(c) == "persist":  # everything sent and recorded: only a start-up is left
            phase = "startup"
        rec = soak.run_and_kill(c, phase, rng)
        print(f"{name}: kill at {rec.kill_plan}: landed {rec.landed} after {rec.seconds:.1f}s {rec.note}")
        if not rec.killed:
            assert rec.rc == 0, f"an unkilled run failed: {rec.note}\n{soak._last_log_tail()}"
            break  # the campaign completed before the moment came
    soak.client.set_faults(provider=soak.emu, latency_ms=1)  # the rest at full speed
    soak.complete(c)
    soak.retry_until_done(c, before_retry=lambda: clear_transient(soak))
    verdict = check_campaign(
        soak,
        c,
        reject_suffixes=knobs.get("reject_suffixes", ()),
        transient_suffixes=knobs.get("transient_suffixes", ()),
    )
    report.add_kills(name, c)
    if mix is not None:
        report.tally(name).mixes.append(f"{mix.name}+kill")
    report.add_verdict(verdict)
    print(verdict.summary())
    assert not verdict.problems, verdict.summary() + "\n" + "\n".join(verdict.problems)


@pytest.mark.parametrize("soak", selected_providers(), indirect=True)
def test_kill_under_faults_then_resume(soak: Soak, soak_report: Report) -> None:
    kill_and_finish(soak, soak_report, Sizes.short(), long=False, mix=MIXES["combined"])


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("soak", selected_providers(), indirect=True)
def test_kill_at_several_random_moments_of_a_large_campaign(soak: Soak, soak_report: Report) -> None:
    kill_and_finish(soak, soak_report, Sizes.long(), long=True)
