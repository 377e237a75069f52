"""Shards on a Dask cluster (`runner="dask"`, smscast/dask_runner.py): a real `distributed.LocalCluster` of two
worker processes, the sandbox over loopback, Prefect's test harness, and results in a local directory that
the processes share. The stop across processes (`SharedStop`) and a shard's own reading of the lock
(`LeaseWatch`) are also checked on their own, without a cluster."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from polars.testing import assert_frame_equal
from pydantic import ValidationError
from support import assert_matches_ledger, env, flow_sandbox, ledger_frame, write_recipients

from smscast import storage
from smscast.campaign import CampaignSpec
from smscast.dask_runner import LeaseWatch, stop_marker, with_runner
from smscast.errors import CampaignStopError, ConfigError
from smscast.results import AttemptPaths, CampaignPaths
from smscast.runtime import SharedStop
from smscast.servers.sandbox import SandboxServer
from smscast.tasks.current import current_results

KEY = "dask-test-key"
WAIT = 120.0  # seconds: a bound for conditions on a loaded machine, never a duration any test waits out
# Columns that differ between two sends of the same rows by nature: when, and the provider's own references
# (message ids, its batch references).
VARYING = ["submitted_at", "provider_message_id", "provider_batch_ref"]


def set_sandbox_key(value: str) -> None:
    """Run on a worker (cluster.run): the key a shard started after it reads."""
    os.environ["SMSCAST_SANDBOX_API_KEY"] = value


def hold(name: str) -> None:
    """Run on a worker: keep it busy until the test sets the event `name`."""
    import distributed

    distributed.Event(name).wait(WAIT)  # type: ignore[no-untyped-call]  # distributed is unannotated


def until(condition: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    """Wait for `condition()` to be truthy, looking every 20 ms; its value."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)
    return value


# ---- the stop and the lease, without a cluster -------------------------------------------------------------


def test_a_stop_set_in_one_process_reaches_another_through_its_marker(tmp_path: Path) -> None:
    marker = str(tmp_path / "stop" / "run.json")
    with SharedStop(marker, every=0.05) as here, SharedStop(marker, every=0.05) as there:
        assert not here.is_set() and not there.is_set()
        there.set("auth_failed", "credentials refused")
        until(here.is_set, "the stop to reach the other side")
        assert (here.code, here.reason) == ("auth_failed", "credentials refused")
        here.set("circuit_open", "a later cause")  # the first cause stays the record
    assert json.loads(Path(marker).read_bytes())["code"] == "auth_failed"
    with SharedStop(marker) as late:  # a shard that starts after the stop sends nothing
        assert late.is_set() and late.code == "auth_failed"


def test_the_flow_publishes_a_lost_lock_without_being_asked(tmp_path: Path) -> None:
    # In a Dask run nothing in the flow's process calls is_set while shards send: its own watch must notice.
    marker = tmp_path / "stop.json"
    held = threading.Event()
    held.set()
    with SharedStop(str(marker), held.is_set, every=0.05), SharedStop(str(marker), every=0.05) as shard:
        held.clear()  # the heartbeat found the lock taken over
        until(shard.is_set, "the lost lock to reach the shard")
        assert shard.code == "lock_lost"


def test_a_shard_reads_the_lock_itself(tmp_path: Path) -> None:
    lock = tmp_path / "lock.json"
    now = [1000.0]
    watch = LeaseWatch(str(lock), "flow-1", margin=2.0, clock=lambda: now[0])
    assert watch() is not None  # no lock: the run has ended
    lock.write_text(json.dumps({"owner": "flow-1", "expires_at": 1060.0}))
    assert watch() is None
    now[0] = 1058.5  # within the margin of the lease's end: the flow may be gone
    assert watch() == ("lock_lost", watch()[1]) and "lease ran out" in watch()[1]  # type: ignore[index]
    lock.write_text(json.dumps({"owner": "flow-2", "expires_at": 2000.0}))
    assert "took this campaign over" in watch()[1]  # type: ignore[index]
    # A lease check on a stop: a lost lock stops the shard, with the lock's reason.
    lock.write_text(json.dumps({"owner": "flow-1", "expires_at": 1030.0}))
    now[0] = 1000.0
    with SharedStop(str(tmp_path / "m.json"), checks=[watch], every=0.05) as stop:
        assert not stop.is_set()
        now[0] = 1029.0
        until(stop.is_set, "the lease check to stop the shard")
        assert stop.code == "lock_lost"


