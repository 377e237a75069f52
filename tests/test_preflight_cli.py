"""The preflight on the command line: `smscast doctor`, and `send` / `retry` stopping with exit 2 before any
flow (hence any Prefect server) starts; the sandbox's start banner and help.

`send` and `retry` are smscast/cli.py's own commands. The flows are replaced by recorders: the command reaching
one is what starts Prefect and its server, so "never called" is "no server started"."""

from __future__ import annotations

import shlex
import sys
import types
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

import smscast.cli
from smscast.providers.names import PROVIDER_NAMES
from smscast.sandbox.framework import DEFAULT_API_KEY
from smscast.servers.sandbox import SandboxServer
from smscast.settings import env_prefix

KEY = "pf-cli-secret-key"


def cli_app() -> Any:
    return smscast.cli.app


@pytest.fixture
def flows(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[str]:
    """Recorders in place of the campaign and retry flows; the names of the flows called."""
    called: list[str] = []

    def send_campaign(spec: Any, wait_for_lock: bool = False) -> dict[str, Any]:
        called.append("send")
        return {}

    def retry_failed(**kw: Any) -> dict[str, Any]:
        called.append("retry")
        return {}

    campaign = types.ModuleType("smscast.flows.campaign")
    campaign.send_campaign = send_campaign  # type: ignore[attr-defined]
    retry = types.ModuleType("smscast.flows.retry")
    retry.retry_failed = retry_failed  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "smscast.flows.campaign", campaign)
    monkeypatch.setitem(sys.modules, "smscast.flows.retry", retry)
    for name in PROVIDER_NAMES:
        monkeypatch.delenv(f"{env_prefix(name)}_API_KEY", raising=False)
        monkeypatch.delenv(f"{env_prefix(name)}_BASE_URL", raising=False)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect-home"))
    monkeypatch.setenv("SMSCAST_HOME", str(tmp_path / "smscast-home"))
    return called


def send_args(tmp_path: Path, *extra: str) -> list[str]:
    source = tmp_path / "r.csv"
    source.write_text("phone,name\n+447400900123,Ann\n")
    results = str(tmp_path / "results")
    return [
        "send",
        str(source),
        "-p",
        "sandbox",
        "-c",
        "cli-1",
        "-r",
        results,
        "--body",
        "Hi {{name}}",
        *extra,
    ]


