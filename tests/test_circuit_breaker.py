"""The circuit breaker (smscast/breaker.py): its window with injected outcomes, the send engine pausing on it
(httpx.MockTransport), and campaigns against the sandbox that pause on an outage or refusals, then resume."""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import logging
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest
from support import assert_matches_ledger, flow_sandbox, ledger_frame, write_recipients

from smscast import events, ratelimit, storage, transport
from smscast.breaker import (
    CIRCUIT_OPEN,
    Cause,
    CircuitBreaker,
    CircuitOpenError,
    breaker_for,
    cause_of,
    not_sent,
    opening_of,
    paused_rows,
    trip,
)
from smscast.campaign import CampaignSpec
from smscast.flows.campaign import send_campaign
from smscast.flows.retry import retry_failed
from smscast.providers.base import RowOutcome
from smscast.providers.sandbox import SandboxProvider
from smscast.results import AttemptPaths
from smscast.runtime import Progress, Runtime, Stop
from smscast.settings import ProviderSettings, Secret
from smscast.status import Status
from smscast.tasks import send_engine
from smscast.tasks.manifest import read_manifest
from smscast.tasks.next_steps import next_steps
from smscast.tasks.plan import plan_campaign
from smscast.tasks.report import render, summarise
from smscast.tasks.send_batch import RetryPolicy
from smscast.tasks.send_engine import send_rows
from smscast.tasks.validate import validate_recipients

SPEC: dict[str, Any] = {"source": "x", "results": "res", "body": "hi {{name}}"}
ACCEPTED = RowOutcome(Status.ACCEPTED)
REJECTED = RowOutcome(Status.REJECTED, "invalid_number")
FAILED_5XX = RowOutcome(Status.FAILED, "http_503")


# -- the window ---------------------------------------------------------------------------------------------


def test_the_window_judges_only_once_it_holds_min_sample_rows() -> None:
    breaker = CircuitBreaker(0.5, 10)
    assert breaker.observe(outage=9) is None  # 9 failures, but too few rows to judge
    opening = breaker.observe(ok=1)
    assert opening is not None and (opening.failed, opening.window) == (9, 10)


def test_a_failure_share_at_the_threshold_keeps_it_closed_and_one_more_opens_it() -> None:
    breaker = CircuitBreaker(0.5, 10)
    assert breaker.observe(ok=5, content=5) is None  # 50%: not above 0.5
    opening = breaker.observe(content=1)  # the oldest ok row leaves: 6 of the last 10
    assert opening is not None and opening.content == 6 and opening.share == pytest.approx(0.6)


def test_the_window_slides_old_failures_out() -> None:
    breaker = CircuitBreaker(0.5, 10)
    assert breaker.observe(outage=5) is None and breaker.observe(ok=5) is None
    assert breaker.observe(ok=5) is None and breaker.counts() == {"ok": 10, "outage": 0, "content": 0}
    assert breaker.observe(outage=5) is None  # 5 of the last 10 again
    # A batch larger than the window is cut to its last rows.
    assert breaker.observe(ok=100) is None and breaker.counts()["ok"] == 10


def test_the_cause_is_the_larger_kind_of_failure_and_the_breaker_stays_open() -> None:
    outage = CircuitBreaker(0.5, 10).observe(outage=4, content=3, ok=3)
    content = CircuitBreaker(0.5, 10).observe(outage=3, content=4, ok=3)
    assert outage is not None and outage.cause is Cause.OUTAGE and outage.reason.startswith("provider outage")
    assert content is not None and content.cause is Cause.CONTENT
    breaker = CircuitBreaker(0.2, 4)
    first = breaker.observe(outage=4)
    assert first is not None and breaker.observe(outage=4) is None and breaker.opening is first


