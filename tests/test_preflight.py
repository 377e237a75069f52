"""The preflight (smscast/preflight.py): each check finds its problem, several are reported at once, a clean
campaign has none, and pydantic's refusals read as words. The sources' checks are tests/test_preflight_sources.py;
the command line's side is tests/test_preflight_cli.py."""

from __future__ import annotations

import http.server
import threading
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from smscast.campaign import CampaignSpec
from smscast.preflight import Problem, describe_validation_error, preflight, problem_from, run_preflight
from smscast.providers.names import PROVIDER_NAMES
from smscast.settings import env_prefix
from smscast.tasks.manifest import save_spec

KEY = "pf-secret-key-123"


@pytest.fixture(autouse=True)
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No provider variables, no Prefect API, no local server, an empty Prefect home: nothing to find."""
    for name in PROVIDER_NAMES:
        monkeypatch.delenv(f"{env_prefix(name)}_API_KEY", raising=False)
        monkeypatch.delenv(f"{env_prefix(name)}_BASE_URL", raising=False)
    for name in (
        "PREFECT_API_URL",
        "PREFECT_PROFILE",
        "PGPASSWORD",
        "PREFECT_SERVER_DATABASE_CONNECTION_URL",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect-home"))
    monkeypatch.setenv("SMSCAST_HOME", str(tmp_path / "smscast-home"))


def csv_file(path: Path, header: str = "phone,name", rows: tuple[str, ...] = ("+447400900123,Ann",)) -> str:
    path.write_text("\n".join((header, *rows)) + "\n", encoding="utf-8")
    return str(path)


def ready(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **fields: Any) -> CampaignSpec:
    """A sandbox campaign that is ready to send, with `fields` changed."""
    monkeypatch.setenv("SMSCAST_SANDBOX_API_KEY", KEY)
    base: dict[str, Any] = dict(
        campaign_id="pf-1",
        provider="sandbox",
        source=csv_file(tmp_path / "r.csv"),
        results=str(tmp_path / "results"),
        body="Hi {{name}}",
        base_url="http://127.0.0.1:8765",
    )
    return CampaignSpec(**(base | fields))


def lines(problems: list[Problem]) -> str:
    text = "\n".join(p.line() for p in problems)
    assert KEY not in text
    return text


def preflight_of(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **fields: Any) -> list[Problem]:
    """The preflight's problems with the ready campaign, `fields` changed."""
    return preflight(ready(tmp_path, monkeypatch, **fields))


def test_a_ready_campaign_has_no_problems_and_leaves_no_trace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    found = run_preflight(ready(tmp_path, monkeypatch))
    assert found.problems == []
    assert any("writable" in c for c in found.checked) and any("CSV" in c for c in found.checked)
    assert not (tmp_path / "results").exists()  # the probe's directories are removed with it


def test_missing_key_and_a_dry_run_that_needs_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = ready(tmp_path, monkeypatch)
    monkeypatch.delenv("SMSCAST_SANDBOX_API_KEY")
    [problem] = preflight(spec)
    assert problem.what == "no credentials for provider 'sandbox'"
    assert "export SMSCAST_SANDBOX_API_KEY=" in problem.fix and "smscast-sandbox-api-key" in problem.fix
    assert preflight(spec.model_copy(update={"dry_run": True})) == []


def test_missing_and_unusable_endpoints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = ready(tmp_path, monkeypatch, base_url=None)
    [problem] = preflight(spec)
    assert problem.what == "no endpoint for provider 'sandbox'"
    assert "SMSCAST_SANDBOX_BASE_URL" in problem.fix
    monkeypatch.setenv("SMSCAST_SANDBOX_BASE_URL", "http://user:hunter2@127.0.0.1:8765")
    [problem] = preflight(spec)
    assert "carries credentials" in problem.what and "hunter2" not in problem.line()
    monkeypatch.setenv("SMSCAST_SANDBOX_BASE_URL", "http://127.0.0.1:8765")
    assert preflight(spec) == []


def test_a_secret_block_on_the_prefect_api_counts_as_a_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocks = {"smscast-robase-api-key"}

    class Blocks(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            name = self.path.rsplit("/", 1)[-1]
            self.send_response(200 if name in blocks else 404)
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Blocks)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("PREFECT_API_URL", f"http://127.0.0.1:{server.server_address[1]}/api")
        spec = ready(tmp_path, monkeypatch, provider="robase", sender="ACME", base_url=None)
        assert preflight(spec) == []
        [problem] = preflight(spec.model_copy(update={"provider": "instasent"}))
        assert problem.what == "no credentials for provider 'instasent'"
    finally:
        server.shutdown()


