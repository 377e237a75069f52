"""textingline adapter: request shape, response parsing, status mapping and pre-send rules, through
httpx.MockTransport (no network, no Prefect)."""

from __future__ import annotations

import asyncio
import base64
import json
import re
from collections.abc import Callable
from typing import Any

import httpx
import polars as pl
import pytest

from smscast import ratelimit
from smscast.campaign import CampaignSpec
from smscast.errors import (
    AmbiguousError,
    AuthError,
    BatchRejectedError,
    CampaignStopError,
    ConfigError,
    RateLimitedError,
    ServerError,
)
from smscast.providers.base import Batch, Idempotency, OutcomeTiming, Rejection
from smscast.providers.textingline import INVALID_CHARS, AccountRefusedError, TextinglineProvider, wire_key
from smscast.sandbox.emulators import textingline as emulator
from smscast.settings import ProviderSettings, Secret
from smscast.status import Status
from smscast.tasks.plan import plan_campaign
from smscast.tasks.send_batch import RetryPolicy
from smscast.tasks.send_engine import send_rows
from smscast.tasks.validate import validate_recipients

BASE = "http://textingline.test"
SETTINGS = ProviderSettings(base_url=BASE, api_key=Secret("kid-1:s3cr3t-value"))
SENDER = "+18005559876"
FAST = RetryPolicy(max_attempts=3, max_throttled=5, backoff_base=0.001, backoff_cap=0.01)


def provider() -> TextinglineProvider:
    return TextinglineProvider(SETTINGS)


def make_spec(**kw: Any) -> CampaignSpec:
    base: dict[str, Any] = {
        "campaign_id": "tl-1",
        "provider": "textingline",
        "source": "x",
        "results": "r",
        "sender": SENDER,
        "rate": 10_000,
    }
    return CampaignSpec(**(base | kw))


def frame(n: int, **cols: list[Any]) -> pl.DataFrame:
    data: dict[str, Any] = {
        "row_index": list(range(n)),
        "phone_raw": [f"+4474009{i:05d}" for i in range(n)],
        "body": [f"Hello {i}" for i in range(n)],
    }
    data.update(cols)
    return pl.DataFrame(data)


def checked(df: pl.DataFrame, spec: CampaignSpec | None = None) -> pl.DataFrame:
    p = provider()
    return validate_recipients(df, spec or make_spec(), p.caps, p)


def planned(df: pl.DataFrame, spec: CampaignSpec | None = None) -> pl.DataFrame:
    spec = spec or make_spec()
    p = provider()
    plan = plan_campaign(checked(df, spec), spec, p.caps, p)
    return plan.rows.filter(pl.col("shard").is_not_null())


def batches(rows: pl.DataFrame, spec: CampaignSpec) -> list[Batch]:
    return [
        Batch("tl-1", str(part.item(0, "batch_id")), str(part.item(0, "batch_key")), part, spec)
        for part in rows.sort("batch_seq", "row_index").partition_by("batch_seq", maintain_order=True)
    ]


def job(request: httpx.Request, ref: str = "brc_DsAdb4EBYBh3z25sBA1qnv") -> httpx.Response:
    body = json.loads(request.content)
    return httpx.Response(
        201,
        json={
            "id": ref,
            "from": body["from"],
            "totalRecipients": len(body["recipients"]),
            "status": "queued",
            "createdAt": "2026-05-01T14:30:00.000Z",
        },
    )


def vendor_error(status: int, code: int, message: str = "refused", **headers: str) -> httpx.Response:
    payload = {"code": code, "message": message, "status": status, "moreInfo": emulator.MORE_INFO}
    return httpx.Response(status, json=payload, headers=headers)


def run(
    rows: pl.DataFrame, spec: CampaignSpec, handler: Callable[[httpx.Request], httpx.Response]
) -> tuple[pl.DataFrame, dict[str, int]]:
    ratelimit._BUCKETS.clear()  # the shared bucket is process-wide by design
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return asyncio.run(send_rows(provider(), rows, spec, policy=FAST, client=client))


# ---- capabilities ---------------------------------------------------------------------------------------