def test_send_with_a_missing_key_exits_2_before_any_flow(
    flows: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = cli_app()
    args = send_args(tmp_path, "--base-url", "http://127.0.0.1:8765")
    got = CliRunner().invoke(app, args)
    assert got.exit_code == 2, got.output
    assert "error: 1 problem; smscast send started nothing:" in got.output
    assert "no credentials for provider 'sandbox' — export SMSCAST_SANDBOX_API_KEY=" in got.output
    assert "Traceback" not in got.output and flows == []
    # No Prefect server is announced above the mistakes: nothing starts (the fixture leaves no API configured,
    # so a flow would start Prefect's temporary server).
    assert "temporary server" not in got.output and "local Prefect server" not in got.output
    monkeypatch.setenv("SMSCAST_SANDBOX_API_KEY", KEY)  # the control: ready, it reaches the flow
    got = CliRunner().invoke(app, args)
    assert got.exit_code == 0, got.output
    assert flows == ["send"] and KEY not in got.output
    assert "starting Prefect's temporary server" in got.output  # said once a flow is about to start


def test_send_lists_every_problem_and_parameters_in_words(flows: list[str], tmp_path: Path) -> None:
    app = cli_app()
    got = CliRunner().invoke(app, [*send_args(tmp_path), "-p", "robase", "--body", "Hi {{first}}"])
    assert got.exit_code == 2 and flows == []
    problems = [line for line in got.output.splitlines() if line.startswith("  ")]
    assert len(problems) == 3 and "robase needs a sender" in got.output and "'first'" in got.output
    got = CliRunner().invoke(app, [*send_args(tmp_path), "-c", "promo 06/12!", "--rate", "0"])
    assert got.exit_code == 2 and flows == []
    assert "error: invalid parameters:" in got.output
    assert "  campaign id: 1–64 letters, digits, '_', '.', '-', starting with a letter or digit" in got.output
    assert "  rate: must be greater than 0" in got.output
    assert "pattern" not in got.output and "errors.pydantic.dev" not in got.output


def test_retry_checks_the_recorded_campaign_first(
    flows: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from smscast.campaign import CampaignSpec
    from smscast.tasks.manifest import save_spec

    app = cli_app()
    results = str(tmp_path / "results")
    got = CliRunner().invoke(app, ["retry", "-c", "never-sent", "-r", results])
    assert got.exit_code == 2 and flows == []
    assert "campaign 'never-sent' has no recorded parameters" in got.output
    spec = CampaignSpec(
        campaign_id="cli-1", source="r.csv", results=results, body="Hi", base_url="http://h:1"
    )
    save_spec(spec)
    got = CliRunner().invoke(app, ["retry", "-c", "cli-1", "-r", results])
    assert got.exit_code == 2 and flows == [] and "no credentials for provider 'sandbox'" in got.output
    monkeypatch.setenv("SMSCAST_SANDBOX_API_KEY", KEY)
    got = CliRunner().invoke(app, ["retry", "-c", "cli-1", "-r", results])
    assert got.exit_code == 0, got.output
    assert flows == ["retry"]


def test_doctor_says_ok_with_what_it_checked_or_lists_problems(
    flows: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = cli_app()
    args = ["doctor", *send_args(tmp_path)[1:], "--wait-for-lock"]  # send's command line, one word changed
    got = CliRunner().invoke(app, args)
    assert got.exit_code == 2 and flows == []
    assert got.output.startswith("error: 2 problems:")
    assert "no endpoint for provider 'sandbox'" in got.output and "no credentials" in got.output
    monkeypatch.setenv("SMSCAST_SANDBOX_API_KEY", KEY)
    monkeypatch.setenv("SMSCAST_SANDBOX_BASE_URL", "http://127.0.0.1:8765")
    got = CliRunner().invoke(app, args)
    assert got.exit_code == 0, got.output
    assert got.output.startswith("ok: campaign 'cli-1' is ready to send through sandbox. Checked:")
    assert "credentials: SMSCAST_SANDBOX_API_KEY is set" in got.output and KEY not in got.output
    assert flows == []


def test_sandbox_help_states_the_key_it_accepts() -> None:
    got = CliRunner().invoke(cli_app(), ["sandbox", "--help"])
    assert got.exit_code == 0
    assert f"accepts the key {DEFAULT_API_KEY}" in " ".join(got.output.split())


def test_the_sandbox_banner_exports_what_smscast_reads() -> None:
    with SandboxServer() as server, httpx.Client(base_url=server.base_url, timeout=10.0) as http:
        banner = server.log_tail()  # printed before the server answers, which `start` waited for
        exports: dict[str, str] = {}
        for line in banner.splitlines():
            words = shlex.split(line)
            if words[:1] == ["export"]:
                exports |= dict(w.split("=", 1) for w in words[1:])
        wanted = {f"{env_prefix(p)}_{what}" for p in PROVIDER_NAMES for what in ("BASE_URL", "API_KEY")}
        assert set(exports) == wanted
        assert {exports[f"{env_prefix(p)}_BASE_URL"] for p in PROVIDER_NAMES} == {server.base_url}
        # The keys are the ones the emulators accept: a request with them passes authentication.
        bearer = {"Authorization": f"Bearer {exports['SMSCAST_SANDBOX_API_KEY']}"}
        assert http.post("/sandbox/v1/messages/batch", json={}, headers=bearer).status_code == 400
        assert (
            http.post(
                "/sandbox/v1/messages/batch", json={}, headers={"Authorization": "Bearer x"}
            ).status_code
            == 401
        )
        key_id, _, secret = exports["SMSCAST_TEXTINGLINE_API_KEY"].partition(":")
        assert http.post("/api/v1/messaging/batch", json={}, auth=(key_id, secret)).status_code == 400
        assert http.post("/api/v1/messaging/batch", json={}, auth=(key_id, "wrong")).status_code == 401
