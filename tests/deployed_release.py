"""Held rows go out with nobody watching. Collected with tests/test_deployments.py, whose deployed stack it
shares (one Prefect server and worker start instead of two): on a real `prefect server start` with the
project's deployments and a process worker (tests/fixtures_prefect.py), a campaign whose quiet hours end
about a minute and a half from now leaves its rows held, schedules a run of the release deployment at their
release time by itself, and once that run completes every row is accepted exactly once in the sandbox's
ledger.

Two tests on one campaign (the `held_campaign` fixture starts it): the first checks what the campaign did and
scheduled, the second what the release did once due. test_deployments.py collects the first early and the
second last, so that its other tests run while the quiet hours last instead of the suite sleeping through
them; each test waits for what it needs itself, so either also passes alone or in any order.

The quiet hours are placed around the real clock, which is read just before the campaign starts: their end is
at least 90 s away (Prefect's `HH:MM` granularity allows no closer placement that a loaded machine surely
starts the campaign inside), and the end is what the release waits for. Every wait is on a condition, with
bounds generous for a loaded 2-core machine.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import polars as pl
import pytest
from fixtures_prefect import BUCKET, Stack, wait_for
from prefect.client.schemas.objects import FlowRun
from support import write_recipients

from smscast import storage
from smscast.campaign import CampaignSpec
from smscast.flows.release import RELEASE_DEPLOYMENT, release_key
from smscast.form import CampaignForm
from smscast.results import CampaignPaths
from smscast.tasks.current import current_results

pytestmark = pytest.mark.integration
RESULTS = f"s3://{BUCKET}/results"
CAMPAIGN = "quiet-1"
ROWS = 40
AWAKE = 5  # a few rows in a zone where it is day: sent at once, and never again


def quiet_window() -> tuple[str, datetime]:
    """Quiet hours ending at the first whole minute at least 90 s from now (UTC), two hours long, and their
    end: the rows of a zone two or more hours ahead of UTC are outside them."""
    soon = datetime.now(UTC) + timedelta(seconds=90)
    end = soon.replace(second=0, microsecond=0)
    if end < soon:
        end += timedelta(minutes=1)
    return f"{end - timedelta(hours=2):%H:%M}-{end:%H:%M}", end


@dataclass(frozen=True)
class HeldCampaign:
    run_id: UUID  # the campaign's own flow run (attempt 1)
    end: datetime  # when its quiet hours end: the held rows' release time
    phones: frozenset[str]


@pytest.fixture(scope="module")
def held_campaign(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HeldCampaign]:
    """The campaign, started (not awaited) on the ad-hoc deployment inside its quiet hours."""
    zones = ["UTC"] * (ROWS - AWAKE) + ["Etc/GMT-12"] * AWAKE
    src = write_recipients(
        tmp_path_factory.mktemp("quiet") / "quiet.csv", ROWS, start=60_000, extra={"timezone": zones}
    )
    storage.put_bytes(f"s3://{BUCKET}/adhoc/quiet.csv", src.read_bytes())
    window, end = quiet_window()
    spec = CampaignSpec(
        campaign_id=CAMPAIGN,
        source=f"s3://{BUCKET}/adhoc/quiet.csv",
        results=RESULTS,
        body="Hi {{name}}",
        sender="ACME",
        quiet_hours=window,
        dry_run=False,
    )
    params = {"campaign": CampaignForm.from_spec(spec).model_dump(mode="json", exclude_none=True)}
    with stack.client as client:
        dep = client.read_deployment_by_name("campaign/ad-hoc")
        created = client.create_flow_run_from_deployment(dep.id, parameters=params)
    yield HeldCampaign(created.id, end, frozenset(pl.read_csv(src)["phone"].to_list()))


def first_attempt(stack: Stack, held: HeldCampaign) -> FlowRun:
    run = stack.wait_final(held.run_id, timeout=240)
    assert run.state is not None and run.state.is_completed(), stack.diagnose()
    return run


def test_a_campaign_in_quiet_hours_holds_its_rows_and_schedules_their_release(
    stack: Stack, held_campaign: HeldCampaign
) -> None:
    first = first_attempt(stack, held_campaign)
    end = held_campaign.end
    assert first.end_time is not None and first.end_time < end, (
        "the campaign finished after its quiet hours: the machine is too slow"
    )
    attempt1 = current_results(RESULTS, CAMPAIGN)
    held = attempt1.filter(pl.col("status") == "held")
    assert held.height == ROWS - AWAKE and set(held["release_at"]) == {end}
    accepted = attempt1.filter(pl.col("status") == "accepted")
    assert accepted.height == AWAKE
    # Each awake row went once; the held ones not at all (yet).
    assert ledger_count(stack, held_campaign.phones) == {p: 1 for p in accepted["phone"]}

    # Nobody asks for it: the campaign scheduled the release at the end of the quiet hours.
    (release,) = wait_for("the scheduled release", lambda: stack.runs(RELEASE_DEPLOYMENT), 60, stack.diagnose)
    assert release.parameters == {"campaign_id": CAMPAIGN, "results": RESULTS}
    assert release.idempotency_key == release_key(CAMPAIGN, 1, end)
    assert release.expected_start_time == end
    # Waiting for its time: not run at once. (A worker takes a run up to 10 s before it is due, Prefect's
    # PREFECT_WORKER_PREFETCH_SECONDS: that close to the end it may be on its way already.)
    assert release.state is not None
    assert release.state.is_scheduled() or datetime.now(UTC) >= end - timedelta(seconds=15), release.state


@pytest.mark.timeout(900)  # the stack's start, the campaign, a minute or two of quiet hours, the release
def test_held_rows_are_released_by_the_scheduled_run_exactly_once(
    stack: Stack, held_campaign: HeldCampaign
) -> None:
    first_attempt(stack, held_campaign)
    end, phones = held_campaign.end, held_campaign.phones
    (release,) = wait_for("the scheduled release", lambda: stack.runs(RELEASE_DEPLOYMENT), 60, stack.diagnose)
    # It runs when it is due (the worker polls every second), and sends every held row once.
    wait = max(0.0, (end - datetime.now(UTC)).total_seconds()) + 240
    done = stack.wait_final(release.id, timeout=wait)
    assert done.state is not None and done.state.is_completed(), stack.diagnose()
    assert done.start_time is not None and done.start_time >= end - timedelta(seconds=1)
    current = current_results(RESULTS, CAMPAIGN)
    assert set(current["status"]) == {"accepted"} and current.height == ROWS
    assert current.filter(pl.col("attempt") == 2).height == ROWS - AWAKE
    assert ledger_count(stack, phones) == {p: 1 for p in phones}
    # The held rows went with the keys attempt 1 gave them.
    planned = storage.read_parquet(CampaignPaths(RESULTS, CAMPAIGN).attempt(1).dir)
    keys = dict(zip(planned["phone"].to_list(), planned["idempotency_key"].to_list(), strict=True))
    sent = [e for e in stack.sandbox.client.ledger(provider="generic") if e["to"] in phones]
    assert all(e["key"] == keys[e["to"]] for e in sent)
    # Nothing is held any more: no further release was scheduled.
    assert [r.id for r in stack.runs(RELEASE_DEPLOYMENT)] == [release.id]


def ledger_count(stack: Stack, phones: frozenset[str]) -> dict[Any, int]:
    """How many times the sandbox accepted each of these phones."""
    counts: dict[Any, int] = {}
    for entry in stack.sandbox.client.ledger(provider="generic"):
        if entry["to"] in phones:
            counts[entry["to"]] = counts.get(entry["to"], 0) + 1
    return counts