def test_a_retry_or_release_may_name_its_own_runner(tmp_path: Path) -> None:
    recorded = CampaignSpec(
        campaign_id="c",
        provider="sandbox",
        source="r.csv",
        results=str(tmp_path),
        body="Hi",
        runner="dask",
        dask_address="tcp://old:8786",
    )
    assert with_runner(recorded) == recorded  # the campaign's own choice stands
    threads = with_runner(recorded, "threads")
    assert (threads.runner, threads.dask_address, threads.dask_workers) == ("threads", None, None)
    local = with_runner(threads, dask_workers=3)  # a cluster alone means Dask
    assert (local.runner, local.dask_address, local.dask_workers) == ("dask", None, 3)
    with pytest.raises(ConfigError, match="need --runner dask"):
        with_runner(recorded, "threads", dask_address="tcp://new:8786")


# ---- on a cluster ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxServer]:
    with flow_sandbox(KEY) as server:
        yield server


@pytest.fixture(scope="module")
def cluster(sandbox: SandboxServer) -> Iterator[Any]:
    """Two worker processes, one thread each, started after the sandbox's key is in the environment (the
    workers inherit it). Yields a client of the test's own (not the default one, which the flow's
    DaskTaskRunner would otherwise pick up)."""
    import cloudpickle
    import distributed

    # This module's functions (set_sandbox_key) go to the workers by value: they cannot import it.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    # distributed's LocalCluster and Client constructors are unannotated.
    with (
        distributed.LocalCluster(  # type: ignore[no-untyped-call]
            n_workers=2, processes=True, threads_per_worker=1, dashboard_address=":0"
        ) as local,
        distributed.Client(local, set_as_default=False) as client,  # type: ignore[no-untyped-call]
    ):
        yield client


@pytest.fixture(autouse=True)
def clean(request: pytest.FixtureRequest) -> None:
    if "sandbox" in request.fixturenames:
        request.getfixturevalue("sandbox").client.reset()


def spec_for(sandbox: SandboxServer, source: Path, results: Path, cid: str, **kw: Any) -> CampaignSpec:
    return CampaignSpec(
        campaign_id=cid,
        provider="sandbox",
        source=str(source),
        results=str(results),
        base_url=sandbox.base_url,
        body="Hi {{name}}",
        sender="ACME",
        **kw,
    )


def send(spec: CampaignSpec) -> dict[str, Any]:
    from smscast.flows.campaign import send_campaign

    result: dict[str, Any] = send_campaign(spec)
    return result


