"""A real Prefect deployment stack for the deployment tests: `prefect server start`, the project's
deployments/prefect.yaml deployed by deployments/bootstrap.py, a `process` worker, the sandbox and SeaweedFS.

Credentials reach the flow runs the way they would in production: bootstrap saves them as blocks from its own
environment, and the worker's environment has no provider key and no AWS_* variable at all.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId, FlowRunFilter
from prefect.client.schemas.objects import FlowRun
from prefect.settings import PREFECT_API_URL, temporary_settings

from smscast.servers.prefect_server import PrefectServer
from smscast.servers.sandbox import SandboxServer
from smscast.servers.seaweedfs import SeaweedS3

ROOT = Path(__file__).resolve().parent.parent
KEY = "deploy-test-key"
BUCKET = "smscast"  # the bucket deployments/prefect.yaml names: the file is deployed as it is
# tests/deployed_ui_form.py drives the stack's UI in Debian's Chromium through the `playwright` package; where
# either is missing its tests skip, and the stack starts without the UI (serving it costs seconds).
CHROMIUM = Path("/usr/bin/chromium")
UI_TESTABLE = CHROMIUM.exists() and importlib.util.find_spec("playwright") is not None
T = TypeVar("T")
AFTER_CAMPAIGN = "smscast-reconcile-after-campaign"  # paused in the stack (Stack.pause_after_campaign)


def clean_env(home: Path) -> dict[str, str]:
    """This process's environment without anything that points at S3, a provider or a Prefect API."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AWS_", "PREFECT_"))
        and not (k.startswith("SMSCAST_") and k.endswith("_API_KEY"))
    }
    env.update(
        {"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PYTHONUNBUFFERED": "1"}
    )
    return env


def wait_for(what: str, probe: Callable[[], T | None], timeout: float, diagnose: Callable[[], str]) -> T:
    """Poll `probe` until it returns something truthy; fail with `diagnose()` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}\n{diagnose()}")
        time.sleep(0.25)


def holds_for(seconds: float, condition: Callable[[], bool]) -> None:
    """Assert that `condition` stays true for `seconds` (checked twice a second): nothing more happens."""
    deadline = time.monotonic() + seconds
    while True:
        assert condition()
        if time.monotonic() > deadline:
            return
        time.sleep(0.5)


def stop_group(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


@dataclass
class Stack:
    server: PrefectServer
    sandbox: SandboxServer
    seaweed: SeaweedS3
    tmp: Path
    worker_log: Path

    @property
    def client(self) -> SyncPrefectClient:
        return get_client(sync_client=True)

    def env(self, name: str) -> dict[str, str]:
        """A client environment (own PREFECT_HOME) pointed at this server and nothing else."""
        home = self.tmp / f"home-{name}"
        home.mkdir(exist_ok=True)
        return {**clean_env(home), **self.server.env()}

    def diagnose(self) -> str:
        worker = (
            self.worker_log.read_bytes()[-6000:].decode(errors="replace") if self.worker_log.exists() else ""
        )
        return f"--- worker log ---\n{worker}\n--- server log ---\n{self.server.log_tail(3000)}"

    def pause_after_campaign(self) -> None:
        """Pause the automation that starts a reconcile run a minute after every campaign (deployment
        after-campaign): each is a process start and a reconcile of the whole results bucket on a machine
        the tests already load, and no test here looks at them. (`prefect deploy` enables it again.)"""
        with self.client as client:
            (automation,) = client.read_automations_by_name(AFTER_CAMPAIGN)
            client.pause_automation(automation.id)

    def runs(self, deployment: str, *, top_level: bool = True) -> list[FlowRun]:
        """Flow runs of a deployment ('flow/deployment'), oldest first; subflow runs left out."""
        with self.client as client:
            dep = client.read_deployment_by_name(deployment)
            runs = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(),
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id])),
            )
        if top_level:
            runs = [r for r in runs if r.parent_task_run_id is None]
        return sorted(runs, key=lambda r: r.created or 0)

    def wait_final(self, run_id: Any, timeout: float = 120.0) -> FlowRun:
        def probe() -> FlowRun | None:
            with self.client as client:
                run = client.read_flow_run(run_id)
            return run if run.state is not None and run.state.is_final() else None

        return wait_for(f"flow run {run_id} to finish", probe, timeout, self.diagnose)


@contextlib.contextmanager
def deployed_stack(seaweed: SeaweedS3, tmp: Path, *, ui: bool = False) -> Iterator[Stack]:
    """A real Prefect server (with its UI when `ui`, without the promotional banner that would be in
    screenshots), the sandbox, bootstrap's work pool, blocks and deployments, and a worker."""
    seaweed.create_bucket(BUCKET)
    server_env = {
        # The scheduler's main loop visits every deployment once a minute by default: a resumed schedule
        # would wait up to that long for its runs (only a deployment changed in the last seconds is
        # scheduled at once).
        "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5",
        **({"PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": "false"} if ui else {}),
    }
    # Start-up bounds are generous: a new database is migrated first, with the other test worker busy too.
    with (
        SandboxServer(default_key=KEY) as sandbox,
        PrefectServer(tmp / "server", ui=ui, startup_timeout=240, extra_env=server_env) as server,
    ):
        stack = Stack(server, sandbox, seaweed, tmp, tmp / "worker.log")
        # bootstrap: work pool, blocks (from these credentials), prefect deploy --all of the real file.
        boot_env = {**stack.env("bootstrap"), **seaweed.env(), "SMSCAST_SANDBOX_API_KEY": KEY}
        done = subprocess.run(
            [sys.executable, str(ROOT / "deployments" / "bootstrap.py")],
            cwd=ROOT,
            env=boot_env,
            capture_output=True,
            timeout=240,
        )
        assert done.returncode == 0, done.stdout.decode()[-3000:] + done.stderr.decode()[-3000:]
        assert KEY not in done.stdout.decode() + done.stderr.decode()  # bootstrap never prints a secret
        with temporary_settings({PREFECT_API_URL: server.api_url}):
            stack.pause_after_campaign()
        worker_env = {
            **stack.env("worker"),
            "SMSCAST_SANDBOX_BASE_URL": sandbox.base_url,
            "PREFECT_WORKER_QUERY_SECONDS": "1",
        }
        with open(stack.worker_log, "wb") as log:
            worker = subprocess.Popen(
                [sys.executable, "-m", "prefect", "worker", "start", "--pool", "smscast", "--limit", "4"],
                cwd=tmp,
                env=worker_env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            with temporary_settings({PREFECT_API_URL: server.api_url}):

                def worker_online() -> bool:
                    if worker.poll() is not None:
                        pytest.fail(f"the worker exited with {worker.returncode}\n{stack.diagnose()}")
                    with stack.client as client:
                        return bool(client.read_workers_for_work_pool("smscast"))

                wait_for("the worker to come online", worker_online, 180, stack.diagnose)
                yield stack
        finally:
            stop_group(worker)
            seaweed.delete_bucket(BUCKET)


@pytest.fixture(scope="module", name="stack")
def stack_fixture(seaweed: SeaweedS3, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One stack for tests/test_deployments.py and the modules it collects (deployed_schedules.py,
    deployed_release.py, deployed_ui_form.py): its start is most of their cost."""
    with deployed_stack(seaweed, tmp_path_factory.mktemp("deployments"), ui=UI_TESTABLE) as stack:
        yield stack
