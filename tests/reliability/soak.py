"""The soak driver: one provider's sandbox and the `smscast` commands that drive campaigns through it, killed
at chosen moments and resumed. The sandbox is a separate process started by the test and must survive."""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
from provider_facts import ProviderFacts
from reliability.inputs import write_input
from reliability.processes import CliRun, RunRecord, last_error
from reliability.settings import KEY, LOCKED_MESSAGE, LONG_BATCH, SHORT_BATCH

from smscast import storage
from smscast.results import AttemptPaths, CampaignPaths
from smscast.sandbox.client import SandboxClient
from smscast.servers.sandbox import SandboxServer
from smscast.tasks.current import current_results

_OPTIONS = {"sender": "--sender", "template": "--template", "language": "--language", "body": "--body"}


def cli_args(fields: dict[str, Any]) -> list[str]:
    """CampaignSpec content fields as `smscast send` options."""
    args: list[str] = []
    for name, value in fields.items():
        if name == "template_vars":
            args += [a for var in value for a in ("--template-var", var)]
        else:
            args += [_OPTIONS[name], str(value)]
    return args


@dataclass
class Campaign:
    cid: str
    source: Path
    n_input: int
    n_valid: int
    long: bool
    extra_args: tuple[str, ...] = ()
    markers: tuple[int, ...] = ()
    batch_size: int | None = None  # default: the provider's for the variant
    rate: float = 400.0  # --rate; pacing comes from the sandbox's latency unless a scenario says otherwise
    runs: list[RunRecord] = field(default_factory=list)


