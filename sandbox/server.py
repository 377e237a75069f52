"""Run the sandbox in this process: `serve()` (blocking), which `python -m smscast.sandbox` calls. To run it in a
subprocess for tests, the demo and the benchmark, use `servers.sandbox.SandboxServer`, next to the other
servers' launchers.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import uvicorn

from smscast.providers.names import PROVIDER_NAMES, emulator_name
from smscast.sandbox.app import SandboxApp, create_app
from smscast.sandbox.faults import parse_knobs
from smscast.sandbox.framework import DEFAULT_API_KEY, SandboxConfig
from smscast.servers.asgi import bind_socket, uvicorn_config
from smscast.servers.asgi import exit_with_parent as exit_with_parent_process
from smscast.settings import env_prefix

DEFAULT_PORT = 8765


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
    sock = bind_socket(host, port)
    actual = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn_config(app, log_level=log_level, lifespan="off", graceful_seconds=2))
    if port_file is not None:
        tmp = Path(f"{port_file}.tmp")
        tmp.write_text(str(actual))
        tmp.replace(port_file)
    if exit_with_parent is not None:
        exit_with_parent_process(exit_with_parent, "sandbox")
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