def test_capabilities_follow_the_document() -> None:
    caps = TextinglineProvider.caps
    assert (caps.min_rows, caps.max_rows, caps.max_body_chars) == (10, 5000, 640)
    assert caps.rate_per_second == pytest.approx(5 / 60) and caps.burst == 1
    assert caps.idempotency is Idempotency.BATCH_AND_ROW and caps.resend_safe
    assert caps.rejection is Rejection.WHOLE_BATCH and caps.outcome is OutcomeTiming.ASYNC
    assert caps.sender_required
    assert caps.default_base_url == "https://platform.textingline.com"


# ---- request ----------------------------------------------------------------------------------------------


def test_request_is_basic_auth_json_with_batch_and_recipient_keys() -> None:
    spec = make_spec()
    rows = planned(frame(12), spec)
    (batch,) = batches(rows, spec)
    request = provider().build_request(batch)
    assert request.method == "POST"
    assert str(request.url) == f"{BASE}/api/v1/messaging/batch"
    assert request.headers["authorization"] == "Basic " + base64.b64encode(b"kid-1:s3cr3t-value").decode()
    assert request.headers["content-type"] == "application/json"
    body = json.loads(request.content)
    assert list(body) == ["from", "recipients", "idempotencyKey"]
    assert body["from"] == SENDER
    assert body["idempotencyKey"] == batch.batch_key and body["idempotencyKey"].startswith("scb-")
    keys = rows.sort("row_index")["idempotency_key"].to_list()
    assert body["recipients"] == [
        {"to": f"+4474009{i:05d}", "body": f"Hello {i}", "idempotencyKey": keys[i]} for i in range(12)
    ]


def test_bisected_batch_keys_use_only_allowed_characters() -> None:
    spec = make_spec()
    (batch,) = batches(planned(frame(40), spec), spec)
    part = batch.subset(range(20), "L").subset(range(10), "R")
    sent = json.loads(provider().build_request(part).content)["idempotencyKey"]
    assert sent == batch.batch_key + "-L-R" and re.fullmatch(r"[A-Za-z0-9:@\-_()]{2,100}", sent)
    assert emulator.KEY.fullmatch(sent)
    assert wire_key("scb-abc.L") != wire_key("scb-abc.R")


def test_mms_rows_carry_media_url_and_never_share_a_batch_with_sms() -> None:
    spec = make_spec()
    media = [None] * 12 + [f"https://cdn.example.com/img/{i}.png" for i in range(11)]
    rows = planned(frame(23, media_url=media), spec)
    sent = [json.loads(provider().build_request(b).content)["recipients"] for b in batches(rows, spec)]
    assert sorted(len(r) for r in sent) == [11, 12]
    for recipients in sent:
        kinds = {"mediaUrl" in r for r in recipients}
        assert len(kinds) == 1  # never mixed
    mms = next(r for r in sent if "mediaUrl" in r[0])
    assert mms[0]["mediaUrl"].startswith("https://cdn.example.com/") and mms[0]["body"]


def test_api_key_must_be_key_id_and_secret() -> None:
    for bad in ("Zq8-no-colon", ":Zq8secret", "Zq8keyid:"):
        with pytest.raises(ConfigError, match="key_id:secret") as info:
            TextinglineProvider(ProviderSettings(base_url=BASE, api_key=Secret(bad)))
        if bad.strip(":"):
            assert bad.strip(":") not in str(info.value)  # the value never appears in the message


def test_check_spec_refuses_templates_and_bad_senders() -> None:
    p = provider()
    p.check_spec(make_spec(body="hi"))
    p.check_spec(make_spec(sender="12345"))
    with pytest.raises(ConfigError, match="--sender"):
        p.check_spec(make_spec(sender=None))
    with pytest.raises(ConfigError, match=r"E\.164"):
        p.check_spec(make_spec(sender="ACME"))
    with pytest.raises(ConfigError, match="templates"):
        p.check_spec(make_spec(template="welcome"))


# ---- response ---------------------------------------------------------------------------------------------


def one_batch(n: int = 12) -> Batch:
    spec = make_spec()
    (batch,) = batches(planned(frame(n), spec), spec)
    return batch


def test_queued_job_accepts_every_row_with_the_batch_ref() -> None:
    batch = one_batch()
    request = provider().build_request(batch)
    outcomes = provider().parse_response(batch, job(request))
    assert len(outcomes) == 12
    assert {o.status for o in outcomes} == {Status.ACCEPTED}
    assert {o.provider_batch_ref for o in outcomes} == {"brc_DsAdb4EBYBh3z25sBA1qnv"}
    assert {o.provider_message_id for o in outcomes} == {None}  # the job names no message per recipient


