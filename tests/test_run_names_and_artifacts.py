"""Runs you can find and read: flow runs named for their campaign, a final state that says whether rows
failed, the summary and progress as artifacts — on the run the user started too, when the campaign runs as a
subflow of a deployment's run — and a log line saying what becomes of failed rows. Everything is read back
through the Prefect API, as the UI shows it."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import polars as pl
import pytest
from prefect import flow
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterParentFlowRunId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.client.schemas.objects import Artifact, FlowRun, State
from prefect.events.actions import RunDeployment
from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture
from prefect.flow_engine import run_flow
from prefect.logging.handlers import APILogWorker
from pydantic import BaseModel
from support import prefect_harness, write_recipients

from smscast.campaign import CampaignSpec
from smscast.flows.campaign import (
    DRY_RUN,
    FAILURES,
    UNKNOWN_ROWS,
    campaign_run_name,
    campaign_state,
    finish,
    run_name,
    send_campaign,
)
from smscast.flows.retry import retry_failed
from smscast.results import AttemptPaths
from smscast.servers.sandbox import SandboxServer
from smscast.tasks import next_steps as steps
from smscast.tasks.dispatch import ProgressBoard
from smscast.tasks.manifest import Manifest
from smscast.tasks.next_steps import RETRY_AUTOMATION, next_steps
from smscast.tasks.plan import ShardRef
from smscast.tasks.report import reason_lines, summarise, summary_markdown
from smscast.tasks.send import ShardReport

KEY = "names-test-key"
PATIENCE = 120.0  # seconds: how long a log line may take to reach the API on a loaded machine


# ---- without Prefect: names, states, the tables ----------------------------------------------------------


def test_run_names_carry_the_campaign_and_attempt() -> None:
    assert run_name("spring-sale", 2) == "spring-sale · attempt 2"
    assert run_name("spring-sale", None) == "spring-sale · retry"
    assert run_name("spring-sale", 1, dry_run=True) == "spring-sale · attempt 1 · dry run"


@pytest.mark.parametrize(
    ("result", "name"),
    [
        ({"by_status": {"accepted": 9, "invalid": 1, "rejected": 2, "failed": 0, "unknown": 0}}, "Completed"),
        ({"by_status": {"accepted": 9, "failed": 3, "unknown": 1}}, FAILURES),
        ({"by_status": {"accepted": 9, "failed": 0, "unknown": 1}}, UNKNOWN_ROWS),
        ({"by_status": {"planned": 9, "invalid": 1}, "dry_run": True}, DRY_RUN),
        ({"campaign_id": "c", "attempt": 5, "retried": 0, "by_status": {"failed": 4}}, FAILURES),
    ],
)
def test_the_final_state_is_named_for_what_is_left_to_do(result: dict[str, Any], name: str) -> None:
    state = campaign_state(result)
    assert state.is_completed() and state.name == name
    counts = {k: v for k, v in result["by_status"].items() if v}
    assert state.message is not None and all(f"{k} {v}" in state.message for k, v in counts.items())


def summary_frame() -> pl.DataFrame:
    statuses = ["accepted"] * 235 + ["invalid"] * 5 + ["failed"] * 10
    codes = [None] * 235 + ["phone_invalid"] * 3 + ["phone_missing"] * 2 + ["http_503"] * 10
    return pl.DataFrame({"status": statuses, "error_code": codes, "segments": [1] * 250})


def test_summary_table_has_one_row_per_status_with_shares_then_reasons_segments_and_results(
    tmp_path: Path,
) -> None:
    uri = str(tmp_path / "res" / "campaign=c1" / "attempt=1")
    summary = summarise(summary_frame(), campaign_id="c1", attempt=1, provider="sandbox", results_uri=uri)
    text = summary_markdown(summary, str(tmp_path / "res"))
    statuses = text.split("**Reasons**")[0]
    assert "| accepted | 235 | 94.0% |" in statuses and "| failed | 10 | 4.0% |" in statuses
    assert "| unknown | 0 | 0.0% |" in statuses and "| **all** | **250** | |" in statuses
    assert "segments" not in statuses.lower()  # segments are counted apart, not as a status
    reasons = text.split("**Reasons**")[1].split("**Segments**")[0]
    assert reasons.index("http_503") < reasons.index("phone_invalid") < reasons.index("phone_missing")
    assert "| failed | `http_503` | 10 | 4.0% |" in reasons
    assert "**Segments** (message parts): 235 accepted" in text
    assert f"`{uri}`" in text and "smscast results --campaign-id c1" in text


def test_next_steps_name_the_scheduled_retry_or_the_command(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = CampaignSpec(campaign_id="c2", provider="sandbox", source="x.csv", results="/r", body="b")
    summary = summarise(summary_frame(), campaign_id="c2", attempt=1, provider="sandbox", results_uri="/r")
    monkeypatch.setattr(steps, "scheduled_retry", lambda: None)
    [line] = next_steps(summary, spec, completed=True)
    assert line.startswith("10 rows failed transiently: no retry is scheduled by this run")
    assert "smscast retry --campaign-id c2 --results /r" in line
    monkeypatch.setattr(steps, "scheduled_retry", lambda: ("retry-campaign/on-failure", 300.0, 5))
    [line] = next_steps(summary, spec, completed=True)
    assert "a retry is scheduled (deployment retry-campaign/on-failure, about 5 min after this run" in line
    # Attempt 5: a row may have been sent five times by now. Those the retry leaves out are counted.
    summary.attempt = 5
    at_limit: list[tuple[CampaignSpec, int]] = []

    def failed_at_limit(spec: CampaignSpec, max_attempts: int) -> int:
        at_limit.append((spec, max_attempts))
        return spent

    monkeypatch.setattr(steps, "failed_at_limit", failed_at_limit)
    spent = 10  # every failed row: the retry deployment would send nothing
    [line] = next_steps(summary, spec, completed=True)
    assert "sends a row at most max_attempts=5 times" in line and "will send nothing" in line
    assert "--max-attempts 6" in line and at_limit == [(spec, 5)]
    spent = 4  # rows a release sent later have tries left: the retry still sends them
    [line] = next_steps(summary, spec, completed=True)
    assert "a retry is scheduled" in line and "4 of them were sent max_attempts=5 times" in line


def test_progress_table_counts_rows_per_status_as_shards_finish() -> None:
    manifest = Manifest(
        shards=[ShardRef(0, 2, 100), ShardRef(1, 2, 100)], rows=205, rows_to_send=200, batch_size=50
    )
    spec = CampaignSpec(campaign_id="c3", provider="sandbox", source="x.csv", results="/r", body="b")
    board = ProgressBoard(spec, manifest)  # outside a flow run: publishes nothing, still keeps the counts
    assert "No shard has finished yet" in board.markdown()
    board.shard_done(ShardReport(1, 100, {"accepted": 90, "failed": 10}, {}))
    text = board.markdown()
    assert "**100 of 200 rows** (50.0%) · 1 of 2 shards done · 5 rows not to send" in text
    assert "| accepted | 90 | 90.0% |" in text and "| failed | 10 | 10.0% |" in text
    board.shard_done(ShardReport(0, 100, {"accepted": 100}, {}))
    assert "c3 · attempt 1: sent" in board.markdown() and "| accepted | 190 | 95.0% |" in board.markdown()


# ---- through Prefect: the harness, the sandbox ------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def prefect_api() -> Iterator[None]:
    with prefect_harness():
        yield


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxServer]:
    with SandboxServer(default_key=KEY) as server:
        os.environ["SMSCAST_SANDBOX_API_KEY"] = KEY
        yield server
        os.environ.pop("SMSCAST_SANDBOX_API_KEY", None)


@pytest.fixture
def client(sandbox: SandboxServer) -> Iterator[SyncPrefectClient]:
    sandbox.client.reset()
    with get_client(sync_client=True) as c:
        yield c


def spec_for(sandbox: SandboxServer, tmp_path: Path, cid: str, rows: int = 300, **kw: Any) -> CampaignSpec:
    src = write_recipients(tmp_path / f"{cid}.csv", rows)
    return CampaignSpec(
        campaign_id=cid,
        provider="sandbox",
        source=str(src),
        results=str(tmp_path / "res"),
        base_url=sandbox.base_url,
        body="Hi {{name}}",
        sender="ACME",
        **kw,
    )


def run_id(state: State[Any]) -> UUID:
    assert state.state_details.flow_run_id is not None
    return state.state_details.flow_run_id


def artifacts(client: SyncPrefectClient, flow_run_id: UUID) -> list[Artifact]:
    found = client.read_artifacts(
        artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
    )
    return list(found)


def markdown(found: list[Artifact], heading: str) -> Artifact:
    [one] = [a for a in found if a.type == "markdown" and str(a.data).startswith(f"### {heading}")]
    return one


def wait_for_log(client: SyncPrefectClient, flow_run_id: UUID, needle: str) -> str:
    """The run's API logs once one holds `needle` (log records reach the API in the background)."""
    deadline = time.monotonic() + PATIENCE
    while True:
        APILogWorker.drain_all(timeout=10)
        logs = client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), limit=200
        )
        text = "\n".join(log.message for log in logs)
        if needle in text or time.monotonic() > deadline:
            assert needle in text, f"{needle!r} not in the logs of {flow_run_id}:\n{text}"
            return text
        time.sleep(0.5)


