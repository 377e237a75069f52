"""Shared pytest fixtures, and what lets the suite run on several workers at once (`make test` runs it with
pytest-xdist, `-n 2`; how the tests are spread over the workers is below).

Each worker is its own process with its own homes (below), temporary directories (pytest gives each worker
its own basetemp) and servers on ports the kernel picks; nothing the tests start listens on a fixed port or
writes into the repository.
"""

from __future__ import annotations

import atexit
import os
import random
import shutil
import tempfile
from pathlib import Path


def _isolate_this_process() -> None:
    """Set before anything imports Prefect (it reads its settings once, at import); the xdist workers
    inherit the controller's environment and then replace the per-process parts."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    # Prefect's temporary server (the test harness, and every `smscast` command run without a server) takes
    # 15-25 s to start on an idle 2-core machine and far longer when both cores are busy: its default start
    # timeout of 20 s would fail tests for the machine's speed. pytest-timeout still bounds every test.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "300")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # A home per process: two workers' temporary Prefect servers never migrate or write the same SQLite
    # file, and no test talks to a developer's own Prefect profile or `smscast server start` server.
    root = Path(tempfile.mkdtemp(prefix=f"smscast-tests-{worker}-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    os.environ["PREFECT_HOME"] = str(root / "prefect-home")
    os.environ["SMSCAST_HOME"] = str(root / "smscast-home")
    # One seed for the session's soak scenarios (tests/reliability), drawn once by the controller and
    # inherited by every worker, so that the seed the summary prints repeats the whole run.
    os.environ.setdefault("SMSCAST_SOAK_SEED", str(random.SystemRandom().randrange(1, 1_000_000)))


_isolate_this_process()

# The imports below may import Prefect: after the environment above is set.
import dataclasses  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402
import support  # noqa: E402
from fixtures_servers import postgres, s3_bucket, seaweed  # noqa: E402, F401
from reliability.report import Report  # noqa: E402
from reliability.settings import soak_seed  # noqa: E402

# ---- Real servers on loopback: SeaweedFS (S3) and PostgreSQL ----------------------------------------------
# Defined in tests/fixtures_servers.py; mark the tests that use them with @pytest.mark.integration.
#   seaweed    session: a started SeaweedS3; the AWS_* variables point at it for the session
#   s3_bucket  per test: the name of a fresh bucket, deleted afterwards
#   postgres   session: a started EmbeddedPostgres; use postgres.dsn
# ---- Prefect's test harness -------------------------------------------------------------------------------
#   support.prefect_harness()  one temporary Prefect API per test process, shared by the modules that use it;
#                              stopped at the end of the session (below)
# ---- The reliability suite's report -----------------------------------------------------------------------
#   soak_report  session: the tallies of the soak scenarios; each worker sends its own to the controller,
#                which prints them merged at the end of the run (and writes <basetemp>/soak-summary.md)

# ---- Distribution over xdist workers (`make test` runs `pytest -n 2`) ------------------------------------
# Tests are handed out in groups, in collection order, and each group runs whole on one worker:
# * a test file is a group, so that the servers its module-scoped fixtures start are started once;
# * a reliability scenario is a group of its own: each runs a few minutes of `smscast` commands against a
#   sandbox of its own (a second worker starts its own sandbox for the ones it takes).
# The groups are handed out longest first, so that the two workers end together: a long group handed out
# late leaves one worker running it alone at the end. A group's length is its estimate below if it has one
# (rough seconds of a full run's --durations, setup included; only their order matters: update them when a
# file's cost changes a lot), else a default for its kind: a reliability scenario, a file of tests that start
# servers (marked integration), a file of unit tests.
# (Not xdist's `--dist loadgroup`: its xdist_group marks are lost under pytest 9.2, whose node ids xdist
# 3.8 can no longer extend.)
_GROUP_SECONDS = {
    # test_deployments.py runs deployed_schedules.py, deployed_release.py and deployed_ui_form.py on its stack too.
    "tests/test_deployments.py": 300,
    "tests/hostile/test_secrecy.py": 60,
    "tests/hostile/test_secrecy_logs.py": 55,
    "tests/test_campaign_flow.py": 40,
    "tests/test_local_server.py": 40,
    "tests/providers/test_webhook_delivery_e2e.py": 32,
    "tests/providers/contract/test_sending.py": 30,
    "tests/test_release.py": 25,
    "tests/test_frequency_lock.py": 30,
    "tests/test_retry_tries.py": 30,
    "tests/test_flow_final_state.py": 20,
    "tests/test_dask_runner.py": 25,
    "tests/test_failover_flows.py": 20,
    "tests/hostile/test_hostile_inputs.py": 20,
    "tests/test_account_limit.py": 14,
}
# Per scenario of these files (each scenario is a group).
_SCENARIO_SECONDS = {
    "tests/reliability/test_duplicate_run.py": 65,
    "tests/reliability/test_crash_safety.py": 25,
    "tests/reliability/test_kill_resume.py": 17,
    "tests/reliability/test_immediate_resume.py": 13,
    "tests/reliability/test_fault_mixes.py": 10,
}
_DEFAULT_SECONDS = {"scenario": 10, "integration": 8, "unit": 1}


def _group(nodeid: str) -> str:
    return nodeid if nodeid.startswith("tests/reliability/") else nodeid.split("::", 1)[0]


def _estimate(item: pytest.Item) -> float:
    path = item.nodeid.split("::", 1)[0]
    if item.nodeid.startswith("tests/reliability/"):
        return _SCENARIO_SECONDS.get(path, _DEFAULT_SECONDS["scenario"])
    kind = "integration" if item.get_closest_marker("integration") else "unit"
    return _GROUP_SECONDS.get(path, _DEFAULT_SECONDS[kind])


@pytest.hookimpl(trylast=True)  # after pytest has ordered the items by their fixtures
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    first_seen: dict[str, int] = {}
    length: dict[str, float] = {}
    for item in items:
        group = _group(item.nodeid)
        first_seen.setdefault(group, len(first_seen))
        # A file's unit tests and integration tests are one group: its longest estimate stands for it.
        length[group] = max(length.get(group, 0.0), _estimate(item))
    # Stable: the order inside a group (pytest's, by fixtures) is kept.
    items.sort(key=lambda item: (-length[_group(item.nodeid)], first_seen[_group(item.nodeid)]))


@pytest.hookimpl(optionalhook=True, tryfirst=True)  # an xdist hook; before xdist's own choice
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    if config.getvalue("dist") != "load":  # what `-n` implies; an explicit other --dist is obeyed
        return None
    from xdist.scheduler import LoadScopeScheduling

    class Groups(LoadScopeScheduling):  # type: ignore[misc]  # xdist ships no type information
        def _split_scope(self, nodeid: str) -> str:
            return _group(nodeid)

    config.option.loadscopereorder = False  # keep the order above, not "most tests first"
    return Groups(config, log)


REPORT = pytest.StashKey[Report]()
_WORKER_OUTPUT_KEY = "smscast_soak_report"


def _report(config: pytest.Config) -> Report:
    if REPORT not in config.stash:
        config.stash[REPORT] = Report()
    return config.stash[REPORT]


@pytest.fixture(scope="session")
def soak_report(request: pytest.FixtureRequest) -> Report:
    return _report(request.config)


def _merge(report: Report, shipped: dict[str, Any]) -> None:
    """Add a worker's tallies (report.ProviderTally as a dict) to `report`: counts summed, lists joined."""
    for provider, fields in shipped["tallies"].items():
        tally = report.tally(provider)
        for name, value in fields.items():
            if isinstance(value, list):
                getattr(tally, name).extend(value)
            else:
                setattr(tally, name, getattr(tally, name) + value)
    report.lines.extend(shipped["lines"])


