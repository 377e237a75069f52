"""The send engine's rules, driven through httpx.MockTransport (no network, no Prefect)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from typing import ClassVar

import certifi
import httpx
import polars as pl
import pytest

from smscast.campaign import CampaignSpec
from smscast.errors import BatchRejectedError
from smscast.providers.base import Batch, Idempotency, Rejection, RowOutcome
from smscast.providers.sandbox import SandboxProvider
from smscast.ratelimit import TokenBucket
from smscast.settings import ProviderSettings, Secret
from smscast.tasks.plan import plan_campaign
from smscast.tasks.send_batch import RetryPolicy
from smscast.tasks.send_engine import send_rows
from smscast.tasks.validate import validate_recipients

FAST = RetryPolicy(max_attempts=4, max_throttled=10, backoff_base=0.001, backoff_cap=0.01)
SETTINGS = ProviderSettings(base_url="http://sandbox.test", api_key=Secret("k-123"))


def planned_rows(n: int, provider: SandboxProvider, batch_size: int = 5) -> tuple[pl.DataFrame, CampaignSpec]:
    spec = CampaignSpec(
        campaign_id="t1", source="x", results="r", body="hello {{name}}", batch_size=batch_size, rate=10_000
    )
    df = pl.DataFrame(
        {
            "row_index": list(range(n)),
            "phone_raw": [f"+4474009{i:05d}" for i in range(n)],
            "name": [f"n{i}" for i in range(n)],
        }
    )
    checked = validate_recipients(df, spec, provider.caps, provider)
    planned = plan_campaign(checked, spec, provider.caps, provider)
    return planned.rows.filter(pl.col("shard").is_not_null()), spec


def accept_all(request: httpx.Request) -> httpx.Response:
    msgs = json.loads(request.content)["messages"]
    return httpx.Response(
        200,
        json={
            "batch": "B",
            "results": [
                {"index": i, "status": "accepted", "message_id": f"m-{m['ref']}"} for i, m in enumerate(msgs)
            ],
        },
    )


def run(
    provider: SandboxProvider,
    rows: pl.DataFrame,
    spec: CampaignSpec,
    handler: Callable[[httpx.Request], httpx.Response],
) -> tuple[pl.DataFrame, dict[str, int]]:
    import asyncio

    # A fresh bucket per test: the shared one is process-wide by design.
    from smscast import ratelimit

    ratelimit._BUCKETS.clear()
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return asyncio.run(send_rows(provider, rows, spec, policy=FAST, client=client))


def test_happy_path_every_row_accepted_with_its_id() -> None:
    provider = SandboxProvider(SETTINGS)
    rows, spec = planned_rows(12, provider)
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return accept_all(request)

    out, requests = run(provider, rows, spec, handler)
    assert out.height == 12 and set(out["status"]) == {"accepted"}
    assert out.sort("row_index")["provider_message_id"].to_list() == [
        f"m-{k}" for k in rows.sort("row_index")["idempotency_key"].to_list()
    ]
    assert len(seen) == 3 and requests == {"200": 3}
    assert seen[0].headers["authorization"] == "Bearer k-123"
    assert seen[0].headers["idempotency-key"].startswith("scb-")


def test_429_honours_retry_after_then_succeeds() -> None:
    provider = SandboxProvider(SETTINGS)
    rows, spec = planned_rows(5, provider)
    calls = {"n": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        if calls["n"] <= 2:
            return httpx.Response(429, headers={"Retry-After": "0"}, json={"error": {"code": "rate_limited"}})
        return accept_all(request)

    out, requests = run(provider, rows, spec, handler)
    assert set(out["status"]) == {"accepted"}
    assert requests["429"] == 2 and calls["n"] == 3


def test_5xx_is_retried_and_exhaustion_is_failed_not_unknown() -> None:
    provider = SandboxProvider(SETTINGS)
    rows, spec = planned_rows(5, provider)
    out, requests = run(provider, rows, spec, lambda r: httpx.Response(503))
    assert set(out["status"]) == {"failed"} and set(out["error_code"]) == {"http_503"}
    assert requests["http_503"] == FAST.max_attempts


def test_connect_error_means_never_sent_and_is_retried() -> None:
    provider = SandboxProvider(SETTINGS)
    rows, spec = planned_rows(5, provider)
    calls = {"n": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        if calls["n"] == 1:
            raise httpx.ConnectError("refused", request=request)
        return accept_all(request)

    out, _ = run(provider, rows, spec, handler)
    assert set(out["status"]) == {"accepted"} and calls["n"] == 2


def test_read_timeout_resends_same_keys_when_provider_is_idempotent() -> None:
    provider = SandboxProvider(SETTINGS)
    rows, spec = planned_rows(5, provider)
    bodies: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(request.content)
        if len(bodies) == 1:
            raise httpx.ReadTimeout("slow", request=request)
        return accept_all(request)

    out, _ = run(provider, rows, spec, handler)
    assert set(out["status"]) == {"accepted"}
    assert len(bodies) == 2 and bodies[0] == bodies[1]  # same refs: the provider can de-duplicate


class NoIdempotency(SandboxProvider):
    caps = dataclasses.replace(SandboxProvider.caps, idempotency=Idempotency.NONE)


def test_read_timeout_is_unknown_when_a_resend_could_duplicate() -> None:
    provider = NoIdempotency(SETTINGS)
    rows, spec = planned_rows(5, provider)
    calls = {"n": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        raise httpx.ReadTimeout("slow", request=request)

    out, _ = run(provider, rows, spec, handler)
    assert set(out["status"]) == {"unknown"} and set(out["error_code"]) == {"read_timeout"}
    assert calls["n"] == 1  # never blindly re-sent


def test_ambiguous_then_failures_ends_unknown() -> None:
    provider = SandboxProvider(SETTINGS)
    rows, spec = planned_rows(5, provider)
    calls = {"n": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        if calls["n"] == 1:
            raise httpx.RemoteProtocolError("dropped", request=request)
        return httpx.Response(502)

    out, _ = run(provider, rows, spec, handler)
    assert set(out["status"]) == {"unknown"}  # the first attempt may have been accepted


def test_a_stop_after_a_lost_answer_leaves_the_batch_unknown_not_failed() -> None:
    """A batch whose first answer was lost may have been accepted: when the campaign's stop keeps it from
    being tried again, it is `unknown` (never re-sent blindly, nor sent through a fallback), not `failed`."""
    provider = SandboxProvider(SETTINGS)
    rows, spec = planned_rows(10, provider)
    spec = spec.model_copy(update={"concurrency": 1})
    calls = {"n": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        if calls["n"] == 1:
            raise httpx.RemoteProtocolError("dropped", request=request)  # batch 1, its answer lost
        return httpx.Response(401, json={"error": {"code": "unauthorized"}})  # its retry: the account stops

    out, _ = run(provider, rows, spec, handler)
    by_batch = dict(out.group_by("batch_id").agg(pl.col("status").unique().first()).iter_rows())
    assert sorted(by_batch.values()) == ["failed", "unknown"]  # batch 2 never went out: failed (aborted)
    assert out.filter(pl.col("status") == "unknown")["error_message"][0].endswith(
        "an earlier attempt may have been accepted"
    )


class WholeBatch(SandboxProvider):
    """Refuses the whole request if any row's body contains BAD, like textingline's 33019."""

    BAD: ClassVar[str] = "BAD"

    def parse_response(self, batch: Batch, response: httpx.Response) -> Sequence[RowOutcome]:
        if response.status_code == 400:
            raise BatchRejectedError("refused", code="33019", retryable_split=True)
        return super().parse_response(batch, response)


def test_whole_batch_rejection_is_bisected_to_the_bad_rows() -> None:
    provider = WholeBatch(SETTINGS)
    rows, spec = planned_rows(16, provider, batch_size=8)
    rows = rows.with_columns(
        body=pl.when(pl.col("row_index").is_in([3, 12])).then(pl.lit("BAD")).otherwise(pl.col("body"))
    )

    def handler(request: httpx.Request) -> httpx.Response:
        msgs = json.loads(request.content)["messages"]
        if any("BAD" in m["body"] for m in msgs):
            return httpx.Response(400, json={"error": {"code": "33019"}})
        return accept_all(request)

    out = run(provider, rows, spec, handler)[0].sort("row_index")
    assert out.filter(pl.col("status") == "rejected")["row_index"].to_list() == [3, 12]
    assert out.filter(pl.col("status") == "accepted").height == 14
    assert out.filter(pl.col("row_index") == 3)["batch_id"].item().endswith("-L-R-R")  # 8 -> 4 -> 2 -> 1


class NamesRows(SandboxProvider):
    """Refuses the whole request for its BAD rows and names them by position, like sent.dm's `to[3]`."""

    def parse_response(self, batch: Batch, response: httpx.Response) -> Sequence[RowOutcome]:
        if response.status_code == 400:
            named = tuple(json.loads(response.content)["bad"])
            raise BatchRejectedError("refused", code="VALIDATION_001", retryable_split=True, rows=named)
        return super().parse_response(batch, response)