@pytest.mark.integration
def test_a_campaign_with_failures_is_named_reported_and_says_so(
    sandbox: SandboxServer, client: SyncPrefectClient, tmp_path: Path
) -> None:
    sandbox.client.set_faults(transient_suffixes=["3"])
    spec = spec_for(sandbox, tmp_path, "c-named")
    state = send_campaign(spec, return_state=True)
    assert state.is_completed() and state.name == FAILURES
    assert state.result()["by_status"]["failed"] == 30  # whoever calls the flow still gets the summary
    run = client.read_flow_run(run_id(state))
    assert run.name == "c-named · attempt 1"
    assert run.state is not None and run.state.name == FAILURES and "failed 30" in str(run.state.message)

    found = artifacts(client, run.id)
    summary = markdown(found, "c-named · attempt 1 · sandbox")
    assert summary.key == "campaign-c-named-summary"
    text = str(summary.data)
    assert "| accepted | 270 | 90.0% |" in text and "| failed | 30 | 10.0% |" in text
    assert "**Segments** (message parts): 270 accepted" in text
    results = AttemptPaths.of(spec).dir
    assert f"`{results}`" in text and str(Path(results).resolve()) in text
    [bar] = [a for a in found if a.type == "progress"]
    assert bar.data == 100.0 and "300 of 300 rows sent" in str(bar.description)
    progress = str(markdown(found, "c-named · attempt 1: sent").data)
    assert "| accepted | 270 | 90.0% |" in progress and "| failed | 30 | 10.0% |" in progress

    logs = wait_for_log(client, run.id, "30 rows failed transiently")
    assert f"no retry is scheduled by this run (this Prefect server has no {RETRY_AUTOMATION}" in logs
    assert f"smscast retry --campaign-id c-named --results {spec.results}" in logs

    sandbox.client.set_faults(transient_suffixes=[])
    again = retry_failed(
        campaign_id="c-named", results=spec.results, base_url=sandbox.base_url, return_state=True
    )
    assert again.is_completed() and again.name == "Completed"
    assert client.read_flow_run(run_id(again)).name == "c-named · attempt 2"
    nothing = retry_failed(
        campaign_id="c-named", results=spec.results, base_url=sandbox.base_url, return_state=True
    )
    assert nothing.result()["retried"] == 0
    assert client.read_flow_run(run_id(nothing)).name == "c-named · retry"


