"""No secret ever appears in logs, artifacts, results or exception texts; phones are masked in logs.

Every available provider runs campaigns against the sandbox with a distinctive API key, on the happy path and
on the failing ones: a wrong key (401), a 5xx storm, dropped connections, a connect error, a malformed base
URL, and a base URL carrying credentials. Everything a run leaves behind is captured and searched for the key
(as given, in its parts, and base64-encoded as basic auth would carry it):

* Python logging records at DEBUG (root, Prefect's, httpx's and httpcore's loggers, and Prefect's
  non-propagating ones), with their arguments and formatted tracebacks;
* the process's stdout and stderr (file-descriptor level);
* what the Prefect API holds: flow and task runs (states, messages, parameters), their logs, artifacts and
  events, read back through the Prefect client;
* the results Parquet (every column) and every file under `<results>/_work` (Parquet read back, other files
  as bytes);
* `str()`, `repr()` and the formatted traceback (with its chain) of the exception a run ends with.

Log records must also hold no recipient's full phone number, E.164 or bare digits (a masked `+44********23`
is fine).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import importlib.util
import logging
import os
import pickle
import socket
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import polars as pl
import pytest
from prefect import tags
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterTags,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.logging.handlers import APILogWorker
from provider_facts import FACTS
from pydantic import ValidationError
from support import prefect_harness

import smscast.tasks.send_engine
from smscast.campaign import CampaignSpec
from smscast.errors import ConfigError, SmscastError
from smscast.flows.campaign import send_campaign
from smscast.providers.registry import provider_class
from smscast.servers.sandbox import SandboxServer
from smscast.settings import ProviderSettings, Secret, resolve_settings
from smscast.tasks.current import current_results
from smscast.tasks.load import load_recipients
from smscast.tasks.plan import plan_campaign
from smscast.tasks.send_engine import send_rows
from smscast.tasks.validate import validate_recipients

pytestmark = pytest.mark.integration


def spec_fields(provider: str) -> dict[str, Any]:
    """A campaign that greets each recipient by name: in our text, or as the template's parameter."""
    facts = FACTS[provider]
    content: dict[str, Any] = {"template_vars": ("name",)} if facts.template else {"body": "Hi {{name}}"}
    if facts.test_rate is not None:  # the documented rate would make the run last minutes
        content["rate"] = facts.test_rate
    return facts.spec_fields(**content)


def _available(provider: str) -> bool:
    return importlib.util.find_spec(f"providers.{provider.replace('-', '_')}") is not None


PROVIDERS = [p for p in FACTS if _available(p)]  # a provider module still in progress is skipped


def key_for(provider: str, tag: str = "9f8e7d") -> str:
    return FACTS[provider].api_key(f"SECRET-{provider}-{tag}")  # textingline's: key_id:secret


KEYS = {p: key_for(p) for p in FACTS}
WRONG = {p: key_for(p, "wrong-4c3b2a") for p in FACTS}
URL_PASSWORD = "SECRET-urlpass-5e6f7a"


def needles(key: str) -> set[str]:
    """The forms a key can leak in: as given, its key_id and secret parts, as a basic-auth header value,
    base64 of the whole, percent-encoded."""
    forms = {key, key.replace(":", "%3A"), base64.b64encode(key.encode()).decode()}
    forms |= {part for part in key.split(":") if part}
    return forms


ALL_NEEDLES = sorted(set().union(*(needles(k) for k in (*KEYS.values(), *WRONG.values(), URL_PASSWORD))))

N = 24
PHONES = [f"+4474009{i:05d}" for i in range(N)]


def write_recipients(path: Path) -> Path:
    lines = ["phone,name"]
    lines += [f"{p},{'Ann' if i % 2 else 'Bob'}" for i, p in enumerate(PHONES)]
    lines += ["07400 900999,Cy", "+447400900998,"]  # no country code; an empty template variable
    path.write_text("\n".join(lines) + "\n")
    return path


RECIPIENT_PHONES = [*PHONES, "+447400900999", "+447400900998"]
PHONE_NEEDLES = sorted({p for p in RECIPIENT_PHONES} | {p[1:] for p in RECIPIENT_PHONES})


