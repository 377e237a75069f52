"""Held rows and their release (flows/release.py): rows the contact policy held for their quiet hours reach the
provider exactly once, after their window opens, with the keys attempt 1 gave them; rows not yet due stay held;
the policy applies again at the release (an opt-out since suppresses, quiet hours again hold); overlapping
releases send each row once; `smscast release`; and the scheduling of the release deployment (a Prefect
server without a worker: the runs are only created). The release's clock is injected (`now_utc`); attempt 1
holds rows by quiet hours placed around the real time, hours wide, so no step depends on the machine's speed.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import typer
from support import assert_matches_ledger, flow_sandbox, ledger_frame, write_recipients
from typer.testing import CliRunner

from smscast import storage
from smscast.campaign import CampaignSpec
from smscast.flows import release
from smscast.flows.release import RELEASE_DEPLOYMENT, release_key, release_steps
from smscast.flows.retry import _retry_rows
from smscast.optout import add_phones
from smscast.providers.sandbox import SandboxProvider
from smscast.resend_cli import register
from smscast.results import CampaignPaths
from smscast.servers.sandbox import SandboxServer
from smscast.settings import ProviderSettings
from smscast.tasks.current import current_results
from smscast.tasks.persist import result_rows, save_plan
from smscast.tasks.plan import plan_campaign
from smscast.tasks.validate import validate_recipients

KEY = "release-test-key"
SANDBOX = SandboxProvider(ProviderSettings(base_url="http://x", api_key=None))
HOUR = timedelta(hours=1)
# Zones a whole number of hours from UTC: `Etc/GMT+1` is UTC-1 (POSIX signs), `Etc/GMT-6` UTC+6.
DUE_FIRST, DUE_LATER, AWAKE = "UTC", "Etc/GMT+1", "Etc/GMT-6"


def minute(t: datetime) -> datetime:
    return t.replace(second=0, microsecond=0)


class Window:
    """Quiet hours from two hours before the real time to two hours after it, in each row's local time: rows
    in UTC are held until `end`, rows at UTC-1 an hour longer, rows at UTC+6 are outside them (not held)."""

    def __init__(self) -> None:
        start = minute(datetime.now(UTC))
        self.end = start + 2 * HOUR
        self.text = f"{start - 2 * HOUR:%H:%M}-{self.end:%H:%M}"


def recipients(path: Path, zones: list[str], start: int) -> Path:
    return write_recipients(path, len(zones), start=start, extra={"timezone": zones})


def spec_for(src: Path, results: str, cid: str, window: Window, base_url: str) -> CampaignSpec:
    return CampaignSpec(
        campaign_id=cid,
        source=str(src),
        results=results,
        base_url=base_url,
        body="Hi {{name}}",
        sender="ACME",
        quiet_hours=window.text,
    )


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[datetime]]:
    """The release's clock: set `clock[0]`."""
    now = [datetime.now(UTC)]
    monkeypatch.setattr(release, "now_utc", lambda: now[0])
    yield now


# -- the pieces, on results written by the project's own steps (no Prefect) -----------------------------------


def held_first_attempt(results: Path, n: int, release_at: datetime) -> pl.DataFrame:
    """Attempt 1 of `n` rows, every second one held (as the policy marks them) until `release_at`: the plan
    files, the sent rows' part (accepted) and the unsent part, as a campaign writes them."""
    spec = CampaignSpec(campaign_id="camp", source="s", results=str(results), body="Hi there", sender="ACME")
    df = pl.DataFrame({"row_index": list(range(n)), "phone_raw": [f"+4474009{i:05d}" for i in range(n)]})
    checked = validate_recipients(df, spec, SANDBOX.caps, SANDBOX)
    held = pl.col("row_index") % 2 == 1
    checked = checked.with_columns(
        status=pl.when(held).then(pl.lit("held")).otherwise(pl.col("status")),
        error_code=pl.when(held).then(pl.lit("quiet_hours")).otherwise(pl.col("error_code")),
        release_at=pl.when(held).then(pl.lit(release_at)).otherwise(None).cast(pl.Datetime("us", "UTC")),
    )
    plan = plan_campaign(checked, spec, SANDBOX.caps, SANDBOX)
    attempt = CampaignPaths(str(results), "camp").attempt(1)
    save_plan.fn(attempt, plan)
    sent = plan.rows.filter(pl.col("status").is_null())
    outcomes = sent.select(
        "row_index",
        "batch_id",
        status=pl.lit("accepted"),
        error_code=pl.lit(None, pl.String),
        error_message=pl.lit(None, pl.String),
        provider_message_id=pl.lit(None, pl.String),
        provider_batch_ref=pl.lit(None, pl.String),
        submitted_at=pl.lit(None, pl.Datetime("us", "UTC")),
    )
    storage.write_parquet(result_rows(spec, sent, outcomes), attempt.part(0))
    storage.write_parquet(result_rows(spec, plan.rows.filter(held), None), attempt.unsent_part)
    storage.put_bytes(attempt.done, b"{}")
    return plan.rows