def test_watch_counts_only_rows_the_provider_decided() -> None:
    breaker, stop = CircuitBreaker(0.5, 1000), Stop()
    # In an answer, `unknown` is a message the provider holds; for a whole request, a timeout.
    breaker.watch(stop, [ACCEPTED, RowOutcome(Status.UNKNOWN, "queued"), REJECTED], answer=True)
    breaker.watch(stop, [RowOutcome(Status.UNKNOWN, "read_timeout")], answer=False, times=3)
    breaker.watch(stop, [FAILED_5XX], answer=False, times=2)
    for ours in ("over_budget", "aborted", CIRCUIT_OPEN):
        breaker.watch(stop, [RowOutcome(Status.FAILED, ours)], answer=False, times=50)
    assert breaker.counts() == {"ok": 2, "outage": 5, "content": 1}
    stop.set("auth_failed", "credentials refused")
    breaker.watch(stop, [FAILED_5XX], answer=False, times=50)  # after a stop nothing counts
    assert breaker.counts()["outage"] == 5


def test_an_opening_sets_the_stop_and_batches_behind_it_are_circuit_open() -> None:
    breaker, stop = CircuitBreaker(0.5, 4), Stop()
    breaker.watch(stop, [REJECTED] * 3 + [ACCEPTED], answer=True)
    assert stop.is_set() and stop.code == CIRCUIT_OPEN and cause_of(stop) is Cause.CONTENT
    opening = opening_of(stop)
    assert opening is not None and stop.reason == opening.reason
    code, message = not_sent(stop)
    assert code == CIRCUIT_OPEN and "content refused" in message
    # Where only the stop's code and text arrived (another process), the cause is read from the text.
    elsewhere = Stop()
    elsewhere.set(CIRCUIT_OPEN, opening.reason)
    assert opening_of(elsewhere) is None and cause_of(elsewhere) is Cause.CONTENT
    other = Stop()
    other.set("lock_lost", "another run took over")
    assert not_sent(other)[0] == "aborted"


def test_an_opening_after_another_stop_leaves_that_stop_alone() -> None:
    stop, opening = Stop(), CircuitBreaker(0.5, 2).observe(outage=2)
    assert opening is not None
    stop.set("auth_failed", "credentials refused")
    trip(stop, opening)
    assert stop.code == "auth_failed" and opening_of(stop) is None


def test_shard_threads_share_one_honest_window() -> None:
    """Eight threads at once: the window holds exactly its last min_sample rows, and it opens once."""
    never = CircuitBreaker(1.0, 1000)  # a share above 100% cannot be: it never opens, it only counts
    tips = CircuitBreaker(0.5, 1000)
    openings = []

    def shard(i: int) -> None:
        for _ in range(500):
            never.observe(ok=1) if i % 2 else never.observe(content=1)
            if (o := tips.observe(outage=1)) is not None:
                openings.append(o)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(shard, range(8)))
    assert sum(never.counts().values()) == 1000 and never.opening is None
    assert len(openings) == 1 and openings[0].outage == 1000 and tips.counts()["outage"] == 1000


def test_one_breaker_per_run() -> None:
    spec = CampaignSpec(campaign_id="b", **SPEC, min_sample=7, max_failure_rate=0.3)
    run_a, run_b = runtime(), runtime()
    assert breaker_for(run_a, spec) is breaker_for(run_a, spec) is not breaker_for(run_b, spec)
    assert (breaker_for(run_a, spec).min_sample, breaker_for(run_a, spec).max_failure_rate) == (7, 0.3)


# -- the send engine ----------------------------------------------------------------------------------------

FAST = RetryPolicy(max_attempts=2, max_throttled=10, backoff_base=0.001, backoff_cap=0.01)
SETTINGS = ProviderSettings(base_url="http://sandbox.test", api_key=Secret("k-123"))


def runtime() -> Runtime:
    return Runtime(Progress(0, logging.getLogger("test")))


