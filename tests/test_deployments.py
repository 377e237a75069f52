"""The deployments on a real `prefect server start`: registration (schedules, parameter schemas, triggers),
an ad-hoc run with the UI form's parameters, the S3 inbox trigger (one run per file, exactly once), and the
retry deployment started by a campaign's completion event. Flow runs execute on a `process` worker, against
the sandbox and SeaweedFS (tests/fixtures_prefect.py)."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import polars as pl
import pytest
from fixtures_prefect import BUCKET, ROOT, Stack, holds_for, stack_fixture, stop_group, wait_for  # noqa: F401
from prefect.events import EventTrigger, ResourceSpecification, RunDeployment
from prefect.states import Scheduled
from support import write_recipients

from flows.deployed import file_campaign_id
from smscast import storage
from smscast.watch import Landed, announce, list_inbox
from tasks.current import current_results

pytestmark = pytest.mark.integration
RESULTS = f"s3://{BUCKET}/results"
INBOX = f"s3://{BUCKET}/inbox/"


def ledger_for(stack: Stack, phones: set[str]) -> pl.DataFrame:
    """The sandbox ledger's entries for these phones (each test uses its own range of numbers)."""
    entries = [e for e in stack.sandbox.client.ledger(provider="generic") if e["to"] in phones]
    return pl.DataFrame(entries, schema={"to": pl.String, "body": pl.String})


def phones_of(path: Path) -> set[str]:
    return set(pl.read_csv(path)["phone"].to_list())


def form_spec(**values: Any) -> dict[str, Any]:
    """Parameters as the UI's form submits them: every field of CampaignSpec, defaults filled in."""
    spec: dict[str, Any] = {
        "provider": "sandbox",
        "query": None,
        "sender": "ACME",
        "body": None,
        "template": None,
        "template_vars": [],
        "default_country": None,
        "columns": {},
        "language": None,
        "base_url": None,
        "dry_run": False,
        "batch_size": None,
        "shard_batches": None,
        "rate": None,
        "concurrency": None,
        "attempt": 1,
        "results": RESULTS,
    }
    spec.update(values)
    return {"spec": spec}


def test_deployments_register_with_schedules_schemas_and_triggers(stack: Stack) -> None:
    with stack.client as client:
        deps = {f"{d.name}": d for d in client.read_deployments()}
        automations = {a.name: a for a in client.read_automations()}
    assert set(deps) == {"ad-hoc", "nightly", "s3-inbox", "on-failure"}

    nightly = deps["nightly"]
    (schedule,) = nightly.schedules
    assert schedule.active
    assert schedule.schedule.model_dump(include={"cron", "timezone"}) == {
        "cron": "0 2 * * *",
        "timezone": "Europe/London",
    }
    assert nightly.parameters is not None and nightly.parameters["timezone"] == "Europe/London"

    # The ad-hoc form: CampaignSpec with titles, descriptions, defaults, and the provider as a choice.
    schema = deps["ad-hoc"].parameter_openapi_schema or {}
    spec = schema["definitions"]["CampaignSpec"]["properties"]
    assert schema["required"] == ["spec"]
    assert spec["provider"]["enum"] == ["sandbox", "sent-dm", "robase", "textingline", "postman", "instasent"]
    assert spec["provider"]["default"] == "sandbox"
    for field in ("campaign_id", "source", "sender", "body", "template", "dry_run"):
        assert spec[field]["title"] and spec[field]["description"], field
    assert spec["dry_run"]["default"] is False
    assert (deps["ad-hoc"].parameters or {})["spec"]["dry_run"] is True  # the form starts as a dry run

    inbox, retry = automations["smscast-recipients-landed"], automations["smscast-retry-on-failure"]
    assert isinstance(inbox.trigger, EventTrigger) and isinstance(retry.trigger, EventTrigger)
    assert isinstance(inbox.actions[0], RunDeployment) and isinstance(retry.actions[0], RunDeployment)
    assert inbox.trigger.expect == {"smscast.recipients.landed"}
    assert inbox.trigger.for_each == {"prefect.resource.id", "smscast.etag"}
    assert inbox.trigger.within == timedelta(hours=1)
    assert inbox.actions[0].deployment_id == deps["s3-inbox"].id
    assert inbox.actions[0].parameters == {
        "uri": "{{ event.payload.uri }}",
        "etag": "{{ event.payload.etag }}",
    }
    assert retry.trigger.expect == {"smscast.campaign.finished"}
    assert retry.trigger.match == ResourceSpecification(
        {"prefect.resource.id": "smscast.campaign.*", "smscast.needs-retry": "true"}
    )
    assert retry.actions[0].deployment_id == deps["on-failure"].id

    # The scheduler turns the cron into runs at 02:00 London time.
    def nightly_runs() -> list[Any]:
        return [r for r in stack.runs("nightly-campaign/nightly") if r.expected_start_time]

    upcoming = wait_for("scheduled nightly runs", nightly_runs, 60, stack.diagnose)
    for run in upcoming:
        local = run.expected_start_time.astimezone(ZoneInfo("Europe/London"))
        assert (local.hour, local.minute) == (2, 0)
        assert run.state is not None and run.state.is_scheduled()