def test_a_secret_block_in_prefects_local_database_counts_as_a_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No Prefect server running: the block is looked up where the temporary server would find it (the
    tables and columns of Prefect's own schema, prefect/server/database/orm_models.py)."""
    import sqlite3

    spec = ready(tmp_path, monkeypatch, provider="robase", sender="ACME", base_url=None)
    assert [p.check for p in preflight(spec)] == ["credentials"]  # no database at all
    home = tmp_path / "prefect-home"
    home.mkdir()
    with sqlite3.connect(home / "prefect.db") as db:
        db.execute("CREATE TABLE block_type (id TEXT, slug TEXT)")
        db.execute("CREATE TABLE block_document (id TEXT, name TEXT, block_type_id TEXT)")
        db.execute("INSERT INTO block_type VALUES ('t1', 'secret'), ('t2', 'json')")
        db.execute("INSERT INTO block_document VALUES ('d1', 'smscast-instasent-api-key', 't2')")
    assert [p.check for p in preflight(spec)] == ["credentials"]  # a database without the block
    with sqlite3.connect(home / "prefect.db") as db:
        db.execute("INSERT INTO block_document VALUES ('d2', 'smscast-robase-api-key', 't1')")
    assert preflight(spec) == []
    instasent = spec.model_copy(update={"provider": "instasent"})  # its block is not a Secret
    assert [p.check for p in preflight(instasent)] == ["credentials"]


@pytest.mark.parametrize(
    ("provider", "fields", "words"),
    [
        ("robase", {"sender": None}, "robase needs a sender"),
        ("sent-dm", {"sender": "ACME", "body": None, "template": "t1"}, "drop --sender"),
        ("postman", {"sender": "ACME", "body": None, "template": "campaign_1"}, "drop --sender"),
        ("instasent", {"sender": "A"}, "instasent: sender 'A' must be 3-11 letters"),
    ],
)
def test_the_providers_own_sender_rules(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, provider: str, fields: dict[str, Any], words: str
) -> None:
    monkeypatch.setenv(f"{env_prefix(provider)}_API_KEY", KEY)
    spec = ready(tmp_path, monkeypatch, provider=provider, base_url=None, sender="ACME")
    spec = spec.model_copy(update=fields)
    problems = [p for p in preflight(spec) if p.check == "campaign"]
    assert len(problems) == 1 and words in lines(problems)


def test_a_sender_pattern_is_not_shown_as_a_regex(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    [problem] = preflight_of(tmp_path, monkeypatch, sender="Bad_Sender!!")
    assert problem.what == "sandbox: sender 'Bad_Sender!!' is not valid"
    assert "[" not in problem.line() and "docs/providers/sandbox.md" in problem.fix


def test_unwritable_results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "afile").write_text("")
    [problem] = preflight_of(tmp_path, monkeypatch, results=str(tmp_path / "afile" / "results"))
    assert problem.what.endswith("afile is a file, not a directory")
    dry = ready(tmp_path, monkeypatch, results=str(tmp_path / "afile" / "results"), dry_run=True)
    assert preflight(dry) == []  # a dry run writes nothing


def test_a_campaign_id_recorded_with_other_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = ready(tmp_path, monkeypatch)
    save_spec(spec.model_copy(update={"body": "Hello {{name}}"}))
    [problem] = preflight(spec)
    assert "was already started" in problem.what and "body" in problem.what
    assert problem.fix.startswith("Give the new campaign its own id")


def test_every_problem_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "afile").write_text("")
    spec = ready(
        tmp_path,
        monkeypatch,
        provider="robase",
        base_url=None,
        source=csv_file(tmp_path / "m.csv", "msisdn,name"),
        body="Hi {{first}}",
        results=str(tmp_path / "afile" / "r"),
    )
    checks = [p.check for p in preflight(spec)]
    assert checks == ["credentials", "campaign", "source", "source", "results"]


def test_validation_errors_in_words() -> None:
    with pytest.raises(ValidationError) as caught:
        CampaignSpec.model_validate(
            {"campaign_id": "promo 06/12!", "source": "r.csv", "results": "out", "rate": 0, "provider": "x"}
        )
    assert describe_validation_error(caught.value) == [
        "campaign id: 1–64 letters, digits, '_', '.', '-', starting with a letter or digit",
        "provider: one of sandbox, sent-dm, robase, textingline, postman or instasent",
        "rate: must be greater than 0",
    ]
    text = str(describe_validation_error(caught.value))
    assert "pydantic" not in text and "^[" not in text and "promo 06/12!" not in text


def test_messages_split_where_they_say_what_to_do() -> None:
    assert problem_from("x", "robase needs a sender: pass --sender", "f") == Problem(
        "x", "robase needs a sender", "pass --sender"
    )
    assert problem_from("x", "something odd happened.", "fallback") == Problem(
        "x", "something odd happened", "fallback"
    )


def test_a_provider_that_needs_no_key_never_looks_for_a_block(monkeypatch: pytest.MonkeyPatch) -> None:
    """A dry run's provider (require_key=False) does not reach Prefect's API for a Secret block: from a plain
    process that would start Prefect's temporary server. One that needs a key does look."""
    from smscast import settings
    from smscast.errors import ConfigError

    looked: list[str] = []

    def secret_block(name: str) -> str | None:
        looked.append(name)
        return None

    monkeypatch.setattr(settings, "secret_block", secret_block)
    monkeypatch.delenv("SMSCAST_SANDBOX_API_KEY", raising=False)
    found = settings.resolve_settings("sandbox", base_url="http://127.0.0.1:9", require_key=False)
    assert found.api_key is None and looked == []
    with pytest.raises(ConfigError, match="no credentials"):
        settings.resolve_settings("sandbox", base_url="http://127.0.0.1:9")
    assert looked == ["smscast-sandbox-api-key"]
