"""Process control: one `smscast` command in a subprocess of its own session (the CLI starts Prefect's
temporary API server as a child; a kill takes the whole group, and anything left of the process tree is
killed too and checked gone), and the record a run leaves."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil
from reliability.settings import PROJECT_ROOT


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
        return bool(p.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


@dataclass
class RunRecord:
    kind: str  # send | retry
    rc: int | None
    seconds: float
    killed: bool = False
    kill_plan: str | None = None  # what the kill waited for
    landed: str | None = None  # where it landed, judged from what is on disk afterwards
    note: str = ""


def last_error(output: str) -> str:
    lines = [ln for ln in output.splitlines() if ln.startswith("error:")]
    return lines[-1] if lines else ""
