"""The report of a reliability session: per-provider tallies of kills, mixes, campaigns and verdicts."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from provider_facts import FACTS
from reliability.invariants import Verdict
from reliability.soak import Campaign


@dataclass
class ProviderTally:
    kill_points: int = 0
    kills_landed: list[str] = field(default_factory=list)
    kill_campaigns: int = 0
    mixes: list[str] = field(default_factory=list)
    duplicate_runs: int = 0
    campaigns: int = 0
    rows: int = 0
    duplicates: int = 0
    losses: int = 0
    unknown: int = 0
    unknown_in_ledger: int = 0
    recognised_resends: int = 0
    problems: int = 0
    backoff: list[str] = field(default_factory=list)


class Report:
    """Collected over the session, printed at its end (conftest.py) and written next to the run's temp
    files."""

    def __init__(self) -> None:
        self.tallies: dict[str, ProviderTally] = {}
        self.lines: list[str] = []
        self.lock = threading.Lock()

    def tally(self, provider: str) -> ProviderTally:
        with self.lock:
            return self.tallies.setdefault(provider, ProviderTally())

    def add_verdict(self, v: Verdict) -> None:
        t = self.tally(v.provider)
        with self.lock:
            t.campaigns += 1
            t.rows += v.rows
            t.duplicates += v.duplicates
            t.losses += v.losses
            t.unknown += v.unknown
            t.unknown_in_ledger += v.unknown_in_ledger
            t.recognised_resends += v.recognised_resends
            t.problems += len(v.problems)
            self.lines.append(v.summary() + ("" if not v.problems else f"  PROBLEMS: {v.problems}"))

    def add_kills(self, provider: str, c: Campaign) -> None:
        t = self.tally(provider)
        with self.lock:
            t.kill_campaigns += 1
            for r in c.runs:
                if r.kill_plan is not None:
                    t.kill_points += 1
                    t.kills_landed.append(r.landed if r.killed and r.landed else "missed")

    def add_interruption(self, provider: str, landed: str) -> None:
        """A kill or a stall made by hand (not through `Soak.run_and_kill`)."""
        t = self.tally(provider)
        with self.lock:
            t.kill_points += 1
            t.kills_landed.append(landed)

    def note(self, line: str) -> None:
        with self.lock:
            self.lines.append(line)

    def table(self) -> str:
        head = (
            "provider",
            "kill pts",
            "landed",
            "mixes",
            "dup runs",
            "campaigns",
            "rows",
            "duplicates",
            "losses",
            "unknown (in ledger)",
            "re-sends recognised",
            "backoff",
        )
        rows = []
        for name in FACTS:
            t = self.tallies.get(name)
            if t is None:
                continue
            landed: dict[str, int] = {}
            for ph in t.kills_landed:
                key = ph.split("@")[0]
                landed[key] = landed.get(key, 0) + 1
            rows.append(
                (
                    name,
                    str(t.kill_points),
                    " ".join(f"{k}:{v}" for k, v in sorted(landed.items())) or "-",
                    f"{len(t.mixes)}" + (f" ({', '.join(t.mixes)})" if t.mixes else ""),
                    str(t.duplicate_runs),
                    str(t.campaigns),
                    f"{t.rows:,}",
                    str(t.duplicates),
                    str(t.losses),
                    f"{t.unknown} ({t.unknown_in_ledger})",
                    str(t.recognised_resends),
                    "; ".join(t.backoff) or "-",
                )
            )
        widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
        fmt = " | ".join(f"{{:<{w}}}" for w in widths)
        out = [fmt.format(*head), "-+-".join("-" * w for w in widths), *(fmt.format(*r) for r in rows)]
        return "\n".join(out)