def planned(n: int, provider: SandboxProvider, **spec_fields: Any) -> tuple[pl.DataFrame, CampaignSpec]:
    spec = CampaignSpec(campaign_id="cb", **SPEC, batch_size=10, rate=1e4, **spec_fields)
    df = pl.DataFrame(
        {"row_index": list(range(n)), "phone_raw": [f"+4474009{i:05d}" for i in range(n)], "name": ["n"] * n}
    )
    checked = validate_recipients(df, spec, provider.caps, provider)
    plan = plan_campaign(checked, spec, provider.caps, provider)
    return plan.rows.filter(pl.col("shard").is_not_null()), spec


def answer(request: httpx.Request, refused: Callable[[int], bool] = lambda i: False) -> httpx.Response:
    no = {"status": "rejected", "code": "invalid_number"}
    msgs = enumerate(json.loads(request.content)["messages"])
    ok = {"status": "accepted"}
    results = [{"index": i, **(no if refused(int(m["to"][-5:])) else ok)} for i, m in msgs]
    return httpx.Response(200, json={"batch": "B", "results": results})


Handler = Callable[[httpx.Request], httpx.Response]


def send(
    rows: pl.DataFrame, spec: CampaignSpec, handler: Handler, run: Runtime | None, policy: RetryPolicy = FAST
) -> pl.DataFrame:
    ratelimit._BUCKETS.clear()  # a fresh bucket per test: the shared one is process-wide by design
    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return asyncio.run(
        send_rows(SandboxProvider(SETTINGS), rows, spec, runtime=run, policy=policy, client=http)
    )[0]


def test_an_outage_pauses_the_shard_and_what_was_answered_stands() -> None:
    # One request at a time and no retries, so that the count is exact: the third failed batch tips the
    # window (30 of its 40 rows failed), and not one request goes out after it.
    rows, spec = planned(400, SandboxProvider(SETTINGS), min_sample=40, concurrency=1)
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return answer(request) if len(calls) <= 10 else httpx.Response(503)

    run = runtime()
    out = send(rows, spec, handler, run, policy=RetryPolicy(max_attempts=1))
    assert run.stop.code == CIRCUIT_OPEN and cause_of(run.stop) is Cause.OUTAGE
    opening = opening_of(run.stop)
    assert opening is not None and (opening.outage, opening.content, opening.window) == (30, 0, 40)
    assert len(calls) == 13
    counts = {(s, c): n for s, c, n in out.group_by("status", "error_code").len().iter_rows()}
    # The ten answered batches stand; the three that tipped it failed; the rest never went.
    assert counts == {("accepted", None): 100, ("failed", "http_503"): 30, ("failed", CIRCUIT_OPEN): 270}


def test_refusals_pause_with_cause_content_and_a_low_share_does_not_pause() -> None:
    provider = SandboxProvider(SETTINGS)
    rows, spec = planned(300, provider, min_sample=30)
    run = runtime()
    out = send(rows, spec, lambda r: answer(r, lambda i: i % 10 < 6), run)
    assert run.stop.code == CIRCUIT_OPEN and cause_of(run.stop) is Cause.CONTENT
    assert out.filter(pl.col("error_code") == CIRCUIT_OPEN).height > 0

    calm = runtime()
    out = send(rows, spec, lambda r: answer(r, lambda i: i % 10 < 4), calm)  # 40%: below 0.5
    assert not calm.stop.is_set() and out.filter(pl.col("status") == "rejected").height == 120
    assert out.filter(pl.col("status") == "accepted").height == 180


# -- the summary and the event ------------------------------------------------------------------------------


def paused_summary() -> Any:
    codes = [None, CIRCUIT_OPEN, "http_503", "phone_invalid"]
    rows = pl.DataFrame({"status": ["accepted", "failed", "failed", "invalid"], "error_code": codes})
    rows = rows.with_columns(segments=pl.lit(1))
    summary = summarise(rows, campaign_id="p", attempt=1, provider="sandbox", results_uri="r/x")
    opening = CircuitBreaker(0.5, 2).observe(outage=2)
    assert opening is not None
    summary.paused = opening.to_dict()
    return summary