def test_job_holding_another_number_of_recipients_is_unknown() -> None:
    batch = one_batch()
    response = httpx.Response(201, json={"id": "brc_x", "totalRecipients": 11, "status": "queued"})
    outcomes = provider().parse_response(batch, response)
    assert {o.status for o in outcomes} == {Status.UNKNOWN}
    assert outcomes[0].error_code == "recipient_count_mismatch" and outcomes[0].provider_batch_ref == "brc_x"


@pytest.mark.parametrize(
    "response",
    [httpx.Response(200, text="<html>ok</html>"), httpx.Response(201, json={"status": "queued"})],
)
def test_unreadable_success_is_ambiguous(response: httpx.Response) -> None:
    with pytest.raises(AmbiguousError):
        provider().parse_response(one_batch(), response)


@pytest.mark.parametrize(("status", "code"), [(400, 33019), (400, 33016), (400, 33024), (403, 33010)])
def test_row_caused_refusals_are_split(status: int, code: int) -> None:
    with pytest.raises(BatchRejectedError) as info:
        provider().parse_response(one_batch(), vendor_error(status, code, "content violates rules"))
    assert info.value.retryable_split and info.value.code == str(code)
    assert "content violates rules" in str(info.value)


@pytest.mark.parametrize(("status", "code"), [(403, 33004), (429, 33012), (402, 33023)])
def test_account_refusals_stop_the_campaign(status: int, code: int) -> None:
    # 33004 arrives as 403 and 33012 as 429: neither is a credential problem nor a rate limit.
    with pytest.raises(AccountRefusedError) as info:
        provider().parse_response(one_batch(), vendor_error(status, code))
    assert isinstance(info.value, CampaignStopError) and info.value.code == str(code)


def test_other_refusals() -> None:
    p, batch = provider(), one_batch()
    with pytest.raises(BatchRejectedError) as rejected:
        p.parse_response(batch, vendor_error(400, 33005, "from is required"))
    assert not rejected.value.retryable_split and rejected.value.code == "33005"
    with pytest.raises(RateLimitedError) as limited:
        p.parse_response(batch, vendor_error(429, 33002, **{"Retry-After": "7"}))
    assert limited.value.retry_after == 7
    with pytest.raises(AuthError) as auth:
        p.parse_response(batch, vendor_error(401, 33001))
    assert not isinstance(auth.value, AccountRefusedError)
    with pytest.raises(ServerError):
        p.parse_response(batch, vendor_error(500, 33000))
    with pytest.raises(CampaignStopError) as nowhere:  # a wrong base URL: every batch would meet it
        p.parse_response(batch, httpx.Response(404, text="not found"))
    assert nowhere.value.code == "http_404"


def test_status_map() -> None:
    sf, rf = TextinglineProvider.state_status, TextinglineProvider.refusal_status
    assert [sf(s) for s in ("queued", "sent", "delivered", "duplicate")] == [Status.ACCEPTED] * 4
    assert sf("undelivered") is Status.REJECTED and sf("failed") is Status.FAILED
    assert sf("teleported") is Status.UNKNOWN and sf(None) is Status.UNKNOWN
    assert rf("33019") is Status.REJECTED and rf("33012") is Status.FAILED
    assert rf("33099") is Status.REJECTED  # a code of the vendor's we do not list: still a refusal


def test_lookup_status_reads_per_recipient_statuses() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            200,
            json={
                "id": "brc_1",
                "status": "completed",
                "recipients": [
                    {"to": "+447400900001", "messageId": "msg_1", "status": "delivered", "errorCode": None},
                    {
                        "to": "+447400900002",
                        "messageId": "msg_2",
                        "status": "undelivered",
                        "errorCode": 33010,
                    },
                    {"to": "+447400900003", "messageId": "msg_3", "status": "failed", "errorCode": 33007},
                    {"to": "+447400900004", "messageId": "msg_4", "status": "teleported"},
                    {"to": "+447400900005", "status": "blocked", "errorCode": 33099},
                    {"to": "+447400900006", "status": "held", "errorCode": "33007"},
                ],
            },
        )

    async def go() -> list[Any]:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            return await provider().lookup_status(client, "brc_1")

    found = asyncio.run(go())
    assert seen[0].method == "GET" and str(seen[0].url) == f"{BASE}/api/v1/messaging/batch/brc_1"
    assert seen[0].headers["authorization"].startswith("Basic ")
    assert [(s.status, s.provider_status, s.error_code) for s in found] == [
        (Status.ACCEPTED, "delivered", None),
        (Status.REJECTED, "undelivered", "33010"),
        (Status.FAILED, "failed", "33007"),
        (Status.UNKNOWN, "teleported", None),
        # A status we do not know that comes with an error code is a refusal: the code decides.
        (Status.REJECTED, "blocked", "33099"),
        (Status.FAILED, "held", "33007"),
    ]
    assert found[0].phone == "+447400900001" and found[0].provider_message_id == "msg_1"


