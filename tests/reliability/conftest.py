"""Fixtures of the reliability suite: one sandbox per provider (module scope), the session's report, and the
per-provider summary printed at the end of the run (and written to <basetemp>/soak-summary.md)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from reliability.harness import KEY, PROVIDERS, START_KNOBS, Report, Sizes, Soak, soak_seed

from sandbox.server import SandboxServer

REPORT = pytest.StashKey[Report]()
REPORT_PATH = pytest.StashKey[Path]()


@pytest.fixture(scope="session")
def soak_report(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Report:
    config = request.config
    if REPORT not in config.stash:
        config.stash[REPORT] = Report()
        config.stash[REPORT_PATH] = tmp_path_factory.getbasetemp() / "soak-summary.md"
    return config.stash[REPORT]


@pytest.fixture(scope="module")
def soak(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Soak]:
    """Indirectly parametrised with a provider name: that provider's emulator in ONE sandbox process for the
    module, its documented rate limit raised (START_KNOBS), and the harness bound to it."""
    setup = PROVIDERS[request.param]
    root = tmp_path_factory.mktemp(f"soak-{setup.name}")
    with SandboxServer(
        emulators=[setup.emulator], default_key=KEY, provider_knobs={setup.emulator: START_KNOBS}
    ) as server:
        yield Soak(setup, server, root, lease=Sizes.short().lease)
        # The sandbox outlived every kill of the module.
        assert server.process is not None and server.process.poll() is None, server.log_tail()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    if REPORT not in config.stash:
        return
    report = config.stash[REPORT]
    if not report.tallies:
        return
    text = "\n".join(
        [
            f"seed {soak_seed()} (set SMSCAST_SOAK_SEED={soak_seed()} to repeat these kill moments)",
            "",
            report.table(),
            "",
            "campaigns:",
            *(f"  {line}" for line in report.lines),
        ]
    )
    terminalreporter.section("smscast reliability summary")
    terminalreporter.write_line(text)
    path = config.stash[REPORT_PATH]
    path.write_text(text + "\n", encoding="utf-8")
    terminalreporter.write_line(f"\n(written to {path})")
