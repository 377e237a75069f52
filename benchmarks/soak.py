"""The reliability soak (tests/reliability) with its sizes on the command line: kill -9 at random moments of
large campaigns, every fault mix, the duplicate-run checks, for each provider, proved against the sandbox ledger.

    python benchmarks/soak.py                       # the long variant: 50,000 recipients, 4 kills each
    python benchmarks/soak.py --rows 200000 --kills 8 --seed 42 --providers postman,sandbox
    python benchmarks/soak.py --short               # what CI runs

It sets the SMSCAST_SOAK_* variables (tests/reliability/settings.py) and runs pytest; the per-provider summary
(kill points, fault mixes, duplicates, losses, unknowns) is printed at the end and written to
<pytest basetemp>/soak-summary.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--short", action="store_true", help="the CI variant instead of the long one")
    ap.add_argument("--rows", type=int, help="recipients per kill campaign (SMSCAST_SOAK_ROWS)")
    ap.add_argument("--kills", type=int, help="SIGKILLs per kill campaign (SMSCAST_SOAK_KILLS)")
    ap.add_argument("--mix-rows", type=int, help="recipients per fault mix (SMSCAST_SOAK_MIX_ROWS)")
    ap.add_argument("--send-seconds", type=float, help="length of one send phase (SMSCAST_SOAK_SEND_SECONDS)")
    ap.add_argument("--seed", type=int, help="seed of the kill moments and fault draws (SMSCAST_SOAK_SEED)")
    ap.add_argument("--providers", help="comma-separated subset (SMSCAST_SOAK_PROVIDERS)")
    ap.add_argument("--mixes", help="comma-separated subset of fault mixes (SMSCAST_SOAK_MIXES)")
    ap.add_argument("pytest_args", nargs="*", help="passed on to pytest (after --)")
    args = ap.parse_args()

    env = dict(os.environ)
    for flag, var in (
        ("rows", "SMSCAST_SOAK_ROWS"),
        ("kills", "SMSCAST_SOAK_KILLS"),
        ("mix_rows", "SMSCAST_SOAK_MIX_ROWS"),
        ("send_seconds", "SMSCAST_SOAK_SEND_SECONDS"),
        ("seed", "SMSCAST_SOAK_SEED"),
        ("providers", "SMSCAST_SOAK_PROVIDERS"),
        ("mixes", "SMSCAST_SOAK_MIXES"),
    ):
        value = getattr(args, flag)
        if value is not None:
            env[var] = str(value)
    cmd = [sys.executable, "-m", "pytest", "tests/reliability", "-q", "-p", "no:cacheprovider"]
    cmd += ["-m", "not slow"] if args.short else ["-m", "slow"]
    cmd += args.pytest_args
    started = time.monotonic()
    rc = subprocess.call(cmd, cwd=ROOT, env=env)
    print(f"soak wall time: {time.monotonic() - started:.0f}s (pytest exit code {rc})")
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