# ---- through the engine -----------------------------------------------------------------------------------


def test_engine_bisects_a_compliance_refusal_down_to_the_minimum() -> None:
    spec = make_spec()
    bodies = [f"Hello {i}" for i in range(60)]
    bodies[7] = "Hello SHAFT-TEST"
    rows = planned(frame(60, body=bodies), spec)
    sent: list[list[str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        recipients = json.loads(request.content)["recipients"]
        if any("SHAFT-TEST" in r["body"] for r in recipients):
            return vendor_error(400, 33019, "content violates compliance rules")
        sent.append([r["to"] for r in recipients])
        return job(request, ref=f"brc_{len(sent)}")

    out, requests = run(rows, spec, handler)
    out = out.sort("row_index")
    rejected = out.filter(pl.col("status") == "rejected")
    # 60 -> 30 + 30 -> 15 + 15: a 15-row batch cannot be split again (2 * 10 rows needed).
    assert rejected["row_index"].to_list() == list(range(15))
    assert set(rejected["error_code"]) == {"33019"}
    assert rejected["error_message"].str.contains("could not be isolated").all()
    assert rejected["error_message"].str.contains("10\\+ per request").all()
    accepted = out.filter(pl.col("status") == "accepted")
    assert accepted.height == 45 and accepted["provider_batch_ref"].str.starts_with("brc_").all()
    assert sorted(p for batch in sent for p in batch) == sorted(
        f"+4474009{i:05d}" for i in range(15, 60)
    )  # nothing sent twice
    assert requests == {"batch_rejected": 3, "201": 2}


def test_daily_quota_stops_the_campaign_after_one_request() -> None:
    spec = make_spec(batch_size=10, concurrency=1)
    rows = planned(frame(40), spec)
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return vendor_error(429, 33012, "Daily messaging quota reached")

    out, _ = run(rows, spec, handler)
    assert len(calls) == 1  # not 4 batches x retries of a "rate limit"
    assert set(out["status"]) == {"failed"}
    assert set(out["error_code"]) == {"33012", "aborted"}


# ---- pre-send rules ---------------------------------------------------------------------------------------


def codes(df: pl.DataFrame) -> list[str | None]:
    return df.sort("row_index")["error_code"].to_list()


def test_body_limit_is_640_characters() -> None:
    out = checked(frame(2, body=["x" * 640, "x" * 641]))
    assert codes(out) == [None, "body_too_long"]


def test_control_characters_are_quarantined_but_whitespace_is_not() -> None:
    bodies = ["tab\there", "lines\r\nok", "bell\x07", "nul\x00", "c1\x85", "del\x7f", "émoji 🎉"]
    out = checked(frame(len(bodies), body=bodies))
    assert codes(out) == [None, None, "invalid_characters", "invalid_characters", "invalid_characters",
                          "invalid_characters", None]  # fmt: skip


def test_adapter_and_emulator_agree_on_invalid_characters() -> None:
    chars = [chr(c) for c in range(0x3000) if not 0xD800 <= c <= 0xDFFF]
    flagged = pl.Series(chars).str.contains(INVALID_CHARS).to_list()
    assert flagged == [emulator.INVALID_CHARS.search(c) is not None for c in chars]
    assert sum(flagged) == 29 + 1 + 32


def test_media_url_and_send_at_rules() -> None:
    df = frame(
        4,
        media_url=["https://cdn.example.com/a.png", "ftp://x/y", None, None],
        send_at=[None, None, "2030-01-01T00:00:00Z", ""],
    )
    out = checked(df)
    assert codes(out) == [None, "media_url_invalid", "send_at_unsupported", None]
