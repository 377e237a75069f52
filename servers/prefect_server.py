"""A real Prefect server on loopback (`prefect server start`), started by our code.

    with PrefectServer() as server:
        os.environ.update(server.env())      # PREFECT_API_URL -> this server

Each instance has its own PREFECT_HOME and SQLite database in a work directory (a temporary one, removed on
stop, unless one is given), a free loopback port, and its own process group: stop() sends SIGTERM to the group
(uvicorn and anything it spawned) and SIGKILL after a grace period. Readiness is `GET /api/health` answering
200 within `startup_timeout`; the message of a failed start carries the tail of the server's log.

The server runs with its background services (scheduler, triggers, actions, event persister, ...): those are
what turn events into deployment runs. The UI is off by default: serving it makes the first start copy and
rewrite its static build, which costs seconds and a test never looks at it.

`detach()` hands a started server over to no one: it keeps running after this object and this process are
gone (`smscast server start` uses it; `servers.process.terminate_detached_group` stops it later by pid).

    python -m smscast.servers.prefect_server --dir /tmp/prefect-demo --ui    # foreground; prints PREFECT_API_URL
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path

from smscast.servers.process import ServerProcess, free_ports, run_in_foreground

__all__ = ["PrefectServer", "PrefectServerStartError", "health_status"]

_HOST = "127.0.0.1"
# Settings in the caller's environment that would point the server (or its CLI) somewhere else.
_SHADOWING = ("PREFECT_API_URL", "PREFECT_API_KEY", "PREFECT_PROFILE", "PREFECT_API_DATABASE_CONNECTION_URL")


def health_status(api_url: str, *, timeout: float) -> int | None:
    """The HTTP status of `GET <api_url>/health`, or None when nothing answers within `timeout` seconds.
    Proxies are bypassed: a loopback server is never behind the HTTP_PROXY a user may have set."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"{api_url}/health", timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (OSError, urllib.error.URLError, ValueError):
        return None


class PrefectServerStartError(RuntimeError):
    """The server did not start or did not become healthy in time. The message carries its log tail."""