class Soak:
    """One provider's sandbox and the commands to drive campaigns through it."""

    def __init__(self, facts: ProviderFacts, server: SandboxServer, root: Path, lease: float) -> None:
        self.facts = facts
        self.server = server
        self.root = root
        self.lease = lease
        self.results = str(root / "results")
        self.logs = root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self._log_seq = 0

    @property
    def client(self) -> SandboxClient:
        return self.server.client

    @property
    def emu(self) -> str:
        return self.facts.emulator

    # -- environment and commands --

    def env(self, lease: float | None = None) -> dict[str, str]:
        env = dict(os.environ)
        for name in ("PREFECT_API_URL", "SMSCAST_POSTMAN_TEST_ENV"):  # a temporary API; production Postman
            env.pop(name, None)
        env.update(
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            SMSCAST_LOCK_LEASE_SECONDS=str(lease if lease is not None else self.lease),
            PYTHONUNBUFFERED="1",
        )
        env[self.facts.key_env] = self.facts.api_key(KEY)
        return env

    def campaign(
        self,
        cid: str,
        n_valid: int,
        *,
        long: bool = False,
        extra_args: Sequence[str] = (),
        markers: Sequence[int] = (),
        batch_size: int | None = None,
        rate: float = 400.0,
    ) -> Campaign:
        source, n_input = write_input(self.root / f"{cid}.csv", self.facts, n_valid, markers=markers)
        return Campaign(
            cid, source, n_input, n_valid, long, tuple(extra_args), tuple(markers), batch_size, rate
        )

    def default_batch(self, long: bool) -> int:
        batch: int = min(LONG_BATCH if long else SHORT_BATCH, self.facts.caps.max_rows)
        return batch

    def batch_size(self, c: Campaign) -> int:
        return c.batch_size or self.default_batch(c.long)

    @property
    def resend_safe(self) -> bool:
        """Whether the provider recognises a re-send (idempotency), as its adapter declares."""
        return self.facts.caps.resend_safe

    def send_args(self, c: Campaign) -> list[str]:
        return [
            "send", str(c.source),
            "--provider", self.facts.name,
            "--campaign-id", c.cid,
            "--results", self.results,
            "--base-url", self.server.base_url,
            "--batch-size", str(self.batch_size(c)),
            "--concurrency", "4",  # two shards' worth: two requests in flight per shard
            "--rate", f"{c.rate:g}",
            # The soak's faults are the point (tens of percent of requests fail on purpose): the circuit
            # breaker, which would pause such a campaign, is tested on its own (tests/test_circuit_breaker.py).
            "--max-failure-rate", "1",
            *cli_args(self.facts.spec_fields(**self.facts.soak.content)),
            *c.extra_args,
        ]  # fmt: skip

    def retry_args(self, c: Campaign) -> list[str]:
        return ["retry", "--campaign-id", c.cid, "--results", self.results]

    def start(self, c: Campaign, kind: str = "send", lease: float | None = None) -> CliRun:
        self._log_seq += 1
        log = self.logs / f"{self._log_seq:03d}-{c.cid}-{kind}.log"
        args = self.send_args(c) if kind == "send" else self.retry_args(c)
        return CliRun(args, self.env(lease), log)

    # -- sandbox state --

    def reset(self, **knobs: Any) -> None:
        """A clean ledger and the start knobs, then this scenario's knobs for the provider."""
        self.client.reset()
        if knobs:
            self.client.set_faults(provider=self.emu, **knobs)

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = self.client.stats()["providers"][self.emu]
        return stats

    def processed(self) -> int:
        """Rows the provider has handled so far: new entries plus re-sends it recognised."""
        s = self.stats()
        return int(s["accepted"]) + int(s["duplicates"])

    def latency_for(self, c: Campaign, send_seconds: float) -> float:
        """Milliseconds of sandbox latency that make an uninterrupted send last about `send_seconds` (two
        requests in flight)."""
        batches = math.ceil(c.n_valid / self.batch_size(c))
        return max(1.0, 1000.0 * send_seconds * 2 / max(1, batches))

    # -- files --

    def paths(self, c: Campaign) -> CampaignPaths:
        return CampaignPaths(self.results, c.cid)

    def attempt(self, c: Campaign, n: int = 1) -> AttemptPaths:
        return self.paths(c).attempt(n)

    def phase_on_disk(self, c: Campaign) -> str:
        """How far attempt 1 got, from what it left on disk."""
        if storage.exists(self.attempt(c).done):
            return "complete"
        if self.attempt(c).shard_parts():
            return "persist"  # a shard's results written, the attempt not yet complete
        if storage.exists(self.attempt(c).manifest):
            return "send"
        if storage.exists(self.paths(c).spec):
            return "plan"
        return "startup"

    def lock_expiry(self, c: Campaign) -> float | None:
        raw = storage.get_versioned(self.paths(c).lock)
        if raw is None:
            return None
        return float(json.loads(raw[0]).get("expires_at", 0.0))

    def move_lock_elsewhere(self, c: Campaign) -> None:
        """Make the campaign's lock look as if its holder ran on another machine, where no process can be
        inspected: only its lease can free it then."""
        uri = self.paths(c).lock
        raw = storage.get_versioned(uri)
        assert raw is not None, "no lock to move"
        storage.put_bytes(uri, json.dumps({**json.loads(raw[0]), "host": "another-machine"}).encode())

    def wait_out_lease(self, c: Campaign) -> float:
        """Sleep until the lock left by a killed run has expired; returns the seconds waited."""
        expiry = self.lock_expiry(c)
        if expiry is None:
            return 0.0
        wait = max(0.0, expiry - time.time() + 0.05)
        time.sleep(wait)
        return wait

    # -- runs --

    def run(
        self, c: Campaign, kind: str = "send", timeout: float = 900.0, lease: float | None = None
    ) -> RunRecord:
        run = self.start(c, kind, lease=lease)
        rc = run.wait(timeout)
        rec = RunRecord(kind, rc, time.monotonic() - run.started, note=last_error(run.output()))
        c.runs.append(rec)
        return rec

    def run_and_kill(
        self,
        c: Campaign,
        plan: str,
        rng: random.Random | None,
        timeout: float = 600.0,
        lease: float | None = None,
    ) -> RunRecord:
        """Start `smscast send` and SIGKILL its process tree at the moment `plan` describes:

        startup  a random moment of the process's start (imports, Prefect's temporary API)
        plan     as soon as the campaign's parameters are written, i.e. while it plans and writes its plan
        send     once the provider has handled a random 10-90 % of the rows this run will send
        persist  as soon as a shard's results part exists (results being persisted, attempt not complete)

        `plan` and `persist` only make sense once; when what they wait for is already on disk, the kill
        falls back to `startup`. If the run finishes before its moment, it is recorded as not killed."""
        fraction = None
        if plan.startswith("send@"):  # a fixed moment: send@40 = once 40 % of the rows are handled
            plan, fraction = "send", int(plan.removeprefix("send@")) / 100
        spec_uri = self.paths(c).spec
        first = self.attempt(c)
        if plan == "plan" and storage.exists(spec_uri):
            plan = "startup"
        if plan == "persist" and first.shard_parts():
            plan = "startup"
        stats = self.stats()
        before = int(stats["accepted"]) + int(stats["duplicates"])
        # A resumed shard sends the batches with no recorded outcome: with idempotency, what is not accepted
        # yet (and the few batches that were in flight); without, the batches never started.
        remaining = max(1, c.n_valid - int(stats["accepted"]))
        if not self.resend_safe:
            started = [f for f in storage.list_files(f"{first.journals}/") if f.endswith(".intent")]
            remaining = max(1, c.n_valid - len(started) * self.batch_size(c))
        if fraction is None:
            fraction = rng.uniform(0.1, 0.9) if rng is not None else 0.5
        target = before + max(1, int(fraction * max(1, remaining)))
        delay = rng.uniform(0.3, 3.0) if rng is not None else 1.0
        planned_before = storage.exists(first.manifest)
        parts_before = len(first.shard_parts())
        run = self.start(c, "send", lease=lease)
        while run.poll() is None:
            if time.monotonic() - run.started > timeout:
                run.kill()
                raise AssertionError(f"run not done within {timeout}s:\n{run.tail()}")
            if plan == "startup":
                fired = time.monotonic() - run.started >= delay
            elif plan == "plan":
                fired = storage.exists(spec_uri)
            elif plan == "send":
                fired = self.processed() >= target
            elif plan == "persist":
                fired = bool(first.shard_parts())
            else:
                raise ValueError(plan)
            if fired:
                run.kill()
                break
            time.sleep(0.005 if plan in ("plan", "persist") else 0.02)
        landed = None
        if run.killed:
            time.sleep(0.3)  # let the sandbox finish what was in flight before judging progress
            landed = self._landed(c, run, planned_before, parts_before, before, remaining)
        rec = RunRecord(
            "send",
            run.poll(),
            time.monotonic() - run.started,
            killed=run.killed,
            kill_plan=plan,
            landed=landed,
            note="" if run.killed else f"finished before the kill moment ({last_error(run.output())})",
        )
        c.runs.append(rec)
        self.client.health()  # the sandbox survived the kill
        return rec

    def _landed(
        self, c: Campaign, run: CliRun, planned_before: bool, parts_before: int, before: int, remaining: int
    ) -> str:
        """Where a kill landed, from what this run changed: it had not taken the campaign's lock yet
        (`startup`: imports, Prefect's temporary API), it was planning, sending (and how far), or persisting."""
        raw = storage.get_versioned(self.paths(c).lock)
        owner = str(json.loads(raw[0]).get("owner", "")) if raw is not None else ""
        if f":{run.pid}:" not in owner:
            return "startup"
        if len(self.attempt(c).shard_parts()) > parts_before:
            return "persist"
        done = self.processed() - before
        if done > 0:
            return f"send@{min(100, int(100 * done / max(1, remaining)))}%"
        return "plan" if not planned_before else "send@0%"

    def complete(self, c: Campaign, max_runs: int = 6) -> None:
        """Re-run `smscast send` with the same campaign id until it completes. A run killed on this machine
        is taken over at once; a lock that names another machine is waited out."""
        for _ in range(max_runs):
            rec = self.run(c, "send")
            if rec.rc == 0:
                return
            if LOCKED_MESSAGE in rec.note:
                self.wait_out_lease(c)  # the lease of a holder elsewhere was still running
                continue
            raise AssertionError(f"smscast send failed (rc {rec.rc}): {rec.note}\n{self._last_log_tail()}")
        raise AssertionError(f"campaign {c.cid} did not complete in {max_runs} runs")

    def retry_until_done(self, c: Campaign, before_retry: Callable[[], None] | None = None) -> int:
        """`smscast retry` while rows remain that the retry flow would re-send. Returns retries run."""
        retries = 0
        while self.retriable(c) and retries < 4:
            if before_retry is not None:
                before_retry()
            self.wait_out_lease(c)
            rec = self.run(c, "retry")
            assert rec.rc == 0, f"smscast retry failed (rc {rec.rc}): {rec.note}\n{self._last_log_tail()}"
            retries += 1
        return retries

    def retriable(self, c: Campaign) -> int:
        current = current_results(self.results, c.cid)
        statuses = ["failed", "unknown"] if self.resend_safe else ["failed"]
        return current.filter(pl.col("status").is_in(statuses)).height

    def _last_log_tail(self) -> str:
        logs = sorted(self.logs.glob("*.log"))
        return logs[-1].read_text(errors="replace")[-6000:] if logs else ""
