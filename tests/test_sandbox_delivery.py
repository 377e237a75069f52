"""The sandbox's delivery truth over real loopback HTTP: one `python -m smscast.sandbox` for the module, and a
small receiver (Starlette under uvicorn, in a thread) that collects the delivery reports it POSTs. Every
wait is for a condition, with a deadline; the delay follows the sandbox clock, frozen and moved by hand."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import orjson
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from smscast.delivery import DELIVERY_STATUSES
from smscast.sandbox import truth
from smscast.sandbox.__main__ import build_parser
from smscast.sandbox.app import create_app
from smscast.sandbox.client import SandboxAdminError, SandboxClient
from smscast.sandbox.framework import SandboxConfig
from smscast.servers.sandbox import SandboxServer

pytestmark = pytest.mark.integration

BEARER = {"Authorization": "Bearer sandbox-key"}
TL_PATH, TL_AUTH = "/api/v1/messaging/batch", ("sandbox-key", "sandbox-key")
# Each route's report -> (message id, client key, status in smscast's vocabulary, error code, time).
PARSE: dict[str, Callable[[dict[str, Any]], tuple[Any, ...]]] = {
    "generic": lambda r: (r["message_id"], r["client_ref"], r["status"], r["error_code"], r["reported_at"]),
    "instasent": lambda r: (
        r["id"],
        r["clientId"],
        {"sent": "pending", "failed": "undelivered"}.get(r["status"], r["status"]),
        r["errorCode"],
        r["updatedAt"],
    ),
    "sent-dm": lambda r: (
        r["payload"]["message_id"],
        None,
        {"SENT": "pending", "DELIVERED": "delivered", "FAILED": "undelivered"}[
            r["payload"]["message_status"]
        ],
        r["payload"]["error_code"],
        r["payload"]["updated_at"],
    ),
}


class Receiver:
    """Collects delivery report POSTs at /dlr/<route>; answers 500 to the next `fail_next` of them."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.posts: list[tuple[str, dict[str, str], Any]] = []
        self.fail_next = 0
        self.port = 0
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    async def _handle(self, request: Request) -> Response:
        body = orjson.loads(await request.body())
        with self.lock:
            if self.fail_next > 0:
                self.fail_next -= 1
                return Response(status_code=500)
            self.posts.append((request.path_params["route"], dict(request.query_params), body))
        return Response(status_code=204)

    def start(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        self.port = sock.getsockname()[1]
        app = Starlette(routes=[Route("/dlr/{route}", self._handle, methods=["POST"])])
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self._server, self._sock = server, sock
        self._thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        wait_for(lambda: server.started, "the receiver to start")

    def stop(self) -> None:
        assert self._server is not None and self._thread is not None
        self._server.should_exit = True
        self._thread.join(timeout=30)
        self._sock.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/dlr?token=S"

    def reports(self, route: str, ids: set[str] | None = None) -> list[tuple[Any, ...]]:
        """Every report received on `route` (of the messages `ids`), parsed; copies included."""
        with self.lock:
            bodies = [b for r, q, b in self.posts if r == route and q == {"token": "S"}]
        flat = [x for b in bodies for x in (b if isinstance(b, list) else [b])]
        parsed = [PARSE[route](x) for x in flat]
        return [p for p in parsed if ids is None or p[0] in ids]


def wait_for(condition: Callable[[], object], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.fixture(scope="module")
def server() -> Iterator[SandboxServer]:
    with SandboxServer() as sbx:
        yield sbx


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    rec = Receiver()
    rec.start()
    yield rec
    rec.stop()


@pytest.fixture
def admin(server: SandboxServer, receiver: Receiver) -> SandboxClient:
    server.client.reset()
    for provider in ("instasent", "sent-dm", "textingline", "postman"):
        server.client.set_faults(provider=provider, rate_limit_rps=0)
    with receiver.lock:
        receiver.posts.clear()
        receiver.fail_next = 0
    return server.client


@pytest.fixture
def http(server: SandboxServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=30.0) as client:
        yield client


def phones(n: int, start: int = 0) -> list[str]:
    return [f"+4474009{i:05d}" for i in range(start, start + n)]


def send(http: httpx.Client, route: str, n: int) -> list[str]:
    """n new messages through the emulator of `route`; their message ids."""
    to = phones(n)
    if route == "generic":
        rows = [{"to": p, "body": "Hi", "ref": f"ref-{i}"} for i, p in enumerate(to)]
        r = http.post("/sandbox/v1/messages/batch", json={"messages": rows}, headers=BEARER)
        return [x["message_id"] for x in r.json()["results"]]
    if route == "instasent":
        items = [{"from": "ACME", "to": p, "text": "Hi", "clientId": f"c-{i}"} for i, p in enumerate(to)]
        r = http.post("/transactional/v1/sms/bulk", json=items, headers=BEARER)
        return [e["id"] for e in r.json()["entities"]]
    body = {"to": to, "template": {"id": "tmpl_1", "parameters": {}}, "channel": ["sms"]}
    r = http.post("/v3/messages", json=body, headers={"x-api-key": "sandbox-key"})
    return [x["message_id"] for x in r.json()["data"]["recipients"]]


def truth_of(admin: SandboxClient, provider: str) -> dict[str, dict[str, Any]]:
    return {e["message_id"]: dict(e) for e in admin.ledger(provider=provider)}


def settled(admin: SandboxClient) -> bool:
    s = admin.callbacks()
    return bool(s["reports"] > 0 and s["scheduled"] == 0 and s["queued"] == 0)


# ---- in process: the vocabulary, the knobs, determinism ---------------------------------------------------


def test_the_vocabulary_is_the_contracts() -> None:
    assert truth.STATUSES == DELIVERY_STATUSES


def test_knobs_are_command_line_options() -> None:
    args = build_parser().parse_args(
        ["--undelivered-share", "0.2", "--dlr-url", "http://127.0.0.1:9/dlr?t=1", "--dlr-delay-ms", "50",
         "--dlr-duplicate-share", "0.1", "--async-reject-share", "0.3", "--dlr-retry-window-s", "5"]
    )  # fmt: skip
    assert (args.knob_undelivered_share, args.knob_dlr_url, args.knob_dlr_delay_ms) == (
        0.2,
        "http://127.0.0.1:9/dlr?t=1",
        50.0,
    )
    assert (args.knob_dlr_duplicate_share, args.knob_async_reject_share) == (0.1, 0.3)


async def test_outcomes_are_a_function_of_seed_and_message_id() -> None:
    async def outcomes(seed: int) -> list[tuple[str, str | None]]:
        app = create_app(SandboxConfig(knobs={"seed": seed, "undelivered_share": 0.5}))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://s") as c:
            rows = [{"to": p, "body": "Hi"} for p in phones(60)]
            await c.post("/sandbox/v1/messages/batch", json={"messages": rows}, headers=BEARER)
        return [(e["delivery_status"], e["delivery_error_code"]) for e in app.sandbox.ledger.iter_entries()]

    first = await outcomes(3)
    assert first == await outcomes(3)  # a restarted sandbox with the same seed agrees
    assert first != await outcomes(4)
    assert {s for s, _ in first} == {"delivered", "undelivered"}
    assert all((code is None) == (status == "delivered") for status, code in first)


# ---- callbacks, lookups and the ledger agree ----------------------------------------------------------------


@pytest.mark.parametrize("route", ["generic", "instasent", "sent-dm"])
def test_callbacks_agree_with_the_ledger_and_follow_the_clock(
    route: str, server: SandboxServer, admin: SandboxClient, http: httpx.Client, receiver: Receiver
) -> None:
    n = 100
    admin.clock(freeze=True)
    admin.set_faults(seed=11, undelivered_share=0.3, dlr_delay_ms=5000, dlr_url=receiver.url)
    ids = set(send(http, route, n))
    assert len(ids) == n
    ledger = truth_of(admin, route)
    assert set(ledger) == ids

    wait_for(lambda: len(receiver.reports(route, ids)) == n, "the pending reports")
    wait_for(lambda: admin.callbacks()["queued"] == 0, "the pending reports to be acknowledged")
    pending = receiver.reports(route, ids)
    assert {(p[2], p[3]) for p in pending} == {("pending", None)}
    assert all(p[4] == ledger[p[0]]["accepted_at"] for p in pending)
    assert admin.callbacks()["scheduled"] == n  # the final reports wait for the clock

    admin.clock(advance=4.9)
    assert len(receiver.reports(route, ids)) == n
    admin.clock(advance=0.1)
    wait_for(lambda: len(receiver.reports(route, ids)) == 2 * n, "the final reports")
    final = [p for p in receiver.reports(route, ids) if p[2] != "pending"]
    for message_id, key, status, code, at in final:
        entry = ledger[message_id]
        assert (status, code, at) == (
            entry["delivery_status"],
            entry["delivery_error_code"],
            entry["delivery_at"],
        )
        if route != "sent-dm":
            assert key == entry["key"]
    undelivered = sum(e["delivery_status"] == "undelivered" for e in ledger.values())
    assert 0.1 * n <= undelivered <= 0.5 * n
    assert all(
        (e["delivery_error_code"] is None) == (e["delivery_status"] == "delivered") for e in ledger.values()
    )
    stats = admin.callbacks()
    assert (stats["abandoned"], stats["scheduled"], stats["queued"]) == (0, 0, 0)
    assert stats["reports_acknowledged"] == stats["reports"] == 2 * n
    if route == "generic":
        assert stats["acknowledged"] < n  # grouped: many reports per POST


def test_duplicates_are_posted(admin: SandboxClient, http: httpx.Client, receiver: Receiver) -> None:
    admin.set_faults(seed=5, dlr_duplicate_share=0.5, dlr_url=receiver.url)
    ids = set(send(http, "generic", 100))
    wait_for(lambda: settled(admin), "every report")
    got = receiver.reports("generic", ids)
    distinct = set(got)
    assert len(distinct) == 200  # pending and final of each message
    copies = len(got) - len(distinct)
    assert 40 <= copies <= 160 and admin.callbacks()["reports"] == len(got)


def test_a_receiver_that_fails_or_restarts_gets_every_report(
    admin: SandboxClient, http: httpx.Client, receiver: Receiver
) -> None:
    receiver.fail_next = 5
    admin.set_faults(dlr_url=receiver.url)
    ids = set(send(http, "sent-dm", 20))
    wait_for(lambda: len(set(receiver.reports("sent-dm", ids))) == 40, "every report despite the 500s")
    retried = admin.callbacks()["retried"]
    assert retried >= 5
    receiver.stop()  # nothing listens: connection refused
    try:
        more = set(send(http, "instasent", 10))
        wait_for(lambda: admin.callbacks()["retried"] >= retried + 5, "retries against the stopped receiver")
    finally:
        receiver.start()  # the same port
    wait_for(lambda: len(set(receiver.reports("instasent", more))) == 20, "every report after the restart")
    assert admin.callbacks()["abandoned"] == 0


def test_reports_are_abandoned_after_the_retry_window(
    admin: SandboxClient, http: httpx.Client, receiver: Receiver
) -> None:
    receiver.fail_next = 10**6
    admin.set_faults(dlr_url=receiver.url, dlr_retry_window_s=0.3)
    send(http, "instasent", 2)
    wait_for(lambda: admin.callbacks()["abandoned"] == 4, "the abandoned reports")
    stats = admin.callbacks()
    assert (stats["acknowledged"], stats["queued"], stats["reports_abandoned"]) == (0, 0, 4)


# ---- lookups: textingline and Postman -------------------------------------------------------------------------


def textingline(http: httpx.Client, tos: list[str], key: str, rkey: str = "r") -> str:
    rcpts = [{"to": p, "body": "Hi", "idempotencyKey": f"{rkey}-{p[1:]}"} for p in tos]
    r = http.post(
        TL_PATH, json={"from": "+18005559876", "recipients": rcpts, "idempotencyKey": key}, auth=TL_AUTH
    )
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def tl_lookup(http: httpx.Client, job: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = http.get(f"{TL_PATH}/{job}", auth=TL_AUTH).json()["recipients"]
    return items


def test_textingline_lookup_follows_the_clock_and_agrees_with_the_ledger(
    admin: SandboxClient, http: httpx.Client
) -> None:
    admin.clock(freeze=True)
    admin.set_faults(seed=2, undelivered_share=0.3, dlr_delay_ms=2000)
    job = textingline(http, phones(60), "job-1")
    assert {r["status"] for r in tl_lookup(http, job)} == {"sent"}
    admin.clock(advance=1.999)
    assert {r["status"] for r in tl_lookup(http, job)} == {"sent"}
    admin.clock(advance=0.001)
    ledger = truth_of(admin, "textingline")
    items = tl_lookup(http, job)
    for r in items:
        e = ledger[r["messageId"]]
        code = None if e["delivery_error_code"] is None else int(e["delivery_error_code"])
        assert (r["status"], r["errorCode"]) == (e["delivery_status"], code)
    assert 6 <= sum(r["status"] == "undelivered" for r in items) <= 30
    again = tl_lookup(http, textingline(http, phones(10), "job-2"))  # the same recipient keys
    assert [(r["status"], r["messageStatus"]) for r in again] == [
        ("duplicate", r["status"]) for r in items[:10]
    ]


def test_async_rejected_recipients_fail_and_stay_out_of_the_ledger(
    admin: SandboxClient, http: httpx.Client
) -> None:
    admin.clock(freeze=True)
    admin.set_faults(seed=9, async_reject_share=0.4, dlr_delay_ms=1000)
    job = textingline(http, phones(50), "job-1")
    assert {r["status"] for r in tl_lookup(http, job)} == {"queued", "sent"}
    admin.clock(advance=1)
    items = tl_lookup(http, job)
    failed = [r for r in items if r["status"] == "failed"]
    assert 10 <= len(failed) <= 30 and {r["status"] for r in items} == {"failed", "delivered"}
    assert all(r["errorCode"] == 33007 and r["messageId"] is None for r in failed)
    ledger = admin.ledger(provider="textingline")
    assert sorted(e["to"] for e in ledger) == sorted(r["to"] for r in items if r["status"] == "delivered")
    assert admin.stats()["emulators"]["textingline"]["async_rejected"] == len(failed)

    # A re-send of the failed recipients, with their recipient keys, in a batch of its own: new messages.
    admin.set_faults(async_reject_share=0)
    job2 = textingline(http, [r["to"] for r in failed], "job-2")
    admin.clock(advance=1)
    resent = tl_lookup(http, job2)
    assert {r["status"] for r in resent} == {"delivered"}
    assert [r["idempotencyKey"] for r in resent] == [r["idempotencyKey"] for r in failed]
    assert len(admin.ledger(provider="textingline")) == len(ledger) + len(failed)
    assert admin.stats()["providers"]["textingline"]["duplicates"] == 0


def test_postman_lookup_follows_the_clock_and_agrees_with_the_ledger(
    admin: SandboxClient, http: httpx.Client
) -> None:
    admin.clock(freeze=True)
    admin.set_faults(seed=4, undelivered_share=0.4, dlr_delay_ms=500)
    csv = "recipient,language,body\r\n" + "".join(f"{p[1:]},english,Hi\r\n" for p in phones(40))
    r = http.post(
        "/campaigns/c1/batch/messages", files={"file": ("b.csv", csv.encode(), "text/csv")}, headers=BEARER
    )
    batch = r.json()["batchId"]

    def lookup() -> list[dict[str, Any]]:
        data: list[dict[str, Any]] = http.get(
            f"/campaigns/c1/batch/{batch}/messages", params={"limit": 1000}, headers=BEARER
        ).json()["data"]
        return data

    assert {m["latestStatus"] for m in lookup()} == {"sent_to_telco"}
    admin.clock(advance=0.5)
    ledger = truth_of(admin, "postman")
    data = lookup()
    for m in data:
        e = ledger[m["id"]]
        expected = "success" if e["delivery_status"] == "delivered" else "failure"
        attempt = m["messageAttempts"][-1]
        assert (m["latestStatus"], attempt["errorCode"]) == (expected, e["delivery_error_code"])
        assert m["updatedAt"] == e["delivery_at"]
    assert 4 <= sum(m["latestStatus"] == "failure" for m in data) <= 28
    with pytest.raises(SandboxAdminError, match="http"):
        admin.set_faults(dlr_url="ftp://example.org/dlr")
