"""The deployments on a real `prefect server start`: an ad-hoc run with the UI form's parameters, the nightly
flow, the S3 inbox trigger (one run per file, exactly once, across a watcher restart and repeated
announcements), and the retry deployment started by a campaign's completion event. Flow runs execute on a
`process` worker against the sandbox and SeaweedFS (tests/fixtures_prefect.py). At the end, the watcher's
cursor and the id helpers alone.

Three more modules run on the same stack, collected here (module-level names below; a file not named test_*
is not collected on its own): tests/deployed_schedules.py (what bootstrap registers, and the schedules),
tests/deployed_release.py (a campaign's held rows released by the run it schedules) and
tests/deployed_ui_form.py (the ad-hoc form in Prefect's UI). Starting the stack is a third of this file's
time, and the release waits a minute or more for quiet hours to end: its campaign starts early and its release
is checked last, so that the tests in between run while it waits. The order of the tests is the order of the
names in this module; each test waits for what it needs, so any one of them also passes on its own.
"""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import deployed_release
import deployed_schedules
import deployed_ui_form
import polars as pl
import pytest
from deployed_release import held_campaign  # noqa: F401 (a fixture)
from deployed_ui_form import browser, page, shots  # noqa: F401 (fixtures)
from fixtures_prefect import BUCKET, ROOT, Stack, holds_for, stack_fixture, stop_group, wait_for  # noqa: F401
from prefect.events import Event, get_events_client
from prefect.states import Scheduled
from support import write_recipients

from smscast import storage
from smscast.campaign import CampaignSpec
from smscast.errors import ConfigError
from smscast.flows.deployed import dated_campaign_id, file_campaign_id
from smscast.form import CampaignForm
from smscast.inbox import Landed, announce, default_state_uri, landed_event, list_inbox, poll_once
from smscast.results import CampaignPaths
from smscast.s3_block import _aws_credentials_env
from smscast.tasks.current import current_results

pytestmark = pytest.mark.integration
RESULTS = f"s3://{BUCKET}/results"
INBOX = f"s3://{BUCKET}/inbox/"


def ledger_for(stack: Stack, phones: set[str]) -> pl.DataFrame:
    """The sandbox ledger's entries for these phones (each test uses its own range of numbers)."""
    entries = [e for e in stack.sandbox.client.ledger(provider="generic") if e["to"] in phones]
    return pl.DataFrame(entries, schema={"to": pl.String, "body": pl.String})


def emit(event: Event) -> None:
    """Send one event and return once the server has it (the same way smscast.inbox.announce does)."""

    async def send() -> None:
        async with get_events_client(checkpoint_every=1) as client:
            await client.emit(event)

    asyncio.run(send())


def phones_of(path: Path) -> set[str]:
    return set(pl.read_csv(path)["phone"].to_list())


def form_params(**values: Any) -> dict[str, Any]:
    """Parameters as the UI's form submits them: every group of CampaignForm, its defaults filled in and its
    empty number boxes left out; the deployment's provider and sender, the test's results location."""
    spec = CampaignSpec(sender="ACME", results=RESULTS, **values)
    return {"campaign": CampaignForm.from_spec(spec).model_dump(mode="json", exclude_none=True)}


# First, what bootstrap registered and the schedules (the first test's setup starts the stack).
test_deployments_register_with_schedules_schemas_and_triggers = (
    deployed_schedules.test_deployments_register_with_schedules_schemas_and_triggers
)
test_the_scheduler_creates_the_nightly_runs_at_two_london_time = (
    deployed_schedules.test_the_scheduler_creates_the_nightly_runs_at_two_london_time
)
test_bootstrap_again_keeps_each_schedule_as_it_was_set_and_names_the_paused = (
    deployed_schedules.test_bootstrap_again_keeps_each_schedule_as_it_was_set_and_names_the_paused
)


