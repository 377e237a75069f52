"""Benchmark: what a user waits for Prefect before a small campaign is sent.

    python benchmarks/startup.py [--rows 10] [--repeats 3]
    python benchmarks/startup.py --busy [--busy-runs 10] [--compare-default-timeout]

Runs `smscast send` of a small file against the sandbox as a subprocess, exactly as a user would, and prints
the median wall time of each way smscast can find a Prefect API:
  cold       Prefect's temporary server with a fresh PREFECT_HOME (its database is migrated first)
  warm       Prefect's temporary server with a PREFECT_HOME used before
  local      `smscast server start` running (started once, not counted; its start time is printed)
With --busy, instead: one spinning process per core (plus one) keeps every core busy while --busy-runs cold
runs go one after another, and it counts the runs that failed to start Prefect. --compare-default-timeout
repeats those runs with Prefect's own start timeout (20 s), as smscast used to run.

Each mode's runs have their own PREFECT_HOME and SMSCAST_HOME under a temporary directory: nothing of the
user's (~/.prefect, ~/.smscast, PREFECT_API_URL) is read or changed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from smscast.servers.sandbox import SandboxServer

KEY = "startup-bench-key"
START_FAILURE = "Timed out while attempting to connect to ephemeral Prefect API server"
LOCAL_TARGET = 5.0
COLD_TARGET = 30.0


def smscast_command() -> list[str]:
    script = Path(sys.executable).with_name("smscast")
    return [str(script)] if script.exists() else [sys.executable, "-m", "smscast.cli"]


def write_recipients(path: Path, rows: int) -> Path:
    lines = ["phone,name"] + [f"+4474009{i:05d},Person {i}" for i in range(rows)]
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class Mode:
    name: str
    times: list[float] = field(default_factory=list)
    start_failures: int = 0
    other_failures: int = 0
    notes: list[str] = field(default_factory=list)

    def row(self) -> str:
        t = self.times
        figures = [statistics.median(t), min(t), max(t)] if t else []
        shown = " ".join(f"{x:>8.1f}" for x in figures) if t else " ".join(f"{'-':>8}" for _ in range(3))
        return f"{self.name:<36} {len(t):>5} {shown} {self.start_failures:>9} {self.other_failures:>6}"


class Bench:
    def __init__(self, root: Path, sandbox: SandboxServer, rows: int) -> None:
        self.root = root
        self.sandbox = sandbox
        self.source = write_recipients(root / "recipients.csv", rows)
        self.seq = 0

    def env(self, prefect_home: Path, smscast_home: Path, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "SMSCAST_"))}
        env.update(
            PREFECT_HOME=str(prefect_home),
            SMSCAST_HOME=str(smscast_home),
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            SMSCAST_SANDBOX_API_KEY=KEY,
            **extra,
        )
        return env

    def send(self, mode: Mode, env: dict[str, str], timeout: float = 900.0) -> None:
        self.seq += 1
        args = [
            *smscast_command(), "send", str(self.source),
            "--provider", "sandbox", "--campaign-id", f"startup-{self.seq:03d}",
            "--results", str(self.root / "results"), "--base-url", self.sandbox.base_url,
            "--body", "Hi {{name}}, your order ships today.",
        ]  # fmt: skip
        began = time.monotonic()
        done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout, check=False)
        seconds = time.monotonic() - began
        output = done.stdout + done.stderr
        if done.returncode == 0:
            mode.times.append(seconds)
        elif START_FAILURE in output:
            mode.start_failures += 1
            mode.notes.append(f"run {self.seq}: Prefect start timed out after {seconds:.0f}s")
        else:
            mode.other_failures += 1
            mode.notes.append(f"run {self.seq}: rc {done.returncode} after {seconds:.0f}s:\n{output[-1500:]}")
        outcome = "ok" if done.returncode == 0 else f"FAILED rc {done.returncode}"
        print(f"  {mode.name}: {seconds:.1f}s {outcome}", file=sys.stderr, flush=True)

    def fresh(self, label: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=f"{label}-", dir=self.root))

    def cold(self, mode: Mode, runs: int, **extra: str) -> None:
        for _ in range(runs):
            self.send(mode, self.env(self.fresh("prefect-home"), self.fresh("smscast-home"), **extra))

    def warm(self, mode: Mode, runs: int) -> None:
        home, nothing = self.fresh("prefect-home"), self.fresh("smscast-home")
        self.send(Mode("warm-up (not counted)"), self.env(home, nothing))
        for _ in range(runs):
            self.send(mode, self.env(home, nothing))

    def local(self, mode: Mode, runs: int) -> None:
        env = self.env(self.fresh("prefect-home"), self.fresh("smscast-home"))
        began = time.monotonic()
        start = [*smscast_command(), "server", "start", "--port", "0", "--no-ui"]
        subprocess.run(start, env=env, check=True, capture_output=True, timeout=900)
        mode.notes.append(f"`smscast server start` (new database) took {time.monotonic() - began:.1f}s")
        try:
            for _ in range(runs):
                self.send(mode, env)
        finally:
            subprocess.run([*smscast_command(), "server", "stop"], env=env, capture_output=True, timeout=120)


@contextmanager
def busy_cores(count: int) -> Iterator[None]:
    """`count` processes spinning on the CPU at normal priority, like other jobs on a shared machine."""
    spin = "while True: pass"
    procs = [subprocess.Popen([sys.executable, "-c", spin], start_new_session=True) for _ in range(count)]
    try:
        yield
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait(timeout=30)


def report(modes: list[Mode]) -> None:
    print(
        f"\n{'mode (seconds, wall)':<36} {'ok':>5} {'median':>8} {'min':>8} {'max':>8} {'startfail':>9} {'other':>6}"
    )
    for mode in modes:
        print(mode.row())
    for mode in modes:
        for note in mode.notes:
            print(f"  {mode.name}: {note}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3, help="runs per mode (medians are reported)")
    parser.add_argument("--busy", action="store_true", help="count start failures of cold runs on busy cores")
    parser.add_argument("--busy-runs", type=int, default=10)
    parser.add_argument("--compare-default-timeout", action="store_true", help="with --busy: also 20 s")
    args = parser.parse_args(argv)

    cores = os.cpu_count() or 2
    print(f"{args.rows}-row `smscast send` against the sandbox; {cores} cores; load {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="smscast-startup-") as tmp, SandboxServer(default_key=KEY) as sb:
        bench = Bench(Path(tmp), sb, args.rows)
        if args.busy:
            modes = [Mode(f"cold, {cores + 1} spinning processes")]
            if args.compare_default_timeout:
                modes.append(Mode("cold, busy, Prefect's 20 s timeout"))
            with busy_cores(cores + 1):
                bench.cold(modes[0], args.busy_runs)
                if args.compare_default_timeout:
                    bench.cold(
                        modes[1], args.busy_runs, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="20"
                    )
            report(modes)
            failed = sum(m.start_failures for m in modes[:1])
            print(f"\nstart failures on busy cores: {failed} of {args.busy_runs} (target: 0)")
            return 0 if failed == 0 else 1
        cold, warm, local = Mode("cold temporary (fresh PREFECT_HOME)"), Mode("warm temporary"), Mode("local")
        local.name = "local (`smscast server start`)"
        bench.local(local, args.repeats)
        bench.warm(warm, args.repeats)
        bench.cold(cold, args.repeats)
        report([cold, warm, local])
        ok = True
        for mode, target in ((local, LOCAL_TARGET), (cold, COLD_TARGET)):
            if mode.times:
                med = statistics.median(mode.times)
                ok &= med <= target
                verdict = "met" if med <= target else "NOT met"
                print(f"target {mode.name}: median {med:.1f}s ≤ {target:g}s: {verdict}")
            else:
                ok = False
                print(f"target {mode.name}: no successful run")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
