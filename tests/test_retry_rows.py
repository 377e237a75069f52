"""The retry flow's choice of rows and request keys (flows/retry.py), on a results layout written by the same
steps a campaign uses: validate, plan, the plan files, and result parts."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from smscast import storage
from smscast.campaign import CampaignSpec
from smscast.flows.retry import _retry_rows
from smscast.providers.sandbox import SandboxProvider
from smscast.providers.textingline import TextinglineProvider
from smscast.results import CampaignPaths
from smscast.settings import ProviderSettings
from smscast.tasks.current import current_results
from smscast.tasks.persist import result_rows, save_plan
from smscast.tasks.plan import plan_campaign
from smscast.tasks.validate import validate_recipients

SANDBOX = SandboxProvider(ProviderSettings(base_url="http://x", api_key=None))


def first_attempt(results: Path, n: int, outcome: dict[str, tuple[str, str]]) -> pl.DataFrame:
    """Plan `n` rows as one batch and record attempt 1 as if the batch had been bisected once: the rows of
    each half get that half's batch id ("…-L"/"…-R") and the status `outcome` gives it."""
    spec = CampaignSpec(campaign_id="camp", source="s", results=str(results), body="hi", sender="ACME")
    df = pl.DataFrame({"row_index": list(range(n)), "phone_raw": [f"+4474009{i:05d}" for i in range(n)]})
    checked = validate_recipients(df, spec, SANDBOX.caps, SANDBOX)
    plan = plan_campaign(checked, spec, SANDBOX.caps, SANDBOX)
    attempt = CampaignPaths(str(results), "camp").attempt(1)
    save_plan.fn(attempt, plan)
    rows = plan.rows
    half = pl.when(pl.col("row_index") < n // 2).then(pl.lit("L")).otherwise(pl.lit("R"))
    outcomes = rows.select(
        "row_index",
        batch_id=pl.col("batch_id") + "-" + half,
        status=half.replace_strict({h: s for h, (s, _) in outcome.items()}),
        error_code=half.replace_strict({h: c for h, (_, c) in outcome.items()}),
        error_message=pl.lit("x"),
        provider_message_id=pl.lit(None, pl.String),
        provider_batch_ref=pl.lit(None, pl.String),
        submitted_at=pl.lit(None, pl.Datetime("us", "UTC")),
    )
    storage.write_parquet(result_rows(spec, rows, outcomes), attempt.part(0))
    return rows


def test_an_unknown_bisected_half_is_resent_with_the_key_its_request_carried(tmp_path: Path) -> None:
    # Regression: the retry derived a fresh key for the "-R" half, so a provider keying whole requests
    # (sent.dm's Idempotency-Key) would have taken it for a new request and sent it twice.
    planned = first_attempt(tmp_path, 8, {"L": ("failed", "http_503"), "R": ("unknown", "read_timeout")})
    todo = current_results(str(tmp_path), "camp")
    retry_spec = CampaignSpec(campaign_id="camp", source="s", results=str(tmp_path), body="hi", attempt=2)
    rows = _retry_rows(CampaignPaths(str(tmp_path), "camp"), todo, retry_spec)
    replan = plan_campaign(
        rows, retry_spec, SANDBOX.caps, SANDBOX, extra_groups=[pl.col("_retry_group")]
    ).rows
    parent = planned["batch_key"][0]
    unknown = replan.filter(pl.col("row_index") >= 4)
    assert unknown["batch_key"].unique().to_list() == [f"{parent}-R"]
    assert unknown["batch_id"].n_unique() == 1  # the same composition as the request it repeats
    failed = replan.filter(pl.col("row_index") < 4)
    assert not failed["batch_key"].str.starts_with(parent).any()  # never sent: a key of its own
    assert "_pinned_batch_key" not in replan.columns


def test_a_request_only_partly_unknown_is_not_resent_under_its_key(tmp_path: Path) -> None:
    # The rows still unknown are not the request that carried that key: reusing it for other content
    # would be answered with the first request's cached response.
    planned = first_attempt(tmp_path, 8, {"L": ("accepted", ""), "R": ("unknown", "read_timeout")})
    # Make the "-R" request half accepted, half unknown.
    part = CampaignPaths(str(tmp_path), "camp").attempt(1).part(0)
    frame = storage.read_parquet(part).with_columns(
        status=pl.when(pl.col("row_index") == 7).then(pl.lit("accepted")).otherwise(pl.col("status"))
    )
    storage.write_parquet(frame, part)
    todo = current_results(str(tmp_path), "camp").filter(pl.col("status") == "unknown")
    retry_spec = CampaignSpec(campaign_id="camp", source="s", results=str(tmp_path), body="hi", attempt=2)
    rows = _retry_rows(CampaignPaths(str(tmp_path), "camp"), todo, retry_spec)
    assert rows["row_index"].to_list() == [4, 5, 6]
    assert rows["_pinned_batch_key"].null_count() == 3
    assert planned.height == 8


def test_in_a_retry_too_few_rows_for_a_request_stay_failed_not_invalid() -> None:
    # Regression: textingline needs 10 recipients a request; a retry of 3 failed rows marked them
    # `invalid` (final), stranding recipients that had been valid and sendable.
    provider = TextinglineProvider(ProviderSettings(base_url="http://x", api_key=None))
    df = pl.DataFrame({"row_index": [0, 1, 2], "phone_raw": ["+14155550100", "+14155550101", "+14155550102"]})
    for attempt, status in ((1, "invalid"), (2, "failed")):
        spec = CampaignSpec(
            campaign_id="camp",
            provider="textingline",
            source="s",
            results="r",
            body="hi",
            sender="+18005559876",
            attempt=attempt,
        )
        checked = validate_recipients(df, spec, provider.caps, provider)
        rows = plan_campaign(checked, spec, provider.caps, provider).rows
        assert set(rows["status"]) == {status} and set(rows["error_code"]) == {"batch_below_minimum"}
