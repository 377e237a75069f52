"""Golden keys: the row and batch keys of a (campaign, recipient) never change from one release to the next.

A provider de-duplicates on these keys; a key that changed between a crash and its resume (or between the
attempt that left a row `failed` and the retry) would make the provider send the message twice. The values
below were computed by the per-row hashlib code that planned campaigns before the keys were vectorised, so
any faster implementation must reproduce them byte for byte.
"""

from __future__ import annotations

import polars as pl
import pytest

from smscast.campaign import CampaignSpec
from smscast.providers.sandbox import SandboxProvider
from smscast.settings import ProviderSettings
from smscast.tasks.plan import RESEND_ATTEMPT, batch_key, plan_campaign, row_keys
from smscast.tasks.validate import validate_recipients

PROVIDER = SandboxProvider(ProviderSettings(base_url="http://x", api_key=None))

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

# Ten recipients p447700900000.. in batches of at most 4 (balanced: 4, 3, 3): (row key, batch id, batch key).
ROW_0_9 = [
    "sc-f9cbe4f345476204efa581f8",
    "sc-8d73858fd2165c9d987d3f16",
    "sc-abf6303e722bfdd2ea025423",
    "sc-170350fac4ca8043aa024564",
    "sc-d7fd674748aefcb60a6959ba",
    "sc-4ac141cbe9d731ecc6bc7cb3",
    "sc-b13490599e8a843fdcf229c4",
    "sc-962afa7ab1303b642fc944b7",
    "sc-00ae11e7d9d1706ba78eecd1",
    "sc-1449ec44a528fd5317bf05da",
]
BATCH_OF_ROW = [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
BATCH_KEYS = {
    1: ["scb-6124f60ef3d71c0d49f4445b", "scb-0a4c2ee6e30b0b82667a7363", "scb-884055965bdde3ceb5bbd54f"],
    2: ["scb-30f1f995e7d1aee13d88f217", "scb-2b1c38c328c1726c2dba6575", "scb-1b78b122e2a5667d7450b9ce"],
}
# Attempt 2 with even rows re-sent as new messages (RESEND_ATTEMPT): those rows get the resend form.
RESEND_ROW_KEYS = {
    0: "sc-15ce07e9f8bba8c312d2b3c0",
    2: "sc-6c7710e8eba49fd5ad2b04d3",
    4: "sc-df5031f20f76e52c03ad01c7",
    6: "sc-3cc9bd9b9e0336187b572ad5",
    8: "sc-177821a41b0ae2caf4078de1",
}
RESEND_BATCH_KEYS = [
    "scb-c13940b6c6a1f168450038ab",
    "scb-b1da0d84079db7b5fc5355c8",
    "scb-e5a7d7032be359381ea1b603",
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


def test_row_keys_of_an_empty_column() -> None:
    assert row_keys("camp", pl.Series([], dtype=pl.String)).to_list() == []


def test_batch_key_is_golden() -> None:
    assert batch_key("camp", "sandbox", ["sc-a", "sc-b"]) == "scb-b2719b17a1459f92abe71b01"
    assert batch_key("camp", "sandbox", ["sc-a", "sc-b"], 3) == "scb-d19bfbe7442ddea0e3af046c"


@pytest.mark.parametrize("attempt", [1, 2])
def test_planned_keys_are_golden(attempt: int) -> None:
    rows = _plan(_spec(4, attempt), [f"+4477009{i:05d}" for i in range(10)])
    assert rows["idempotency_key"].to_list() == ROW_0_9
    assert rows["batch_id"].to_list() == [f"camp-a{attempt}-b{b:06d}" for b in BATCH_OF_ROW]
    assert rows["batch_key"].to_list() == [BATCH_KEYS[attempt][b] for b in BATCH_OF_ROW]


def test_resent_rows_keys_are_golden() -> None:
    rows = _plan(_spec(4, 2), [f"+4477009{i:05d}" for i in range(10)], resend=True)
    expected = [RESEND_ROW_KEYS.get(i, k) for i, k in enumerate(ROW_0_9)]
    assert rows["idempotency_key"].to_list() == expected
    assert rows["batch_key"].to_list() == [RESEND_BATCH_KEYS[b] for b in BATCH_OF_ROW]


def test_grouped_batches_with_an_invalid_row_are_golden() -> None:
    phones = [f"+4477009{i:05d}" for i in range(9)]
    phones[4] = "nope"
    rows = _plan(_spec(3), phones, extra_groups=[pl.col("row_index") % 2])
    assert rows.select("idempotency_key", "batch_id", "batch_key", "status").rows() == [
        (ROW_0_9[0], "camp-a1-b000000", "scb-3ed852e0e5d5e0a368430665", None),
        (ROW_0_9[1], "camp-a1-b000002", "scb-a0a985d214cfb37d628b44e6", None),
        (ROW_0_9[2], "camp-a1-b000000", "scb-3ed852e0e5d5e0a368430665", None),
        (ROW_0_9[3], "camp-a1-b000002", "scb-a0a985d214cfb37d628b44e6", None),
        ("sc-bbdb68c14e58310a05284790", None, None, "invalid"),
        (ROW_0_9[5], "camp-a1-b000003", "scb-834c0312f75111c9a61b83a6", None),
        (ROW_0_9[6], "camp-a1-b000001", "scb-1784c54d6a24241b568f0322", None),
        (ROW_0_9[7], "camp-a1-b000003", "scb-834c0312f75111c9a61b83a6", None),
        (ROW_0_9[8], "camp-a1-b000001", "scb-1784c54d6a24241b568f0322", None),
    ]
