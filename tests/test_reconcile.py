"""Reconciliation (tasks/reconcile.py) on results folders written here, with the providers answered by
httpx.MockTransport: the capability and mapping tables, matching answers to rows, settlements, the inbox fold,
expiry on an injected clock, idempotency (a second run writes no part), failed lookups, and the command."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest
import typer
from typer.testing import CliRunner

from smscast import delivery, ratelimit, storage
from smscast.campaign import CampaignSpec
from smscast.delivery import DELIVERY_SCHEMA, REPORT_SCHEMA, SETTLED_SCHEMA, DeliveryStatus
from smscast.flows.reconcile import recent_campaigns
from smscast.providers.base import Capabilities, DeliveryChannel, OutcomeTiming, Provider
from smscast.providers.postman import PostmanProvider
from smscast.providers.registry import provider_class
from smscast.providers.textingline import TextinglineProvider
from smscast.reconcile_cli import register
from smscast.results import CampaignPaths, conform, dlr_inbox
from smscast.settings import ProviderSettings, Secret
from smscast.status import Status
from smscast.tasks.current import current_view
from smscast.tasks.manifest import save_spec
from smscast.tasks.reconcile import ReconcileSummary, areconcile_campaign
from smscast.tasks.reports_fold import news

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
TL, PM = "http://tl.test", "http://pm.test"
D = DeliveryStatus
Handler = Callable[[httpx.Request], httpx.Response]
SPECS: dict[str, dict[str, Any]] = {
    "textingline": {"sender": "+18005559876", "body": "Hi", "base_url": TL},
    "postman": {"template": "cmp", "body": "Hi", "base_url": PM},
    "robase": {"sender": "ACME", "body": "Hi"},
}


def phone(i: int) -> str:
    return f"+4474009{i:05d}"


def clock(hours: float) -> Callable[[], datetime]:
    return lambda: T0 + timedelta(hours=hours)


@pytest.fixture(autouse=True)
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMSCAST_TEXTINGLINE_API_KEY", "kid:secret")
    monkeypatch.setenv("SMSCAST_POSTMAN_API_KEY", "pm-key")
    ratelimit._BUCKETS.clear()


def row(i: int, status: str = "accepted", ref: str | None = "brc_1", **kw: Any) -> dict[str, Any]:
    sent = {"phone": phone(i), "idempotency_key": f"sc-{i:04d}", "provider_batch_ref": ref}
    return {"row_index": i, "status": status, **sent, **kw}


def campaign(results: Path, provider: str, rows: list[dict[str, Any]], cid: str = "c1") -> str:
    """Attempt 1 of a campaign, sent at T0, and its recorded spec (rate 1000: no test waits for a token)."""
    spec = dict(campaign_id=cid, provider=provider, source="r.csv", results=str(results), rate=1000)
    save_spec(CampaignSpec.model_validate({**spec, **SPECS.get(provider, {})}))
    base = {"campaign_id": cid, "attempt": 1, "provider": provider, "batch_id": "b1", "submitted_at": T0}
    frame = pl.DataFrame([{**base, **r} for r in rows], infer_schema_length=None)
    storage.write_parquet(conform(frame), CampaignPaths(str(results), cid).attempt(1).part(0))
    return cid


def run(results: Path, cid: str = "c1", handler: Handler | None = None, **kw: Any) -> ReconcileSummary:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise AssertionError(f"unexpected request {request.url}")

    async def go() -> ReconcileSummary:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler or refuse)) as client:
            return await areconcile_campaign(str(results), cid, client=client, **{"clock": clock(1), **kw})

    return asyncio.run(go())


def parts(results: Path, cid: str = "c1") -> int:
    paths = CampaignPaths(str(results), cid)
    return sum(len(storage.list_files(f"{f}/", suffix=".parquet")) for f in (paths.delivery, paths.settled))


def facts(results: Path, cid: str = "c1") -> pl.DataFrame:
    return delivery.read_all(CampaignPaths(str(results), cid).delivery, DELIVERY_SCHEMA).sort("row_index")


def settled(results: Path, cid: str = "c1") -> pl.DataFrame:
    return delivery.read_all(CampaignPaths(str(results), cid).settled, SETTLED_SCHEMA).sort("row_index")


def tl(i: int | str, status: str, mid: str | None = None, code: int | None = None, **kw: Any) -> Any:
    """One recipient of textingline's (ASSUMED) batch status answer."""
    to = phone(i) if isinstance(i, int) else i
    return {"to": to, "messageId": mid, "status": status, "errorCode": code, **kw}