def in_background(spec: CampaignSpec) -> tuple[threading.Thread, dict[str, Any]]:
    """The campaign in a thread of this process, so that the test can act while it sends."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["summary"] = send(spec)
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def comparable(results: Path, cid: str) -> pl.DataFrame:
    return current_results(str(results), cid).drop(VARYING).sort("row_index")


@pytest.mark.integration
def test_dask_results_are_the_thread_runners_row_for_row(
    sandbox: SandboxServer, cluster: Any, tmp_path: Path
) -> None:
    from distributed import get_task_stream

    src = write_recipients(tmp_path / "r.csv", 1200, extra={"name": ["N0", ""]})  # row 1 lacks its variable
    faults: dict[str, Any] = {"reject_suffixes": ["77"], "transient_suffixes": ["31"]}
    sandbox.client.set_faults(**faults)
    plan = {"batch_size": 50, "shard_batches": 4}  # 6 shards
    threads = send(spec_for(sandbox, src, tmp_path / "threads", "c-same", **plan))
    sandbox.client.reset()  # the same campaign id again: the sandbox must not answer from its memory
    sandbox.client.set_faults(**faults)
    address = cluster.scheduler.address
    with get_task_stream(cluster) as stream:
        dask = send(
            spec_for(sandbox, src, tmp_path / "dask", "c-same", runner="dask", dask_address=address, **plan)
        )
    # Every shard ran as a task of the cluster, on its workers.
    assert len(stream.data) == 6 and all(t.get("worker") for t in stream.data), stream.data
    assert threads["by_status"] == dask["by_status"]
    assert {k: dask["by_status"][k] for k in ("accepted", "invalid", "rejected", "failed")} == {
        "accepted": 1175,
        "invalid": 1,
        "rejected": 12,
        "failed": 12,
    }
    # Same rows, statuses, reasons, keys and batch ids.
    assert_frame_equal(comparable(tmp_path / "threads", "c-same"), comparable(tmp_path / "dask", "c-same"))
    assert_matches_ledger(str(tmp_path / "dask"), "c-same", sandbox.client, "generic", 1200)


@pytest.mark.integration
def test_a_worker_killed_mid_shard_loses_nothing_and_sends_nothing_twice(
    sandbox: SandboxServer, cluster: Any, tmp_path: Path
) -> None:
    cluster.wait_for_workers(2, timeout=WAIT)
    src = write_recipients(tmp_path / "r.csv", 600)
    # 6 shards of 10 requests, one request in flight per shard, each request held 150 ms by the sandbox: a
    # shard is busy for a while, long enough to be caught in the middle.
    sandbox.client.set_faults(latency_ms=150)
    spec = spec_for(
        sandbox,
        src,
        tmp_path / "res",
        "c-kill",
        runner="dask",
        dask_address=cluster.scheduler.address,
        batch_size=10,
        shard_batches=10,
        concurrency=2,
    )
    pids: dict[str, int] = cluster.run(os.getpid)
    thread, outcome = in_background(spec)

    def sending_worker() -> str | None:
        """A worker running a shard that has sent some of its batches (the ledger has its rows) and not
        yet recorded its part."""
        if ledger_frame(sandbox.client, "generic").height < 20:
            return None
        busy = [w for w, keys in cluster.processing().items() if keys and w in pids]
        return busy[0] if busy else None

    victim = until(sending_worker, "a worker in the middle of a shard")
    os.kill(pids[victim], signal.SIGKILL)
    thread.join(WAIT)
    assert not thread.is_alive(), "the campaign did not finish after its worker was killed"
    assert "error" not in outcome, outcome.get("error")
    assert outcome["summary"]["by_status"]["accepted"] == 600
    # The dead worker's shard ran again elsewhere and resumed: every row once in the ledger, none missing.
    assert_matches_ledger(str(tmp_path / "res"), "c-kill", sandbox.client, "generic", 600)
    assert pids[victim] not in cluster.run(os.getpid).values()  # it really was killed


@pytest.mark.integration
def test_a_stop_set_by_one_shard_stops_the_shards_on_the_other_worker(
    sandbox: SandboxServer, cluster: Any, tmp_path: Path
) -> None:
    import distributed

    cluster.wait_for_workers(2, timeout=WAIT)
    src = write_recipients(tmp_path / "r.csv", 600)
    sandbox.client.set_faults(latency_ms=400)  # a shard of 10 requests, one at a time: about 4 s
    spec = spec_for(
        sandbox,
        src,
        tmp_path / "res",
        "c-stop",
        runner="dask",
        dask_address=cluster.scheduler.address,
        batch_size=10,
        shard_batches=10,
        concurrency=2,
    )
    late = sorted(cluster.run(os.getpid))[0]
    # `late` has its credentials revoked and is kept busy while the other worker starts sending. Once
    # released, the first shard it runs is refused (401), which stops the campaign while the other worker
    # is in the middle of a shard.
    cluster.run(set_sandbox_key, "revoked", workers=[late])
    # distributed's Event is unannotated (its constructor and set()).
    release = distributed.Event("c-stop-release", client=cluster)  # type: ignore[no-untyped-call]
    blocker = cluster.submit(
        hold, "c-stop-release", workers=[late], pure=False
    )  # kept: a dropped one is cancelled
    stops = f"{AttemptPaths.of(spec).work}/stop/"
    try:
        until(lambda: cluster.processing().get(late), "the other worker to be busy")
        thread, outcome = in_background(spec)
        until(lambda: ledger_frame(sandbox.client, "generic").height >= 20, "a shard to be sending")
        release.set()  # type: ignore[no-untyped-call]
        marker = until(lambda: storage.list_files(stops, ".json"), "a shard to stop the campaign")[0]
        sent_at_stop = ledger_frame(sandbox.client, "generic").height
        thread.join(WAIT)
    finally:
        release.set()  # type: ignore[no-untyped-call]
        cluster.run(set_sandbox_key, KEY)
    assert not thread.is_alive()
    assert isinstance(outcome.get("error"), CampaignStopError), outcome
    assert "credentials refused" in str(outcome["error"])
    assert "credentials refused" in json.loads(storage.get_bytes(marker))["reason"]
    # The other worker stopped within about a second (STOP_POLL, plus its request in flight): a generous
    # bound of 5 requests of 10 rows reached the sandbox after the stop, and its shard of 100 never finished.
    sent = ledger_frame(sandbox.client, "generic").height
    assert sent - sent_at_stop <= 50, f"{sent - sent_at_stop} rows reached the sandbox after the stop"
    assert sent < 100
    current = assert_matches_ledger(str(tmp_path / "res"), "c-stop", sandbox.client, "generic", 600)
    assert current.filter(pl.col("status") == "accepted").height == sent
    assert current.filter(pl.col("status") == "failed").height == 600 - sent
    assert stop_marker(spec, "x").startswith(stops)
    assert blocker.status == "finished"


@pytest.mark.integration
def test_smscast_send_runner_dask_on_workers_of_its_own(
    sandbox: SandboxServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.settings import PREFECT_API_URL
    from typer.testing import CliRunner

    from smscast import dask_runner
    from smscast.cli import app

    started: list[CampaignSpec] = []
    real = dask_runner.dask_task_runner

    def spy(spec: CampaignSpec) -> Any:
        started.append(spec)
        return real(spec)

    monkeypatch.setattr(dask_runner, "dask_task_runner", spy)
    src = write_recipients(tmp_path / "r.csv", 200)
    res = tmp_path / "res"
    args = ["send", str(src), "-p", "sandbox", "-c", "c-cli", "-r", str(res), "--base-url", sandbox.base_url]
    args += ["--body", "Hi {{name}}", "--sender", "ACME", "--runner", "dask", "--dask-workers", "2"]
    with env(PREFECT_API_URL=str(PREFECT_API_URL.value())):  # this module's Prefect API, as configured
        out = CliRunner().invoke(app, args)
    assert out.exit_code == 0, out.output
    assert [(s.runner, s.dask_address, s.dask_workers) for s in started] == [("dask", None, 2)]
    current = assert_matches_ledger(str(res), "c-cli", sandbox.client, "generic", 200)
    assert set(current["status"]) == {"accepted"}


@pytest.mark.integration
def test_a_spend_cap_is_refused_with_dask_before_anything_is_sent(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    # The cap's budget is one account in the flow's memory, which shards elsewhere cannot reserve from.
    src = write_recipients(tmp_path / "r.csv", 20)
    prices = tmp_path / "prices.csv"
    prices.write_text("provider,country,price_per_segment,currency\nsandbox,GB,0.01,GBP\n")
    with pytest.raises((ConfigError, ValidationError), match="--max-cost"):
        send(spec_for(sandbox, src, tmp_path / "res", "c-cap", runner="dask", prices=str(prices), max_cost=5))
    assert not storage.exists(AttemptPaths(CampaignPaths(str(tmp_path / "res"), "c-cap"), 1).dir)
    assert ledger_frame(sandbox.client, "generic").height == 0
