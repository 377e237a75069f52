"""The receiver in a subprocess (`python -m smscast.dlr serve`), for tests and benchmarks.

    with DlrServer(results=str(tmp_path / "results")) as dlr:
        httpx.post(dlr.url("instasent"), json={...}, headers=dlr.auth)

It binds a free loopback port (port 0, written to a file: no race), gets its secret through the environment
(never on a command line), logs to `log_path`, and stops with SIGTERM (it writes what it holds first), then
SIGKILL. `kill()` is kill -9, for the durability test. Reports reach the inbox through the receiver's log
(its default folder unless `wal_dir`; `wal=False`: none): `settle()` waits until the log is rolled.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import httpx

from smscast.dlr.app import TOKEN_HEADER
from smscast.dlr.cli import SECRET_ENV
from smscast.servers.process import ServerProcess

__all__ = ["DlrServer"]

_PROJECT_ROOT = Path(__file__).resolve().parent.parent.parent


class DlrServer(ServerProcess):
    name = "dlr receiver"

    def __init__(
        self,
        results: str,
        *,
        secret: str | None = None,
        host: str = "127.0.0.1",
        batch_rows: int | None = None,
        batch_ms: float | None = None,
        wal: bool = True,
        wal_dir: Path | None = None,
        roll_ms: float | None = None,
        log_level: str = "info",
        summary_interval: float | None = None,
        workdir: Path | None = None,
        env: Mapping[str, str] | None = None,
        startup_timeout: float = 60.0,
    ) -> None:
        super().__init__(startup_timeout)
        self.results = results
        self.secret = secret or secrets.token_urlsafe(24)
        self.host = host
        self.batch_rows = batch_rows
        self.batch_ms = batch_ms
        self.wal = wal
        self.wal_dir = wal_dir
        self.roll_ms = roll_ms
        self.log_level = log_level
        self.summary_interval = summary_interval
        self.extra_env = dict(env or {})
        self.port: int | None = None
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="smscast-dlr-"))

    @property
    def log_path(self) -> Path:
        return self.workdir / "dlr.log"

    @property
    def _port_file(self) -> Path:
        return self.workdir / "port"

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise RuntimeError("the receiver is not running")
        shown = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{shown}:{self.port}"

    def url(self, route: str) -> str:
        """The URL a provider posts to for `route` (instasent, sent-dm, generic), without the token."""
        return f"{self.base_url}/dlr/{route}"

    @property
    def auth(self) -> dict[str, str]:
        return {TOKEN_HEADER: self.secret}

    def _start(self, deadline: float) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)

        def launch() -> None:
            self.port = None
            self._port_file.unlink(missing_ok=True)
            cmd = [
                sys.executable, "-m", "smscast.dlr", "serve",
                "--host", self.host,
                "--port", "0",
                "--port-file", str(self._port_file),
                "--results", self.results,
                "--log-level", self.log_level,
                "--exit-with-parent", str(os.getpid()),
            ]  # fmt: skip
            if self.batch_rows is not None:
                cmd += ["--batch-rows", str(self.batch_rows)]
            if self.batch_ms is not None:
                cmd += ["--batch-ms", str(self.batch_ms)]
            if not self.wal:
                cmd.append("--no-wal")
            if self.wal_dir is not None:
                cmd += ["--wal-dir", str(self.wal_dir)]
            if self.roll_ms is not None:
                cmd += ["--roll-ms", str(self.roll_ms)]
            if self.summary_interval is not None:
                cmd += ["--summary-interval", str(self.summary_interval)]
            env = {**os.environ, **self.extra_env, SECRET_ENV: self.secret, "PYTHONUNBUFFERED": "1"}
            root = str(_PROJECT_ROOT)
            env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
            self._spawn(cmd, cwd=_PROJECT_ROOT, env=env)

        self._launch_until_ready(launch, deadline)

    def _probe(self) -> str | None:
        if self.port is None:
            if not self._port_file.exists():
                return "no port yet"
            self.port = int(self._port_file.read_text())
        try:
            if httpx.get(f"{self.base_url}/healthz", timeout=2.0).status_code == 200:
                return None
        except httpx.TransportError:
            pass
        return "/healthz not answering"

    def health(self) -> dict[str, object]:
        """The receiver's counters (GET /healthz)."""
        answer = httpx.get(f"{self.base_url}/healthz", timeout=10.0)
        answer.raise_for_status()
        payload: dict[str, object] = answer.json()
        return payload

    def settle(self, timeout: float = 60.0) -> None:
        """Wait until every report acknowledged so far is in the inbox (the log is rolled every --roll-ms);
        at once without a log."""
        deadline = time.monotonic() + timeout
        while self.health()["log_segments"]:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the receiver's log was not rolled within {timeout:g}s")
            time.sleep(0.02)

    def kill(self) -> int:
        """kill -9, at once, and wait for it to be gone. Returns the exit code (-9)."""
        proc = self.process
        if proc is None:
            raise RuntimeError("the receiver is not running")
        os.kill(proc.pid, signal.SIGKILL)
        return proc.wait(timeout=30)

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM, as a service manager stops it, and wait for it to exit. Returns the exit code."""
        proc = self.process
        if proc is None:
            raise RuntimeError("the receiver is not running")
        proc.send_signal(signal.SIGTERM)
        return proc.wait(timeout=timeout)

    def stop(self) -> None:
        """SIGTERM (it writes what it holds), then SIGKILL after the grace; a working directory this launcher
        made is removed (pass `workdir` to keep the log)."""
        super().stop()
        self.port = None
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
