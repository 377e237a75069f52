"""Fixtures of the reliability suite: one Prefect API for every `smscast` command of the test process, and
one sandbox per provider (module scope). The session's report (`soak_report`) and the per-provider summary
printed at the end of the run live in tests/conftest.py, which also merges the reports of parallel workers.

Every `smscast send` / `retry` the soak driver runs talks to one Prefect API per test process (an xdist
worker), the way a deployment's runs talk to its server, instead of starting Prefect's temporary server for
itself: that start costs 15-60 s per command on a busy 2-core machine, and a suite of a few dozen commands
spent most of its time there. The API is the one the process's other integration tests share (Prefect's test
harness, tests/support.py prefect_harness: a server of its own, in a process of its own), so a worker starts
one Prefect server for both rather than one each. A kill still takes the command's whole process tree; the
server, like a real one, outlives it. `SMSCAST_SOAK_TEMPORARY_API=1` gives each command its own temporary
server again (process group, kill and all), e.g. for a long soak.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from provider_facts import FACTS, ProviderFacts
from reliability.settings import KEY, START_KNOBS, Sizes
from reliability.soak import Soak
from support import prefect_harness

from smscast.servers.sandbox import SandboxServer


# mypy, run from tests/reliability without namespace packages, cannot resolve `reliability.soak` (no
# __init__.py), so Soak is Any to it; should it ever resolve, the ignore is unused, hence both codes.
class SharedApiSoak(Soak):  # type: ignore[misc, unused-ignore]
    """The soak driver, its commands pointed at the process's Prefect API (None: a temporary one each)."""

    def __init__(
        self, facts: ProviderFacts, server: SandboxServer, root: Path, lease: float, api_url: str | None
    ) -> None:
        super().__init__(facts, server, root, lease)
        self.api_url = api_url

    def env(self, lease: float | None = None) -> dict[str, str]:
        env: dict[str, str] = super().env(lease)
        if self.api_url is not None:
            env["PREFECT_API_URL"] = self.api_url
        return env


@pytest.fixture(scope="session")
def soak_prefect_api() -> Iterator[str | None]:
    if os.environ.get("SMSCAST_SOAK_TEMPORARY_API", "").strip() not in ("", "0"):
        yield None
        return
    from prefect.settings import PREFECT_API_URL

    with prefect_harness():  # started here if no module of this process started it yet; stopped at the end
        api_url = PREFECT_API_URL.value()
        assert api_url, "the test harness set no API URL"
        yield str(api_url)


@pytest.fixture(scope="module")
def soak(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, soak_prefect_api: str | None
) -> Iterator[Soak]:
    """Indirectly parametrised with a provider name: that provider's emulator in ONE sandbox process for the
    module, its documented rate limit raised (START_KNOBS), and the soak driver bound to it."""
    facts = FACTS[request.param]
    root = tmp_path_factory.mktemp(f"soak-{facts.name}")
    with SandboxServer(
        emulators=[facts.emulator],
        api_keys={facts.emulator: facts.api_key(KEY)},
        provider_knobs={facts.emulator: START_KNOBS},
    ) as server:
        yield SharedApiSoak(facts, server, root, Sizes.short().lease, soak_prefect_api)
        # The sandbox outlived every kill of the module.
        assert server.process is not None and server.process.poll() is None, server.log_tail()