def tl_job(*recipients: dict[str, Any]) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/api/v1/messaging/batch/brc_1"
        answer = {"id": "brc_1", "status": "completed", "recipients": list(recipients)}
        return httpx.Response(200, json=answer)

    return handler


def test_capabilities_say_how_each_provider_reports_delivery() -> None:
    lookup, webhook = frozenset({DeliveryChannel.LOOKUP}), frozenset({DeliveryChannel.WEBHOOK})
    expected = {
        **dict.fromkeys(("textingline", "postman"), (lookup, 72.0)),
        **dict.fromkeys(("instasent", "sent-dm"), (webhook, 72.0)),
        "sandbox": (webhook, 24.0),
        "robase": (frozenset(), None),
    }
    for name, (channels, hours) in expected.items():
        caps = provider_class(name).caps
        window = caps.report_window.total_seconds() / 3600 if caps.report_window else None
        assert (caps.delivery_reports, window) == (channels, hours), name


def test_a_capability_nothing_could_honour_is_refused_at_definition() -> None:
    with pytest.raises(ValueError, match="report_window"):
        Capabilities(name="x", max_rows=1, delivery_reports=frozenset({DeliveryChannel.WEBHOOK}))
    with pytest.raises(TypeError, match="LOOKUP"):  # asynchronous, and no way to learn the outcome

        class _Async(Provider):
            caps = Capabilities(name="x", max_rows=1, outcome=OutcomeTiming.ASYNC)

    window = timedelta(hours=1)
    looks_up = Capabilities(
        "x", 1, delivery_reports=frozenset({DeliveryChannel.LOOKUP}), report_window=window
    )
    with pytest.raises(TypeError, match="DELIVERY_STATES"):

        class _NoTable(Provider):
            caps = looks_up

            async def lookup_status(self, *a: Any, **k: Any) -> list[Any]:
                return []


def test_delivery_state_tables() -> None:
    p, ok, ko = D.PENDING, D.DELIVERED, D.UNDELIVERED
    tl_states = ["queued", "sending", "sent", "delivered", "undelivered", "failed", "duplicate", "teleported"]
    assert [TextinglineProvider.delivery_state(s) for s in tl_states] == [p, p, p, ok, ko, ko, None, None]
    pm_states = ["created", "enqueued", "sending", "sent", "sent_to_telco", "success", "failure", "vanished"]
    assert [PostmanProvider.delivery_state(s) for s in pm_states] == [p, p, p, p, p, ok, ko, None]


def test_textingline_lookup_tells_a_refused_recipient_from_a_failed_message() -> None:
    read = TextinglineProvider(ProviderSettings(TL, Secret("kid:secret")))._lookup
    sent = read(tl(1, "failed", "m1", 33007))
    assert (sent.refused, sent.delivery_status, sent.error_code) == (False, D.UNDELIVERED, "33007")
    job = read(tl(2, "failed", None, 33007, idempotencyKey="sc-2"))
    assert (job.refused, job.status, job.client_ref) == (
        True,
        Status.FAILED,
        "sc-2",
    ) and not job.delivery_status
    blocked = read(tl(3, "undelivered", None, 33010))
    assert (blocked.refused, blocked.status) == (True, Status.REJECTED)  # a permanent code: not re-sendable
    queued = read(tl(4, "queued"))
    assert (queued.refused, queued.status, queued.delivery_status) == (False, Status.ACCEPTED, None)
    dup = read(tl(5, "duplicate", "m0", messageStatus="undelivered", messageErrorCode=33031))
    assert (dup.status, dup.delivery_status, dup.error_code) == (Status.ACCEPTED, D.UNDELIVERED, "33031")


def test_postman_lookup_reads_the_time_of_a_final_state() -> None:
    read = PostmanProvider(ProviderSettings(PM, Secret("pm-key")))._lookup
    attempt = {"errorType": "telco_error", "errorCode": "telco_rejected"}
    message = {"id": "m1", "recipient": "6591230000", "updatedAt": "2026-03-02T09:05:00.000Z"}
    done = read({**message, "latestStatus": "failure", "messageAttempts": [attempt]})
    expected = (D.UNDELIVERED, "telco_rejected", "telco_error")
    assert (done.delivery_status, done.error_code, done.error_message) == expected
    assert done.reported_at == T0 + timedelta(minutes=5)
    pending = read({**message, "latestStatus": "sent_to_telco"})
    assert (pending.delivery_status, pending.reported_at) == (D.PENDING, None)


