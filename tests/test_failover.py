"""Failover to a second provider (flows/failover.py), the units: the fallback's own spec and its checks, which
rows go through it (only those its campaign's provider provably never accepted: rows in doubt never do), its
plan by its own rules, a retry's legs by each row's provider, and a paused attempt sealed for it. On results
layouts written by the campaign's own steps; end to end against the sandbox's emulators, see
tests/test_failover_flows.py."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from failover_support import LONG_BODY, TL_SENDER, keys, spec_of  # noqa: F401 (keys: an autouse fixture)

from smscast import storage
from smscast.breaker import CircuitOpenError, paused_view
from smscast.campaign import CampaignSpec
from smscast.errors import ConfigError
from smscast.flows.failover import (
    attempt_spec,
    check_fallback,
    plan_for,
    retry_legs,
    sealed_after_stop,
)
from smscast.provider_specs import fallback_spec
from smscast.providers.registry import make_provider
from smscast.results import CampaignPaths
from smscast.tasks.current import current_results, never_accepted, planned_provider
from smscast.tasks.persist import result_rows, save_plan
from smscast.tasks.plan import plan_campaign
from smscast.tasks.validate import validate_recipients

LOG = logging.getLogger("test_failover")
OPEN = ("failed", "circuit_open")


# ---- the specs, the rows, the plan ----------------------------------------------------------------------------


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


def every_row(end: tuple[str, str | None]) -> Callable[[int], tuple[str, str | None]]:
    """A `status` for `outcomes`: every row ending `end`."""
    return lambda _: end


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
            storage.write_parquet(result_rows(spec, part, outcomes(part, every_row(end))), target)
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
