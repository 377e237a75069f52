"""The campaign and retry flows end to end: Prefect's test harness, the sandbox over loopback, and real
SeaweedFS and PostgreSQL where the source or results live there."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from support import assert_matches_ledger, ledger_frame, prefect_harness, write_recipients

from smscast import storage
from smscast.campaign import CampaignSpec
from smscast.errors import CampaignStopError, ConfigError
from smscast.flows.campaign import send_campaign
from smscast.flows.retry import retry_failed
from smscast.results import CampaignPaths
from smscast.servers.postgres import EmbeddedPostgres
from smscast.servers.sandbox import SandboxServer
from smscast.sources.credentials import split_password
from smscast.tasks.current import current_results

pytestmark = pytest.mark.integration
KEY = "flow-test-key"


@pytest.fixture(scope="module", autouse=True)
def prefect_api() -> Iterator[None]:
    with prefect_harness():
        yield


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxServer]:
    with SandboxServer(default_key=KEY) as server:
        os.environ["SMSCAST_SANDBOX_API_KEY"] = KEY
        yield server
        os.environ.pop("SMSCAST_SANDBOX_API_KEY", None)


@pytest.fixture(autouse=True)
def clean(sandbox: SandboxServer) -> None:
    sandbox.client.reset()


def spec_for(sandbox: SandboxServer, source: str, results: str, cid: str, **kw: Any) -> CampaignSpec:
    return CampaignSpec(
        campaign_id=cid,
        provider="sandbox",
        source=source,
        results=results,
        base_url=sandbox.base_url,
        body="Hi {{name}}",
        sender="ACME",
        **kw,
    )


def test_campaign_results_match_the_ledger_row_for_row(sandbox: SandboxServer, tmp_path: Path) -> None:
    src = write_recipients(tmp_path / "r.csv", 2300, extra={"name": ["N0", ""]})  # row 1 lacks its variable
    sandbox.client.set_faults(reject_suffixes=["77"])
    summary = send_campaign(spec_for(sandbox, str(src), str(tmp_path / "res"), "c-ledger", shard_batches=1))
    current = assert_matches_ledger(str(tmp_path / "res"), "c-ledger", sandbox.client, "generic", 2300)
    rejected = current.filter(pl.col("status") == "rejected")
    assert rejected.height == 23 and set(rejected["error_code"]) == {"invalid_number"}
    assert current.filter(pl.col("row_index") == 1)["error_code"].item() == "template_var_missing"
    assert summary["by_status"] == {"accepted": 2276, "invalid": 1, "rejected": 23, "failed": 0, "unknown": 0}
    assert summary["segments_accepted"] == 2276
    # Results carry the contract's columns and the sandbox's ids.
    accepted = current.filter(pl.col("status") == "accepted")
    assert accepted["provider_message_id"].str.starts_with("sbx_").all()
    assert accepted["idempotency_key"].n_unique() == accepted.height


def test_rerunning_a_finished_campaign_sends_nothing(sandbox: SandboxServer, tmp_path: Path) -> None:
    src = write_recipients(tmp_path / "r.csv", 50)
    spec = spec_for(sandbox, str(src), str(tmp_path / "res"), "c-rerun")
    send_campaign(spec)
    before = sandbox.client.stats()["providers"]["generic"]
    again = send_campaign(spec)
    after = sandbox.client.stats()["providers"]["generic"]
    assert again["by_status"]["accepted"] == 50
    assert after["requests"] == before["requests"]  # not one request more


def test_rerunning_a_campaign_id_with_other_content_is_refused(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    # Regression: a changed --body on a finished campaign's id said "already complete; nothing to send".
    src = write_recipients(tmp_path / "r.csv", 20)
    spec = spec_for(sandbox, str(src), str(tmp_path / "res"), "c-changed")
    send_campaign(spec)
    requests = ledger_frame(sandbox.client, "generic").height
    changed = spec.model_copy(update={"body": "Other text {{name}}", "sender": "OTHER"})
    for attempt in (changed, changed.model_copy(update={"dry_run": True})):
        with pytest.raises(ConfigError) as info:
            send_campaign(attempt)
        message = str(info.value)
        assert "body, sender differ" in message and "c-changed-2" in message
        assert "Other text" not in message  # names the fields, never their content
    # How the run goes about it may change: a re-run with another rate or batch size still reports.
    again = send_campaign(spec.model_copy(update={"rate": 5.0, "batch_size": 7}))
    assert again["by_status"]["accepted"] == 20
    assert ledger_frame(sandbox.client, "generic").height == requests


def test_resume_after_a_crash_sends_only_the_unrecorded_shards(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    src = write_recipients(tmp_path / "r.csv", 400)
    res = str(tmp_path / "res")
    spec = spec_for(sandbox, str(src), res, "c-resume", batch_size=50, shard_batches=2)
    send_campaign(spec)
    # Simulate a crash after shards 0 and 1 recorded their results but before shards 2 and 3 and the end.
    attempt = CampaignPaths(res, "c-resume").attempt(1)
    for uri in (attempt.done, attempt.unsent_part, attempt.part(2), attempt.part(3)):
        storage.delete(uri)
    requests_before = sum(sandbox.client.stats()["providers"]["generic"]["requests"].values())
    send_campaign(spec)
    stats = sandbox.client.stats()["providers"]["generic"]
    assert sum(stats["requests"].values()) - requests_before == 4  # shards 2 and 3: two batches each
    assert stats["duplicates"] == 200  # those re-sends were recognised by their keys, not sent twice
    assert_matches_ledger(res, "c-resume", sandbox.client, "generic", 400)


def test_retry_resends_failed_rows_with_the_same_keys(sandbox: SandboxServer, tmp_path: Path) -> None:
    src = write_recipients(tmp_path / "r.csv", 300)
    res = str(tmp_path / "res")
    sandbox.client.set_faults(transient_suffixes=["3"])
    first = send_campaign(spec_for(sandbox, str(src), res, "c-retry"))
    assert first["by_status"]["failed"] == 30
    keys_before = (
        current_results(res, "c-retry").filter(pl.col("status") == "failed")["idempotency_key"].sort()
    )
    sandbox.client.set_faults(transient_suffixes=[])
    second = retry_failed(campaign_id="c-retry", results=res, base_url=sandbox.base_url)
    assert second["attempt"] == 2 and second["by_status"]["accepted"] == 30 and second["rows"] == 30
    current = assert_matches_ledger(res, "c-retry", sandbox.client, "generic", 300)
    assert set(current["status"]) == {"accepted"}
    retried = current.filter(pl.col("attempt") == 2)
    assert retried["idempotency_key"].sort().equals(keys_before)
    nothing = retry_failed(campaign_id="c-retry", results=res, base_url=sandbox.base_url)
    assert nothing["retried"] == 0


def test_dry_run_sends_and_writes_nothing(sandbox: SandboxServer, tmp_path: Path) -> None:
    src = write_recipients(tmp_path / "r.csv", 40, extra={"name": ["x" * 200]})
    res = tmp_path / "res"
    summary = send_campaign(spec_for(sandbox, str(src), str(res), "c-dry", dry_run=True))
    assert summary["dry_run"] and summary["by_status"]["planned"] == 40
    assert summary["segments_planned"] == 41  # the 204-character body costs two
    assert ledger_frame(sandbox.client, "generic").height == 0
    assert not res.exists()


def test_refused_credentials_stop_the_campaign_but_every_row_is_recorded(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    src = write_recipients(tmp_path / "r.csv", 30)
    res = str(tmp_path / "res")
    os.environ["SMSCAST_SANDBOX_API_KEY"] = "wrong-key-zzz"
    try:
        with pytest.raises(CampaignStopError, match="credentials refused"):
            send_campaign(spec_for(sandbox, str(src), res, "c-auth"))
    finally:
        os.environ["SMSCAST_SANDBOX_API_KEY"] = KEY
    current = current_results(res, "c-auth")
    assert current.height == 30 and set(current["status"]) == {"failed"}
    text = "".join(str(v) for v in current["error_message"].to_list())
    assert "wrong-key-zzz" not in text


def test_s3_source_and_s3_results(sandbox: SandboxServer, s3_bucket: str, tmp_path: Path) -> None:
    src = write_recipients(tmp_path / "r.csv", 120)
    storage.put_bytes(f"s3://{s3_bucket}/inbox/r.csv", src.read_bytes())
    res = f"s3://{s3_bucket}/results"
    send_campaign(spec_for(sandbox, f"s3://{s3_bucket}/inbox/r.csv", res, "c-s3"))
    assert storage.exists(CampaignPaths(res, "c-s3").attempt(1).done)
    assert_matches_ledger(res, "c-s3", sandbox.client, "generic", 120)


def test_postgres_source(
    sandbox: SandboxServer, postgres: EmbeddedPostgres, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with postgres.connect() as conn:
        conn.execute("DROP TABLE IF EXISTS people")
        conn.execute("CREATE TABLE people (msisdn text, first_name text)")
        conn.execute(
            "INSERT INTO people SELECT '+4474009' || lpad(g::text, 5, '0'), 'P' || g FROM generate_series(1, 75) g"
        )
        conn.commit()
    spec = CampaignSpec(
        campaign_id="c-pg",
        provider="sandbox",
        source=split_password(postgres.dsn)[0],  # the password comes from PGPASSWORD
        query="SELECT * FROM people ORDER BY msisdn",
        results=str(tmp_path / "res"),
        base_url=sandbox.base_url,
        body="Hi {{first_name}}",
        columns={"phone": "msisdn"},
    )
    monkeypatch.setenv("PGPASSWORD", postgres.password)
    send_campaign(spec)
    assert_matches_ledger(str(tmp_path / "res"), "c-pg", sandbox.client, "generic", 75)


def test_a_run_sends_from_its_plan_in_memory_and_lets_go_of_it_before_the_summary(
    sandbox: SandboxServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At ten million rows the plan is some 3 GiB: held through the summary's read-back, it set the peak."""
    import smscast.tasks.dispatch as dispatch
    from smscast.tasks.report import report as real_report
    from smscast.tasks.send import RunMemory

    made: list[RunMemory] = []
    served: list[int] = []
    at_summary: list[object] = []

    class Recorded(RunMemory):
        def __init__(self, plan: pl.DataFrame | None) -> None:
            super().__init__(plan)
            made.append(self)

        def shard_plan(self, shard: int) -> pl.DataFrame | None:
            found = super().shard_plan(shard)
            served.append(-1 if found is None else found.height)
            return found

    def report(*args: Any, **kw: Any) -> object:
        at_summary.extend(m.plan for m in made)
        return real_report(*args, **kw)

    monkeypatch.setattr(dispatch, "RunMemory", Recorded)
    monkeypatch.setattr(dispatch, "report", report)
    src = write_recipients(tmp_path / "r.csv", 120)
    summary = send_campaign(spec_for(sandbox, str(src), str(tmp_path / "res"), "c-memory", shard_batches=1))
    assert summary["by_status"]["accepted"] == 120
    assert made and sum(served) == 120 and -1 not in served  # every shard took its rows from memory
    assert at_summary and all(plan is None for plan in at_summary)  # and none was held by the summary
