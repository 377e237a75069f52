"""Golden keys: the row and batch keys of a (campaign, recipient) never change from one release to the next.

A provider de-duplicates on these keys; a key that changed between a crash and its resume (or between the
attempt that left a row `failed` and the retry) would make the provider send the message twice. The values
below were computed by the per-row hashlib code that planned campaigns before the keys were vectorised, so
any faster implementation must reproduce them byte for byte. Every test runs twice: with hashlib (what small
campaigns use) and with the compiled kernel (smscast/blake2b_kernel.py, what large ones use).
"""

from __future__ import annotations

import polars as pl
import pytest

from smscast.campaign import CampaignSpec
from smscast.providers.sandbox import SandboxProvider
from smscast.settings import ProviderSettings
from smscast.tasks import plan
from smscast.tasks.plan import RESEND_ATTEMPT, batch_key, plan_campaign, row_keys
from smscast.tasks.validate import validate_recipients

PROVIDER = SandboxProvider(ProviderSettings(base_url="http://x", api_key=None))


@pytest.fixture(autouse=True, params=["hashlib", "kernel"])
def hasher(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "kernel":
        pytest.importorskip("numba", reason="the compiled kernel needs numba")
        monkeypatch.setattr(plan, "KERNEL_MIN_ROWS", 0)
    return str(request.param)


IDS = ["+447700900001", "+447700900002", "cust-ünï", "", None]
ROW_KEYS = [
    "sc-78bb62cd882be570f4f4fad5",
    "sc-497393b70086dbc6a1785062",
    "sc-d2136554f5044a6bc5074ea6",
    "sc-33ff4239b4f45dedce1ddd16",
    "sc-33ff4239b4f45dedce1ddd16",  # a missing id hashes as the empty one
]
RESEND_KEYS = [
    "sc-ae6be5e774e404f441f25198",
    "sc-b0b3353c89013dd9c5088cf5",
    "sc-24ef7cc9b4df8a78aae4bb2f",
    "sc-b9c3ad5f24c900cccf20da61",
    "sc-b9c3ad5f24c900cccf20da61",
]

# The keys of recipients p447700900000..p447700900009, pinned by the first release of this test: they hold
# still. (Those numbers, in a drama range, no longer pass validation, so the planned tests below use others.)
FIRST_PINNED = {
    "p447700900000": "sc-f9cbe4f345476204efa581f8",
    "p447700900003": "sc-170350fac4ca8043aa024564",
    "p447700900009": "sc-1449ec44a528fd5317bf05da",
}

# Ten recipients p447400900000.. in batches of at most 4 (balanced: 4, 3, 3): (row key, batch id, batch key).
# Computed for these recipients by the per-row hashlib code of commit 82303b2 (tasks/plan.py).
PHONES = [f"+4474009{i:05d}" for i in range(10)]
ROW_0_9 = [
    "sc-2e42970ab24649585f7bad59",
    "sc-29a522452c7bf202a1867122",
    "sc-5c8d96378dc1df475ed36a84",
    "sc-99211a14ae31f28575cce1ec",
    "sc-62a16c2f3101a69462ed49b8",
    "sc-fa3d96575e2c16d4a230b763",
    "sc-95afb5c7f7c8f5ad57f05a94",
    "sc-21088ea7a54aee390df9fddb",
    "sc-d3065ad719d157100df9bbd8",
    "sc-eb8dc979d62ce57fe293c84c",
]
BATCH_OF_ROW = [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
BATCH_KEYS = {
    1: ["scb-f5bfbccd1eea23703634c9b9", "scb-fce1d4446a40fb22169382e7", "scb-acbf1b7ed91bbae8c1b3bd66"],
    2: ["scb-f8f4fe1cea6f7f4d6596f64d", "scb-e664720ef3235b23db2def17", "scb-de523dae40bccf5bed9a97ce"],
}
# Attempt 2 with even rows re-sent as new messages (RESEND_ATTEMPT): those rows get the resend form.
RESEND_ROW_KEYS = {
    0: "sc-8df3733479d4360656b4510f",
    2: "sc-9b6174de7c63028ae7ba8362",
    4: "sc-cbbccbb6fcc533ba271db4bf",
    6: "sc-45f146cc46629abf400e8e27",
    8: "sc-f94db7f44e13309eafe13a25",
}
RESEND_BATCH_KEYS = [
    "scb-89ddaad8a8e4d4bde18f9083",
    "scb-93c2481aa68882e0308f584b",
    "scb-337137fe5e2d08f80d200435",
]


def _spec(batch_size: int, attempt: int = 1) -> CampaignSpec:
    return CampaignSpec(
        campaign_id="camp", source="s", results="r", body="hi", batch_size=batch_size, attempt=attempt
    )


def _plan(spec: CampaignSpec, phones: list[str], resend: bool = False, **kw: object) -> pl.DataFrame:
    df = pl.DataFrame({"row_index": list(range(len(phones))), "phone_raw": phones})
    checked = validate_recipients(df, spec, PROVIDER.caps, PROVIDER)
    if resend:
        even = pl.col("row_index") % 2 == 0
        checked = checked.with_columns(pl.when(even).then(pl.lit(1)).otherwise(None).alias(RESEND_ATTEMPT))
    return plan_campaign(checked, spec, PROVIDER.caps, PROVIDER, **kw).rows.sort("row_index")  # type: ignore[arg-type]


def test_row_keys_are_golden() -> None:
    assert row_keys("camp", pl.Series(IDS, dtype=pl.String)).to_list() == ROW_KEYS
    assert row_keys("camp\x1fresend-2", pl.Series(IDS, dtype=pl.String)).to_list() == RESEND_KEYS


def test_the_first_pinned_keys_hold() -> None:
    ids = pl.Series(list(FIRST_PINNED), dtype=pl.String)
    assert row_keys("camp", ids).to_list() == list(FIRST_PINNED.values())


def test_row_keys_of_an_empty_column() -> None:
    assert row_keys("camp", pl.Series([], dtype=pl.String)).to_list() == []


def test_row_keys_of_a_slice_and_of_several_chunks() -> None:
    # A column that is a view into a larger one, or made of several chunks, is read from the right place.
    ids = pl.Series(["x", *IDS, "y"], dtype=pl.String)
    assert row_keys("camp", ids.slice(1, len(IDS))).to_list() == ROW_KEYS
    chunked = pl.concat([ids.slice(1, 2), ids.slice(3, len(IDS) - 2)], rechunk=False)
    assert chunked.n_chunks() == 2
    assert row_keys("camp", chunked).to_list() == ROW_KEYS


def test_batch_key_is_golden() -> None:
    assert batch_key("camp", "sandbox", ["sc-a", "sc-b"]) == "scb-b2719b17a1459f92abe71b01"
    assert batch_key("camp", "sandbox", ["sc-a", "sc-b"], 3) == "scb-d19bfbe7442ddea0e3af046c"


@pytest.mark.parametrize("attempt", [1, 2])
def test_planned_keys_are_golden(attempt: int) -> None:
    rows = _plan(_spec(4, attempt), PHONES)
    assert rows["idempotency_key"].to_list() == ROW_0_9
    assert rows["batch_id"].to_list() == [f"camp-a{attempt}-b{b:06d}" for b in BATCH_OF_ROW]
    assert rows["batch_key"].to_list() == [BATCH_KEYS[attempt][b] for b in BATCH_OF_ROW]


def test_resent_rows_keys_are_golden() -> None:
    rows = _plan(_spec(4, 2), PHONES, resend=True)
    expected = [RESEND_ROW_KEYS.get(i, k) for i, k in enumerate(ROW_0_9)]
    assert rows["idempotency_key"].to_list() == expected
    assert rows["batch_key"].to_list() == [RESEND_BATCH_KEYS[b] for b in BATCH_OF_ROW]


def test_grouped_batches_with_an_invalid_row_are_golden() -> None:
    phones = PHONES[:9]
    phones[4] = "nope"
    rows = _plan(_spec(3), phones, extra_groups=[pl.col("row_index") % 2])
    assert rows.select("idempotency_key", "batch_id", "batch_key", "status").rows() == [
        (ROW_0_9[0], "camp-a1-b000000", "scb-d1745ce226ab89b1634bf0f0", None),
        (ROW_0_9[1], "camp-a1-b000002", "scb-c1fcfea2edf4213ab109cba6", None),
        (ROW_0_9[2], "camp-a1-b000000", "scb-d1745ce226ab89b1634bf0f0", None),
        (ROW_0_9[3], "camp-a1-b000002", "scb-c1fcfea2edf4213ab109cba6", None),
        ("sc-bbdb68c14e58310a05284790", None, None, "invalid"),
        (ROW_0_9[5], "camp-a1-b000003", "scb-4dd89605dd209779efad2658", None),
        (ROW_0_9[6], "camp-a1-b000001", "scb-ba4a70c5b00fa7acce35a5b9", None),
        (ROW_0_9[7], "camp-a1-b000003", "scb-4dd89605dd209779efad2658", None),
        (ROW_0_9[8], "camp-a1-b000001", "scb-ba4a70c5b00fa7acce35a5b9", None),
    ]