def test_held_rows_are_replanned_from_attempt_1s_unsent_plan_with_their_keys(tmp_path: Path) -> None:
    when = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
    planned = held_first_attempt(tmp_path, 6, when)
    current = current_results(str(tmp_path), "camp")
    held = release.held_rows(current)
    assert held["row_index"].to_list() == [1, 3, 5] and set(held["release_at"]) == {when}
    assert release.due_rows(held, when - timedelta(seconds=1)).is_empty()
    due = release.due_rows(held, when)
    assert due.height == 3
    spec = CampaignSpec(campaign_id="camp", source="s", results=str(tmp_path), body="Hi there", attempt=2)
    rows = _retry_rows(CampaignPaths(str(tmp_path), "camp"), due, spec, now=when)
    replanned = plan_campaign(rows, spec, SANDBOX.caps, SANDBOX, extra_groups=[pl.col("_retry_group")]).rows
    assert replanned["row_index"].to_list() == [1, 3, 5]
    assert replanned["status"].null_count() == 3  # to be sent: no stale status or release time
    assert replanned["release_at"].null_count() == 3
    first = planned.filter(pl.col("row_index").is_in([1, 3, 5])).sort("row_index")
    assert replanned["idempotency_key"].to_list() == first["idempotency_key"].to_list()
    assert replanned["body"].to_list() == first["body"].to_list()
    assert replanned["batch_id"].str.contains("-a2-").all()


def test_without_a_release_deployment_the_lines_give_the_command(tmp_path: Path) -> None:
    when = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
    held_first_attempt(tmp_path, 6, when)
    spec = CampaignSpec(campaign_id="camp", source="s", results=str(tmp_path), body="Hi there")
    attempt = storage.read_parquet(CampaignPaths(str(tmp_path), "camp").attempt(1).dir)
    (line,) = release_steps(spec, attempt, logging.getLogger("test"))
    assert line.startswith(
        "3 rows are held (quiet hours) until 2026-12-01 08:00:00 UTC: no release is scheduled"
    )
    assert (
        f"`smscast release --campaign-id camp --results {tmp_path}` sends them after 2026-12-01 08:00" in line
    )
    assert release_steps(spec, attempt.filter(pl.col("status") != "held"), logging.getLogger("t")) == []
    assert release_key("camp", 1, when) == "smscast-release:camp:a1:20261201T080000Z"


# -- end to end: the sandbox's ledger -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxServer]:
    with flow_sandbox(KEY) as server:
        yield server


def keys_of(results: str, cid: str, attempt: int) -> dict[str, str]:
    rows = storage.read_parquet(CampaignPaths(results, cid).attempt(attempt).dir)
    return dict(zip(rows["phone"].to_list(), rows["idempotency_key"].to_list(), strict=True))


