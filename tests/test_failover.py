"""Failover to a second provider (flows/failover.py): what the campaign's provider provably never accepted goes
through its fallback in the same run, rows in doubt never do, and retry and reconcile follow each row's
provider. Unit tests on results layouts written by the campaign's own steps, then end to end against the
sandbox's emulators under Prefect's test harness."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from support import env, fast_retries, ledger_frame, prefect_harness, sandbox_clock, write_recipients

from smscast import storage
from smscast.breaker import CircuitOpenError, paused_view
from smscast.campaign import CampaignSpec
from smscast.errors import ConfigError
from smscast.flows.campaign import send_campaign
from smscast.flows.failover import (
    attempt_spec,
    check_fallback,
    plan_for,
    retry_legs,
    sealed_after_stop,
)
from smscast.flows.retry import retry_failed
from smscast.provider_specs import fallback_spec
from smscast.providers.registry import make_provider
from smscast.results import CampaignPaths
from smscast.servers.sandbox import SandboxServer
from smscast.tasks.current import current_results, never_accepted, planned_provider
from smscast.tasks.persist import result_rows, save_plan
from smscast.tasks.plan import plan_campaign
from smscast.tasks.reconcile import reconcile_campaign
from smscast.tasks.validate import validate_recipients

KEY = "failover-key"
TL_KEY = "tl-fo-id:tl-fo-secret"  # textingline's key is key_id:secret
TL_SENDER = "+18005559876"
LOG = logging.getLogger("test_failover")
LONG_BODY = "Hello " + "x" * 694  # 700 characters: within the sandbox's 1600, over textingline's 640
OPEN = ("failed", "circuit_open")


@pytest.fixture(autouse=True)
def keys() -> Iterator[None]:
    # Set even for the unit tests: a provider without its key in the environment is looked up as a Prefect
    # Secret block, which would start a Prefect API.
    names = ("SANDBOX", "INSTASENT", "TEXTINGLINE", "SENT_DM")
    values = {f"SMSCAST_{n}_API_KEY": TL_KEY if n == "TEXTINGLINE" else KEY for n in names}
    with env(**values):
        yield


def spec_of(results: Path | str, **kw: Any) -> CampaignSpec:
    fields: dict[str, Any] = {"campaign_id": "fo", "source": "s", "results": str(results), "sender": "ACME"}
    return CampaignSpec(**(fields | kw))


# ---- units: the specs, the rows, the plan -------------------------------------------------------------------


def test_the_fallback_sends_with_its_own_settings_and_is_checked_before_anything_is_sent() -> None:
    spec = spec_of("r", body="Hi", base_url="http://primary.example", batch_size=7, rate=50.0)
    fb = fallback_spec(spec.model_copy(update={"fallback": "textingline"}))
    assert (fb.provider, fb.sender, fb.template) == ("textingline", "ACME", None)  # it needs a sender
    assert (fb.base_url, fb.batch_size, fb.rate, fb.concurrency) == (None, None, None, None)
    assert fallback_spec(spec.model_copy(update={"fallback": "postman"})).sender is None  # it takes none
    # ACME is no textingline sender: refused up front, naming the option that fixes it.
    with pytest.raises(ConfigError, match=r"--fallback textingline: .*--fallback-sender"):
        check_fallback(spec.model_copy(update={"fallback": "textingline", "dry_run": True}))
    check_fallback(spec.model_copy(update={"fallback": "textingline", "fallback_sender": TL_SENDER}))
    with pytest.raises(ConfigError, match="--fallback sent-dm"):  # template-only: it cannot carry the text
        check_fallback(spec.model_copy(update={"fallback": "sent-dm"}))


def planned(spec: CampaignSpec, n: int) -> pl.DataFrame:
    """Attempt 1's plan of `n` rows through the sandbox (row 3's body LONG_BODY), written; its rows."""
    bodies = [LONG_BODY if i == 3 else f"Hi {i}" for i in range(n)]
    df = pl.DataFrame(
        {"row_index": range(n), "phone_raw": [f"+4474009{i:05d}" for i in range(n)], "body": bodies}
    )
    sandbox = make_provider("sandbox", base_url="http://x")
    plan = plan_campaign(validate_recipients(df, spec, sandbox.caps, sandbox), spec, sandbox.caps, sandbox)
    save_plan.fn(CampaignPaths.of(spec).attempt(1), plan)
    return plan.rows


def outcomes(rows: pl.DataFrame, status: Callable[[int], tuple[str, str | None]]) -> pl.DataFrame:
    """`rows` as sent, row i ending `status(i)` (status, error code)."""
    got = [status(i) for i in rows["row_index"]]
    return rows.select("row_index").with_columns(
        status=pl.Series([s for s, _ in got]),
        error_code=pl.Series([c for _, c in got], dtype=pl.String),
        error_message=pl.lit("x"),
        batch_id=pl.lit(None, pl.String),
    )


def first_attempt(results: Path, statuses: dict[int, tuple[str, str]], n: int, **kw: Any) -> CampaignSpec:
    """Attempt 1 of `n` rows through the sandbox, sealed, row i `statuses[i]` (status, code) else accepted."""
    spec = spec_of(results, provider="sandbox", **kw)
    rows = planned(spec, n)
    attempt = CampaignPaths.of(spec).attempt(1)
    sent = outcomes(rows, lambda i: statuses.get(i, ("accepted", None)))
    storage.write_parquet(result_rows(spec, rows, sent), attempt.part(0))
    storage.put_bytes(attempt.done, b"{}")
    return spec


def test_only_rows_provably_never_accepted_are_failed_over(tmp_path: Path) -> None:
    ends = {i: ("failed", "http_503") for i in range(10)}
    first_attempt(tmp_path, ends | {10: ("unknown", "connection_lost"), 11: ("failed", "over_budget")}, 14)
    current = current_results(str(tmp_path), "fo")
    assert never_accepted(current, "sandbox")["row_index"].to_list() == list(range(10))
    assert never_accepted(current, "sandbox", sealed=set()).is_empty()  # only from a complete attempt
    assert never_accepted(current, "instasent").is_empty()  # only from the provider asked about


def test_the_fallback_validates_and_batches_by_its_own_rules(tmp_path: Path) -> None:
    spec = first_attempt(tmp_path, {i: ("failed", "http_503") for i in range(12)}, 14)
    spec = spec.model_copy(update={"fallback": "textingline", "fallback_sender": TL_SENDER})
    campaign = CampaignPaths(str(tmp_path), "fo")
    fb = fallback_spec(spec).model_copy(update={"attempt": 2})
    textingline = make_provider("textingline")
    todo = never_accepted(current_results(str(tmp_path), "fo"), "sandbox")
    plan = plan_for(campaign, todo, fb, textingline)
    rows = plan.rows.sort("row_index")
    assert rows["row_index"].to_list() == list(range(12))
    long = rows.filter(pl.col("row_index") == 3)
    # Valid for the sandbox (1600 characters), not for textingline (640): invalid, with textingline's reason.
    assert long["status"].item() == "invalid" and long["error_code"].item() == "body_too_long"
    assert "textingline" in long["error_message"].item()
    sent = rows.filter(pl.col("status").is_null())
    assert sent.height == 11 and sent["batch_id"].n_unique() == 1  # textingline takes 10-5,000 a request
    assert set(rows["provider"]) == {"textingline"}  # the plan names its provider
    first = storage.read_parquet(campaign.attempt(1).plan_shard(0))
    assert not set(sent["batch_key"]) & set(first["batch_key"])  # a request key of its own
    # Fewer rows than textingline's minimum per request: they stay `failed` (re-sendable), never invalid.
    few = plan_for(campaign, todo.filter(pl.col("row_index") > 3).head(5), fb, textingline).rows
    assert set(few["status"]) == {"failed"} and set(few["error_code"]) == {"batch_below_minimum"}

    save_plan.fn(campaign.attempt(2), plan)
    assert planned_provider(campaign.attempt(2)) == "textingline"
    assert planned_provider(campaign.attempt(1)) is None  # a campaign's first plan: its own provider
    resumed = attempt_spec(spec, 2)
    assert (resumed.provider, resumed.sender, resumed.attempt) == ("textingline", TL_SENDER, 2)
    assert attempt_spec(spec, 1).provider == "sandbox"


def test_a_retry_sends_each_row_back_through_its_own_provider() -> None:
    spec = spec_of("r", body="Hi", fallback="instasent")
    current = pl.DataFrame(
        {
            "row_index": range(7),
            "attempt": [1, 1, 2, 2, 1, 2, 3],
            "provider": ["instasent", "sandbox", "sandbox", "instasent", "sandbox", "instasent", "robase"],
            "status": ["failed", "failed", "unknown", "unknown", "accepted", "rejected", "unknown"],
        }
    )
    legs = retry_legs(spec, current, override=None, undelivered=False, undelivered_codes=None, logger=LOG)
    assert [leg.spec.provider for leg in legs] == ["sandbox", "robase", "instasent"]  # the fallback last
    assert [sorted(leg.rows["row_index"]) for leg in legs] == [[1, 2], [6], [0, 3]]
    assert legs[2].spec == fallback_spec(spec)
    # Told to use another provider: every row goes through it, except those in doubt at another one.
    (only,) = retry_legs(
        spec, current, override="robase", undelivered=False, undelivered_codes=None, logger=LOG
    )
    assert only.spec.provider == "robase" and sorted(only.rows["row_index"]) == [0, 1, 6]


def paused_attempt(results: Path, *, view: bool) -> CampaignSpec:
    """Attempt 1 in two shards as the circuit breaker leaves it: shard 0 recorded, shard 1 paused, its rows
    kept back `failed` (`circuit_open`) in its paused view (`view`) or nowhere."""
    spec = spec_of(results, provider="sandbox", shard_batches=1, batch_size=5, fallback="instasent")
    rows, paths = planned(spec, 10), CampaignPaths.of(spec).attempt(1)
    for shard, end, target in ((0, ("accepted", None), paths.part(0)), (1, OPEN, paused_view(paths, 1))):
        part = rows.filter(pl.col("shard") == shard)
        if shard == 0 or view:
            storage.write_parquet(result_rows(spec, part, outcomes(part, lambda _, e=end: e)), target)
    return spec


def test_a_paused_attempt_is_completed_so_that_its_rows_go_through_the_fallback(tmp_path: Path) -> None:
    spec = paused_attempt(tmp_path / "a", view=True)
    assert sealed_after_stop(spec, CircuitOpenError("paused"), LOG)
    paths = CampaignPaths.of(spec).attempt(1)
    assert storage.exists(paths.done) and storage.exists(paths.part(1))
    todo = never_accepted(current_results(spec.results, "fo"), "sandbox")
    assert sorted(todo["row_index"]) == [5, 6, 7, 8, 9] and set(todo["error_code"]) == {"circuit_open"}
    # A shard with no record at all: the attempt is left as it is, for a resume to complete.
    spec = paused_attempt(tmp_path / "b", view=False)
    assert not sealed_after_stop(spec, CircuitOpenError("paused"), LOG)
    assert not storage.exists(CampaignPaths.of(spec).attempt(1).done)


# ---- end to end ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxServer]:
    lifted = {"rate_limit_rps": 0}  # the vendors' documented limits off: the tests set their own
    with (
        prefect_harness(),
        fast_retries(),  # a primary that is down fails its requests five times each, without backoff's seconds
        SandboxServer(
            default_key=KEY,
            api_keys={"textingline": TL_KEY},
            provider_knobs={"instasent": lifted, "textingline": lifted},
        ) as server,
        env(SMSCAST_INSTASENT_BASE_URL=server.base_url, SMSCAST_TEXTINGLINE_BASE_URL=server.base_url),
    ):
        yield server


@pytest.fixture
def admin(sandbox: SandboxServer) -> Iterator[Any]:
    sandbox.client.reset()
    yield sandbox.client
    sandbox_clock(sandbox.base_url, freeze=False)


def requests(admin: Any, emulator: str) -> dict[str, int]:
    return dict(admin.stats()["providers"].get(emulator, {}).get("requests", {}))


def wait_for(what: str, ready: Callable[[], bool], timeout: float = 120.0) -> None:
    """Poll `ready` until it holds; the bound is generous, for a loaded machine."""
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def ledgers_agree(current: pl.DataFrame, ledgers: dict[str, pl.DataFrame]) -> list[str]:
    """What breaks "each recipient the providers took is accepted exactly once, by the provider its row names":
    no phone in two ledgers or twice in one; every accepted row in its own provider's ledger once; `unknown`
    rows only ever in their own provider's; nothing else in any ledger."""
    problems = []
    seen: dict[str, str] = {}
    for name, ledger in ledgers.items():
        phones = ledger["to"].to_list()
        if len(phones) != len(set(phones)):
            problems.append(f"{name}: a phone twice")
        for phone in phones:
            if phone in seen:
                problems.append(f"{phone} in both {seen[phone]} and {name}")
            seen[phone] = name
    for row in current.iter_rows(named=True):
        where = seen.get(row["phone"])
        if row["status"] == "accepted" and where != row["provider"]:
            problems.append(f"row {row['row_index']} accepted by {row['provider']} but in {where}'s ledger")
        elif row["status"] == "unknown" and where not in (None, row["provider"]):
            problems.append(f"row {row['row_index']} unknown at {row['provider']} but sent by {where}")
        elif row["status"] not in ("accepted", "unknown") and where is not None:
            problems.append(f"row {row['row_index']} is {row['status']} but in {where}'s ledger")
    return problems