def test_lookup_matches_by_id_key_and_phone_and_settles(tmp_path: Path) -> None:
    rows = [row(i) for i in range(5)]
    rows += [row(5, "unknown"), row(6, provider_message_id="m6"), row(7), row(8, "unknown", ref=None)]
    campaign(tmp_path, "textingline", rows)
    handler = tl_job(
        tl(0, "delivered", "m0", idempotencyKey="sc-0000"),
        tl("+440000000001", "undelivered", "m1", 33030, idempotencyKey="sc-0001"),  # by key
        tl(2, "failed", None, 33007),  # the job failed it: never sent, safe to re-send
        tl(3, "undelivered", None, 33010),  # refused for good
        tl(4, "sent", "m4"),
        tl(5, "delivered", "m5"),  # the unknown row was accepted after all
        tl("+449999999999", "delivered", "m6"),  # by message id
    )
    summary = run(tmp_path, handler=handler)
    found = facts(tmp_path)
    assert found.select("row_index", "delivery_status", "error_code", "provider_message_id").rows() == [
        (0, "delivered", None, "m0"),
        (1, "undelivered", "33030", "m1"),
        (4, "pending", None, "m4"),
        (5, "delivered", None, "m5"),
        (6, "delivered", None, "m6"),
    ]
    assert set(found["source"]) == {"lookup"}
    assert settled(tmp_path).select("row_index", "status", "error_code", "provider_message_id").rows() == [
        (2, "failed", "33007", None),
        (3, "rejected", "33010", None),
        (5, "accepted", None, "m5"),
    ]
    left = [(4, "pending"), (7, "not_in_batch"), (8, "no_batch_ref")]
    assert summary.left_rows.select("row_index", "reason").rows() == left
    view = current_view(str(tmp_path), "c1").sort("row_index")
    assert view["status"].to_list()[:6] == [
        "accepted",
        "accepted",
        "failed",
        "rejected",
        "accepted",
        "accepted",
    ]
    assert view["provider_message_id"][5] == "m5" and view["delivery_status"][5] == "delivered"

    # Idempotent: the same answers again write no part at all.
    before = parts(tmp_path)
    again = run(tmp_path, handler=handler)
    assert parts(tmp_path) == before == 2
    assert (again.facts, again.settlements, again.looked_at) == ({}, {}, 3)


def test_a_phone_twice_in_an_answer_is_not_guessed(tmp_path: Path) -> None:
    campaign(tmp_path, "textingline", [row(0, "unknown")])
    summary = run(tmp_path, handler=tl_job(tl(0, "delivered", "a"), tl(0, "undelivered", "b")))
    assert parts(tmp_path) == 0 and summary.left == {"unknown": {"ambiguous_match": 1}}


def test_a_batch_the_provider_denies_settles_its_unknown_rows_failed(tmp_path: Path) -> None:
    campaign(tmp_path, "textingline", [row(0, "unknown"), row(1)])
    not_found = {"code": 33404, "message": "Batch not found"}
    summary = run(tmp_path, handler=lambda r: httpx.Response(404, json=not_found))
    assert settled(tmp_path).select("row_index", "status", "error_code").rows() == [(0, "failed", "33404")]
    assert summary.left == {"accepted": {"batch_not_found": 1}}
    # A bare 404 (a wrong base URL, a proxy) proves nothing: the rows stay as they are.
    campaign(tmp_path, "textingline", [row(0, "unknown")], cid="c2")
    bare = run(tmp_path, "c2", handler=lambda r: httpx.Response(404, text="not found"))
    assert parts(tmp_path, "c2") == 0 and bare.left == {"unknown": {"lookup_error:http_404": 1}}


