"""Two smaller bugs the reliability suite found, fixed since and kept as regression tests (the four
crash-safety bugs are in test_crash_safety.py):

* test_a_lease_of_one_second_or_less_is_held_once_acquired
      CampaignLock keeps a fixed 1 s safety margin (`valid_until = now + lease - 1.0`): with
      SMSCAST_LOCK_LEASE_SECONDS=1 (or less) the lock is never `held()`, so every run stops before its first
      request and fails with "another run took over this campaign", which is not what happened.
* test_rows_aborted_by_a_quota_stop_do_not_blame_the_credentials
      rows not sent after any campaign-stopping refusal are recorded with the message "campaign stopped:
      provider refused credentials" — also when the stop was textingline's daily quota (33012), an empty
      balance or a lost lock. The operator reading the results is sent to fix the wrong thing.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import polars as pl

from smscast import ratelimit
from smscast.campaign import CampaignSpec
from smscast.lock import CampaignLock
from smscast.providers.textingline import TextinglineProvider
from smscast.settings import ProviderSettings, Secret
from smscast.tasks.plan import plan_campaign
from smscast.tasks.send_batch import RetryPolicy
from smscast.tasks.send_engine import send_rows
from smscast.tasks.validate import validate_recipients


def test_a_lease_of_one_second_or_less_is_held_once_acquired(tmp_path: Path) -> None:
    lock = CampaignLock(str(tmp_path / "res"), "c", lease=1.0)
    lock.acquire()
    try:
        assert lock.held(), "a run that has just taken the lock is told another run took it over"
    finally:
        lock.release()


def test_rows_aborted_by_a_quota_stop_do_not_blame_the_credentials() -> None:
    provider = TextinglineProvider(
        ProviderSettings(base_url="http://textingline.test", api_key=Secret("kid:secret"))
    )
    spec = CampaignSpec(
        campaign_id="quota",
        provider="textingline",
        source="x",
        results="r",
        body="Hi {{name}}",
        sender="+18005559876",
        batch_size=10,
        concurrency=1,
        rate=10_000,
    )
    df = pl.DataFrame(
        {
            "row_index": list(range(30)),
            "phone_raw": [f"+4474009{i:05d}" for i in range(30)],
            "name": [f"n{i}" for i in range(30)],
        }
    )
    planned = plan_campaign(
        validate_recipients(df, spec, provider.caps, provider), spec, provider.caps, provider
    )
    rows = planned.rows.filter(pl.col("shard").is_not_null())

    def quota(request: httpx.Request) -> httpx.Response:  # textingline's daily quota, for every request
        return httpx.Response(
            429, json={"code": 33012, "message": "Daily messaging quota reached", "status": 429}
        )

    async def go() -> pl.DataFrame:
        ratelimit._BUCKETS.clear()
        async with httpx.AsyncClient(transport=httpx.MockTransport(quota)) as client:
            out, _ = await send_rows(provider, rows, spec, client=client, policy=RetryPolicy(max_attempts=2))
        return out

    out = asyncio.run(go())
    assert out.height == 30 and set(out["status"]) == {"failed"}
    assert "33012" in set(out["error_code"]) and "aborted" in set(out["error_code"])  # the stop happened
    aborted = out.filter(pl.col("error_code") == "aborted")
    messages = set(aborted["error_message"].to_list())
    assert not any("credentials" in m for m in messages), messages
