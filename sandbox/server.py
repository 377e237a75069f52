"""Run the sandbox in this process: `serve()` (blocking), which `python -m smscast.sandbox` calls. To run it in a
subprocess for tests, the demo and the benchmark, use `servers.sandbox.SandboxServer`, next to the other
servers' launchers.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import uvicorn

from smscast.providers.names import PROVIDER_NAMES, emulator_name
from smscast.sandbox.app import SandboxApp, create_app
from smscast.sandbox.faults import parse_knobs
from smscast.sandbox.framework import DEFAULT_API_KEY, SandboxConfig
from smscast.settings import env_prefix

DEFAULT_PORT = 8765


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


def export_lines(app: SandboxApp, base_url: str) -> list[str]:
    """The shell lines that point smscast at this sandbox: each provider it serves, its endpoint and the key
    its emulator accepts (as the emulator holds it: textingline's is a `key_id:secret` pair). The variable
    names are smscast's own (smscast/settings.py `env_prefix`), so they are what `smscast send` reads."""
    lines: list[str] = []
    for provider in PROVIDER_NAMES:
        emulator = app.sandbox.emulators.get(emulator_name(provider))
        if emulator is None:
            continue
        url = base_url if emulator.mount_at_root else f"{base_url}/{emulator.name}"
        prefix = env_prefix(provider)
        lines.append(
            f"export {prefix}_BASE_URL={shlex.quote(url)} {prefix}_API_KEY={shlex.quote(emulator.api_key)}"
        )
    return lines


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
    # What a user pastes into another shell before `smscast send -p <provider>`: these are the sandbox's
    # own keys, which it accepts and nothing else does.
    exports = export_lines(app, f"http://{shown}:{actual}")
    print("To send through it, in another shell:", *(f"  {line}" for line in exports), sep="\n", flush=True)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