def refuse_bad_rows_by_position(seen: list[list[int]]) -> Callable[[httpx.Request], httpx.Response]:
    def handler(request: httpx.Request) -> httpx.Response:
        msgs = json.loads(request.content)["messages"]
        seen.append([int(m["body"].split()[-1][1:]) for m in msgs])
        bad = [i for i, m in enumerate(msgs) if "BAD" in m["body"]]
        return httpx.Response(400, json={"bad": bad}) if bad else accept_all(request)

    return handler


def with_bad_rows(rows: pl.DataFrame, bad: list[int]) -> pl.DataFrame:
    # The body ends with the row's name (n<index>), so the handler can tell which rows each request held.
    return rows.with_columns(
        body=pl.when(pl.col("row_index").is_in(bad))
        .then(pl.lit("BAD ") + pl.col("body"))
        .otherwise(pl.col("body"))
    )


@pytest.mark.parametrize(
    ("rejection", "names_rows", "requests"),
    [
        # A per-row provider that names the rows: they are rejected, the other 6 go at once (2 requests).
        (Rejection.PER_ROW, True, 2),
        # The same refusal from a whole-batch provider: halves until the bad rows stand alone.
        (Rejection.WHOLE_BATCH, True, 11),
        # A per-row provider that names nothing: bisection is the fallback.
        (Rejection.PER_ROW, False, 11),
    ],
)
def test_isolation_follows_how_the_provider_refuses_rows(
    rejection: Rejection, names_rows: bool, requests: int
) -> None:
    caps = dataclasses.replace(SandboxProvider.caps, rejection=rejection)
    base = NamesRows if names_rows else WholeBatch
    provider = type("P", (base,), {"caps": caps})(SETTINGS)
    rows, spec = planned_rows(8, provider, batch_size=8)
    rows = with_bad_rows(rows, [2, 5])
    seen: list[list[int]] = []

    out = run(provider, rows, spec, refuse_bad_rows_by_position(seen))[0].sort("row_index")
    assert out.filter(pl.col("status") == "rejected")["row_index"].to_list() == [2, 5]
    assert out.filter(pl.col("status") == "accepted")["row_index"].to_list() == [0, 1, 3, 4, 6, 7]
    assert len(seen) == requests
    if rejection is Rejection.PER_ROW and names_rows:
        assert sorted(seen[1]) == [0, 1, 3, 4, 6, 7]  # the others, together, in one request
        rejected = out.filter(pl.col("status") == "rejected")
        assert set(rejected["error_code"]) == {"VALIDATION_001"}


