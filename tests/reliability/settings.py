"""Sizes, seeds and fixed values of the reliability suite: real `smscast` processes against one sandbox per
provider, killed with SIGKILL at chosen moments, resumed, retried, and checked against the sandbox's ledger.

Sizes and seeds come from the environment, so the long run can be scaled without editing anything:

    SMSCAST_SOAK_ROWS          recipients per kill campaign   (short 3,000 · long 50,000)
    SMSCAST_SOAK_KILLS         SIGKILLs per kill campaign     (short 1 · long 4)
    SMSCAST_SOAK_MIX_ROWS      recipients per fault mix       (short 3,000 · long 10,000)
    SMSCAST_SOAK_SEND_SECONDS  how long one uninterrupted send phase should last, so that kills land in it
                               (short 4 · long 8); the sandbox's latency is derived from it
    SMSCAST_SOAK_SEED          seed of every random choice (default: drawn and printed)
    SMSCAST_SOAK_PROVIDERS     comma-separated subset of providers (default: all six)
    SMSCAST_SOAK_MIXES         comma-separated subset of the long run's fault mixes (default: all)
    SMSCAST_SOAK_LEASE         campaign lock lease in seconds for the CLI runs (default 3)
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provider_facts import FACTS

PROJECT_ROOT = Path(__file__).resolve().parents[2]
KEY = "soak-key-7f3a"
LOCKED_MESSAGE = "being sent by another run"


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    return int(raw) if raw else default


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    return float(raw) if raw else default


def env_list(name: str) -> list[str] | None:
    raw = os.environ.get(name, "").strip()
    return [s.strip() for s in raw.split(",") if s.strip()] or None


def selected_providers() -> list[str]:
    """The providers a run covers: SMSCAST_SOAK_PROVIDERS, or every one (tests/provider_facts.py)."""
    chosen = env_list("SMSCAST_SOAK_PROVIDERS")
    if chosen is None:
        return list(FACTS)
    unknown = set(chosen) - set(FACTS)
    if unknown:
        raise ValueError(f"SMSCAST_SOAK_PROVIDERS: unknown {sorted(unknown)}; known {list(FACTS)}")
    return chosen


# Start knobs of every emulator: each documented rate limit raised far above what the runs ask for
# (textingline's 5 a minute would make a 50,000-row campaign take hours), so that only the mixes that mean to
# throttle do.
START_KNOBS: dict[str, Any] = {"rate_limit_rps": 5000, "rate_limit_burst": 5000}

# Rows per request, within each provider's own maximum (Instasent's 100).
SHORT_BATCH = 100
LONG_BATCH = 500


_SEED = _env_int("SMSCAST_SOAK_SEED", random.SystemRandom().randrange(1, 1_000_000))


def soak_seed() -> int:
    return _SEED


def rng_for(*parts: object) -> random.Random:
    """A random source of its own for each scenario, derived from the session seed: the choices of one
    scenario do not shift when another is added or skipped."""
    return random.Random(f"{_SEED}/" + "/".join(map(str, parts)))


@dataclass(frozen=True)
class Sizes:
    rows: int
    kills: int
    mix_rows: int
    send_seconds: float
    lease: float

    @classmethod
    def _from_env(cls, rows: int, kills: int, mix_rows: int, send_seconds: float) -> Sizes:
        """These defaults, each overridable by its SMSCAST_SOAK_* variable."""
        return cls(
            rows=_env_int("SMSCAST_SOAK_ROWS", rows),
            kills=_env_int("SMSCAST_SOAK_KILLS", kills),
            mix_rows=_env_int("SMSCAST_SOAK_MIX_ROWS", mix_rows),
            send_seconds=_env_float("SMSCAST_SOAK_SEND_SECONDS", send_seconds),
            lease=_env_float("SMSCAST_SOAK_LEASE", 3.0),
        )

    @classmethod
    def short(cls) -> Sizes:
        return cls._from_env(rows=3000, kills=1, mix_rows=3000, send_seconds=4.0)

    @classmethod
    def long(cls) -> Sizes:
        return cls._from_env(rows=50_000, kills=4, mix_rows=10_000, send_seconds=8.0)
