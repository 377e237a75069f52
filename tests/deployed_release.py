"""Held rows go out with nobody watching. Collected with tests/test_deployments.py, whose deployed stack it
shares (one Prefect server and worker start instead of two): on a real `prefect server start` with the
project's deployments and a process worker (tests/fixtures_prefect.py), a campaign whose quiet hours end
about a minute and a half from now leaves its rows held, schedules a run of the release deployment at their
release time by itself, and once that run completes every row is accepted exactly once in the sandbox's
ledger.

The quiet hours are placed around the real clock, which is read just before the campaign starts: their end is
at least 90 s away, so a loaded machine still starts the campaign inside them. Every wait is on a condition,
with bounds generous for a loaded 2-core machine.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from fixtures_prefect import BUCKET, Stack, wait_for
from support import write_recipients

from smscast import storage
from smscast.campaign import CampaignSpec
from smscast.flows.release import RELEASE_DEPLOYMENT, release_key
from smscast.form import CampaignForm
from smscast.results import CampaignPaths
from smscast.tasks.current import current_results

pytestmark = pytest.mark.integration
RESULTS = f"s3://{BUCKET}/results"


def quiet_window() -> tuple[str, datetime]:
    """Quiet hours ending at the first whole minute at least 90 s from now (UTC), two hours long, and their
    end: the rows of a zone two or more hours ahead of UTC are outside them."""
    soon = datetime.now(UTC) + timedelta(seconds=90)
    end = soon.replace(second=0, microsecond=0)
    if end < soon:
        end += timedelta(minutes=1)
    return f"{end - timedelta(hours=2):%H:%M}-{end:%H:%M}", end


@pytest.mark.timeout(900)  # the stack's start, the campaign, a minute or two of quiet hours, the release
def test_held_rows_are_released_by_the_scheduled_run_exactly_once(stack: Stack, tmp_path: Path) -> None:
    n = 40
    awake = 5  # a few rows in a zone where it is day: sent at once, and never again
    zones = ["UTC"] * (n - awake) + ["Etc/GMT-12"] * awake
    src = write_recipients(tmp_path / "quiet.csv", n, start=60_000, extra={"timezone": zones})
    storage.put_bytes(f"s3://{BUCKET}/adhoc/quiet.csv", src.read_bytes())
    phones = set(pl.read_csv(src)["phone"].to_list())
    window, end = quiet_window()
    spec = CampaignSpec(
        campaign_id="quiet-1",
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
    first = stack.wait_final(created.id, timeout=240)
    assert first.state is not None and first.state.is_completed(), stack.diagnose()
    assert datetime.now(UTC) < end, "the campaign finished after its quiet hours: the machine is too slow"

    attempt1 = current_results(RESULTS, "quiet-1")
    held = attempt1.filter(pl.col("status") == "held")
    assert held.height == n - awake and set(held["release_at"]) == {end}
    assert attempt1.filter(pl.col("status") == "accepted").height == awake
    assert ledger_count(stack, phones) == {
        p: 1 for p in attempt1.filter(pl.col("status") == "accepted")["phone"]
    }

    # Nobody asks for it: the campaign scheduled the release at the end of the quiet hours.
    (release,) = wait_for("the scheduled release", lambda: stack.runs(RELEASE_DEPLOYMENT), 60, stack.diagnose)
    assert release.parameters == {"campaign_id": "quiet-1", "results": RESULTS}
    assert release.idempotency_key == release_key("quiet-1", 1, end)
    assert release.expected_start_time == end
    assert release.state is not None and release.state.is_scheduled()

    # It runs when it is due (the worker polls every second), and sends every held row once.
    wait = (end - datetime.now(UTC)).total_seconds() + 240
    done = stack.wait_final(release.id, timeout=wait)
    assert done.state is not None and done.state.is_completed(), stack.diagnose()
    assert done.start_time is not None and done.start_time >= end - timedelta(seconds=1)
    current = current_results(RESULTS, "quiet-1")
    assert set(current["status"]) == {"accepted"} and current.height == n
    assert current.filter(pl.col("attempt") == 2).height == n - awake
    assert ledger_count(stack, phones) == {p: 1 for p in phones}
    # The held rows went with the keys attempt 1 gave them.
    planned = storage.read_parquet(CampaignPaths(RESULTS, "quiet-1").attempt(1).dir)
    keys = dict(zip(planned["phone"].to_list(), planned["idempotency_key"].to_list(), strict=True))
    sent = [e for e in stack.sandbox.client.ledger(provider="generic") if e["to"] in phones]
    assert all(e["key"] == keys[e["to"]] for e in sent)
    # Nothing is held any more: no further release was scheduled.
    assert [r.id for r in stack.runs(RELEASE_DEPLOYMENT)] == [release.id]


def ledger_count(stack: Stack, phones: set[str]) -> dict[Any, int]:
    """How many times the sandbox accepted each of these phones."""
    counts: dict[Any, int] = {}
    for entry in stack.sandbox.client.ledger(provider="generic"):
        if entry["to"] in phones:
            counts[entry["to"]] = counts.get(entry["to"], 0) + 1
    return counts