def pytest_sessionfinish(session: pytest.Session) -> None:
    support.stop_prefect_harness()
    config = session.config
    workeroutput: dict[str, Any] | None = getattr(config, "workeroutput", None)
    if workeroutput is not None and REPORT in config.stash:  # an xdist worker: ship the tallies
        report = config.stash[REPORT]
        workeroutput[_WORKER_OUTPUT_KEY] = {
            "tallies": {p: dataclasses.asdict(t) for p, t in report.tallies.items()},
            "lines": list(report.lines),
        }


@pytest.hookimpl(optionalhook=True)  # an xdist hook: only called when xdist runs the session
def pytest_testnodedown(node: Any, error: Any) -> None:
    shipped = getattr(node, "workeroutput", {}).get(_WORKER_OUTPUT_KEY)
    if shipped:
        _merge(_report(node.config), shipped)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    if REPORT not in config.stash or not config.stash[REPORT].tallies:
        return
    report = config.stash[REPORT]
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
    # What the tmp_path_factory fixture returns (pytest keeps it on the config); under xdist, the
    # controller's basetemp is the parent of the workers' own.
    factory: pytest.TempPathFactory = config._tmp_path_factory  # type: ignore[attr-defined]
    path = factory.getbasetemp() / "soak-summary.md"
    path.write_text(text + "\n", encoding="utf-8")
    terminalreporter.write_line(f"\n(written to {path})")