class PrefectServer(ServerProcess):
    """`prefect server start` on a free loopback port, with its home and database under `workdir`."""

    name = "prefect server"
    start_error = PrefectServerStartError
    poll_interval = 0.2
    stop_grace = 10.0

    def __init__(
        self,
        workdir: Path | str | None = None,
        *,
        port: int = 0,
        ui: bool = False,
        startup_timeout: float = 90.0,
        log_level: str = "WARNING",
        extra_env: Mapping[str, str] | None = None,
        progress: Callable[[str], None] | None = None,
        progress_every: float = 10.0,
    ) -> None:
        super().__init__(startup_timeout)
        self._given_workdir = Path(workdir).resolve() if workdir is not None else None
        self.workdir: Path | None = self._given_workdir
        self.requested_port = port
        self.ui = ui
        self.log_level = log_level
        self.extra_env = dict(extra_env or {})
        # Told what the start is waiting for every `progress_every` seconds: a first start migrates a new
        # database, which takes tens of seconds on a loaded machine, and silence looks like a hang.
        self.progress = progress
        self.progress_every = progress_every
        self.port: int | None = None
        self._next_note = 0.0
        self._detached: subprocess.Popen[bytes] | None = None

    # -- public surface ------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("the Prefect server is not started")
        return f"http://{_HOST}:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"

    @property
    def log_path(self) -> Path:
        if self.workdir is None:
            raise RuntimeError("the Prefect server is not started")
        return self.workdir / "server.log"

    def env(self) -> dict[str, str]:
        """What a client process needs to talk to this server (and nothing that would send data out)."""
        return {"PREFECT_API_URL": self.api_url, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}

    def log_tail(self, chars: int = 4000) -> str:
        return super().log_tail(chars) if self.workdir is not None else ""

    # -- lifecycle -----------------------------------------------------------------------------------------

    def _start(self, deadline: float) -> None:
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="smscast-prefect-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "home").mkdir(exist_ok=True)
        # With a port of the caller's choosing there is no other port to try.
        self._launch_until_ready(self._launch, deadline, attempts=1 if self.requested_port else 3)

    def detach(self) -> int:
        """Leave the started server running for good: this object and process no longer own or stop it.
        Returns its pid, which is also its process group id. The workdir must be one the caller gave."""
        with self._lock:
            if self._given_workdir is None:
                raise RuntimeError(
                    "a detached server needs a workdir of its own (its temporary one is removed)"
                )
            proc = self.process
            if proc is None or proc.poll() is not None:
                raise RuntimeError("the Prefect server is not running")
            # Keep the Popen referenced so that collecting it does not warn about a child still running.
            self._detached, self.process = proc, None
            self._forget_exit_stop()
            return proc.pid

    def _stop_locked(self) -> None:
        super()._stop_locked()
        self._remove_workdir()

    def __repr__(self) -> str:
        return f"PrefectServer({self.api_url if self.port else 'not started'})"

    # -- internals -----------------------------------------------------------------------------------------

    def _server_env(self) -> dict[str, str]:
        assert self.workdir is not None and self.port is not None
        env = {k: v for k, v in os.environ.items() if k not in _SHADOWING}
        env.update(
            {
                "PREFECT_HOME": str(self.workdir / "home"),
                "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{self.workdir / 'prefect.db'}",
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "PREFECT_SERVER_UI_ENABLED": "true" if self.ui else "false",
                "PREFECT_SERVER_API_HOST": _HOST,
                "PREFECT_SERVER_API_PORT": str(self.port),
                "PREFECT_SERVER_LOGGING_LEVEL": self.log_level,
                # The triggers service must be on: it is what runs deployments on events (on by default;
                # said here so that a profile or variable that turned it off cannot).
                "PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED": "true",
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self.extra_env)
        return env

    def _launch(self) -> None:
        self.port = self.requested_port or free_ports()[0]
        assert self.workdir is not None
        cmd = [sys.executable, "-m", "prefect", "server", "start", "--host", _HOST, "--port", str(self.port)]
        self._spawn(cmd, cwd=self.workdir, env=self._server_env())
        self._next_note = time.monotonic() + self.progress_every

    def _probe(self) -> str | None:
        status = health_status(self.api_url, timeout=2)
        if status == 200:
            return None
        return f"health answered {status}" if status else "no answer yet"

    def _waiting(self, last: str, waited: float) -> None:
        now = time.monotonic()
        if self.progress is not None and now >= self._next_note:
            self._next_note = now + self.progress_every
            self.progress(f"still starting after {waited:.0f}s ({last}); log {self.log_path}")

    def _timeout_error(self, last: str) -> Exception:
        return PrefectServerStartError(
            f"prefect server not healthy after {self.startup_timeout:g}s ({last}); "
            f"log {self.log_path}:\n{self.log_tail()}"
        )

    def _stop_process(self) -> None:
        super()._stop_process()
        self.port = None

    def _remove_workdir(self) -> None:
        if self.workdir is not None and self._given_workdir is None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m smscast.servers.prefect_server",
        description="Run a Prefect server on loopback in the foreground and print PREFECT_API_URL.",
    )
    parser.add_argument("--dir", type=Path, default=None, help="home and database (default: a temp dir)")
    parser.add_argument("--port", type=int, default=4200, help="0 = any free port")
    parser.add_argument("--ui", action="store_true", help="serve the UI too")
    args = parser.parse_args(argv)

    def ready(server: PrefectServer) -> None:
        print(f"# Prefect server ready in {server.startup_seconds:.1f}s; UI at {server.url}", flush=True)
        print(f"export PREFECT_API_URL={server.api_url}", flush=True)

    return run_in_foreground(PrefectServer(args.dir, port=args.port, ui=args.ui), ready)


if __name__ == "__main__":
    sys.exit(main())