@dataclasses.dataclass(frozen=True)
class FastPolicy(smscast.tasks.send_engine.RetryPolicy):
    """The engine's policy with near-zero backoff, so that storms of failures end in a second."""

    backoff_base: float = 0.001
    backoff_cap: float = 0.01


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxServer]:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    knobs = {f.emulator: f.lift for f in FACTS.values() if f.test_rate is not None}
    with (
        prefect_harness(),
        SandboxServer(api_keys={p: KEYS[p] for p in PROVIDERS}, provider_knobs=knobs) as server,
    ):
        yield server


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- capture ------------------------------------------------------------------------------------------------

_QUIET_LOGGERS = ("prefect.extra", "prefect._internal")  # Prefect's loggers that do not propagate to root
_LOGGERS = ("", "prefect", "httpx", "httpcore", "smscast", "tasks", "flows", "providers", "pandera")


def record_text(record: logging.LogRecord) -> str:
    parts = [record.name, record.getMessage(), repr(record.args)]
    if record.exc_info:
        parts.append("".join(traceback.format_exception(*record.exc_info)))
    if record.exc_text:
        parts.append(record.exc_text)
    if record.stack_info:
        parts.append(record.stack_info)
    return "\n".join(parts)


def exception_text(exc: BaseException | None) -> str:
    if exc is None:
        return ""
    parts = [str(exc), repr(exc), "".join(traceback.format_exception(exc))]
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:  # the whole chain, suppressed context included
        seen.add(id(cur))
        parts += [str(cur), repr(cur), repr(getattr(cur, "__dict__", {}))]
        cur = cur.__cause__ or cur.__context__
    return "\n".join(parts)


def prefect_records(flow_run_id: UUID) -> dict[str, str]:
    """What the Prefect API keeps of a flow run, as JSON text per kind."""
    APILogWorker.drain_all(timeout=10)
    out: dict[str, str] = {}
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(flow_run_id)
        out["flow run"] = flow_run.model_dump_json()
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        out["task runs"] = "\n".join(r.model_dump_json() for r in runs)
        logs = []
        offset = 0
        while True:
            page = client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])),
                limit=200,
                offset=offset,
            )
            logs += page
            offset += len(page)
            if len(page) < 200:
                break
        out["API logs"] = "\n".join(log.model_dump_json() for log in logs)
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
        out["artifacts"] = "\n".join(a.model_dump_json() for a in artifacts)
        try:
            events = client.read_events(limit=200)
            out["events"] = "\n".join(e.model_dump_json() for e in events.events)
        except Exception as exc:  # events are best effort in the ephemeral API
            out["events"] = f"unreadable: {type(exc).__name__}"
    return out


def files_text(root: Path) -> dict[str, str]:
    """Every file under `root`: Parquet read back (every column as text), anything else as bytes."""
    out: dict[str, str] = {}
    if not root.exists():
        return out
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        raw = path.read_bytes()
        text = raw.decode("utf-8", errors="replace")
        if path.suffix == ".parquet":
            frame = pl.read_parquet(path)
            text += "\n" + frame.select(pl.all().cast(pl.String)).write_csv()
        out[str(path.relative_to(root))] = text
    return out


def leaks(channels: dict[str, str], searched: list[str]) -> list[str]:
    found = []
    for channel, text in channels.items():
        for needle in searched:
            at = text.find(needle)
            if at >= 0:
                context = text[max(0, at - 120) : at + len(needle) + 60].replace(needle, "<<HERE>>")
                found.append(f"{channel}: …{context}…")
                break
    return found


# ---- the runs -----------------------------------------------------------------------------------------------

SCENARIOS = ["ok", "wrong_key", "5xx_storm", "dropped", "connect_error", "malformed_base_url", "url_password"]


@dataclasses.dataclass
class Run:
    error: BaseException | None
    channels: dict[str, str]
    results: Path
    campaign_id: str


