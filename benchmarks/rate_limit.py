"""Benchmark: one provider account's rate limit, shared by campaigns that run at once.

    python benchmarks/rate_limit.py [--provider robase] [--rate 4] [--seconds 30] [--compare-local]

Starts the sandbox with one emulator whose token bucket holds ceil(R) requests and refills at R per second (the
emulator's 429 past it), and a real `prefect server start`. Then, as a user runs them (`smscast send`
subprocesses, one request per recipient: --batch-size 1), against that one account:

  alone   one campaign of R x seconds recipients
  three   three campaigns started together, each of R x seconds / 2 recipients

and prints, for each campaign and for the three together, its share of R over the time all of them were sending
(requests the sandbox accepted per second / R), and the scenario's 429s: in all, and after its first 5 seconds
(counted from when the last campaign had its first request accepted). Every command talks to the
Prefect server, so smscast's account-wide limit (a Prefect global concurrency limit) is what they share;
--compare-local runs the same scenarios again with SMSCAST_ACCOUNT_LIMITS=local, each campaign with only its
own in-process bucket: what smscast did before.

Nothing of the user's (~/.prefect, ~/.smscast, PREFECT_API_URL) is read or changed.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from smscast.servers.prefect_server import PrefectServer
from smscast.servers.sandbox import SandboxServer
from smscast.settings import env_prefix

KEY = "rate-limit-bench-key"
SENDERS = {"robase": "ACME", "sandbox": "ACME"}
EMULATORS = {"robase": "robase", "sandbox": "generic"}
WARM_UP = 5.0


def smscast_command() -> list[str]:
    script = Path(sys.executable).with_name("smscast")
    return [str(script)] if script.exists() else [sys.executable, "-m", "smscast.cli"]


@dataclass
class Campaign:
    name: str
    prefix: str  # its recipients' phones start with this: the ledger's entries are told apart by it
    rows: int


@dataclass
class Outcome:
    name: str
    accepted: list[float]  # the sandbox's acceptance times of its requests (one row per request)


class Sampler:
    """The sandbox's 429 count, sampled four times a second, to say how many came after a given moment."""

    def __init__(self, sandbox: SandboxServer, emulator: str) -> None:
        self.sandbox, self.emulator = sandbox, emulator
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def count(self) -> int:
        stats = self.sandbox.client.stats()["providers"].get(self.emulator, {})
        return int(stats.get("requests", {}).get("429", 0))

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.time(), self.count()))
            self._stop.wait(0.25)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append((time.time(), self.count()))

    def after(self, moment: float) -> int:
        before = max((n for t, n in self.samples if t <= moment), default=0)
        return self.samples[-1][1] - before