@pytest.mark.integration
def test_held_rows_reach_the_provider_once_after_their_window_with_the_same_keys(
    sandbox: SandboxServer, tmp_path: Path, clock: list[datetime]
) -> None:
    from smscast.flows.campaign import send_campaign

    sandbox.client.reset()
    window = Window()
    zones = [DUE_FIRST] * 8 + [DUE_LATER] * 8 + [AWAKE] * 8
    src = recipients(tmp_path / "r.csv", zones, 0)
    res = str(tmp_path / "res")
    first = send_campaign(spec_for(src, res, "c-rel", window, sandbox.base_url))
    assert first["by_status"]["accepted"] == 8 and first["by_status"]["held"] == 16
    attempt1 = current_results(res, "c-rel")
    held = attempt1.filter(pl.col("status") == "held")
    assert set(held["error_code"]) == {"quiet_hours"}
    by_zone = dict(zip(held["phone"].to_list(), held["release_at"].to_list(), strict=True))
    phones = pl.read_csv(src)["phone"].to_list()
    assert {by_zone[p] for p in phones[:8]} == {window.end}
    assert {by_zone[p] for p in phones[8:16]} == {window.end + HOUR}
    assert set(ledger_frame(sandbox.client, "generic")["to"]) == set(phones[16:])  # held: not sent
    keys = keys_of(res, "c-rel", 1)

    # Before anything is due: no attempt.
    clock[0] = window.end - timedelta(minutes=1)
    early = release.release_held(campaign_id="c-rel", results=res)
    assert early["released"] == 0 and early["attempt"] == 1

    # The UTC rows are due; the UTC-1 rows are not, and stay held by attempt 1.
    clock[0] = window.end + HOUR / 2
    second = release.release_held(campaign_id="c-rel", results=res)
    assert second["attempt"] == 2 and second["rows"] == 8 and second["by_status"]["accepted"] == 8
    current = current_results(res, "c-rel")
    assert current.filter(pl.col("attempt") == 2)["phone"].sort().to_list() == sorted(phones[:8])
    assert current.filter(pl.col("status") == "held")["phone"].sort().to_list() == sorted(phones[8:16])

    # One of the later rows opts out before its release: the release applies the policy again.
    add_phones(res, [phones[9]])
    clock[0] = window.end + 2 * HOUR
    third = release.release_held(campaign_id="c-rel", results=res)
    assert third["attempt"] == 3 and third["by_status"]["accepted"] == 7
    assert third["by_status"]["suppressed"] == 1
    again = release.release_held(campaign_id="c-rel", results=res)  # nothing is left held
    assert again["released"] == 0 and again["attempt"] == 3

    current = assert_matches_ledger(res, "c-rel", sandbox.client, "generic", 24)
    assert current.filter(pl.col("status") == "suppressed")["phone"].to_list() == [phones[9]]
    ledger = ledger_frame(sandbox.client, "generic")
    assert ledger.height == 23  # each accepted phone once, the opted-out one never
    # The released rows carried the keys attempt 1 gave them, and their content.
    sent_keys = dict(zip(ledger["to"].to_list(), ledger["key"].to_list(), strict=True))
    assert all(sent_keys[p] == keys[p] for p in phones if p != phones[9])
    bodies = dict(zip(ledger["to"].to_list(), ledger["body"].to_list(), strict=True))
    assert bodies[phones[0]] == "Hi N0" and bodies[phones[15]] == "Hi N15"


@pytest.mark.integration
def test_rows_still_quiet_at_their_release_are_held_again_until_the_next_window(
    sandbox: SandboxServer, tmp_path: Path, clock: list[datetime]
) -> None:
    from smscast.flows.campaign import send_campaign

    sandbox.client.reset()
    window = Window()
    src = recipients(tmp_path / "r.csv", [DUE_FIRST] * 5, 100)
    res = str(tmp_path / "res")
    send_campaign(spec_for(src, res, "c-again", window, sandbox.base_url))
    # A day later the rows are due (their release_at has passed) but inside the next night's quiet hours.
    clock[0] = window.end + 23 * HOUR
    rehold = release.release_held(campaign_id="c-again", results=res)
    assert rehold["attempt"] == 2 and rehold["by_status"]["held"] == 5
    second = storage.read_parquet(CampaignPaths(res, "c-again").attempt(2).dir)
    assert set(second["release_at"]) == {window.end + 24 * HOUR}  # recorded in the new attempt
    assert ledger_frame(sandbox.client, "generic").height == 0
    clock[0] = window.end + 24 * HOUR
    sent = release.release_held(campaign_id="c-again", results=res)
    assert sent["attempt"] == 3 and sent["by_status"]["accepted"] == 5
    assert_matches_ledger(res, "c-again", sandbox.client, "generic", 5)
    ledger = ledger_frame(sandbox.client, "generic")
    assert set(ledger["body"].str.replace(r"\d+$", "#")) == {"Hi N#"}  # still attempt 1's content
    keys = keys_of(res, "c-again", 1)
    assert all(keys[p] == k for p, k in zip(ledger["to"].to_list(), ledger["key"].to_list(), strict=True))


@pytest.mark.integration
def test_two_releases_at_once_send_each_row_once(
    sandbox: SandboxServer, tmp_path: Path, clock: list[datetime]
) -> None:
    from smscast.flows.campaign import send_campaign

    sandbox.client.reset()
    window = Window()
    src = recipients(tmp_path / "r.csv", [DUE_FIRST] * 30, 200)
    res = str(tmp_path / "res")
    send_campaign(spec_for(src, res, "c-twice", window, sandbox.base_url))
    clock[0] = window.end + HOUR
    outcomes: list[dict[str, Any]] = []
    errors: list[BaseException] = []
    start = threading.Barrier(2, timeout=60)

    def run() -> None:
        try:
            start.wait()
            outcomes.append(release.release_held(campaign_id="c-twice", results=res))
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=240)
    assert not errors and not any(t.is_alive() for t in threads)
    # One of them released the rows as attempt 2; the other waited for the lock and found nothing due.
    assert sorted(o.get("released", -1) for o in outcomes) == [-1, 0]
    assert CampaignPaths(res, "c-twice").planned_attempts() == [1, 2]
    current = assert_matches_ledger(res, "c-twice", sandbox.client, "generic", 30)
    assert set(current["status"]) == {"accepted"}
    assert ledger_frame(sandbox.client, "generic").height == 30