def test_the_summary_says_it_paused_and_how_to_resume() -> None:
    summary = paused_summary()
    assert "PAUSED by the circuit breaker: provider outage" in render(summary)
    assert summary.to_dict()["paused"]["cause"] == "outage"
    spec = CampaignSpec(campaign_id="p", **SPEC)
    steps = next_steps(summary, spec, completed=False)
    assert len(steps) == 1 and "is paused" in steps[0] and "1 rows were not sent" in steps[0]
    assert "smscast retry --campaign-id p --results res" in steps[0]
    summary.paused = None
    assert "paused" not in summary.to_dict() and "PAUSED" not in render(summary)


def test_the_paused_event_names_the_cause(monkeypatch: pytest.MonkeyPatch) -> None:
    import prefect.events

    sent: list[dict[str, Any]] = []
    monkeypatch.setattr(prefect.events, "emit_event", lambda event, **kw: sent.append({"event": event, **kw}))
    events.emit_campaign_paused(paused_summary().to_dict(), "res", logging.getLogger("test"))
    (event,) = sent
    assert event["event"] == "smscast.campaign.paused"
    assert event["resource"]["smscast.cause"] == "outage"
    assert event["resource"]["prefect.resource.id"] == "smscast.campaign.p"
    assert event["payload"]["failure_share"] == 1.0 and event["payload"]["by_status"]["failed"] == 2


# -- whole campaigns against the sandbox ----------------------------------------------------------------------

KEY = "breaker-test-key"


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Any]:
    with flow_sandbox(KEY) as server:
        yield server


