"""`max_attempts` counts, per row, the attempts that set out to send it (tasks/current.py `send_tries`,
flows/retry.py `within_tries`): a release of held rows, which sends other rows, costs a failed row nothing.

A campaign whose quiet hours hold five rows: attempt 1 sends the others, two of which fail; attempt 2 releases
the held five, one of which fails. Every failed row has been tried once, though the campaign has two attempts.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from support import flow_sandbox, quiet_hours_around, write_recipients

from smscast.campaign import CampaignSpec
from smscast.servers.sandbox import SandboxServer
from smscast.tasks.current import current_results, send_tries

KEY = "retry-tries-key"


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxServer]:
    with flow_sandbox(KEY) as server:
        yield server


@pytest.mark.integration
def test_a_release_does_not_use_up_the_failed_rows_attempts(
    sandbox: SandboxServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from smscast.flows import release
    from smscast.flows.campaign import send_campaign
    from smscast.flows.retry import retry_failed

    sandbox.client.reset()
    res = str(tmp_path / "res")
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    window = quiet_hours_around(now)
    # Rows 10-14 live in UTC, inside the quiet hours; the others at UTC+6, outside them.
    zones = ["Etc/GMT-6"] * 10 + ["UTC"] * 5 + ["Etc/GMT-6"] * 15
    src = write_recipients(tmp_path / "r.csv", 30, extra={"timezone": zones})
    sandbox.client.set_faults(transient_suffixes=["3"])  # rows 3, 13 and 23 fail, each time they are sent
    spec = CampaignSpec(
        campaign_id="tries",
        source=str(src),
        results=res,
        base_url=sandbox.base_url,
        body="Hi {{name}}",
        quiet_hours=window,
    )
    first = send_campaign(spec)
    assert (first["by_status"]["held"], first["by_status"]["failed"]) == (5, 2)
    monkeypatch.setattr(release, "now_utc", lambda: now + timedelta(hours=2, minutes=1))
    second = release.release_held(campaign_id="tries", results=res, base_url=sandbox.base_url)
    assert second["attempt"] == 2 and second["by_status"]["failed"] == 1

    tries = dict(send_tries(res, "tries").iter_rows())
    assert len(tries) == 30 and set(tries.values()) == {1}  # every row was in one attempt's shards

    # Sent once each: max_attempts=1 leaves them out, and says how to send them.
    spent = retry_failed(campaign_id="tries", results=res, base_url=sandbox.base_url, max_attempts=1)
    assert spent["retried"] == 0 and spent["attempt"] == 2

    # max_attempts=2 with two attempts on record: each failed row has one try left, and gets it. Row 13 is
    # inside its quiet hours again at this (real) time: the retry's policy holds it again, unsent.
    sandbox.client.set_faults(transient_suffixes=[])
    third = retry_failed(campaign_id="tries", results=res, base_url=sandbox.base_url, max_attempts=2)
    assert third["attempt"] == 3 and third["rows"] == 3
    assert (third["by_status"]["accepted"], third["by_status"]["held"]) == (2, 1)
    current = current_results(res, "tries")
    assert dict(current.filter(pl.col("attempt") == 3).select("row_index", "status").iter_rows()) == {
        3: "accepted",
        13: "held",
        23: "accepted",
    }
    # Tried twice now, but for row 13, which attempt 3 held rather than sent.
    after = dict(send_tries(res, "tries").filter(pl.col("row_index").is_in([3, 13, 23])).iter_rows())
    assert after == {3: 2, 13: 1, 23: 2}