def cli() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def main() -> None:  # a group, so that `release` is a subcommand as on the real command line
        pass

    register(app)
    return app


@pytest.mark.integration
def test_smscast_release_sends_what_is_due(
    sandbox: SandboxServer, tmp_path: Path, clock: list[datetime]
) -> None:
    from smscast.flows.campaign import send_campaign

    sandbox.client.reset()
    window = Window()
    src = recipients(tmp_path / "r.csv", [DUE_FIRST] * 4 + [DUE_LATER] * 4, 300)
    res = str(tmp_path / "res")
    send_campaign(spec_for(src, res, "c-cli", window, sandbox.base_url))
    clock[0] = window.end + HOUR / 2
    runner = CliRunner()
    args = ["release", "--campaign-id", "c-cli", "--results", res, "--base-url", sandbox.base_url]
    out = runner.invoke(cli(), args)
    assert out.exit_code == 0, out.output
    current = current_results(res, "c-cli")
    assert current.filter(pl.col("status") == "accepted").height == 4
    assert current.filter(pl.col("status") == "held").height == 4
    assert ledger_frame(sandbox.client, "generic").height == 4

    unknown = runner.invoke(cli(), ["release", "-c", "never-sent", "-r", res])
    assert unknown.exit_code == 2 and "smscast release started nothing" in unknown.output
    capped = runner.invoke(cli(), [*args, "--max-cost", "5"])  # a spend cap needs the campaign's prices
    assert capped.exit_code == 1 and "--max-cost needs --prices" in capped.output
    assert ledger_frame(sandbox.client, "generic").height == 4


# -- scheduling, on a Prefect server that has the release deployment ------------------------------------------


@pytest.fixture
def release_deployment(sandbox: SandboxServer) -> Iterator[Any]:
    """The release deployment on the test server, without a worker: scheduled runs are created, never run.
    Deleted afterwards: other tests' campaigns share this server."""
    from prefect.client.orchestration import get_client

    flow_name, name = RELEASE_DEPLOYMENT.split("/")
    with get_client(sync_client=True) as client:
        deployment_id = client.create_deployment(client.create_flow_from_name(flow_name), name)
    try:
        yield deployment_id
    finally:
        with get_client(sync_client=True) as client:
            client.delete_deployment(deployment_id)


def scheduled_runs(deployment_id: Any) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
        )
    return sorted(runs, key=lambda r: r.expected_start_time)


@pytest.mark.integration
def test_a_release_is_scheduled_once_per_attempt_and_release_time(
    sandbox: SandboxServer, tmp_path: Path, clock: list[datetime], release_deployment: Any
) -> None:
    from smscast.flows.campaign import send_campaign

    sandbox.client.reset()
    window = Window()
    src = recipients(tmp_path / "r.csv", [DUE_FIRST] * 3 + [DUE_LATER] * 3, 400)
    res = str(tmp_path / "res")
    spec = spec_for(src, res, "c-sched", window, sandbox.base_url)
    send_campaign(spec)
    attempt1 = storage.read_parquet(CampaignPaths(res, "c-sched").attempt(1).dir)
    # What run_attempt asks at the end of attempt 1 (and again whenever that attempt is reported).
    (line,) = release_steps(spec, attempt1, logging.getLogger("test"))
    assert f"a release is scheduled (deployment {RELEASE_DEPLOYMENT}" in line
    assert "6 rows are held (quiet hours) until" in line
    release_steps(spec, attempt1, logging.getLogger("test"))
    (run,) = scheduled_runs(release_deployment)
    assert run.state.is_scheduled() and run.expected_start_time == window.end
    assert run.parameters == {"campaign_id": "c-sched", "results": res}
    assert run.idempotency_key == release_key("c-sched", 1, window.end)

    # The release sends the UTC rows; the others, held by attempt 1 an hour longer, get their own run.
    clock[0] = window.end
    released = release.release_held(campaign_id="c-sched", results=res)
    assert released["attempt"] == 2 and released["by_status"]["accepted"] == 3
    first, later = scheduled_runs(release_deployment)
    assert first.id == run.id and later.expected_start_time == window.end + HOUR
    assert later.idempotency_key == release_key("c-sched", 1, window.end + HOUR)
    # A release with nothing due (started early) schedules nothing new.
    clock[0] = window.end + HOUR / 2
    assert release.release_held(campaign_id="c-sched", results=res)["released"] == 0
    assert [r.id for r in scheduled_runs(release_deployment)] == [first.id, later.id]