def test_ad_hoc_run_with_form_parameters_completes(stack: Stack, tmp_path: Path) -> None:
    src = write_recipients(tmp_path / "adhoc.csv", 120, start=10_000)
    storage.put_bytes(f"s3://{BUCKET}/adhoc/adhoc.csv", src.read_bytes())
    params = form_spec(
        campaign_id="adhoc-1", source=f"s3://{BUCKET}/adhoc/adhoc.csv", body="Hi {{name}}, from ad hoc"
    )
    with stack.client as client:
        dep = client.read_deployment_by_name("campaign/ad-hoc")
        created = client.create_flow_run_from_deployment(dep.id, parameters=params)
    run = stack.wait_final(created.id)
    assert run.state is not None and run.state.is_completed(), f"{run.state}\n{stack.diagnose()}"

    assert storage.exists(f"{RESULTS}/campaign=adhoc-1/attempt=1/_SUCCESS")
    sent = ledger_for(stack, phones_of(src))
    assert sent.height == 120 and sent["to"].n_unique() == 120
    # The body's {{name}} survived the API and the deployment: filled per recipient, not stripped.
    assert set(sent["body"].str.replace(r"N\d+", "N#")) == {"Hi N#, from ad hoc"}


def test_an_inbox_file_starts_exactly_one_campaign_run(stack: Stack, tmp_path: Path) -> None:
    files = {
        "a": write_recipients(tmp_path / "promo-a.csv", 60, start=20_000, extra={"body": ["Promo A"] * 60}),
        "b": write_recipients(tmp_path / "promo-b.csv", 40, start=30_000, extra={"body": ["Promo B"] * 40}),
    }
    watcher_log = tmp_path / "watch.log"
    cmd = [sys.executable, "-m", "smscast.watch", INBOX, "--interval", "1"]
    with open(watcher_log, "wb") as log:
        # No AWS_* in its environment: the watcher reads S3 credentials from the smscast-s3 block.
        watcher = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=stack.env("watch"),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        began = time.monotonic()
        for path in files.values():  # a burst: both land within one poll
            storage.put_bytes(f"{INBOX}2024/{path.name}", path.read_bytes())

        def two_runs() -> list[Any]:
            runs = stack.runs("campaign-from-file/s3-inbox")
            return runs if len(runs) >= 2 else []

        runs = wait_for("one run per file", two_runs, 60, lambda: stack.diagnose() + watcher_log.read_text())
        started_within = time.monotonic() - began
        finals = [stack.wait_final(r.id) for r in runs]
        assert all(f.state is not None and f.state.is_completed() for f in finals), stack.diagnose()
    finally:
        stop_group(watcher)

    # Each run got its own file's URI and ETag; the campaign id derives from them.
    objects = {o.key.rsplit("/", 1)[-1]: o for o in list_inbox(INBOX)}
    by_uri = {r.parameters["uri"]: r for r in runs}
    assert set(by_uri) == {objects[p.name].uri for p in files.values()}
    for path in files.values():
        obj = objects[path.name]
        assert by_uri[obj.uri].parameters["etag"] == obj.etag
        cid = file_campaign_id("inbox", obj.uri, obj.etag)
        assert current_results(RESULTS, cid).filter(pl.col("status") == "accepted").height == len(
            phones_of(path)
        )
        assert ledger_for(stack, phones_of(path)).height == len(phones_of(path))
    assert started_within < 60

    # A restarted watcher announces nothing: its cursor in the inbox records both files.
    again = subprocess.run(
        [*cmd, "--once"], cwd=ROOT, env=stack.env("watch"), capture_output=True, timeout=60, check=True
    )
    assert b"announced" not in again.stdout + again.stderr
    # Announcements that do repeat (a crash before the cursor was saved) start nothing either: the same
    # event id is dropped by the server, and a new event for the same file is debounced by the trigger.
    obj = objects[files["a"].name]
    announce([obj])
    announce([Landed(obj.bucket, obj.key, obj.etag, obj.size, obj.last_modified + timedelta(seconds=1))])
    # The trigger acts within about a second of an event: six seconds without a third run is telling.
    holds_for(6, lambda: len(stack.runs("campaign-from-file/s3-inbox")) == 2)
    assert ledger_for(stack, phones_of(files["a"])).height == 60  # and nobody got a second message