@pytest.mark.parametrize("status", [503, 500])
def test_a_failed_lookup_leaves_its_rows_as_they_were(tmp_path: Path, status: int) -> None:
    campaign(tmp_path, "textingline", [row(0), row(1, "unknown")])
    # Long past the window: a row whose lookup failed is not expired in this run either.
    summary = run(tmp_path, handler=lambda r: httpx.Response(status), clock=clock(500))
    assert parts(tmp_path) == 0 and summary.lookup_errors == {f"http_{status}": 1}
    why = {f"lookup_error:http_{status}": 1}
    assert summary.left == {"accepted": why, "unknown": why}


def test_a_429_is_waited_out_and_a_timeout_counted(tmp_path: Path) -> None:
    campaign(tmp_path, "textingline", [row(0)])
    calls: list[httpx.Request] = []

    def throttled_once(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if len(calls) == 1:
            return httpx.Response(429, headers={"Retry-After": "0"}, json={"code": 33002})
        return tl_job(tl(0, "delivered", "m0"))(request)

    assert run(tmp_path, handler=throttled_once).facts == {"delivered": 1} and len(calls) == 2
    assert ratelimit._BUCKETS[("textingline", TL)].throttled == 1  # the bucket sending uses took the 429

    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    campaign(tmp_path, "textingline", [row(0)], cid="c2")
    summary = run(tmp_path, "c2", handler=slow)
    assert parts(tmp_path, "c2") == 0 and summary.lookup_errors == {"read_timeout": 1}


def test_postman_pages_are_read_and_the_recorded_rate_applies(tmp_path: Path) -> None:
    campaign(tmp_path, "postman", [row(i, ref="cmp/batch_1") for i in range(3)])
    pages = {None: ([0, 1], True), "m1": ([2], False)}

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/campaigns/cmp/batch/batch_1/messages"
        ids, more = pages[request.url.params.get("after")]
        message = {"latestStatus": "success", "updatedAt": "2026-03-02T09:01Z"}
        data = [{**message, "id": f"m{i}", "recipient": phone(i)[1:]} for i in ids]
        page = {"endCursor": f"m{ids[-1]}", "hasNextPage": more}
        return httpx.Response(200, json={"data": data, "pageData": page})

    assert run(tmp_path, handler=handler).facts == {"delivered": 3}
    assert set(facts(tmp_path)["reported_at"]) == {T0 + timedelta(minutes=1)}
    assert ratelimit._BUCKETS[("postman", PM)].target_rate == 1000  # the campaign's recorded rate


def test_rows_without_a_final_word_expire_at_the_end_of_the_window(tmp_path: Path) -> None:
    campaign(tmp_path, "textingline", [row(0), row(1)])
    handler = tl_job(tl(0, "sent", "m0"), tl(1, "delivered", "m1"))
    assert run(tmp_path, handler=handler, clock=clock(71.9)).facts == {"delivered": 1, "pending": 1}
    late = run(tmp_path, handler=handler, clock=clock(72))
    assert (late.facts, late.facts_by_source) == ({"expired": 1}, {"window": 1})
    expired = facts(tmp_path).filter(pl.col("delivery_status") == "expired")
    assert expired.select("row_index", "reported_at").rows() == [(0, T0 + timedelta(hours=72))]
    n = parts(tmp_path)
    assert run(tmp_path, handler=handler, clock=clock(90)).looked_at == 0 and parts(tmp_path) == n


def test_a_provider_without_delivery_reports_gets_nothing(tmp_path: Path) -> None:
    campaign(tmp_path, "robase", [row(0, ref=None), row(1, "unknown", ref=None)])
    summary = run(tmp_path, clock=clock(10_000))
    assert parts(tmp_path) == 0 and summary.no_reports == {"robase": 2}
    assert summary.left == {"accepted": {"no_delivery_reports": 1}, "unknown": {"no_delivery_reports": 1}}
    assert "robase: 2 rows untouched, the provider reports no delivery" in summary.render()


def report(mid: str | None, status: str | None, minute: int, ref: str | None = None, **kw: Any) -> Any:
    at = T0 + timedelta(minutes=minute)
    return {
        **{"report_id": f"{mid}-{status}-{minute}", "provider": "sandbox", "provider_message_id": mid},
        **{"client_ref": ref, "delivery_status": status, "provider_status": status or "weird"},
        **{"reported_at": at, "received_at": at, **kw},
    }


def inbox(results: Path, *reports: dict[str, Any]) -> None:
    frame = pl.DataFrame(list(reports), infer_schema_length=None)
    delivery.append(dlr_inbox(str(results)), frame, REPORT_SCHEMA)


def test_the_inbox_folds_in_once_whatever_the_order_and_duplicates(tmp_path: Path) -> None:
    sent = [row(i, ref=None, provider_message_id=f"s{i}") for i in range(3)]
    campaign(tmp_path, "sandbox", [*sent, row(3, "unknown")])
    campaign(tmp_path, "sandbox", [row(0, provider_message_id="other")], cid="c2")
    # The final word before the pending one, twice; another campaign's message; a state with no delivery
    # status; a report naming only our key for the unknown row.
    inbox(tmp_path, report("s0", "delivered", 5), report("s0", "pending", 1), report("s0", "delivered", 5))
    inbox(tmp_path, report("s1", "pending", 2), report("other", "delivered", 3), report("s2", None, 4))
    inbox(tmp_path, report(None, "delivered", 6, ref="sc-0003"))
    summary = run(tmp_path)
    assert facts(tmp_path).select("row_index", "delivery_status", "reported_at", "source").rows() == [
        (0, "delivered", T0 + timedelta(minutes=5), "webhook"),
        (1, "pending", T0 + timedelta(minutes=2), "webhook"),
        (3, "delivered", T0 + timedelta(minutes=6), "webhook"),
    ]
    assert settled(tmp_path).select("row_index", "status").rows() == [(3, "accepted")]
    assert summary.left == {"accepted": {"pending": 2}}
    n = parts(tmp_path)
    assert run(tmp_path).facts == {} and parts(tmp_path) == n
    # News: row 1's final word, and a late `pending` for row 0 that changes nothing.
    inbox(tmp_path, report("s1", "undelivered", 9, error_code="E1"), report("s0", "pending", 30))
    assert run(tmp_path).facts == {"undelivered": 1} and parts(tmp_path) == n + 1
    assert facts(tmp_path, "c2").height == 0  # c1's run reconciled nothing of c2


def test_a_providers_final_word_beats_our_expiry() -> None:
    base = {"campaign_id": "c", "attempt": 1, "row_index": 0}
    expired = pl.DataFrame([{**base, "delivery_status": "expired", "reported_at": T0, "source": "window"}])
    earlier = T0 - timedelta(hours=1)
    late = pl.DataFrame(
        [{**base, "delivery_status": "delivered", "reported_at": earlier, "source": "webhook"}]
    )
    written = news(delivery.conform(expired, DELIVERY_SCHEMA), late)
    assert written["delivery_status"].to_list() == ["delivered"]


def test_recent_campaigns_include_those_still_inside_their_window(tmp_path: Path) -> None:
    campaign(tmp_path, "textingline", [row(0)], cid="tl")
    campaign(tmp_path, "robase", [row(0, ref=None)], cid="rb")
    campaign(tmp_path, "sandbox", [row(0, ref=None)], cid="sbx")
    # robase reports nothing: never worth a run. The others while younger than the age…
    assert recent_campaigns(str(tmp_path), 48, T0 + timedelta(hours=47)) == ["sbx", "tl"]
    # …or than their window: textingline's (72 h) still holds its campaign past 48 h.
    assert recent_campaigns(str(tmp_path), 48, T0 + timedelta(hours=60)) == ["tl"]
    assert recent_campaigns(str(tmp_path), 48, T0 + timedelta(hours=74)) == []


def test_the_command_prints_the_summary_and_the_rows_left(tmp_path: Path) -> None:
    campaign(tmp_path, "sandbox", [row(0, "unknown", ref=None), row(1, ref=None)])
    app = typer.Typer()
    register(app)
    app.command(name="noop")(lambda: None)  # two commands: `reconcile` is a subcommand, as on smscast's line
    out = CliRunner().invoke(app, ["reconcile", "-c", "c1", "-r", str(tmp_path)])
    assert out.exit_code == 0, out.output
    assert "Reconcile · campaign c1 · 2 rows · 2 looked at" in out.output
    assert "1 unknown rows left as they are (no_report:" in out.output and "row_index 0" in out.output
    missing = CliRunner().invoke(app, ["reconcile", "-c", "nope", "-r", str(tmp_path)])
    assert missing.exit_code == 1 and "no results for campaign 'nope'" in missing.output
    assert CliRunner().invoke(app, ["reconcile", "-c", "c1", "-r", str(tmp_path), "-p", "x"]).exit_code == 2
