"""The emulator suites' shared fixtures: one sandbox per module serving that module's emulator alone.

A module opts in by naming what it tests:

    EMULATOR = "robase"          # the emulator to serve
    API_KEY = "rb_live_…"        # the key it accepts
    HTTP_AUTH = ("id", "secret") # optional: basic auth for `http` (textingline)
    HTTP_TIMEOUT = 60.0          # optional: seconds (default 30)
    QUIET_RATE_LIMIT = True      # optional: `admin` turns the emulator's documented rate limit off
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from smscast.sandbox.client import SandboxClient
from smscast.servers.sandbox import SandboxServer


@pytest.fixture(scope="module")
def server(request: pytest.FixtureRequest) -> Iterator[SandboxServer]:
    name: str = request.module.EMULATOR
    with SandboxServer(emulators=[name], api_keys={name: request.module.API_KEY}) as sbx:
        yield sbx


@pytest.fixture
def admin(server: SandboxServer, request: pytest.FixtureRequest) -> SandboxClient:
    """A clean sandbox (and, with QUIET_RATE_LIMIT, the rate limit off: a rate-limit test restores it)."""
    server.client.reset()
    if getattr(request.module, "QUIET_RATE_LIMIT", False):
        server.client.set_faults(provider=request.module.EMULATOR, rate_limit_rps=0)
    return server.client


@pytest.fixture
def http(server: SandboxServer, request: pytest.FixtureRequest) -> Iterator[httpx.Client]:
    auth = getattr(request.module, "HTTP_AUTH", None)
    timeout = getattr(request.module, "HTTP_TIMEOUT", 30.0)
    with httpx.Client(base_url=server.base_url, auth=auth, timeout=timeout) as client:
        yield client