def run_captured(
    provider: str,
    scenario: str,
    sandbox: SandboxServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    *,
    password_in_spec: bool = False,
) -> Run:
    """Run one campaign in `scenario` and capture everything it leaves behind."""
    sandbox.client.reset()
    monkeypatch.setattr(smscast.tasks.send_engine, "RetryPolicy", FastPolicy)
    facts = FACTS[provider]
    monkeypatch.setenv(facts.key_env, WRONG[provider] if scenario == "wrong_key" else KEYS[provider])
    monkeypatch.delenv(facts.base_url_env, raising=False)
    for name, value in facts.test_env_vars.items():  # Postman's test environment: 20 rows per file
        monkeypatch.setenv(name, value)
    base_url: str | None = sandbox.base_url
    if scenario == "ok":
        sandbox.client.set_faults(provider=provider, reject_suffixes=["13"])
    elif scenario == "5xx_storm":
        sandbox.client.set_faults(provider=provider, next_5xx=100_000)
    elif scenario == "dropped":
        sandbox.client.set_faults(provider=provider, next_drop_before=100_000)
    elif scenario == "connect_error":
        base_url = f"http://127.0.0.1:{closed_port()}"
    elif scenario == "malformed_base_url":
        # No scheme. Through the environment: given as spec.base_url, CampaignSpec itself refuses it.
        base_url = None
        monkeypatch.setenv(facts.base_url_env, "127.0.0.1:8080/api")
    elif scenario == "url_password":
        with_password = sandbox.base_url.replace("http://", f"http://smscast:{URL_PASSWORD}@")
        if password_in_spec:
            base_url = with_password
        else:  # the environment, as a deployment would configure it
            base_url = None
            monkeypatch.setenv(facts.base_url_env, with_password)

    for name in _LOGGERS:
        caplog.set_level(logging.DEBUG, logger=name or None)
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).addHandler(caplog.handler)
        monkeypatch.setattr(logging.getLogger(name), "level", logging.DEBUG)
    results = tmp_path / "results"
    spec = CampaignSpec(
        campaign_id=f"sec-{provider}-{scenario}".replace("_", "-"),
        provider=provider,  # type: ignore[arg-type]
        source=str(write_recipients(tmp_path / "recipients.csv")),
        results=str(results),
        base_url=base_url,
        **spec_fields(provider),
    )
    try:
        state = send_campaign(spec, return_state=True)
        error = state.result(raise_on_failure=False) if state.is_failed() or state.is_crashed() else None
        assert error is None or isinstance(error, BaseException)
        flow_run_id = state.state_details.flow_run_id
    finally:
        for name in _QUIET_LOGGERS:
            logging.getLogger(name).removeHandler(caplog.handler)
    assert flow_run_id is not None

    out, err = capfd.readouterr()
    channels = {
        "log records": "\n".join(record_text(r) for r in caplog.records),
        "stdout": out,
        "stderr": err,
        "flow state": f"{state!r} {state.message} {state.name}",
        "exception": exception_text(error),
        **prefect_records(flow_run_id),
        **{f"results file {k}": v for k, v in files_text(results).items()},
    }
    return Run(error, channels, results, spec.campaign_id)