class FormLike(BaseModel):
    """What the UI's form gives a wrapper: a campaign id and a dry-run switch, no attempt."""

    campaign_id: str
    dry_run: bool = True


@flow(name="test-form", flow_run_name=campaign_run_name)
def form_wrapper(campaign: FormLike, note: str = "") -> None:
    pass


@flow(name="test-retry", flow_run_name=campaign_run_name)
def retry_wrapper(campaign_id: str, results: str) -> None:
    pass


@pytest.mark.integration
def test_any_flow_taking_a_campaign_can_be_named_for_it(client: SyncPrefectClient) -> None:
    form = form_wrapper(FormLike(campaign_id="spring-sale"), return_state=True)
    assert client.read_flow_run(run_id(form)).name == "spring-sale · attempt 1 · dry run"
    retry = retry_wrapper("spring-sale", "/r", return_state=True)
    assert client.read_flow_run(run_id(retry)).name == "spring-sale · retry"


@pytest.mark.integration
def test_a_dry_run_says_so_in_its_name_and_state(
    sandbox: SandboxServer, client: SyncPrefectClient, tmp_path: Path
) -> None:
    state = send_campaign(spec_for(sandbox, tmp_path, "c-dry", rows=20, dry_run=True), return_state=True)
    assert state.name == DRY_RUN and state.result()["by_status"]["planned"] == 20
    run = client.read_flow_run(run_id(state))
    assert run.name == "c-dry · attempt 1 · dry run"
    text = str(markdown(artifacts(client, run.id), "c-dry · attempt 1 · sandbox").data)
    assert "dry run: nothing was sent" in text and "| planned | 20 | 100.0% |" in text
    assert "**Results**: none written (dry run)." in text