def both_ledgers(admin: Any) -> dict[str, pl.DataFrame]:
    return {"sandbox": ledger_frame(admin, "generic"), "instasent": ledger_frame(admin, "instasent")}


@pytest.mark.integration
def test_the_primary_goes_down_mid_campaign_and_the_fallback_takes_what_it_never_accepted(
    sandbox: SandboxServer, admin: Any, tmp_path: Path
) -> None:
    """600 valid rows in 12 requests of 50. The sandbox's clock is frozen and its limit lets the first 4 requests
    through: those are accepted. One more is let through and its connection dropped after processing: that
    request's rows may have been accepted. Then the primary is down: every request answers 503, or drops before
    being processed (the client cannot tell that drop from the other: its rows are in doubt too). Rows in doubt
    stay `unknown` with the primary; the rest go through Instasent, in its own requests of at most 100."""
    res = str(tmp_path / "res")
    src = write_recipients(tmp_path / "r.csv", 601, extra={"name": ["N0", ""]})  # row 1 lacks its variable
    spec = CampaignSpec(
        campaign_id="fo-down",
        provider="sandbox",
        source=str(src),
        results=res,
        base_url=sandbox.base_url,
        body="Hi {{name}}",
        sender="ACME",
        batch_size=50,
        fallback="instasent",
        fallback_sender="Instasent",
        min_sample=1_000_000,  # the circuit breaker stays out of it (its own test is below)
    )
    admin.set_faults(provider="generic", rate_limit_rps=1, rate_limit_burst=4)
    sandbox_clock(sandbox.base_url, freeze=True)  # no token comes back unless the test says so
    failures: list[BaseException] = []

    def down_mid_campaign() -> None:
        try:
            wait_for("4 accepted requests", lambda: requests(admin, "generic").get("200", 0) >= 4)
            wait_for("a throttled request", lambda: requests(admin, "generic").get("429", 0) >= 1)
            admin.set_faults(provider="generic", next_drop_after=1)
            sandbox_clock(
                sandbox.base_url, advance=1.0
            )  # one more token: one request processed, then dropped
            wait_for("the dropped request", lambda: requests(admin, "generic").get("drop_after", 0) >= 1)
            admin.set_faults(provider="generic", rate_limit_rps=0, rate_5xx=1.0, next_drop_before=1)
        except BaseException as exc:
            failures.append(exc)

    chaos = threading.Thread(target=down_mid_campaign, daemon=True)
    chaos.start()
    summary = send_campaign(spec)
    chaos.join(timeout=150)
    assert not failures, failures
    sandbox_clock(sandbox.base_url, freeze=False)

    current = current_results(res, "fo-down")
    assert ledgers_agree(current, both_ledgers(admin)) == []
    by = {k: dict(v) for k, v in summary["by_provider"].items()}
    assert by["sandbox"]["accepted"] == 200 and by["sandbox"]["invalid"] == 1
    unknown = current.filter(pl.col("status") == "unknown")
    assert 50 <= unknown.height <= 100 and set(unknown["provider"]) == {"sandbox"}  # 1 or 2 requests in doubt
    over = current.filter(pl.col("provider") == "instasent")
    assert over.height == 600 - 200 - unknown.height and set(over["status"]) == {"accepted"}
    sizes = over.group_by("batch_id").len()["len"].to_list()
    assert set(over["attempt"]) == {2} and max(sizes) <= 100 and len(sizes) == -(-over.height // 100)
    assert summary["attempts"] == [1, 2] and summary["by_status"]["failed"] == 0
    assert storage.exists(CampaignPaths(res, "fo-down").attempt(2).done)

    # The same campaign again: complete, nothing sent anywhere.
    before = {e: requests(admin, e) for e in ("generic", "instasent")}
    assert send_campaign(spec)["by_status"] == summary["by_status"]
    assert {e: requests(admin, e) for e in ("generic", "instasent")} == before

    # A run that died inside the failover attempt resumes it through Instasent, with the same keys.
    attempt = CampaignPaths(res, "fo-down").attempt(2)
    for uri in (attempt.done, attempt.unsent_part, attempt.part(0)):
        storage.delete(uri)
    dupes = admin.stats()["providers"]["instasent"]["duplicates"]
    assert send_campaign(spec)["by_status"] == summary["by_status"]
    assert requests(admin, "generic") == before["generic"]
    assert admin.stats()["providers"]["instasent"]["duplicates"] - dupes == over.height
    assert ledgers_agree(current_results(res, "fo-down"), both_ledgers(admin)) == []

    # The primary is back: a retry re-sends the rows in doubt through it (it answers them from its record),
    # never through the fallback.
    admin.set_faults(provider="generic", rate_5xx=0.0)
    instasent = ledger_frame(admin, "instasent").height
    again = retry_failed(campaign_id="fo-down", results=res)
    assert again["attempt"] == 3 and again["by_status"]["accepted"] == unknown.height
    after = current_results(res, "fo-down")
    assert ledgers_agree(after, both_ledgers(admin)) == []  # what the sandbox had processed: not sent twice
    assert ledger_frame(admin, "instasent").height == instasent
    assert set(after.filter(pl.col("attempt") == 3)["provider"]) == {"sandbox"}
    assert after.filter(pl.col("status") != "accepted")["row_index"].to_list() == [1]


@pytest.mark.integration
def test_an_open_circuit_sends_the_rows_it_kept_back_through_the_fallback(
    sandbox: SandboxServer, admin: Any, tmp_path: Path
) -> None:
    res = str(tmp_path / "res")
    src = write_recipients(tmp_path / "r.csv", 400)
    spec = CampaignSpec(
        campaign_id="fo-circuit",
        provider="sandbox",
        source=str(src),
        results=res,
        base_url=sandbox.base_url,
        body="Hi {{name}}",
        sender="ACME",
        batch_size=25,
        fallback="instasent",
        min_sample=50,
        max_failure_rate=0.5,
    )
    admin.set_faults(provider="generic", rate_5xx=1.0)  # down from the start: nothing is ever processed
    summary = send_campaign(spec)
    first = storage.read_parquet(CampaignPaths(res, "fo-circuit").attempt(1).dir)
    assert first.filter(pl.col("error_code") == "circuit_open").height > 0  # the circuit kept rows back
    current = current_results(res, "fo-circuit")
    assert set(current["provider"]) == {"instasent"} and set(current["status"]) == {"accepted"}
    assert ledgers_agree(current, both_ledgers(admin)) == [] and ledger_frame(admin, "generic").is_empty()
    assert summary["by_status"]["accepted"] == 400
    before = requests(admin, "instasent")
    send_campaign(spec)  # complete: the paused attempt was sealed, nothing is resumed through the primary
    assert requests(admin, "instasent") == before


@pytest.mark.integration
def test_reconcile_and_retry_follow_the_fallback_that_has_the_rows(
    sandbox: SandboxServer, admin: Any, tmp_path: Path
) -> None:
    """Rows the sandbox refuses as transient go through textingline, which takes 10 or more a request, no body
    over 640 characters, and a sender of its own. Reconcile looks textingline's job up at textingline; the
    recipients its job failed are re-sent by a retry through textingline, not through the sandbox."""
    res = str(tmp_path / "res")
    bodies = [LONG_BODY if i == 3 else f"Hi N{i}" for i in range(300)]
    src = write_recipients(tmp_path / "r.csv", 300, extra={"body": bodies})
    spec = CampaignSpec(
        campaign_id="fo-tl",
        provider="sandbox",
        source=str(src),
        results=res,
        base_url=sandbox.base_url,
        sender="ACME",
        fallback="textingline",
        fallback_sender=TL_SENDER,
    )
    admin.set_faults(provider="generic", transient_suffixes=["3"])  # 30 rows refused, for now
    admin.set_faults(provider="textingline", async_reject_share=0.7)  # its job fails most of them itself
    summary = send_campaign(spec)
    current = current_results(res, "fo-tl")
    moved = current.filter(pl.col("provider") == "textingline")
    assert sorted(moved["row_index"]) == [i for i in range(300) if i % 10 == 3]
    long = moved.filter(pl.col("row_index") == 3)
    assert (long["status"].item(), long["error_code"].item()) == ("invalid", "body_too_long")
    assert set(moved.filter(pl.col("row_index") != 3)["status"]) == {"accepted"}
    assert summary["by_provider"]["sandbox"] == {"accepted": 270}

    admin.set_faults(provider="textingline", async_reject_share=0.0)
    admin.set_faults(provider="generic", transient_suffixes=[])
    found = reconcile_campaign(res, "fo-tl")
    assert found.batches == 1  # textingline's one job, looked up at textingline
    settled = found.settlements.get("failed", 0)
    assert settled >= 10 and found.facts.get("delivered", 0) == 29 - settled  # 10+: a textingline request
    facts = storage.read_parquet(CampaignPaths(res, "fo-tl").delivery)
    assert set(facts["provider"]) == {"textingline"}  # the sandbox's rows were not asked about there
    sandbox_requests = requests(admin, "generic")
    again = retry_failed(campaign_id="fo-tl", results=res)
    assert again["by_status"]["accepted"] == settled
    assert requests(admin, "generic") == sandbox_requests  # not one request to the healthy primary
    after = current_results(res, "fo-tl")
    ledgers = {"sandbox": ledger_frame(admin, "generic"), "textingline": ledger_frame(admin, "textingline")}
    assert ledgers_agree(after, ledgers) == []
    assert after.filter(pl.col("status") != "accepted")["row_index"].to_list() == [3]
