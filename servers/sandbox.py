"""The sandbox (sandbox/) in a subprocess, `python -m smscast.sandbox`, for tests, the demo and the benchmark.

    with SandboxServer(knobs={"latency_ms": 5}) as sbx:
        httpx.post(f"{sbx.base_url}/sandbox/v1/messages/batch", ...)
        sbx.client.ledger(provider="generic")

The subprocess binds its own socket (port 0 = a free port, no race) on loopback, writes the port to a file,
and is always terminated on exit (SIGTERM, then SIGKILL); it also exits on its own if this process dies.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import orjson

from smscast.sandbox.client import SandboxClient
from smscast.sandbox.faults import parse_knobs
from smscast.sandbox.framework import DEFAULT_API_KEY
from smscast.servers.process import ServerProcess

__all__ = ["SandboxServer"]

_PROJECT_ROOT = Path(__file__).resolve().parent.parent


class SandboxServer(ServerProcess):
    """The sandbox in a subprocess (`python -m smscast.sandbox`), for as long as the context lasts."""

    name = "sandbox"

    def __init__(
        self,
        port: int = 0,
        *,
        host: str = "127.0.0.1",
        knobs: Mapping[str, Any] | None = None,
        provider_knobs: Mapping[str, Mapping[str, Any]] | None = None,
        api_keys: Mapping[str, str] | None = None,
        default_key: str = DEFAULT_API_KEY,
        emulators: Sequence[str] | None = None,
        startup_timeout: float = 20.0,
        python: str | None = None,
        log_level: str = "warning",
    ) -> None:
        super().__init__(startup_timeout)
        self.host = host
        self.requested_port = port
        self.config: dict[str, Any] = {
            "knobs": parse_knobs(dict(knobs or {})),
            "provider_knobs": {p: dict(k) for p, k in (provider_knobs or {}).items()},
            "api_keys": dict(api_keys or {}),
            "default_key": default_key,
            "emulators": list(emulators) if emulators is not None else None,
        }
        self.python = python or sys.executable
        self.log_level = log_level
        self.port: int | None = None
        self._port_file: Path | None = None
        self._tmp: str | None = None
        self._client: SandboxClient | None = None

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise RuntimeError("the sandbox is not running")
        shown = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{shown}:{self.port}"

    @property
    def client(self) -> SandboxClient:
        """An admin client (ledger, stats, faults, reset), closed with the server."""
        if self._client is None:
            self._client = SandboxClient(self.base_url)
        return self._client

    @property
    def log_path(self) -> Path:
        if self._tmp is None:
            raise RuntimeError("the sandbox is not started")
        return Path(self._tmp) / "sandbox.log"

    def log_tail(self, chars: int = 4000) -> str:
        if self._tmp is None or not self.log_path.exists():
            return ""
        return super().log_tail(chars)

    def start(self) -> SandboxServer:
        if self.process is not None:
            raise RuntimeError("already started")
        self._tmp = tempfile.mkdtemp(prefix="smscast-sandbox-")
        self._port_file = port_file = Path(self._tmp) / "port"
        cmd = [
            self.python, "-m", "smscast.sandbox",
            "--host", self.host,
            "--port", str(self.requested_port),
            "--port-file", str(port_file),
            "--log-level", self.log_level,
            "--exit-with-parent", str(os.getpid()),
            "--config-json", orjson.dumps(self.config).decode(),
        ]  # fmt: skip
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_PROJECT_ROOT), env.get("PYTHONPATH", "")) if p)
        env.setdefault("PYTHONUNBUFFERED", "1")
        # In this process's process group (no session of its own); it also exits by itself when we die.
        self._spawn(cmd, cwd=_PROJECT_ROOT, env=env, new_session=False)
        try:
            self._wait_ready(time.monotonic() + self.startup_timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _probe(self) -> str | None:
        assert self._port_file is not None
        if self.port is None and self._port_file.exists():
            self.port = int(self._port_file.read_text())
        if self.port is None:
            return "no port yet"
        try:
            if httpx.get(f"{self.base_url}/_sandbox/health", timeout=1.0).status_code == 200:
                return None
        except httpx.TransportError:
            pass
        return "not healthy"

    def _exited_error(self, code: int) -> Exception:
        return RuntimeError(f"sandbox exited with code {code} on start:\n{self.log_tail()}")

    def _timeout_error(self, last: str) -> Exception:
        return TimeoutError(f"sandbox not healthy after {self.startup_timeout:.0f}s:\n{self.log_tail()}")

    def _terminate(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)

    def stop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        self._stop_process()
        self.port = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            if self.process is not None:
                self.process.kill()