class Bench:
    def __init__(self, root: Path, args: argparse.Namespace, sandbox: SandboxServer, api_url: str) -> None:
        self.root, self.args, self.sandbox, self.api_url = root, args, sandbox, api_url
        self.emulator = EMULATORS[args.provider]
        self.seq = 0

    def env(self, mode: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "SMSCAST_"))}
        home = self.root / "home"
        home.mkdir(exist_ok=True)
        env.update(
            PREFECT_HOME=str(home / "prefect"),
            SMSCAST_HOME=str(home / "smscast"),
            PREFECT_API_URL=self.api_url,
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            SMSCAST_ACCOUNT_LIMITS=mode,
        )
        env[f"{env_prefix(self.args.provider)}_API_KEY"] = KEY
        return env

    def campaign(self, rows: int) -> Campaign:
        self.seq += 1
        return Campaign(f"rl-{self.seq:02d}", f"+4477{self.seq:02d}", rows)

    def run(self, mode: str, campaigns: list[Campaign]) -> tuple[list[Outcome], Sampler]:
        self.sandbox.client.reset(keep_faults=True)  # an empty ledger, a full bucket at the provider
        procs: list[tuple[Campaign, subprocess.Popen[str]]] = []
        with Sampler(self.sandbox, self.emulator) as sampler:
            for c in campaigns:
                source = self.root / f"{c.name}.csv"
                source.write_text(
                    "phone,name\n" + "".join(f"{c.prefix}{i:05d},P{i}\n" for i in range(c.rows))
                )
                cmd = [
                    *smscast_command(), "send", str(source), "-p", self.args.provider, "-c", c.name,
                    "-r", str(self.root / "results"), "--sender", SENDERS[self.args.provider],
                    "--body", "Hi {{name}}", "--batch-size", "1", "--base-url", self.sandbox.base_url,
                ]  # fmt: skip
                pipe, merged = subprocess.PIPE, subprocess.STDOUT
                proc = subprocess.Popen(cmd, env=self.env(mode), text=True, stdout=pipe, stderr=merged)
                procs.append((c, proc))
            outputs = {c.name: p.communicate()[0] for c, p in procs}
        for c, p in procs:
            if p.returncode != 0:
                raise SystemExit(f"{c.name} failed ({p.returncode}):\n{outputs[c.name][-3000:]}")
        entries = self.sandbox.client.ledger(provider=self.emulator)
        out = []
        for c, _ in procs:
            times = sorted(_epoch(e["accepted_at"]) for e in entries if e["to"].startswith(c.prefix))
            out.append(Outcome(c.name, times))
        return out, sampler

    def report(self, mode: str, scenario: str, outcomes: list[Outcome], sampler: Sampler) -> list[str]:
        rate = self.args.rate
        start = max(o.accepted[0] for o in outcomes)  # all of them are sending from here…
        end = min(o.accepted[-1] for o in outcomes)  # …to here
        window = max(end - start, 1e-9)
        rows = [(o.name, sum(start < t <= end for t in o.accepted)) for o in outcomes]
        if len(rows) > 1:
            rows.append(("together", sum(n for _, n in rows)))
        lines = [
            f"{mode:<8} {scenario:<6} {name:<9} {window:>8.1f} {n:>9} {n / window / rate:>9.1%}"
            for name, n in rows
        ]
        lines[-1] += f" {sampler.samples[-1][1]:>6} {sampler.after(start + WARM_UP):>14}"
        return lines


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--provider", choices=sorted(EMULATORS), default="robase")
    parser.add_argument("--rate", type=float, default=4.0, help="the account's limit R, requests/s")
    parser.add_argument("--seconds", type=float, default=30.0, help="how long one campaign alone runs")
    parser.add_argument("--compare-local", action="store_true", help="also without the shared limit")
    args = parser.parse_args(argv)
    rate = args.rate
    knobs = {"rate_limit_rps": rate, "rate_limit_burst": math.ceil(rate)}
    with tempfile.TemporaryDirectory(prefix="smscast-rate-bench-") as tmp:
        root = Path(tmp)
        with (
            SandboxServer(
                emulators=[EMULATORS[args.provider]],
                api_keys={EMULATORS[args.provider]: KEY},
                provider_knobs={EMULATORS[args.provider]: knobs},
            ) as sandbox,
            PrefectServer(root / "prefect", startup_timeout=300) as server,
        ):
            bench = Bench(root, args, sandbox, server.api_url)
            print(
                f"# {args.provider} emulator: {rate:g} requests/s, bucket of {math.ceil(rate)}; one request per "
                f"recipient; Prefect server {server.api_url}; shares over the time all campaigns were sending"
            )
            header = f"{'limit':<8} {'run':<6} {'campaign':<9} {'window s':>8} {'requests':>9} {'share':>9} "
            print(header + f"{'429s':>6} {'429s after 5s':>14}")
            modes = ["prefect", "local"] if args.compare_local else ["prefect"]
            for mode in modes:
                alone = [bench.campaign(math.ceil(rate * args.seconds))]
                for line in bench.report(mode, "alone", *bench.run(mode, alone)):
                    print(line, flush=True)
                three = [bench.campaign(math.ceil(rate * args.seconds / 2)) for _ in range(3)]
                for line in bench.report(mode, "three", *bench.run(mode, three)):
                    print(line, flush=True)
            print(f"# shared limit on the Concurrency page: {_limits(server.api_url)}")
    return 0


def _limits(api_url: str) -> str:
    import httpx

    answer: list[dict[str, Any]] = httpx.post(f"{api_url}/v2/concurrency_limits/filter", json={}).json()
    return "; ".join(
        f"{x['name']}: limit {x['limit']} slots, decay {x['slot_decay_per_second']:g} slots/s" for x in answer
    )


if __name__ == "__main__":
    sys.exit(main())