def test_completion_with_failures_triggers_the_retry_deployment(stack: Stack, tmp_path: Path) -> None:
    src = write_recipients(tmp_path / "flaky.csv", 100, start=40_000)
    storage.put_bytes(f"s3://{BUCKET}/adhoc/flaky.csv", src.read_bytes())
    stack.sandbox.client.set_faults(transient_suffixes=["7"])  # 10 of 100 numbers fail transiently
    try:
        with stack.client as client:
            dep = client.read_deployment_by_name("campaign/ad-hoc")
            created = client.create_flow_run_from_deployment(
                dep.id, parameters=form_spec(campaign_id="flaky-1", source=f"s3://{BUCKET}/adhoc/flaky.csv")
            )
        first = stack.wait_final(created.id)
        finished_at = datetime.now(UTC)
        assert first.state is not None and first.state.is_completed(), stack.diagnose()
        assert current_results(RESULTS, "flaky-1").filter(pl.col("status") == "failed").height == 10

        def retry_run() -> list[Any]:
            return stack.runs("retry-campaign/on-failure")

        (retry,) = wait_for("the retry deployment to be triggered", retry_run, 30, stack.diagnose)
    finally:
        stack.sandbox.client.set_faults(transient_suffixes=[])
    assert retry.parameters == {"campaign_id": "flaky-1", "results": RESULTS, "max_attempts": 5}
    # Scheduled five minutes after the event (schedule_after: 300), not at once.
    assert retry.state is not None and retry.state.is_scheduled()
    assert retry.expected_start_time is not None
    assert retry.expected_start_time > finished_at + timedelta(seconds=240)

    # Bring it forward rather than wait five minutes; the worker runs it.
    with stack.client as client:
        client.set_flow_run_state(retry.id, Scheduled(scheduled_time=datetime.now(UTC)), force=True)
    done = stack.wait_final(retry.id)
    assert done.state is not None and done.state.is_completed(), stack.diagnose()
    current = current_results(RESULTS, "flaky-1")
    assert set(current["status"]) == {"accepted"}
    assert current.filter(pl.col("attempt") == 2).height == 10
    assert ledger_for(stack, phones_of(src)).height == 100

    # The retry's own completion has no failures left: nothing more is triggered, and the campaigns without
    # failures (the ad-hoc and inbox ones) never triggered a retry.
    holds_for(
        4,
        lambda: [r.parameters["campaign_id"] for r in stack.runs("retry-campaign/on-failure")] == ["flaky-1"],
    )
