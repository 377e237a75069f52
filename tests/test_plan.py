"""Plan: deterministic batches and keys, balanced sizes, provider minimums and shards."""

from __future__ import annotations

import dataclasses

import polars as pl
import pytest

from smscast.campaign import CampaignSpec
from smscast.providers.sandbox import SandboxProvider
from smscast.settings import ProviderSettings
from smscast.tasks import plan
from smscast.tasks.plan import PINNED_KEY, plan_campaign
from smscast.tasks.validate import validate_recipients

PROVIDER = SandboxProvider(ProviderSettings(base_url="http://x", api_key=None))


def planned(n: int, provider: SandboxProvider = PROVIDER, **spec_kw: object) -> pl.DataFrame:
    spec = CampaignSpec(campaign_id="camp", source="s", results="r", body="hi", **spec_kw)  # type: ignore[arg-type]
    df = pl.DataFrame({"row_index": list(range(n)), "phone_raw": [f"+4474009{i:05d}" for i in range(n)]})
    checked = validate_recipients(df, spec, provider.caps, provider)
    return plan_campaign(checked, spec, provider.caps, provider).rows


def test_plan_is_deterministic_and_keys_are_stable_per_recipient() -> None:
    a, b = planned(2500), planned(2500)
    assert a.equals(b)
    assert a["idempotency_key"].n_unique() == 2500
    assert a["idempotency_key"].str.len_chars().le(40).all()  # Instasent's clientId limit
    # The row key depends on (campaign, recipient) only, not on batch size or attempt.
    c = planned(2500, batch_size=10, attempt=2)
    assert c.sort("row_index")["idempotency_key"].equals(a.sort("row_index")["idempotency_key"])


def test_batches_are_balanced_and_within_the_maximum() -> None:
    rows = planned(2001)
    sizes = rows.group_by("batch_id").len()["len"].sort().to_list()
    assert sizes == [667, 667, 667]
    assert rows["batch_key"].n_unique() == 3


def test_provider_minimum_quarantines_groups_too_small_to_send() -> None:
    class MinTen(SandboxProvider):
        caps = dataclasses.replace(SandboxProvider.caps, min_rows=10, max_rows=20)

    small = planned(7, MinTen(PROVIDER.settings))
    assert set(small["error_code"]) == {"batch_below_minimum"}
    ok = planned(21, MinTen(PROVIDER.settings))
    assert sorted(ok.group_by("batch_id").len()["len"].to_list()) == [10, 11]


def test_shards_group_many_batches() -> None:
    rows = planned(5000, batch_size=100, shard_batches=20)
    assert rows["shard"].n_unique() == 3
    per_shard = rows.group_by("shard").agg(pl.col("batch_id").n_unique()).sort("shard")["batch_id"].to_list()
    assert per_shard == [20, 20, 10]


def test_batch_key_changes_with_composition() -> None:
    a = planned(100, batch_size=50)
    b = planned(100, batch_size=25)
    assert set(a["batch_key"]).isdisjoint(set(b["batch_key"]))


def test_a_pinned_key_is_kept_only_by_rows_that_are_sent() -> None:
    spec = CampaignSpec(campaign_id="camp", source="s", results="r", body="hi", batch_size=2, attempt=2)
    phones = ["+447400900001", "nope", "+447400900003", "+447400900004"]
    df = pl.DataFrame({"row_index": list(range(4)), "phone_raw": phones})
    checked = validate_recipients(df, spec, PROVIDER.caps, PROVIDER).with_columns(
        pl.Series(PINNED_KEY, ["scb-old", "scb-old", None, None])
    )
    rows = plan_campaign(checked, spec, PROVIDER.caps, PROVIDER).rows.sort("row_index")
    keys = rows["batch_key"].to_list()
    assert keys[0] == "scb-old"  # sent under the key its earlier request carried
    assert (
        keys[1] is None and rows["status"][1] == "invalid"
    )  # never sent: no batch, whatever it was pinned to
    assert keys[2] is not None and keys[2].startswith("scb-") and keys[2] != "scb-old"
    assert PINNED_KEY not in rows.columns


def test_large_plans_hash_their_keys_alike_with_the_kernel_and_with_hashlib(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Large campaigns hash with smscast/blake2b_kernel.py, small ones with hashlib: the same keys either way,
    # here with batch keys over 1,000 joined row keys (28 kB messages) and a group of rows planned apart.
    pytest.importorskip("numba", reason="the compiled kernel needs numba")
    by_hashlib = planned(3001, batch_size=1000)
    monkeypatch.setattr(plan, "KERNEL_MIN_ROWS", 0)
    assert planned(3001, batch_size=1000).equals(by_hashlib)