def test_completion_with_failures_triggers_the_retry_deployment(stack: Stack, tmp_path: Path) -> None:
    src = write_recipients(tmp_path / "flaky.csv", 100, start=40_000)
    storage.put_bytes(f"s3://{BUCKET}/adhoc/flaky.csv", src.read_bytes())
    stack.sandbox.client.set_faults(transient_suffixes=["7"])  # 10 of 100 numbers fail transiently
    try:
        with stack.client as client:
            dep = client.read_deployment_by_name("campaign/ad-hoc")
            created = client.create_flow_run_from_deployment(
                dep.id,
                parameters=form_params(
                    campaign_id="flaky-1",
                    source=f"s3://{BUCKET}/adhoc/flaky.csv",
                    body="Hi {{name}}",
                    dry_run=False,
                ),
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

    # The retry's own completion has no failures left: nothing more is triggered. (That the campaigns without
    # failures never trigger a retry is checked once they have all run: the last test on the stack.)
    holds_for(4, lambda: retried_campaigns(stack) == ["flaky-1"])


def retried_campaigns(stack: Stack) -> list[str]:
    return [r.parameters["campaign_id"] for r in stack.runs("retry-campaign/on-failure")]


# Sandbox faults apply to every campaign it serves: the test above sets some, so the held campaign (whose
# rows go out in the background while the next tests run) starts after it.
test_a_campaign_in_quiet_hours_holds_its_rows_and_schedules_their_release = (
    deployed_release.test_a_campaign_in_quiet_hours_holds_its_rows_and_schedules_their_release
)


def test_ad_hoc_run_with_form_parameters_completes(stack: Stack, tmp_path: Path) -> None:
    src = write_recipients(tmp_path / "adhoc.csv", 120, start=10_000)
    storage.put_bytes(f"s3://{BUCKET}/adhoc/adhoc.csv", src.read_bytes())
    campaign = {
        "campaign_id": "adhoc-1",
        "recipients": {"source": f"s3://{BUCKET}/adhoc/adhoc.csv"},
        "message": {"body": "Hi {{name}}, from ad hoc"},
        "provider": {"name": "sandbox", "sender": "ACME"},
        "advanced": {"results": RESULTS},
    }
    # As `prefect deployment run campaign/ad-hoc --params '{"campaign": {...}}'` without "dry_run": a dry
    # run, which sends and writes nothing.
    with stack.client as client:
        dep = client.read_deployment_by_name("campaign/ad-hoc")
        dry = client.create_flow_run_from_deployment(dep.id, parameters={"campaign": campaign})
    run = stack.wait_final(dry.id)
    assert run.state is not None and run.state.is_completed(), f"{run.state}\n{stack.diagnose()}"
    assert ledger_for(stack, phones_of(src)).height == 0
    assert not storage.exists(CampaignPaths(RESULTS, "adhoc-1").attempt(1).done)

    # Said otherwise, as the form submits it with "Dry run" off (every field, defaults filled in): sent.
    params = form_params(
        campaign_id="adhoc-1",
        source=f"s3://{BUCKET}/adhoc/adhoc.csv",
        body="Hi {{name}}, from ad hoc",
        dry_run=False,
    )
    with stack.client as client:
        created = client.create_flow_run_from_deployment(dep.id, parameters=params)
    run = stack.wait_final(created.id)
    assert run.state is not None and run.state.is_completed(), f"{run.state}\n{stack.diagnose()}"

    assert storage.exists(CampaignPaths(RESULTS, "adhoc-1").attempt(1).done)
    sent = ledger_for(stack, phones_of(src))
    assert sent.height == 120 and sent["to"].n_unique() == 120
    # The body's {{name}} survived the API and the deployment: filled per recipient, not stripped.
    assert set(sent["body"].str.replace(r"N\d+", "N#")) == {"Hi N#, from ad hoc"}


def test_the_nightly_deployment_sends_once_per_night(stack: Stack, tmp_path: Path) -> None:
    # The deployment's own parameters, as the schedule would run them: its source with a body column.
    src = write_recipients(tmp_path / "nightly.csv", 50, start=50_000, extra={"body": ["Tonight only"] * 50})
    data = io.BytesIO()
    pl.read_csv(src).write_parquet(data)
    storage.put_bytes(f"s3://{BUCKET}/nightly/recipients.parquet", data.getvalue())
    with stack.client as client:
        dep = client.read_deployment_by_name("nightly-campaign/nightly")
        first = client.create_flow_run_from_deployment(dep.id)
    done = stack.wait_final(first.id)
    assert done.state is not None and done.state.is_completed(), stack.diagnose()
    assert done.expected_start_time is not None
    night = done.expected_start_time.astimezone(ZoneInfo("Europe/London")).date()
    cid = f"nightly-{night:%Y%m%d}"
    assert storage.exists(CampaignPaths(RESULTS, cid).attempt(1).done)
    assert ledger_for(stack, phones_of(src)).height == 50

    # Running that night again (a back-fill from the UI, or a duplicate) resumes it: nothing is re-sent.
    with stack.client as client:
        again = client.create_flow_run_from_deployment(dep.id, parameters={"run_date": night.isoformat()})
    redone = stack.wait_final(again.id)
    assert redone.state is not None and redone.state.is_completed(), stack.diagnose()
    assert ledger_for(stack, phones_of(src)).height == 50


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
    emit(landed_event(obj).model_copy(update={"id": uuid.uuid4()}))  # as if a second watcher saw it
    # The trigger acts within about a second of an event: six seconds without a third run is telling.
    holds_for(6, lambda: len(stack.runs("campaign-from-file/s3-inbox")) == 2)
    assert ledger_for(stack, phones_of(files["a"])).height == 60  # and nobody got a second message


test_a_dry_run_from_the_custom_run_form = deployed_ui_form.test_a_dry_run_from_the_custom_run_form
test_a_campaign_id_smscast_refuses_fails_its_run_in_words = (
    deployed_ui_form.test_a_campaign_id_smscast_refuses_fails_its_run_in_words
)
# The quiet hours of the held campaign have ended meanwhile (or are waited out).
test_held_rows_are_released_by_the_scheduled_run_exactly_once = (
    deployed_release.test_held_rows_are_released_by_the_scheduled_run_exactly_once
)


def test_campaigns_without_failures_never_trigger_the_retry_deployment(stack: Stack) -> None:
    """Last on the stack: every campaign above but flaky-1 ended without failures (the ad-hoc, nightly, inbox,
    held and form ones, and the release of the held rows), and none of them started a retry; flaky-1's retry
    is the only one (or none, when this test runs alone)."""
    holds_for(4, lambda: retried_campaigns(stack) in ([], ["flaky-1"]))


# -- the pieces, without a Prefect server -------------------------------------------------------------------


def test_the_watch_cursor_announces_each_object_version_once(s3_bucket: str) -> None:
    inbox = f"s3://{s3_bucket}/in/"
    for name, body in {"a.csv": b"phone\n1", "b.parquet": b"x", "notes.txt": b"x", ".tmp.csv": b"x"}.items():
        storage.put_bytes(f"{inbox}{name}", body)
    sent: list[str] = []

    def send(objs: Sequence[Landed]) -> None:
        sent.extend(o.key for o in objs)

    # Each poll_once loads the cursor afresh, exactly as a restarted watcher does.
    assert sorted(o.key for o in poll_once(inbox, send=send)) == ["in/a.csv", "in/b.parquet"]
    assert poll_once(inbox, send=send) == []
    storage.put_bytes(f"{inbox}a.csv", b"phone\n2")  # new content under the same key: a new file
    assert [o.key for o in poll_once(inbox, send=send)] == ["in/a.csv"]
    assert sorted(sent) == ["in/a.csv", "in/a.csv", "in/b.parquet"]

    def fail(objs: Sequence[Landed]) -> None:
        raise ConnectionError("server down")

    storage.put_bytes(f"{inbox}c.csv", b"phone\n3")
    storage.delete(f"{inbox}b.parquet")
    with pytest.raises(ConnectionError):
        poll_once(inbox, send=fail)  # nothing recorded for an announcement that failed...
    assert [o.key for o in poll_once(inbox, send=send)] == ["in/c.csv"]  # ...so the next poll makes it
    state = json.loads(storage.get_bytes(default_state_uri(inbox)))
    assert set(state["announced"]) == {"in/a.csv", "in/c.csv"}  # b left the inbox and the cursor


def test_skip_existing_records_what_is_there_on_the_first_start(s3_bucket: str, tmp_path: Path) -> None:
    inbox = f"s3://{s3_bucket}/in/"
    storage.put_bytes(f"{inbox}old.csv", b"phone\n1")
    state = str(tmp_path / "cursor.json")  # a local cursor works as well as one in the bucket

    def send(objs: Sequence[Landed]) -> None:
        raise AssertionError("nothing should be announced")

    assert poll_once(inbox, state, skip_existing=True, send=send) == []
    assert poll_once(inbox, state, skip_existing=True, send=send) == []  # the flag only acts without state
    with pytest.raises(ConfigError, match="belongs to inbox"):
        poll_once(f"s3://{s3_bucket}/other/", state)


def test_landed_events_are_keyed_by_object_version() -> None:
    obj = Landed("b", "in/x.csv", "e1", 10, datetime(2025, 1, 1, tzinfo=UTC))
    event = landed_event(obj)
    assert event.event == "smscast.recipients.landed"
    assert event.resource.id == "smscast.recipients.s3://b/in/x.csv"
    assert event.payload["uri"] == "s3://b/in/x.csv" and event.payload["etag"] == "e1"
    assert landed_event(obj).id == event.id  # a re-announcement carries the same id
    assert landed_event(Landed("b", "in/x.csv", "e2", 10, obj.last_modified)).id != event.id


def test_campaign_ids_for_files_and_nights_are_stable_and_valid() -> None:
    uri = "s3://bucket/inbox/2025/Spring promo (final).csv"
    cid = file_campaign_id("inbox", uri, "etag-1")
    assert cid == file_campaign_id("inbox", uri, "etag-1")
    assert cid != file_campaign_id("inbox", uri, "etag-2")
    assert cid.startswith("inbox-Spring-promo-final-")
    long = file_campaign_id("p" * 40, "s3://b/" + "x" * 200 + ".csv", "e")
    for made in (
        cid,
        long,
        dated_campaign_id("nightly", date(2025, 3, 30)),
        dated_campaign_id("n" * 70, date.today()),
    ):
        CampaignSpec(campaign_id=made, source="s", results="r")  # the pattern accepts it
    assert dated_campaign_id("nightly", date(2025, 3, 30)) == "nightly-20250330"


def test_s3_settings_from_an_aws_credentials_block() -> None:
    data = {
        "aws_access_key_id": "AKIA1",
        "aws_secret_access_key": "s3cret",
        "region_name": "eu-west-2",
        "aws_client_parameters": {"endpoint_url": "http://127.0.0.1:8333", "use_ssl": False},
    }
    assert _aws_credentials_env(data) == {
        "AWS_ACCESS_KEY_ID": "AKIA1",
        "AWS_SECRET_ACCESS_KEY": "s3cret",
        "AWS_REGION": "eu-west-2",
        "AWS_DEFAULT_REGION": "eu-west-2",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:8333",
    }