@pytest.fixture
def quick(sandbox: Any, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """A clean sandbox; the engine's retries without their seconds of backoff; and the summaries of the
    `smscast.campaign.paused` events the campaigns emit."""
    sandbox.client.reset()
    fast = functools.partial(RetryPolicy, max_attempts=2, backoff_base=0.001, backoff_cap=0.01)
    monkeypatch.setattr(send_engine, "RetryPolicy", fast)
    paused: list[dict[str, Any]] = []
    monkeypatch.setattr(events, "emit_campaign_paused", lambda summary, *_: paused.append(summary))
    return paused


def outage_after(sandbox: Any, monkeypatch: pytest.MonkeyPatch, requests: int) -> None:
    """The provider goes down once the campaign's `requests`-th request is answered: every later request
    gets a 503, without being processed (the sandbox's rate_5xx knob), until the knob is set back."""
    real = transport.send
    answered = itertools.count(1)
    lock = threading.Lock()

    async def send(client: httpx.AsyncClient, request: httpx.Request, provider: str) -> httpx.Response:
        response = await real(client, request, provider)
        with lock:
            n = next(answered)
        if n == requests:
            await asyncio.to_thread(sandbox.client.set_faults, rate_5xx=1.0)
        return response

    monkeypatch.setattr(transport, "send", send)


def campaign(sandbox: Any, tmp_path: Path, cid: str, **kw: Any) -> CampaignSpec:
    # 401 rows, row 1 invalid (its variable is empty): 40 batches of 10 in two shards of 20.
    src = write_recipients(tmp_path / "r.csv", 401, extra={"name": ["N0", ""]})
    fields = {"source": str(src), "results": str(tmp_path / "res"), "base_url": sandbox.base_url}
    return CampaignSpec(
        campaign_id=cid, **SPEC | fields, sender="ACME", batch_size=10, shard_batches=20, **kw
    )


def paused_state(spec: CampaignSpec) -> pl.DataFrame:
    paths = AttemptPaths.of(spec)
    manifest = read_manifest(paths)
    assert manifest is not None and not storage.exists(paths.done)  # planned, unsealed: resumable
    return paused_rows(spec, manifest)


@pytest.mark.integration
def test_an_outage_pauses_the_campaign_and_running_it_again_resumes_it(
    sandbox: Any, tmp_path: Path, quick: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = campaign(sandbox, tmp_path, "cb-outage", min_sample=50)
    outage_after(sandbox, monkeypatch, requests=10)
    with pytest.raises(CircuitOpenError, match="paused: provider outage"):
        send_campaign(spec)
    rows = paused_state(spec)
    assert rows.height == 401 and rows.filter(pl.col("status") == "invalid").height == 1
    accepted = rows.filter(pl.col("status") == "accepted")
    assert accepted.height >= 100  # the ten requests answered before the outage
    # Rows the provider never took are failed: some after their retries, most never sent at all.
    left = rows.filter(pl.col("status") == "failed")
    assert accepted.height + left.height == 400
    assert set(left["error_code"]) <= {"http_503", CIRCUIT_OPEN}
    assert left.filter(pl.col("error_code") == CIRCUIT_OPEN).height >= 50
    assert set(ledger_frame(sandbox.client, "generic")["to"]) == set(accepted["phone"])  # exactly those
    (event,) = quick
    assert event["paused"]["cause"] == "outage" and event["paused"]["failure_share"] > 0.5
    assert event["by_status"]["failed"] == left.height and event["by_status"]["accepted"] == accepted.height

    # The provider is back: the same campaign again finishes attempt 1, sending only what was not taken.
    sandbox.client.set_faults(rate_5xx=0.0)
    summary = send_campaign(spec)
    assert summary["attempt"] == 1 and summary["by_status"]["accepted"] == 400 and "paused" not in summary
    current = assert_matches_ledger(spec.results, "cb-outage", sandbox.client, "generic", 401)
    assert set(current["attempt"]) == {1} and current.filter(pl.col("status") == "accepted").height == 400
    assert sandbox.client.stats()["providers"]["generic"]["duplicates"] == 0  # nothing answered went again
    assert len(quick) == 1


@pytest.mark.integration
def test_refusals_pause_it_with_cause_content_and_smscast_retry_resumes_it(
    sandbox: Any, tmp_path: Path, quick: list[dict[str, Any]]
) -> None:
    spec = campaign(sandbox, tmp_path, "cb-content", min_sample=30)
    refused = [str(d) for d in range(6)]  # six phones in ten end in 0-5: 60% refused, above 0.5
    sandbox.client.set_faults(reject_suffixes=refused)
    with pytest.raises(CircuitOpenError, match="paused: content refused"):
        send_campaign(spec)
    rows = paused_state(spec)
    assert rows.filter(pl.col("error_code") == CIRCUIT_OPEN).height > 0
    assert rows.filter(pl.col("status") == "rejected")["phone"].str.slice(-1).is_in(refused).all()
    (event,) = quick
    assert event["paused"]["cause"] == "content" and event["paused"]["content"] > 15
    sent = set(ledger_frame(sandbox.client, "generic")["to"])
    assert sent == set(rows.filter(pl.col("status") == "accepted")["phone"])

    # `smscast retry` finishes the paused attempt before anything else; what was refused stays refused.
    sandbox.client.set_faults(reject_suffixes=[])
    summary = retry_failed(campaign_id="cb-content", results=spec.results, base_url=sandbox.base_url)
    assert summary["attempt"] == 1
    current = assert_matches_ledger(spec.results, "cb-content", sandbox.client, "generic", 401)
    refusals = rows.filter(pl.col("status") == "rejected").height
    counts = dict(current.group_by("status").len().iter_rows())
    assert counts == {"accepted": 400 - refusals, "rejected": refusals, "invalid": 1}


@pytest.mark.integration
def test_a_failure_share_below_the_threshold_does_not_pause(
    sandbox: Any, tmp_path: Path, quick: list[dict[str, Any]]
) -> None:
    spec = campaign(sandbox, tmp_path, "cb-calm", min_sample=20)
    sandbox.client.set_faults(reject_suffixes=["7", "8", "9"], transient_suffixes=["6"])  # 40% in every batch
    counts = send_campaign(spec)["by_status"]
    assert counts == {"accepted": 240, "invalid": 1, "rejected": 120, "failed": 40, "unknown": 0}
    assert storage.exists(AttemptPaths.of(spec).done) and quick == []
