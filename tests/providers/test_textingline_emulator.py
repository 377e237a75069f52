"""The textingline emulator over real loopback HTTP (one `python -m smscast.sandbox` for the module): documented
limits, auth, whole-batch refusals, both levels of idempotency, the rate limit, the (ASSUMED) status
endpoint, and the adapter plus send engine against it."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import polars as pl
import pytest
from support import sandbox_clock

from smscast import ratelimit
from smscast.campaign import CampaignSpec
from smscast.providers.textingline import TextinglineProvider
from smscast.sandbox.client import SandboxClient
from smscast.sandbox.emulators import textingline as tl
from smscast.servers.sandbox import SandboxServer
from smscast.settings import ProviderSettings, Secret
from smscast.tasks.plan import plan_campaign
from smscast.tasks.send_batch import RetryPolicy
from smscast.tasks.send_engine import send_rows
from smscast.tasks.validate import validate_recipients

pytestmark = pytest.mark.integration

KEY_ID, SECRET = "kid-9", "sandbox-secret"
# The fixtures (tests/providers/conftest.py): a clean sandbox with the rate limit off (the 429 test restores
# the documented default), and basic auth.
EMULATOR, API_KEY, HTTP_AUTH = "textingline", f"{KEY_ID}:{SECRET}", (KEY_ID, SECRET)
QUIET_RATE_LIMIT = True
PATH = "/api/v1/messaging/batch"
SENDER = "+18005559876"


def recipients(n: int, start: int = 0, key: str | None = "r", **extra: Any) -> list[dict[str, Any]]:
    out = []
    for i in range(start, start + n):
        r: dict[str, Any] = {"to": f"+1415555{i:04d}", "body": f"Hi {i}", **extra}
        if key is not None:
            r["idempotencyKey"] = f"{key}-{i}"
        out.append(r)
    return out


def post(
    http: httpx.Client, rcpts: list[dict[str, Any]], key: str | None = None, **kw: Any
) -> httpx.Response:
    payload: dict[str, Any] = {"from": kw.pop("sender", SENDER), "recipients": rcpts}
    if key is not None:
        payload["idempotencyKey"] = key
    return http.post(PATH, json=payload, **kw)


def refused(r: httpx.Response, status: int, code: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()
    assert body["code"] == code and body["status"] == status and body["moreInfo"].startswith("https://")
    return body


# ---- limits -----------------------------------------------------------------------------------------------


def test_5000_recipients_accepted_5001_refused(admin: SandboxClient, http: httpx.Client) -> None:
    r = post(http, recipients(5000), key="max")
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["id"].startswith("brc_") and job["status"] == "queued" and job["totalRecipients"] == 5000
    assert set(job) == {"id", "from", "totalRecipients", "status", "createdAt"}
    assert len(admin.ledger(provider="textingline")) == 5000
    refused(post(http, recipients(5001, start=5000, key="s"), key="over"), 400, 33005)
    assert len(admin.ledger(provider="textingline")) == 5000


def test_10_recipients_accepted_9_refused(admin: SandboxClient, http: httpx.Client) -> None:
    assert post(http, recipients(10)).status_code == 201
    body = refused(post(http, recipients(9, start=100)), 400, 33005)
    assert "between 10 and 5000" in body["message"]
    assert len(admin.ledger(provider="textingline")) == 10


def test_body_of_640_characters_accepted_641_refused(admin: SandboxClient, http: httpx.Client) -> None:
    ok = recipients(10)
    ok[3]["body"] = "é" * 640
    assert post(http, ok).status_code == 201
    long = recipients(10, start=50)
    long[3]["body"] = "x" * 641
    refused(post(http, long), 400, 33005)
    assert [e["body"] for e in admin.ledger(provider="textingline")].count("é" * 640) == 1


def test_wrong_or_missing_credentials_get_401(server: SandboxServer, admin: SandboxClient) -> None:
    with httpx.Client(base_url=server.base_url) as anon:
        refused(anon.post(PATH, json={"from": SENDER, "recipients": recipients(10)}), 401, 33001)
        wrong = anon.post(PATH, json={"from": SENDER, "recipients": recipients(10)}, auth=(KEY_ID, "nope"))
        refused(wrong, 401, 33001)
        bearer = anon.post(PATH, json={}, headers={"Authorization": f"Bearer {KEY_ID}:{SECRET}"})
        refused(bearer, 401, 33001)
    assert admin.ledger(provider="textingline") == []


# ---- whole-batch refusals ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mutate", "status", "code"),
    [
        (lambda rs: rs[4].update(to=rs[2]["to"]), 400, 33024),  # duplicate phone
        (lambda rs: rs[4].pop("body"), 400, 33024),  # neither body nor mediaUrl
        (lambda rs: rs[4].update(body="bell \x07"), 400, 33016),
        (lambda rs: rs[4].update(body="win big SHAFT-TEST now"), 400, 33019),
        (lambda rs: rs[4].update(to="07400900123"), 400, 33003),
        (lambda rs: rs[4].update(mediaUrl="https://cdn.example.com/a.png"), 400, 33005),  # SMS/MMS mix
        (lambda rs: rs[4].update(idempotencyKey="bad key!"), 400, 33005),
    ],
)
def test_one_bad_recipient_refuses_the_whole_batch(
    admin: SandboxClient, http: httpx.Client, mutate: Any, status: int, code: int
) -> None:
    rs = recipients(12)
    mutate(rs)
    refused(post(http, rs, key="bad-batch"), status, code)
    assert admin.ledger(provider="textingline") == []
    # A refused request does not consume its keys: the corrected batch goes through under the same ones.
    assert post(http, recipients(12), key="bad-batch").status_code == 201
    assert len(admin.ledger(provider="textingline")) == 12


@pytest.mark.parametrize(
    ("sender", "status", "code"),
    [(tl.UNASSIGNED_SENDER, 403, 33004), (tl.QUOTA_SENDER, 429, 33012), (tl.NO_CREDIT_SENDER, 402, 33023)],
)
def test_account_refusals(
    admin: SandboxClient, http: httpx.Client, sender: str, status: int, code: int
) -> None:
    r = post(http, recipients(10), sender=sender)
    refused(r, status, code)
    assert "retry-after" not in r.headers  # the quota's 429 is not a rate limit
    assert admin.ledger(provider="textingline") == []


def test_mms_batch_accepted(admin: SandboxClient, http: httpx.Client) -> None:
    rs = recipients(10, mediaUrl="https://cdn.example.com/a.png")
    for r in rs[:5]:
        r.pop("body")
    assert post(http, rs).status_code == 201
    assert len(admin.ledger(provider="textingline")) == 10


# ---- idempotency ------------------------------------------------------------------------------------------


def test_repeated_batch_key_answers_the_original_job(admin: SandboxClient, http: httpx.Client) -> None:
    first = post(http, recipients(10), key="batch-A")
    again = post(http, recipients(10), key="batch-A")
    other = post(http, recipients(10, start=10, key="other"), key="batch-A")  # same key, other payload
    assert first.status_code == again.status_code == other.status_code == 201
    assert first.json() == again.json() == other.json()
    ledger = admin.ledger(provider="textingline")
    assert len(ledger) == 10
    assert {e["batch"] for e in ledger} == {first.json()["id"]} and {e["batch_key"] for e in ledger} == {
        "batch-A"
    }
    assert [e["key"] for e in ledger] == [f"r-{i}" for i in range(10)]


def test_repeated_recipient_key_in_a_new_batch_creates_nothing(
    admin: SandboxClient, http: httpx.Client
) -> None:
    first = post(http, recipients(10), key="batch-1").json()
    mixed = recipients(5) + recipients(5, start=20)  # 5 keys seen before, 5 new
    second = post(http, mixed, key="batch-2")
    assert second.status_code == 201 and second.json()["totalRecipients"] == 10
    ledger = admin.ledger(provider="textingline")
    assert len(ledger) == 15 and len({e["to"] for e in ledger}) == 15
    status = http.get(f"{PATH}/{second.json()['id']}").json()
    assert [r["status"] for r in status["recipients"]] == ["duplicate"] * 5 + ["delivered"] * 5
    original = http.get(f"{PATH}/{first['id']}").json()["recipients"]
    assert [r["messageId"] for r in status["recipients"][:5]] == [r["messageId"] for r in original[:5]]
    assert admin.stats()["providers"]["textingline"]["duplicates"] == 5


# ---- rate limit -------------------------------------------------------------------------------------------


def test_documented_rate_limit_answers_429_on_the_6th_request(
    server: SandboxServer, admin: SandboxClient, http: httpx.Client
) -> None:
    admin.reset()  # back to the start knobs: the emulator's documented 5 requests per minute
    effective = admin.faults()["providers"]["textingline"]
    assert effective["rate_limit_rps"] == pytest.approx(5 / 60) and effective["rate_limit_burst"] == 5
    sandbox_clock(server.base_url, freeze=True)  # all six in the same instant, however slow the machine
    codes = [post(http, recipients(10, start=10 * i, key=f"k{i}")).status_code for i in range(5)]
    assert codes == [201] * 5
    sixth = post(http, recipients(10, start=60, key="k6"))
    refused(sixth, 429, 33002)
    assert sixth.headers["retry-after"] == "12"  # the next token, 60/5 s after the first
    assert len(admin.ledger(provider="textingline")) == 50
    sandbox_clock(server.base_url, advance=11.9)
    refused(post(http, recipients(10, start=60, key="k6")), 429, 33002)
    sandbox_clock(server.base_url, advance=0.2)
    assert post(http, recipients(10, start=60, key="k6")).status_code == 201
    assert len(admin.ledger(provider="textingline")) == 60
    # The status lookup is not one of the 5 a minute.
    assert http.get(f"{PATH}/brc_missing").status_code == 404


# ---- status endpoint (ASSUMED shape) ----------------------------------------------------------------------


def test_status_reports_async_outcomes_from_the_row_knobs(admin: SandboxClient, http: httpx.Client) -> None:
    admin.set_faults(provider="textingline", reject_suffixes=["0003"], transient_suffixes=["0004"])
    job = post(http, recipients(10), key="st").json()
    status = http.get(f"{PATH}/{job['id']}")
    assert status.status_code == 200
    body = status.json()
    assert body["id"] == job["id"] and body["totalRecipients"] == 10
    items = body["recipients"]
    assert [r["to"] for r in items] == [f"+1415555{i:04d}" for i in range(10)]
    assert (items[3]["status"], items[3]["errorCode"]) == ("undelivered", 33010)
    assert (items[4]["status"], items[4]["errorCode"]) == ("failed", 33007)
    assert {r["status"] for i, r in enumerate(items) if i not in (3, 4)} == {"delivered"}
    # The job took every recipient: all ten are in the ledger, with the ids the lookup names.
    ledger = admin.ledger(provider="textingline")
    assert [e["message_id"] for e in ledger] == [r["messageId"] for r in items]
    refused(http.get(f"{PATH}/brc_nope"), 404, tl.NOT_FOUND)


# ---- the adapter and the engine against the emulator ------------------------------------------------------


def provider_for(server: SandboxServer) -> TextinglineProvider:
    return TextinglineProvider(
        ProviderSettings(base_url=server.base_url, api_key=Secret(f"{KEY_ID}:{SECRET}"))
    )


def planned_rows(n: int, bodies: list[str], spec: CampaignSpec, p: TextinglineProvider) -> pl.DataFrame:
    df = pl.DataFrame(
        {"row_index": list(range(n)), "phone_raw": [f"+4474009{i:05d}" for i in range(n)], "body": bodies}
    )
    plan = plan_campaign(validate_recipients(df, spec, p.caps, p), spec, p.caps, p)
    return plan.rows.filter(pl.col("shard").is_not_null())


def test_engine_bisects_5000_rows_around_one_compliance_refusal(
    server: SandboxServer, admin: SandboxClient
) -> None:
    p = provider_for(server)
    spec = CampaignSpec(campaign_id="tl-bisect", provider="textingline", source="x", results="r",
                        sender=SENDER, rate=1000)  # fmt: skip
    bad = 3210
    bodies = [f"Order {i} has shipped" for i in range(5000)]
    bodies[bad] = "Order SHAFT-TEST has shipped"
    rows = planned_rows(5000, bodies, spec, p)
    assert rows["batch_seq"].n_unique() == 1  # one request of 5,000

    async def go() -> tuple[pl.DataFrame, dict[str, int]]:
        ratelimit._BUCKETS.clear()
        async with httpx.AsyncClient(timeout=60) as client:
            return await send_rows(p, rows, spec, client=client, policy=RetryPolicy(max_attempts=2))

    out, requests = asyncio.run(go())
    out = out.sort("row_index")
    rejected = out.filter(pl.col("status") == "rejected")
    accepted = out.filter(pl.col("status") == "accepted")
    # The halves holding row 3210: 5000 -> 2500 -> 1250 -> 625 -> 312 -> 156 -> 78 -> 39 -> 19 rows, and 19 is
    # below 2 * min_rows: those 19 are refused together, the other 4,981 go out.
    idx = rejected["row_index"].to_list()
    assert idx == list(range(3203, 3222)) and bad in idx
    assert set(rejected["error_code"]) == {"33019"}
    assert rejected["error_message"].str.contains("could not be isolated").all()
    assert accepted.height == 5000 - len(idx) and out.height == 5000
    assert requests == {"batch_rejected": 9, "201": 8}  # one refusal per level, one accepted half per split
    ledger = admin.ledger(provider="textingline")
    assert len(ledger) == accepted.height
    sent = {e["to"] for e in ledger}
    assert sent == set(accepted.join(rows.select("row_index", "phone"), on="row_index")["phone"].to_list())
    assert {e["key"] for e in ledger} == set(
        accepted.join(rows.select("row_index", "idempotency_key"), on="row_index")[
            "idempotency_key"
        ].to_list()
    )
    # Every accepted row names the job that carries it, and the lookup confirms it recipient by recipient.
    refs = accepted["provider_batch_ref"].unique().to_list()
    assert len(refs) == 8 and all(r.startswith("brc_") for r in refs)

    async def lookup() -> list[Any]:
        async with httpx.AsyncClient() as client:
            found = [await p.lookup_status(client, ref) for ref in refs]
        return [s for batch in found for s in batch]

    statuses = asyncio.run(lookup())
    assert len(statuses) == accepted.height and {s.provider_status for s in statuses} == {"delivered"}
    assert {s.phone for s in statuses} == sent


def test_resending_an_accepted_batch_creates_nothing(server: SandboxServer, admin: SandboxClient) -> None:
    p = provider_for(server)
    spec = CampaignSpec(campaign_id="tl-resend", provider="textingline", source="x", results="r",
                        sender=SENDER, rate=1000)  # fmt: skip
    rows = planned_rows(30, [f"Hi {i}" for i in range(30)], spec, p)

    async def go() -> pl.DataFrame:
        ratelimit._BUCKETS.clear()
        async with httpx.AsyncClient() as client:
            out, _ = await send_rows(p, rows, spec, client=client)
            return out

    first, second = asyncio.run(go()), asyncio.run(go())
    assert set(first["status"]) == set(second["status"]) == {"accepted"}
    assert first["provider_batch_ref"].to_list() == second["provider_batch_ref"].to_list()  # same job
    assert len(admin.ledger(provider="textingline")) == 30