def test_auth_failure_stops_the_campaign_and_records_every_row() -> None:
    provider = SandboxProvider(SETTINGS)
    rows, spec = planned_rows(20, provider)
    spec = spec.model_copy(update={"concurrency": 1})
    calls = {"n": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        return httpx.Response(401, json={"error": {"code": "unauthorized"}})

    out, _ = run(provider, rows, spec, handler)
    assert out.height == 20 and set(out["status"]) == {"failed"}
    assert calls["n"] == 1  # the batches queued behind the refusal never went out
    assert out["error_code"].value_counts().sort("error_code").rows() == [("aborted", 15), ("http_401", 5)]


def test_rows_missing_from_a_response_are_unknown_not_lost() -> None:
    provider = SandboxProvider(SETTINGS)
    rows, spec = planned_rows(5, provider)

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, json={"batch": "B", "results": [{"index": 0, "status": "accepted", "message_id": "x"}]}
        )

    out, _ = run(provider, rows, spec, handler)
    assert out.sort("row_index")["status"].to_list() == ["accepted"] + ["unknown"] * 4


@pytest.mark.parametrize("retry_after", [None, 0.0])
def test_bucket_penalty_halves_rate_and_reward_restores(retry_after: float | None) -> None:
    now = [0.0]
    bucket = TokenBucket(10.0, burst=2, clock=lambda: now[0])
    assert bucket._reserve() == 0 and bucket._reserve() == 0
    assert bucket._reserve() == pytest.approx(0.1)
    bucket.penalise(retry_after)
    assert bucket.rate == 5.0 and bucket.throttled == 1
    for _ in range(10):
        bucket.reward()
    assert bucket.rate == 10.0


def test_bucket_pause_blocks_until_retry_after() -> None:
    now = [100.0]
    bucket = TokenBucket(1000.0, burst=10, clock=lambda: now[0])
    bucket.penalise(2.5)
    assert bucket._reserve() == pytest.approx(2.5)
    now[0] += 2.5
    assert bucket._reserve() > 0  # tokens were emptied by the penalty; one refills at the halved rate
    now[0] += 0.01
    assert bucket._reserve() == 0


def test_bucket_acquire_waits_exactly_the_refill_time() -> None:
    import asyncio

    now = [0.0]
    slept: list[float] = []

    async def sleep(seconds: float) -> None:  # a fake clock: waiting costs no real time
        slept.append(seconds)
        now[0] += seconds

    async def take(n: int) -> None:
        for _ in range(n):
            await bucket.acquire()

    bucket = TokenBucket(4.0, burst=2, clock=lambda: now[0], sleep=sleep)
    asyncio.run(take(5))
    assert slept == [pytest.approx(0.25)] * 3  # the burst is free, then one token every 1/4 s
    assert now[0] == pytest.approx(0.75)
    bucket.penalise(2.0)
    asyncio.run(take(1))
    # The pause, then one token at the halved rate (2/s), counted from the pause's end.
    assert now[0] == pytest.approx(0.75 + 2.0 + 0.5)


def test_provider_clients_share_one_tls_context(monkeypatch: pytest.MonkeyPatch) -> None:
    from smscast.transport import tls_context

    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    first = tls_context()
    assert tls_context() is first  # built once: each client would otherwise load the CA bundle again
    monkeypatch.setenv("SSL_CERT_FILE", certifi.where())
    assert tls_context() is not first  # a changed setting is honoured