@flow(name="test-nightly", flow_run_name=campaign_run_name)
def nightly_like(spec: CampaignSpec) -> dict[str, Any]:
    """Like flows/deployed.py's wrappers: derives the campaign id, runs the campaign as a subflow."""
    return finish(send_campaign(spec.model_copy(update={"campaign_id": f"{spec.campaign_id}-20261122"})))


@pytest.fixture
def retry_automation(client: SyncPrefectClient) -> Iterator[None]:
    """The retry deployment and its automation, as deployments/prefect.yaml makes them."""
    flow_id = client.create_flow_from_name("retry-campaign")
    deployment = client.create_deployment(flow_id=flow_id, name="on-failure", parameters={"max_attempts": 5})
    # parameters and job_variables are passed as their defaults (None: the deployment's own): mypy, without
    # pydantic's plugin, does not see a default given to Field() positionally.
    action = RunDeployment(
        source="selected",
        deployment_id=deployment,
        parameters=None,
        job_variables=None,
        schedule_after=timedelta(minutes=5),
    )
    trigger = EventTrigger(
        match={"prefect.resource.id": "smscast.campaign.nobody-*"},  # never fires in this test
        expect={"smscast.campaign.finished"},
        posture=Posture.Reactive,
        threshold=1,
    )
    automation = client.create_automation(
        AutomationCore(name=RETRY_AUTOMATION, trigger=trigger, actions=[action])
    )
    try:
        yield
    finally:
        client.delete_automation(automation)
        client.delete_deployment(deployment)


@pytest.mark.integration
def test_a_deployed_run_shows_the_campaign_it_ran(
    sandbox: SandboxServer, client: SyncPrefectClient, tmp_path: Path, retry_automation: None
) -> None:
    sandbox.client.set_faults(transient_suffixes=["3"])
    spec = spec_for(sandbox, tmp_path, "nightly")
    deployment = client.create_deployment(
        flow_id=client.create_flow(nightly_like),
        name="test",
        parameters={"spec": spec.model_dump(mode="json")},
    )
    try:
        started = client.create_flow_run_from_deployment(deployment)
        state = run_flow(nightly_like, flow_run=started, parameters={"spec": spec}, return_type="state")
    finally:
        client.delete_deployment(deployment)
    assert isinstance(state, State)
    # The wrapper ends as the campaign did, and its run is named for the campaign id it derived.
    assert state.is_completed() and state.name == FAILURES
    root: FlowRun = client.read_flow_run(started.id)
    assert root.name == "nightly-20261122 · attempt 1"
    [sub] = client.read_flow_runs(
        flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[root.id]))
    )
    assert sub.name == root.name and sub.state is not None and sub.state.name == FAILURES

    # The summary and the progress are on the run the user opens (keyed there), and on the subflow's too.
    on_root, on_sub = artifacts(client, root.id), artifacts(client, sub.id)
    for found in (on_root, on_sub):
        text = str(markdown(found, "nightly-20261122 · attempt 1 · sandbox").data)
        assert "| failed | 30 | 10.0% |" in text
        assert "| failed | 30 | 10.0% |" in str(markdown(found, "nightly-20261122 · attempt 1: sent").data)
        assert [a.data for a in found if a.type == "progress"] == [100.0]
    assert (
        markdown(on_root, "nightly-20261122 · attempt 1 · sandbox").key == "campaign-nightly-20261122-summary"
    )
    assert markdown(on_sub, "nightly-20261122 · attempt 1 · sandbox").key is None

    # Its logs go on past "Beginning flow run": the rows to send, the summary, and the scheduled retry.
    logs = wait_for_log(client, root.id, "30 rows failed transiently: a retry is scheduled")
    assert "deployment retry-campaign/on-failure, about 5 min after this run" in logs
    assert "campaign nightly-20261122 attempt 1: 300 of 300 rows to send" in logs
    assert "accepted: 270  invalid: 0  rejected: 0  failed: 30" in logs


def test_the_reasons_table_keeps_its_columns_aligned_for_every_status() -> None:
    reasons = [("suppressed", "opted_out", 1200), ("held", "quiet_hours", 7), ("invalid", "phone_missing", 1)]
    lines = reason_lines(reasons, 2, "the results dataset")
    assert lines[0] == "  reasons:" and lines[-1] == "    … 1 more reasons in the results dataset"
    rows = lines[1:3]
    # The code column starts at one place whatever the status's length ("suppressed" is ten letters), and so do
    # the counts.
    assert len({r.index("opted_out") if "opted_out" in r else r.index("quiet_hours") for r in rows}) == 1
    assert len({len(r) for r in rows}) == 1 and rows[0].endswith("1,200") and rows[1].endswith("7")
    assert reason_lines([], 20, "anywhere") == []
