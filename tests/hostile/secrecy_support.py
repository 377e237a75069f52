"""What tests/hostile/test_secrecy.py and test_secrecy_logs.py share: the keys, the sandbox, the capture of
everything a run leaves behind, and the search for a secret in it.

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

import base64
import dataclasses
import importlib.util
import logging
import os
import socket
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import polars as pl
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.logging.handlers import APILogWorker
from provider_facts import FACTS
from support import prefect_harness

import smscast.tasks.send_engine
from smscast.campaign import CampaignSpec
from smscast.errors import ConfigError, SmscastError
from smscast.flows.campaign import send_campaign
from smscast.servers.sandbox import SandboxServer
from smscast.tasks.current import current_results
from smscast.tasks.send_batch import RetryPolicy


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
class FastPolicy(RetryPolicy):
    """The engine's policy with near-zero backoff, so that storms of failures end in a second."""

    backoff_base: float = 0.001
    backoff_cap: float = 0.01


@pytest.fixture(scope="module", name="sandbox")  # imported by its modules as sandbox_fixture
def sandbox_fixture() -> Iterator[SandboxServer]:
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


@dataclasses.dataclass
class Capture:
    """pytest's capture of a test's logs and output, with its temporary folder and environment."""

    tmp_path: Path
    caplog: pytest.LogCaptureFixture
    capfd: pytest.CaptureFixture[str]
    monkeypatch: pytest.MonkeyPatch

    def debug_logs(self) -> None:
        for name in _LOGGERS:
            self.caplog.set_level(logging.DEBUG, logger=name or None)

    def channels(self, results: Path, stdout: str = "") -> dict[str, str]:
        """The log records and output captured so far, and every file under `results`."""
        out, err = self.capfd.readouterr()
        return {
            "log records": "\n".join(record_text(r) for r in self.caplog.records),
            "stdout": out + stdout,
            "stderr": err,
            **{f"results file {k}": v for k, v in files_text(results).items()},
        }


@pytest.fixture(name="capture")  # imported by its modules as capture_fixture
def capture_fixture(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> Capture:
    return Capture(tmp_path, caplog, capfd, monkeypatch)


# ---- the runs -----------------------------------------------------------------------------------------------

SCENARIOS = ["ok", "wrong_key", "5xx_storm", "dropped", "connect_error", "malformed_base_url", "url_password"]
# Two modules share the scenarios so that two xdist workers can run them side by side, each about half.
FIRST_HALF = ["ok", "wrong_key", "5xx_storm", "malformed_base_url"]  # tests/hostile/test_secrecy.py
SECOND_HALF = [s for s in SCENARIOS if s not in FIRST_HALF]  # tests/hostile/test_secrecy_logs.py


@dataclasses.dataclass
class Run:
    error: BaseException | None
    channels: dict[str, str]
    results: Path
    campaign_id: str


def run_captured(
    provider: str, scenario: str, sandbox: SandboxServer, capture: Capture, *, password_in_spec: bool = False
) -> Run:
    """Run one campaign in `scenario` and capture everything it leaves behind."""
    sandbox.client.reset()
    monkeypatch, tmp_path = capture.monkeypatch, capture.tmp_path
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

    capture.debug_logs()
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).addHandler(capture.caplog.handler)
        monkeypatch.setattr(logging.getLogger(name), "level", logging.DEBUG)
    results = tmp_path / "results"
    spec = CampaignSpec(
        campaign_id=f"sec-{provider}-{scenario}".replace("_", "-"),
        provider=facts.name,  # FACTS[provider]: the same name, as a ProviderName
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
            logging.getLogger(name).removeHandler(capture.caplog.handler)
    assert flow_run_id is not None

    channels = {
        **capture.channels(results),
        "flow state": f"{state!r} {state.message} {state.name}",
        "exception": exception_text(error),
        **prefect_records(flow_run_id),
    }
    return Run(error, channels, results, spec.campaign_id)


def assert_no_leak(run: Run) -> None:
    found = leaks(run.channels, ALL_NEEDLES)
    assert not found, "a secret leaked:\n" + "\n".join(found)
    logs = {k: run.channels[k] for k in ("log records", "stderr", "stdout", "API logs")}
    found = leaks(logs, PHONE_NEEDLES)
    assert not found, "a full phone number in the logs:\n" + "\n".join(found)


def check_no_secret_anywhere(run: Run, scenario: str) -> None:
    """test_no_secret_anywhere's checks, for either module's share of the scenarios."""
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


def no_secret_anywhere(scenarios: list[str]) -> Callable[..., None]:
    """test_no_secret_anywhere over `scenarios` and every provider: each of the two modules collects it, under
    that name, for its half of the scenarios."""

    @pytest.mark.timeout(120)
    @pytest.mark.parametrize("scenario", scenarios)
    @pytest.mark.parametrize("provider", PROVIDERS)
    def test(provider: str, scenario: str, sandbox: SandboxServer, capture: Capture) -> None:
        check_no_secret_anywhere(run_captured(provider, scenario, sandbox, capture), scenario)

    return test
