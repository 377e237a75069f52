"""No secret ever appears in logs, artifacts, results or exception texts: the second half of the scenarios
(dropped connections, a connect error, a base URL carrying credentials), a password in the spec's base URL,
and a source's password. What is captured and searched: tests/hostile/secrecy_support.py; the first half of
the scenarios: tests/hostile/test_secrecy.py."""

from __future__ import annotations

import os
from typing import Any
from uuid import UUID

import pytest
from hostile.secrecy_support import (
    KEYS,
    SECOND_HALF,
    URL_PASSWORD,
    Capture,
    assert_no_leak,
    capture_fixture,  # noqa: F401 (a fixture)
    leaks,
    no_secret_anywhere,
    prefect_records,
    run_captured,
    sandbox_fixture,  # noqa: F401 (a fixture)
)
from prefect import tags
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
from pydantic import ValidationError

from smscast.errors import ConfigError
from smscast.servers.sandbox import SandboxServer
from smscast.tasks.current import current_results

pytestmark = pytest.mark.integration


test_no_secret_anywhere = no_secret_anywhere(SECOND_HALF)


# LEAK, outside this module's files: CampaignSpec.base_url is a flow parameter, so a URL with user:password@
# is stored verbatim in the Prefect flow run's parameters (API, UI) before resolve_settings refuses it (the
# same URL in SMSCAST_<PROVIDER>_BASE_URL is refused without a trace: test_no_secret_anywhere[*-url_password]).
# Suggested fix: a field validator on CampaignSpec.base_url (smscast/campaign.py) calling
# smscast.settings.check_base_url, so that CampaignSpec(...) fails before any run exists. Strict: XPASS
# once fixed.
@pytest.mark.timeout(120)
def test_password_in_the_spec_base_url_stays_out_of_prefect(sandbox: SandboxServer, capture: Capture) -> None:
    try:
        run = run_captured("sandbox", "url_password", sandbox, capture, password_in_spec=True)
    except ValidationError as exc:  # the suggested fix: the spec itself refuses the URL
        assert URL_PASSWORD not in str(exc)
        return
    assert isinstance(run.error, ConfigError)
    assert_no_leak(run)


# ---- a source's credentials -----------------------------------------------------------------------------------

PG_PASSWORD = "SECRET-pgpass-3c4d5e"


def flow_runs_tagged(tag: str) -> list[UUID]:
    """The flow runs carrying `tag` (the harness's API is shared with other test modules' runs)."""
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[tag])))
    return [r.id for r in runs]


@pytest.mark.timeout(180)
def test_a_source_password_is_recorded_nowhere(
    sandbox: SandboxServer, postgres: Any, capture: Capture
) -> None:
    """Regression: `smscast send postgresql://user:pw@host/db` (the README's example) wrote the password into
    `_work/…/spec.json` and into the Prefect flow run's parameters. The command line is the path under test:
    it is where a password in a source URI is accepted and moved out of the way."""
    from typer.testing import CliRunner

    from smscast.cli import app

    tmp_path, monkeypatch = capture.tmp_path, capture.monkeypatch
    role = f"sec_reader_{os.getpid()}_{tmp_path.name[-6:]}".replace("-", "_")
    with postgres.connect() as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS sec_people (msisdn text, name text)")
        conn.execute("TRUNCATE sec_people")
        conn.execute(
            "INSERT INTO sec_people SELECT '+4474009' || lpad(g::text, 5, '0'), 'P' || g FROM generate_series(1, 12) g"
        )
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{PG_PASSWORD}'")
        conn.execute(f"GRANT SELECT ON sec_people TO {role}")
        conn.commit()
    monkeypatch.setenv("PGPASSWORD", "placeholder")
    monkeypatch.delenv("PGPASSWORD")  # restored (to absent) after the test: the command sets it
    monkeypatch.setenv("SMSCAST_HOME", str(tmp_path / "home"))  # no local Prefect server of the developer's
    monkeypatch.setenv("SMSCAST_SANDBOX_API_KEY", KEYS["sandbox"])
    capture.debug_logs()
    results = tmp_path / "results"
    campaign_id = f"sec-pg-{tmp_path.name[-6:]}".replace("_", "-")
    dsn = f"postgresql://{role}:{PG_PASSWORD}@127.0.0.1:{postgres.port}/smscast?sslmode=disable"
    args = [
        "send", dsn, "--query", "SELECT msisdn, name FROM sec_people ORDER BY msisdn",
        "--column", "phone=msisdn", "-p", "sandbox", "-c", campaign_id, "-r", str(results),
        "--base-url", sandbox.base_url, "--body", "Hi {{name}}",
    ]  # fmt: skip
    with tags(campaign_id):
        outcome = CliRunner().invoke(app, args)
    assert outcome.exit_code == 0, outcome.output
    runs = flow_runs_tagged(campaign_id)
    assert runs, "the capture is not live: no flow run of the campaign"
    channels = {
        **capture.channels(results, stdout=outcome.output),
        **{f"{kind} of run {run}": text for run in runs for kind, text in prefect_records(run).items()},
    }
    assert any("sec_people" in text for name, text in channels.items() if name.startswith("flow run of"))
    found = leaks(channels, [PG_PASSWORD])
    assert not found, "the source's password leaked:\n" + "\n".join(found)
    current = current_results(str(results), campaign_id)
    assert current.height == 12 and set(current["status"]) == {"accepted"}
