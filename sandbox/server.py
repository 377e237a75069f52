"""Run the sandbox: `serve()` in this process (blocking), or `SandboxServer` in a subprocess for tests, the
demo and the benchmark.

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
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import orjson
import uvicorn

from sandbox.app import create_app
from sandbox.client import SandboxClient
from sandbox.faults import parse_knobs
from sandbox.framework import DEFAULT_API_KEY, SandboxConfig

DEFAULT_PORT = 8765
_PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY only on accepted sockets whose proto says TCP, and
    # without it uvicorn's separate writes of headers and body meet Nagle + delayed ACK (40 ms per response).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    return sock


def _exit_with_parent(parent: int) -> None:
    """A daemon thread that stops this process (gracefully) once `parent` has gone."""

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os.kill(os.getpid(), signal.SIGTERM)
                return

    threading.Thread(target=watch, name="sandbox-parent-watch", daemon=True).start()


def serve(
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    *,
    api_keys: Mapping[str, str] | None = None,
    default_key: str = DEFAULT_API_KEY,
    emulators: Sequence[str] | None = None,
    provider_knobs: Mapping[str, Mapping[str, Any]] | None = None,
    port_file: str | os.PathLike[str] | None = None,
    log_level: str = "warning",
    exit_with_parent: int | None = None,
    **knobs: Any,
) -> None:
    """Serve the sandbox until interrupted: one process, one event loop, access log off. `port=0` picks a
    free port; it is printed and, with `port_file`, written there once the socket listens."""
    parse_knobs(knobs)  # fail fast, before binding
    config = SandboxConfig(
        api_keys=dict(api_keys or {}),
        default_key=default_key,
        knobs=dict(knobs),
        provider_knobs={p: dict(k) for p, k in (provider_knobs or {}).items()},
        emulators=tuple(emulators) if emulators is not None else None,
    )
    app = create_app(config)
    sock = _bind(host, port)
    actual = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            log_level=log_level,
            access_log=False,
            lifespan="off",
            proxy_headers=False,
            server_header=False,
            date_header=False,
            timeout_keep_alive=30,
            timeout_graceful_shutdown=2,
        )
    )
    if port_file is not None:
        tmp = Path(f"{port_file}.tmp")
        tmp.write_text(str(actual))
        tmp.replace(port_file)
    if exit_with_parent is not None:
        _exit_with_parent(exit_with_parent)
    shown = f"[{host}]" if ":" in host else host
    print(
        f"smscast sandbox listening on http://{shown}:{actual} ({', '.join(app.sandbox.emulators)})",
        flush=True,
    )
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()


class SandboxServer:
    """The sandbox in a subprocess (`python -m sandbox`), for as long as the context lasts."""

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
        self.host = host
        self.requested_port = port
        self.config: dict[str, Any] = {
            "knobs": parse_knobs(dict(knobs or {})),
            "provider_knobs": {p: dict(k) for p, k in (provider_knobs or {}).items()},
            "api_keys": dict(api_keys or {}),
            "default_key": default_key,
            "emulators": list(emulators) if emulators is not None else None,
        }
        self.startup_timeout = startup_timeout
        self.python = python or sys.executable
        self.log_level = log_level
        self.process: subprocess.Popen[bytes] | None = None
        self.port: int | None = None
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
    def log_path(self) -> Path | None:
        return None if self._tmp is None else Path(self._tmp) / "sandbox.log"

    def log_tail(self, chars: int = 4000) -> str:
        path = self.log_path
        if path is None or not path.exists():
            return ""
        return path.read_bytes()[-chars:].decode(errors="replace")

    def start(self) -> SandboxServer:
        if self.process is not None:
            raise RuntimeError("already started")
        self._tmp = tempfile.mkdtemp(prefix="smscast-sandbox-")
        port_file = Path(self._tmp) / "port"
        cmd = [
            self.python, "-m", "sandbox",
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
        assert self.log_path is not None
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=_PROJECT_ROOT,
                env=env,
            )
        try:
            self._wait_ready(port_file)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, port_file: Path) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"sandbox exited with code {self.process.returncode} on start:\n{self.log_tail()}"
                )
            if self.port is None and port_file.exists():
                self.port = int(port_file.read_text())
            if self.port is not None:
                try:
                    r = httpx.get(f"{self.base_url}/_sandbox/health", timeout=1.0)
                    if r.status_code == 200:
                        return
                except httpx.TransportError:
                    pass
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"sandbox not healthy after {self.startup_timeout:.0f}s:\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def stop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        self.port = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            if self.process is not None:
                self.process.kill()
