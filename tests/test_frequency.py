"""Frequency caps (tasks/frequency.py): what every campaign under a results location counts as a message to a
number within a window. The layouts are written by the steps a campaign uses (validate, plan, the plan files,
result parts, `_SUCCESS`, settlements); only the provider's answers are made up, with their times injected."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from smscast import storage
from smscast.campaign import CampaignSpec
from smscast.delivery import SETTLED_SCHEMA, append
from smscast.flows.retry import _retry_rows
from smscast.providers.sandbox import SandboxProvider
from smscast.results import CampaignPaths
from smscast.settings import ProviderSettings
from smscast.tasks.current import current_results
from smscast.tasks.frequency import counts_for, recent_messages, scan_location
from smscast.tasks.persist import persist_results, result_rows, save_plan
from smscast.tasks.plan import PlannedCampaign, plan_campaign
from smscast.tasks.validate import validate_recipients

SANDBOX = SandboxProvider(ProviderSettings(base_url="http://x", api_key=None))
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)
POLICY = ("suppressed", "held")  # statuses tasks/policy.py gives before planning


def phone(i: int) -> str:
    return f"+4474009{i:05d}"


@dataclass
class Run:
    spec: CampaignSpec
    planned: PlannedCampaign

    @property
    def paths(self) -> CampaignPaths:
        return CampaignPaths(self.spec.results, self.spec.campaign_id)

    def shard_of(self, number: str) -> int:
        return int(self.planned.rows.filter(pl.col("phone") == number)["shard"][0])


def make_spec(results: Path, cid: str, attempt: int = 1) -> CampaignSpec:
    # Two rows a request, a request a shard: small campaigns still have several shards.
    return CampaignSpec(
        campaign_id=cid,
        source="s",
        results=str(results),
        body="hi",
        sender="ACME",
        batch_size=2,
        shard_batches=1,
        attempt=attempt,
    )


def plan(results: Path, cid: str, numbers: list[str], policy: dict[str, str] | None = None) -> Run:
    """Attempt 1 of `cid` validated and planned, its plan files and manifest written. `policy`: number ->
    the status the contact policy gave it."""
    spec = make_spec(results, cid)
    df = pl.DataFrame({"row_index": list(range(len(numbers))), "phone_raw": numbers})
    checked = validate_recipients(df, spec, SANDBOX.caps, SANDBOX)
    held = pl.col("phone").replace_strict(policy or {}, default=None, return_dtype=pl.String)
    checked = checked.with_columns(status=pl.coalesce("status", held))
    planned = plan_campaign(checked, spec, SANDBOX.caps, SANDBOX)
    save_plan.fn(CampaignPaths.of(spec).attempt(1), planned)
    return Run(spec, planned)


def answer(run: Run, outcome: dict[str, tuple[str, datetime | None]], skip: set[int] | None = None) -> None:
    """Write the results part of every shard but `skip`, each sent row's status and time from `outcome`
    (by number; a row it does not name was accepted at NOW)."""
    rows = run.planned.rows.filter(pl.col("shard").is_not_null())
    status = {n: s for n, (s, _) in outcome.items()}
    at = {n: t for n, (_, t) in outcome.items()}
    for (shard,), part in rows.partition_by("shard", as_dict=True).items():
        if int(shard) in (skip or set()):
            continue
        outcomes = part.select(
            "row_index",
            "batch_id",
            status=pl.col("phone").replace_strict(status, default="accepted", return_dtype=pl.String),
            error_code=pl.lit(None, pl.String),
            error_message=pl.lit(None, pl.String),
            provider_message_id=pl.lit(None, pl.String),
            provider_batch_ref=pl.lit(None, pl.String),
            submitted_at=pl.col("phone").replace_strict(
                at, default=NOW, return_dtype=pl.Datetime("us", "UTC")
            ),
        )
        storage.write_parquet(
            result_rows(run.spec, part, outcomes), run.paths.attempt(run.spec.attempt).part(int(shard))
        )


def complete(run: Run) -> None:
    persist_results.fn(run.spec, run.planned.shards)


def campaign(
    results: Path, cid: str, outcome: dict[str, tuple[str, datetime | None]], extra: list[str] | None = None
) -> Run:
    """A complete one-attempt campaign: each number of `outcome` with its status and time (`invalid` ones
    must be numbers validation refuses; `suppressed`/`held` are given by the policy), and `extra` accepted
    at NOW."""
    numbers = [*outcome, *(extra or [])]
    policy = {n: s for n, (s, _) in outcome.items() if s in POLICY}
    run = plan(results, cid, numbers, policy)
    answer(run, outcome)
    complete(run)
    return run


def retry(run: Run, todo_status: str, outcome: dict[str, tuple[str, datetime | None]]) -> Run:
    """Attempt n+1 as the retry flow plans it (flows/retry.py `_retry_rows`) for the current rows of
    `todo_status`: `accepted` ones go as new messages (`--include-undelivered`), `unknown` ones with their
    keys. Sent and completed with `outcome`."""
    results, cid = run.spec.results, run.spec.campaign_id
    current = current_results(results, cid)
    spec = make_spec(Path(results), cid, attempt=int(current["attempt"].max()) + 1)  # type: ignore[arg-type]
    todo = current.filter(pl.col("status") == todo_status)
    rows = _retry_rows(run.paths, todo, spec)
    planned = plan_campaign(rows, spec, SANDBOX.caps, SANDBOX, extra_groups=[pl.col("_retry_group")])
    save_plan.fn(run.paths.attempt(spec.attempt), planned)
    again = Run(spec, planned)
    answer(again, outcome)
    complete(again)
    return again


def recent(results: Path, since: datetime = NOW - DAY, exclude: str | None = None) -> dict[str, int]:
    frame = recent_messages(str(results), since=since, now=NOW, exclude_campaign=exclude)
    assert frame.columns == ["phone", "sent"]
    assert frame["phone"].n_unique() == frame.height
    return dict(frame.iter_rows())


# -- what counts ----------------------------------------------------------------------------------------------


def test_a_location_with_no_campaigns(tmp_path: Path) -> None:
    assert recent(tmp_path / "nothing-here") == {}
    (tmp_path / "res" / "_policy").mkdir(parents=True)
    storage.write_parquet(pl.DataFrame({"phone": [phone(1)]}), str(tmp_path / "res/_policy/optout.parquet"))
    frame = recent_messages(str(tmp_path / "res"), since=NOW - DAY, now=NOW, exclude_campaign=None)
    assert frame.is_empty() and frame.schema == {"phone": pl.String(), "sent": pl.UInt32()}


def test_accepted_and_unknown_count_and_nothing_else_does(tmp_path: Path) -> None:
    campaign(
        tmp_path,
        "a",
        {
            phone(1): ("accepted", NOW - timedelta(hours=1)),
            phone(2): ("unknown", NOW - timedelta(hours=1)),  # may have been accepted
            phone(3): ("rejected", NOW),
            phone(4): ("failed", NOW),
            "not a number": ("invalid", None),
            phone(6): ("suppressed", None),
            phone(7): ("held", None),
        },
    )
    statuses = current_results(str(tmp_path), "a")["status"].to_list()
    assert sorted(statuses) == sorted(["accepted", "unknown", "rejected", "failed", "invalid", *POLICY])
    assert recent(tmp_path) == {phone(1): 1, phone(2): 1}


def test_the_window_starts_at_since_inclusive(tmp_path: Path) -> None:
    since = NOW - DAY
    campaign(
        tmp_path,
        "a",
        {
            phone(1): ("accepted", since),
            phone(2): ("accepted", since - timedelta(microseconds=1)),
            phone(3): ("unknown", since - timedelta(days=30)),
            phone(4): ("accepted", NOW + timedelta(minutes=5)),  # another machine's clock runs ahead
            phone(5): ("unknown", None),  # no outcome recorded: when it went is not known
        },
    )
    assert recent(tmp_path, since) == {phone(1): 1, phone(4): 1, phone(5): 1}
    assert recent(tmp_path, since - timedelta(microseconds=1)) == {
        phone(1): 1,
        phone(2): 1,
        phone(4): 1,
        phone(5): 1,
    }
    assert recent(tmp_path, NOW) == {phone(4): 1, phone(5): 1}
    with pytest.raises(ValueError, match="after now"):
        recent_messages(str(tmp_path), since=NOW + DAY, now=NOW, exclude_campaign=None)


def test_campaigns_add_up_and_the_asking_campaign_is_left_out(tmp_path: Path) -> None:
    campaign(tmp_path, "a", {phone(1): ("accepted", NOW)}, extra=[phone(2)])
    campaign(tmp_path, "b", {phone(1): ("unknown", NOW)}, extra=[phone(3)])
    campaign(tmp_path, "c", {phone(1): ("accepted", NOW)})
    assert recent(tmp_path) == {phone(1): 3, phone(2): 1, phone(3): 1}
    assert recent(tmp_path, exclude="b") == {phone(1): 2, phone(2): 1}
    assert recent(tmp_path, exclude="not-there") == recent(tmp_path)


def test_settlements_apply_to_the_attempt_they_name(tmp_path: Path) -> None:
    run = campaign(tmp_path, "a", {phone(1): ("unknown", NOW), phone(2): ("unknown", NOW)})
    rows = current_results(str(tmp_path), "a").sort("row_index")
    # Reconcile proved row 0 never reached the provider, then row 1 found and its settlement re-stated.
    settled = pl.DataFrame(
        {
            "campaign_id": ["a"] * 3,
            "attempt": [1, 1, 1],
            "row_index": [*rows["row_index"].to_list(), rows["row_index"][1]],
            "status": ["failed", "failed", "accepted"],
            "settled_at": [NOW, NOW, NOW + timedelta(seconds=1)],
        }
    )
    append(run.paths.settled, settled, SETTLED_SCHEMA)
    assert recent(tmp_path) == {phone(2): 1}


# -- attempts -------------------------------------------------------------------------------------------------


def test_a_message_re_sent_as_new_counts_twice_and_a_retried_unknown_once(tmp_path: Path) -> None:
    run = campaign(
        tmp_path, "a", {phone(1): ("accepted", NOW - DAY / 2), phone(2): ("unknown", NOW - DAY / 2)}
    )
    # Attempt 2: the accepted (but undelivered) row goes again as a new message, with a new key.
    second = retry(run, "accepted", {phone(1): ("accepted", NOW)})
    keys = storage.read_parquet(second.paths.dataset)
    assert keys.filter(pl.col("phone") == phone(1))["idempotency_key"].n_unique() == 2
    # Attempt 3: the unknown row goes again with its key, and the provider answers with the message it has.
    third = retry(second, "unknown", {phone(2): ("accepted", NOW)})
    assert (
        storage.read_parquet(third.paths.dataset)
        .filter(pl.col("phone") == phone(2))["idempotency_key"]
        .n_unique()
        == 1
    )
    assert recent(tmp_path) == {phone(1): 2, phone(2): 1}
    # Only the re-send falls in a window that starts after the first message.
    assert recent(tmp_path, NOW - DAY / 4) == {phone(1): 1, phone(2): 1}


def test_an_attempt_under_way_counts_its_unsent_planned_rows_now(tmp_path: Path) -> None:
    numbers = [phone(i) for i in range(1, 7)]
    run = plan(tmp_path, "running", numbers, {phone(6): "suppressed"})
    assert len(run.planned.shards) == 3
    unsent = run.shard_of(phone(3))
    assert run.shard_of(phone(4)) == unsent and unsent not in {run.shard_of(phone(n)) for n in (1, 2, 5)}
    answer(run, {phone(1): ("rejected", NOW), phone(2): ("accepted", NOW - DAY * 2)}, skip={unsent})
    # No `_SUCCESS`: the shard without a part is being sent; its rows count at `now`, whatever the window.
    assert recent(tmp_path, NOW - timedelta(seconds=1)) == {phone(3): 1, phone(4): 1, phone(5): 1}
    assert recent(tmp_path, NOW - DAY * 3) == {phone(2): 1, phone(3): 1, phone(4): 1, phone(5): 1}
    # Finished: the rows count as their parts say.
    answer(
        run, {phone(1): ("rejected", NOW), phone(2): ("accepted", NOW - DAY * 2), phone(3): ("failed", NOW)}
    )
    complete(run)
    assert recent(tmp_path, NOW - DAY * 3) == {phone(2): 1, phone(4): 1, phone(5): 1}


def test_a_campaign_planned_but_with_no_results_yet_counts(tmp_path: Path) -> None:
    run = plan(tmp_path, "starting", [phone(1), phone(2), "not a number"])
    assert scan_location(str(tmp_path))["starting"].parts == {}
    assert recent(tmp_path, NOW) == {phone(1): 1, phone(2): 1}
    assert recent(tmp_path, NOW, exclude="starting") == {}
    # A plan file the manifest does not name (left by a plan that never completed) is not under way.
    storage.write_parquet(
        run.planned.rows.head(1).with_columns(phone=pl.lit(phone(9))),
        run.paths.attempt(1).plan_shard(99),
    )
    assert recent(tmp_path, NOW) == {phone(1): 1, phone(2): 1}


# -- the layout and the policy's helper ------------------------------------------------------------------------


def test_the_listing_recognises_the_paths_results_py_spells(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # However the location is spelled; `campaign=` in a folder above it is not a campaign.
    for results in (str(tmp_path / "res"), f"{tmp_path}/res2/", f"{tmp_path}/campaign=old/res"):
        paths = CampaignPaths(results, "spring-1").attempt(3)
        for uri in (paths.part(7), paths.done, paths.manifest, paths.unsent_part, paths.plan_shard(7)):
            storage.put_bytes(uri, b"x")
        append(paths.campaign.settled, pl.DataFrame({"attempt": [3], "row_index": [0]}), SETTLED_SCHEMA)
        assert list(scan_location(results)) == ["spring-1"]
        found = scan_location(results)["spring-1"]
        assert found.parts == {3: {7: storage.list_files(paths.part(7))[0]}}
        assert (found.done, found.planned, len(found.settled)) == ({3}, {3}, 1)
        assert found.under_way() == []
    monkeypatch.chdir(tmp_path / "res")
    assert scan_location(".")["spring-1"].done == {3}


def test_counts_for_marks_the_rows_whose_number_reached_the_limit() -> None:
    recent_frame = pl.DataFrame(
        {"phone": [phone(1), phone(2)], "sent": [2, 1]}, schema={"phone": pl.String, "sent": pl.UInt32}
    )
    validated = pl.DataFrame({"phone": [phone(3), phone(2), phone(1), None]})
    assert counts_for(validated, recent_frame, 2).to_list() == [None, None, 2, None]
    assert counts_for(validated, recent_frame, 1).to_list() == [None, 1, 2, None]
    marks = counts_for(validated, recent_frame, 1)
    assert marks.name == "frequency_sent" and marks.len() == validated.height
