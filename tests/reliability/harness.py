"""The reliability harness: real `smscast` processes against one sandbox per provider, killed with SIGKILL at
chosen moments, resumed, retried, and checked against the sandbox's ledger.

Everything a scenario does goes through the command line in a subprocess of its own session (the CLI starts
Prefect's temporary API server as a child; a kill takes the whole group, and anything left of the process tree
is killed too and checked gone). The sandbox is a separate process started by the test and must survive.

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

import contextlib
import csv
import json
import math
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import psutil

from sandbox.client import SandboxClient
from servers.sandbox import SandboxServer
from smscast import storage
from smscast.results import AttemptPaths, CampaignPaths
from tasks.current import current_results

PROJECT_ROOT = Path(__file__).resolve().parents[2]
KEY = "soak-key-7f3a"
LOCKED_MESSAGE = "being sent by another run"

# ---- parameters -------------------------------------------------------------------------------------------


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    return int(raw) if raw else default


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    return float(raw) if raw else default


def _env_list(name: str) -> list[str] | None:
    raw = os.environ.get(name, "").strip()
    return [s.strip() for s in raw.split(",") if s.strip()] or None


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
    def short(cls) -> Sizes:
        return cls(
            rows=_env_int("SMSCAST_SOAK_ROWS", 3000),
            kills=_env_int("SMSCAST_SOAK_KILLS", 1),
            mix_rows=_env_int("SMSCAST_SOAK_MIX_ROWS", 3000),
            send_seconds=_env_float("SMSCAST_SOAK_SEND_SECONDS", 4.0),
            lease=_env_float("SMSCAST_SOAK_LEASE", 3.0),
        )

    @classmethod
    def long(cls) -> Sizes:
        return cls(
            rows=_env_int("SMSCAST_SOAK_ROWS", 50_000),
            kills=_env_int("SMSCAST_SOAK_KILLS", 4),
            mix_rows=_env_int("SMSCAST_SOAK_MIX_ROWS", 10_000),
            send_seconds=_env_float("SMSCAST_SOAK_SEND_SECONDS", 8.0),
            lease=_env_float("SMSCAST_SOAK_LEASE", 3.0),
        )


# ---- providers ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProviderSetup:
    """How a campaign is set up for one provider (the options its e2e test uses), and what its emulator does
    with the per-row fault knobs."""

    name: str  # smscast's provider name
    emulator: str  # the sandbox's name for it (ledger, stats, knobs)
    key_env: str
    key: str
    args: tuple[str, ...]  # --body / --template / --sender / --language …
    batch_size: int  # short variant
    long_batch_size: int
    resend_safe: bool  # idempotency: a re-send is recognised
    # What the per-row knobs do at send time:
    per_row_reject: bool = True  # reject_suffixes -> that row `rejected` (bisected out where whole-batch)
    transient_at_send: bool = True  # transient_suffixes -> `failed` rows now (else only in a later lookup)
    transient_suffix: str = "77"  # 1 % of the rows
    reject_suffix: str = "013"  # 0.1 %: a whole-file refusal (Postman) bisects ~14 requests per bad row
    marker_rejects: bool = False  # textingline: a SHAFT-TEST body refuses its whole (sub-)batch
    template: str | None = None
    columns: Callable[[int], dict[str, str]] | None = None  # extra input columns by row

    def batch(self, long: bool) -> int:
        return self.long_batch_size if long else self.batch_size


TIERS = ("gold", "silver", "bronze")

PROVIDERS: dict[str, ProviderSetup] = {
    p.name: p
    for p in (
        ProviderSetup(
            "sandbox",
            "generic",
            "SMSCAST_SANDBOX_API_KEY",
            KEY,
            ("--body", "Hi {{name}}, your order ships today.", "--sender", "ACME"),
            100,
            500,
            resend_safe=True,
        ),
        ProviderSetup(
            "sent-dm",
            "sent-dm",
            "SMSCAST_SENT_DM_API_KEY",
            KEY,
            ("--template", "tmpl_soak", "--template-var", "tier"),
            100,
            500,
            resend_safe=True,
            # sent.dm answers a transient recipient with a 502 for the whole request: keep them rare.
            transient_suffix="0077",
            columns=lambda i: {"tier": TIERS[i % 3]},
        ),
        ProviderSetup(
            "robase",
            "robase",
            "SMSCAST_ROBASE_API_KEY",
            KEY,
            ("--body", "Hi {{name}}, your ride is at 10:00am.", "--sender", "SHUTTLERS"),
            100,
            500,
            resend_safe=True,
        ),
        ProviderSetup(
            "textingline",
            "textingline",
            "SMSCAST_TEXTINGLINE_API_KEY",
            f"{KEY}:{KEY}",
            ("--body", "Hi {{name}}, order shipped.", "--sender", "+18005559876"),
            100,
            500,
            resend_safe=True,
            per_row_reject=False,  # the per-row knobs only change the later status lookup
            transient_at_send=False,
            marker_rejects=True,
        ),
        ProviderSetup(
            "postman",
            "postman",
            "SMSCAST_POSTMAN_API_KEY",
            KEY,
            # Production mode (no /test, no SMSCAST_POSTMAN_TEST_ENV): files of up to 1,000 rows.
            (
                "--template",
                "soak_campaign",
                "--body",
                "Hi {{name}}, your application is ready.",
                "--language",
                "english",
            ),
            100,
            500,
            resend_safe=False,
            transient_at_send=False,  # accepted; Retrieve Batch Messages reports the failure later
            template="soak_campaign",
        ),
        ProviderSetup(
            "instasent",
            "instasent",
            "SMSCAST_INSTASENT_API_KEY",
            KEY,
            ("--body", "Hola {{name}}, tu pedido sale hoy.", "--sender", "Instasent"),
            100,
            100,  # "Items per request 1 - 100"
            resend_safe=True,
            transient_at_send=False,  # no per-item transient refusal in Instasent's API
        ),
    )
}


def selected_providers() -> list[str]:
    chosen = _env_list("SMSCAST_SOAK_PROVIDERS")
    if chosen is None:
        return list(PROVIDERS)
    unknown = set(chosen) - set(PROVIDERS)
    if unknown:
        raise ValueError(f"SMSCAST_SOAK_PROVIDERS: unknown {sorted(unknown)}; known {list(PROVIDERS)}")
    return chosen


# Start knobs per emulator: every documented rate limit raised far above what the runs ask for (textingline's
# 5 a minute would make a 50,000-row campaign take hours), so that only the mixes that mean to throttle do.
START_KNOBS: dict[str, Any] = {"rate_limit_rps": 5000, "rate_limit_burst": 5000}


# ---- input -------------------------------------------------------------------------------------------------

INVALID_PHONES = ("12", "not-a-number")  # appended to every input: must end `invalid`, never sent


def phone(i: int) -> str:
    return f"+4477009{i:05d}"


def write_input(
    path: Path, setup: ProviderSetup, n_valid: int, *, markers: Sequence[int] = ()
) -> tuple[Path, int]:
    """n_valid recipients, then the invalid ones. `markers`: rows whose text carries textingline's compliance
    marker (the whole request is refused for it). Returns (path, number of input rows)."""
    if n_valid > 99_999:
        raise ValueError("phones are +4477009 and five digits")
    marked = set(markers)
    rows: list[dict[str, str]] = []
    for i in range(n_valid + len(INVALID_PHONES)):
        p = phone(i) if i < n_valid else INVALID_PHONES[i - n_valid]
        row = {"phone": p, "name": ("SHAFT-TEST " if i in marked else "") + f"N{i}"}
        if setup.columns is not None:
            row.update(setup.columns(i))
        rows.append(row)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path, len(rows)


# ---- processes ---------------------------------------------------------------------------------------------


def smscast_command() -> list[str]:
    script = Path(sys.executable).with_name("smscast")
    return [str(script)] if script.exists() else [sys.executable, "-m", "smscast.cli"]


class CliRun:
    """One `smscast` process in a session of its own (so that a kill takes its children too), output to a
    file (no pipe to fill up)."""

    def __init__(
        self, args: Sequence[str], env: Mapping[str, str], log: Path, command: Sequence[str] | None = None
    ) -> None:
        self.args = list(args)
        self.log = log
        self.started = time.monotonic()
        self.ended: float | None = None
        self.killed = False
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [*(command if command is not None else smscast_command()), *self.args],
                env=dict(env),
                cwd=PROJECT_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def poll(self) -> int | None:
        rc = self.proc.poll()
        if rc is not None and self.ended is None:
            self.ended = time.monotonic()
        return rc

    def wait(self, timeout: float) -> int:
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"smscast {' '.join(self.args[:1])} did not finish within {timeout:.0f}s:\n{self.tail()}"
            ) from None
        self.poll()
        return rc

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def tail(self, chars: int = 6000) -> str:
        return self.output()[-chars:]

    def kill(self) -> None:
        """SIGKILL the whole tree: the process group, and any descendant that left it. Then check that
        nothing of it is left alive."""
        self.killed = True
        try:
            tree = [psutil.Process(self.pid), *psutil.Process(self.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            tree = []
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        for p in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        self.proc.wait(timeout=10)
        self.poll()
        _, alive = psutil.wait_procs(tree, timeout=10)
        alive = [p for p in alive if p.pid != self.pid and _running(p)]
        assert not alive, f"processes of the killed run survived: {[p.pid for p in alive]}"


def _running(p: psutil.Process) -> bool:
    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# ---- the per-provider harness ------------------------------------------------------------------------------


@dataclass
class RunRecord:
    kind: str  # send | retry
    rc: int | None
    seconds: float
    killed: bool = False
    kill_plan: str | None = None  # what the kill waited for
    landed: str | None = None  # where it landed, judged from what is on disk afterwards
    note: str = ""


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

    def __init__(self, setup: ProviderSetup, server: SandboxServer, root: Path, lease: float) -> None:
        self.setup = setup
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
        return self.setup.emulator

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
        env[self.setup.key_env] = self.setup.key
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
        source, n_input = write_input(self.root / f"{cid}.csv", self.setup, n_valid, markers=markers)
        return Campaign(
            cid, source, n_input, n_valid, long, tuple(extra_args), tuple(markers), batch_size, rate
        )

    def batch_size(self, c: Campaign) -> int:
        return c.batch_size or self.setup.batch(c.long)

    def send_args(self, c: Campaign) -> list[str]:
        return [
            "send", str(c.source),
            "--provider", self.setup.name,
            "--campaign-id", c.cid,
            "--results", self.results,
            "--base-url", self.server.base_url,
            "--batch-size", str(self.batch_size(c)),
            "--concurrency", "4",  # two shards' worth: two requests in flight per shard
            "--rate", f"{c.rate:g}",
            *self.setup.args,
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
        rec = RunRecord(kind, rc, time.monotonic() - run.started, note=_last_error(run.output()))
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
        if not self.setup.resend_safe:
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
            note="" if run.killed else f"finished before the kill moment ({_last_error(run.output())})",
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
        statuses = ["failed", "unknown"] if self.setup.resend_safe else ["failed"]
        return current.filter(pl.col("status").is_in(statuses)).height

    def _last_log_tail(self) -> str:
        logs = sorted(self.logs.glob("*.log"))
        return logs[-1].read_text(errors="replace")[-6000:] if logs else ""


def _last_error(output: str) -> str:
    lines = [ln for ln in output.splitlines() if ln.startswith("error:")]
    return lines[-1] if lines else ""


# ---- invariants --------------------------------------------------------------------------------------------


@dataclass
class Verdict:
    provider: str
    campaign: str
    rows: int
    statuses: dict[str, int]
    ledger_entries: int
    duplicates: int  # ledger entries - distinct phones
    losses: int  # valid rows neither accepted nor rightly refused (nor, for Postman, unknown)
    unknown: int
    unknown_in_ledger: int
    recognised_resends: int  # the sandbox's own `duplicates` counter: re-sends answered from its keys
    problems: list[str]

    def summary(self) -> str:
        return (
            f"{self.provider}/{self.campaign}: rows {self.rows} {self.statuses} ledger {self.ledger_entries} "
            f"duplicates {self.duplicates} losses {self.losses} unknown {self.unknown} "
            f"(in ledger {self.unknown_in_ledger}) re-sends recognised {self.recognised_resends}"
        )


def ledger_frame(client: SandboxClient, emulator: str) -> pl.DataFrame:
    entries = client.ledger(provider=emulator)
    schema = {"to": pl.String, "key": pl.String, "message_id": pl.String, "batch": pl.String}
    if not entries:
        return pl.DataFrame(schema=schema)
    return pl.DataFrame(entries).select(list(schema)).cast(schema)  # type: ignore[arg-type]


def check_campaign(
    soak: Soak,
    c: Campaign,
    *,
    reject_suffixes: Sequence[str] = (),
    transient_suffixes: Sequence[str] = (),
    expect_complete: bool = True,
) -> Verdict:
    """Every input row has exactly one current result; the ledger holds each phone at most once; every
    accepted row is in the ledger exactly once (with the message id the results carry); nothing refused,
    failed or invalid is in it; with idempotency every valid row ends accepted unless the provider refused
    it for good; without (Postman) the rows in doubt are `unknown`, each in the ledger at most once."""
    setup = soak.setup
    problems: list[str] = []
    current = current_results(soak.results, c.cid)
    if current.height != c.n_input or set(current["row_index"].to_list()) != set(range(c.n_input)):
        problems.append(f"{current.height} current results for {c.n_input} input rows")
    if expect_complete:
        for attempt in sorted({int(a) for a in current["attempt"].unique().to_list()}):
            if not storage.exists(soak.attempt(c, attempt).done):
                problems.append(f"attempt {attempt} has no _SUCCESS")
    ledger = ledger_frame(soak.client, soak.emu)
    per_phone = ledger.group_by("to").agg(
        n=pl.len(), message_id=pl.col("message_id").first(), batch=pl.col("batch").first()
    )
    duplicates = ledger.height - per_phone.height
    if duplicates:
        twice = per_phone.filter(pl.col("n") > 1)["to"].head(5).to_list()
        problems.append(f"{duplicates} duplicate ledger entries, e.g. {twice}")
    statuses = {str(s): int(n) for s, n in current.group_by("status").len().iter_rows()}
    in_ledger = set(per_phone["to"].to_list())

    accepted = current.filter(pl.col("status") == "accepted")
    joined = accepted.join(per_phone, left_on="phone", right_on="to", how="left")
    not_once = joined.filter(pl.col("n").is_null() | (pl.col("n") != 1))
    if not_once.height:
        problems.append(
            f"{not_once.height} accepted rows not in the ledger exactly once, e.g. "
            f"{not_once['phone'].head(5).to_list()}"
        )
    with_id = joined.filter(pl.col("provider_message_id").is_not_null() & pl.col("message_id").is_not_null())
    wrong_id = with_id.filter(pl.col("provider_message_id") != pl.col("message_id"))
    if wrong_id.height:
        problems.append(f"{wrong_id.height} accepted rows carry another message id than the ledger's")
    if setup.template is not None and not setup.resend_safe:  # Postman: the reference names the batch
        refs = joined.filter(pl.col("batch").is_not_null())
        wrong_ref = refs.filter(
            pl.col("provider_batch_ref") != pl.lit(f"{setup.template}/") + pl.col("batch")
        )
        if wrong_ref.height:
            problems.append(f"{wrong_ref.height} accepted rows name another batch than the ledger's")

    for status in ("invalid", "rejected", "failed"):
        sent = current.filter((pl.col("status") == status) & pl.col("phone").is_in(in_ledger))
        if sent.height:
            problems.append(
                f"{sent.height} `{status}` rows are in the ledger, e.g. {sent['phone'].head(3).to_list()}"
            )
    allowed = set(accepted["phone"].to_list())
    unknown = current.filter(pl.col("status") == "unknown")
    if not setup.resend_safe:
        allowed |= set(unknown["phone"].to_list())
    stray = in_ledger - allowed
    if stray:
        problems.append(f"{len(stray)} ledger phones no accepted row accounts for, e.g. {sorted(stray)[:3]}")

    # Expected outcomes per row.
    valid = current.filter(pl.col("row_index") < c.n_valid)
    invalid_rows = current.filter(pl.col("row_index") >= c.n_valid)
    if set(invalid_rows["status"].to_list()) - {"invalid"}:
        problems.append(f"rows with unusable phones ended {invalid_rows['status'].to_list()}")
    must_reject = pl.lit(False)
    if setup.per_row_reject and reject_suffixes:
        must_reject = pl.col("phone").str.ends_with(reject_suffixes[0])
        for s in reject_suffixes[1:]:
            must_reject = must_reject | pl.col("phone").str.ends_with(s)
    if c.markers:
        must_reject = must_reject | pl.col("row_index").is_in(list(c.markers))
    valid = valid.with_columns(_must_reject=must_reject)
    # Without idempotency a refused row may sit in a batch whose answer was lost: `unknown` is right then.
    refused_ok = ["rejected"] if setup.resend_safe else ["rejected", "unknown"]
    wrongly_accepted = valid.filter(pl.col("_must_reject") & ~pl.col("status").is_in(refused_ok))
    if wrongly_accepted.height:
        problems.append(
            f"{wrongly_accepted.height} rows the provider refuses ended "
            f"{wrongly_accepted['status'].unique().to_list()}"
        )
    rightly_refused = pl.col("_must_reject")
    if setup.marker_rejects and c.markers:
        # A whole-batch refusal cannot be narrowed below 2 x the provider's minimum: the marker row's last
        # sub-batch is refused with it, saying so.
        marker_batches = valid.filter(pl.col("_must_reject"))["batch_id"].to_list()
        rightly_refused = rightly_refused | (
            pl.col("batch_id").is_in(marker_batches) & (pl.col("status") == "rejected")
        )
    ok_statuses = ["accepted"] if setup.resend_safe else ["accepted", "unknown"]
    lost = valid.filter(~pl.col("status").is_in(ok_statuses) & ~rightly_refused)
    if lost.height:
        problems.append(
            f"{lost.height} valid rows lost: {lost.group_by('status', 'error_code').len().rows()}"
        )
    if setup.transient_at_send and transient_suffixes:
        # Refused for now at send time: they must have gone through `smscast retry` (attempt 2 or later).
        transient = valid.filter(
            pl.col("phone").str.ends_with(transient_suffixes[0]) & ~pl.col("_must_reject")
        )
        first_attempt = transient.filter(pl.col("attempt") < 2)
        if transient.is_empty() or first_attempt.height:
            problems.append(
                f"transient rows: {transient.height}, of which {first_attempt.height} never re-sent by retry"
            )
    unknown_in_ledger = len(set(unknown["phone"].to_list()) & in_ledger)
    stats = soak.stats()
    return Verdict(
        provider=setup.name,
        campaign=c.cid,
        rows=c.n_input,
        statuses=statuses,
        ledger_entries=ledger.height,
        duplicates=duplicates,
        losses=lost.height,
        unknown=unknown.height,
        unknown_in_ledger=unknown_in_ledger,
        recognised_resends=int(stats["duplicates"]),
        problems=problems,
    )


# ---- the report --------------------------------------------------------------------------------------------


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
        for name in PROVIDERS:
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


# ---- storms ------------------------------------------------------------------------------------------------


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