def assert_no_leak(run: Run) -> None:
    found = leaks(run.channels, ALL_NEEDLES)
    assert not found, "a secret leaked:\n" + "\n".join(found)
    logs = {k: run.channels[k] for k in ("log records", "stderr", "stdout", "API logs")}
    found = leaks(logs, PHONE_NEEDLES)
    assert not found, "a full phone number in the logs:\n" + "\n".join(found)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_no_secret_anywhere(
    provider: str,
    scenario: str,
    sandbox: SandboxServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run = run_captured(provider, scenario, sandbox, tmp_path, caplog, capfd, monkeypatch)
    assert_no_leak(run)
    if scenario == "ok":  # the capture is live: each channel holds what a run writes there
        assert "HTTP Request: POST" in run.channels["log records"]  # httpx's request log, where URLs show
        assert "shard 0" in run.channels["API logs"]
        assert "campaign-" in run.channels["artifacts"]
        assert any(k.startswith("results file _work") for k in run.channels)

    # Each failing path ends the way it should, with every row on record where the run got that far.
    error = run.error
    if scenario in ("malformed_base_url", "url_password"):
        assert isinstance(error, ConfigError), repr(error)
        assert "endpoint" in str(error)
        assert not run.results.exists(), "a refused configuration wrote something"
        return
    if scenario == "wrong_key":
        assert isinstance(error, SmscastError) and "credentials" in str(error), repr(error)
    else:
        assert error is None, repr(error)
    current = current_results(str(run.results), run.campaign_id)
    assert current.height == N + 2 and current["row_index"].n_unique() == N + 2
    assert current["status"].null_count() == 0
    statuses = set(current["status"])
    if scenario == "ok":
        assert "accepted" in statuses
    else:
        assert "accepted" not in statuses, statuses


# LEAK, outside this module's files: CampaignSpec.base_url is a flow parameter, so a URL with user:password@
# is stored verbatim in the Prefect flow run's parameters (API, UI) before resolve_settings refuses it (the
# same URL in SMSCAST_<PROVIDER>_BASE_URL is refused without a trace: test_no_secret_anywhere[*-url_password]).
# Suggested fix: a field validator on CampaignSpec.base_url (smscast/campaign.py) calling
# smscast.settings.check_base_url, so that CampaignSpec(...) fails before any run exists. Strict: XPASS
# once fixed.
@pytest.mark.timeout(120)
def test_password_in_the_spec_base_url_stays_out_of_prefect(
    sandbox: SandboxServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    try:
        run = run_captured(
            "sandbox", "url_password", sandbox, tmp_path, caplog, capfd, monkeypatch, password_in_spec=True
        )
    except ValidationError as exc:  # the suggested fix: the spec itself refuses the URL
        assert URL_PASSWORD not in str(exc)
        return
    assert isinstance(run.error, ConfigError)
    assert_no_leak(run)


@pytest.mark.parametrize(
    "url",
    [
        f"http://user:{URL_PASSWORD}@api.example.com",
        f"https://{URL_PASSWORD}@api.example.com/v1",
        f"https://api.example.com/v1?api_key={URL_PASSWORD}",
        f"https://api.example.com/v1#{URL_PASSWORD}",
        f"api.example.com/{URL_PASSWORD}",
        f"ftp://api.example.com/{URL_PASSWORD}",
        f"http://[{URL_PASSWORD}",
        f"http://api.example.com:{URL_PASSWORD}/",
        f"http://api.example.com/{URL_PASSWORD}\n/x",
        "http://",
    ],
)
def test_a_bad_endpoint_is_refused_without_quoting_it(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMSCAST_SANDBOX_API_KEY", KEYS["sandbox"])
    with pytest.raises(ConfigError) as info:
        resolve_settings("sandbox", base_url=url)
    assert "endpoint" in str(info.value)
    assert URL_PASSWORD not in str(info.value) and URL_PASSWORD not in repr(info.value)
    assert KEYS["sandbox"] not in str(info.value)


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8765", "https://api.example.com/v2/", " https://h.example "]
)
def test_a_plain_endpoint_is_accepted(url: str) -> None:
    assert resolve_settings("sandbox", base_url=url, require_key=False).base_url == url.strip().rstrip("/")


def test_secret_masks_itself_everywhere() -> None:
    secret = Secret(KEYS["sandbox"])
    shown = [
        str(secret),
        repr(secret),
        f"{secret}",
        f"{secret!r}",
        f"{secret:>40}",
        "%s %r" % (secret, secret),  # noqa: UP031 - as logging formats its arguments
    ]
    shown.append(repr(ProviderSettings(base_url="http://h", api_key=secret)))
    assert all(KEYS["sandbox"] not in text for text in shown)
    with pytest.raises(TypeError):
        pickle.dumps(secret)
    assert secret.reveal() == KEYS["sandbox"]


# ---- a server that echoes the credential back --------------------------------------------------------------


def echoing_server(request: httpx.Request) -> httpx.Response:
    """A misbehaving gateway (a debug proxy, a WAF page) that reflects the request's credentials into its
    400 answer, in every field a provider module might quote."""
    echo = " ".join(f"{k}: {v}" for k, v in request.headers.items() if k in ("authorization", "x-api-key"))
    body = {"code": "bad_request", "message": echo, "error": {"code": "bad_request", "message": echo}}
    return httpx.Response(400, json=body)


# LEAK, outside this module's files: every provider copies the server's error text into its BatchRejectedError
# or AuthError message (providers/base.py Provider.reject_batch, postman's _error, textingline's
# _vendor_error, …), and tasks/send_engine.py ShardSender._all records str(exc) as the rows' error_message. A
# server that echoes the Authorization header (a debug proxy, a WAF page) thus puts the key into the results
# and into exception texts. Suggested fix: redact the provider's own key (as given, its parts, base64 of
# key_id:secret) from every server-supplied text in one place, e.g. a Provider.redact(text) used by
# reject_batch and by ShardSender._all. Strict: this test starts failing (XPASS) once that is fixed.
@pytest.mark.timeout(60)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_key_echoed_by_the_server_is_not_recorded(provider: str, tmp_path: Path) -> None:
    cls = provider_class(provider)
    instance = cls(ProviderSettings(base_url=f"http://echo-{provider}.test", api_key=Secret(KEYS[provider])))
    spec = CampaignSpec(
        campaign_id=f"echo-{provider}",
        provider=provider,  # type: ignore[arg-type]
        source=str(write_recipients(tmp_path / "r.csv")),
        results=str(tmp_path / "res"),
        rate=10_000,
        **{k: v for k, v in spec_fields(provider).items() if k != "rate"},
    )
    checked = validate_recipients(load_recipients(spec), spec, instance.caps, instance)
    planned = plan_campaign(checked, spec, instance.caps, instance).rows
    rows = planned.filter(pl.col("shard").is_not_null())
    client = httpx.AsyncClient(transport=httpx.MockTransport(echoing_server))
    text = ""
    try:
        outcomes, _ = asyncio.run(send_rows(instance, rows, spec, policy=FastPolicy(), client=client))
        assert outcomes.height == rows.height
        text = outcomes.select(pl.all().cast(pl.String)).write_csv()
    except Exception as exc:
        text = exception_text(exc)
    found = leaks({"outcomes or exception": text}, ALL_NEEDLES)
    assert not found, "a secret leaked:\n" + "\n".join(found)


def test_the_search_finds_every_form_of_a_key() -> None:
    key = KEYS["textingline"]
    key_id, secret = key.split(":")
    planted = {
        "plain": f"x {key} y",
        "key id": f"id={key_id}",
        "secret": f"secret={secret}",
        "basic auth": "Authorization: Basic " + base64.b64encode(key.encode()).decode(),
        "url-encoded": "k=" + key.replace(":", "%3A"),
    }
    assert len(leaks(planted, ALL_NEEDLES)) == len(planted)
    assert not leaks({"masked": str(Secret(key)), "phone": "+44********23"}, ALL_NEEDLES + PHONE_NEEDLES)


# ---- a source's credentials -----------------------------------------------------------------------------------

PG_PASSWORD = "SECRET-pgpass-3c4d5e"


def flow_runs_tagged(tag: str) -> list[UUID]:
    """The flow runs carrying `tag` (the harness's API is shared with other test modules' runs)."""
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[tag])))
    return [r.id for r in runs]


@pytest.mark.timeout(180)
def test_a_source_password_is_recorded_nowhere(
    sandbox: SandboxServer,
    postgres: Any,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Regression: `smscast send postgresql://user:pw@host/db` (the README's example) wrote the password into
    `_work/…/spec.json` and into the Prefect flow run's parameters. The command line is the path under test:
    it is where a password in a source URI is accepted and moved out of the way."""
    from typer.testing import CliRunner

    from smscast.cli import app

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
    for name in _LOGGERS:
        caplog.set_level(logging.DEBUG, logger=name or None)
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
    out, err = capfd.readouterr()
    channels = {
        "log records": "\n".join(record_text(r) for r in caplog.records),
        "stdout": out + outcome.output,
        "stderr": err,
        **{f"{kind} of run {run}": text for run in runs for kind, text in prefect_records(run).items()},
        **{f"results file {k}": v for k, v in files_text(results).items()},
    }
    assert any("sec_people" in text for name, text in channels.items() if name.startswith("flow run of"))
    found = leaks(channels, [PG_PASSWORD])
    assert not found, "the source's password leaked:\n" + "\n".join(found)
    current = current_results(str(results), campaign_id)
    assert current.height == 12 and set(current["status"]) == {"accepted"}
