"""Postman (gov.sg) adapter: request shape, response parsing and pre-send rules, with httpx.MockTransport."""

from __future__ import annotations

import asyncio
import csv
import io
import re
from collections.abc import Callable, Iterator

import httpx
import polars as pl
import pytest

from smscast import ratelimit
from smscast.campaign import CampaignSpec
from smscast.errors import (
    AmbiguousError,
    AuthError,
    BatchRejectedError,
    ConfigError,
    RateLimitedError,
    ServerError,
)
from smscast.providers.base import Batch, Idempotency, Rejection
from smscast.providers.postman import (
    MAX_FILE_BYTES,
    MAX_ROW_BYTES,
    MAX_ROWS,
    PostmanProvider,
    csv_bytes,
    csv_columns,
)
from smscast.settings import ProviderSettings, Secret
from smscast.status import Status
from smscast.tasks.plan import plan_campaign
from smscast.tasks.send_engine import RetryPolicy, send_rows
from smscast.tasks.validate import validate_recipients

BASE = "https://postman.test/api/v2"
SETTINGS = ProviderSettings(base_url=BASE, api_key=Secret("pm-key-1"))
FAST = RetryPolicy(max_attempts=4, max_throttled=10, backoff_base=0.001, backoff_cap=0.01)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("SMSCAST_POSTMAN_TEST_ENV", raising=False)
    yield


def template_spec(**kw: object) -> CampaignSpec:
    args: dict[str, object] = dict(
        campaign_id="pm1",
        provider="postman",
        source="x",
        results="r",
        template="campaign_abc",
        template_vars=("recipient_name", "topic"),
        language="english",
        rate=10_000,
    )
    args.update(kw)
    return CampaignSpec(**args)  # type: ignore[arg-type]


def frame(n: int, **cols: list[str | None]) -> pl.DataFrame:
    data: dict[str, list[object]] = {
        "row_index": list(range(n)),
        "phone_raw": [f"+659123{i:04d}" for i in range(n)],
        "recipient_name": [f"Name {i}" for i in range(n)],
        "topic": [f"topic #{i}" for i in range(n)],
    }
    data.update(cols)  # type: ignore[arg-type]
    return pl.DataFrame(data)


def plan(provider: PostmanProvider, spec: CampaignSpec, df: pl.DataFrame) -> pl.DataFrame:
    checked = validate_recipients(df, spec, provider.caps, provider)
    return plan_campaign(checked, spec, provider.caps, provider).rows


def one_batch(provider: PostmanProvider, spec: CampaignSpec, df: pl.DataFrame) -> Batch:
    rows = plan(provider, spec, df).filter(pl.col("status").is_null())
    return Batch(spec.campaign_id, "pm1-a1-b000000", "scb-x", rows, spec)


def uploaded_csv(request: httpx.Request) -> tuple[str, list[list[str]]]:
    """(filename, CSV records) of the multipart `file` field."""
    ctype = request.headers["content-type"]
    assert ctype.startswith("multipart/form-data; boundary=")
    boundary = ctype.split("boundary=")[1].encode()
    body = request.read()
    parts = [p for p in body.split(b"--" + boundary) if p.strip() not in (b"", b"--")]
    assert len(parts) == 1, "exactly one form field"
    head, _, content = parts[0].partition(b"\r\n\r\n")
    assert b'name="file"' in head and b"Content-Type: text/csv" in head
    filename = re.search(rb'filename="([^"]+)"', head)
    assert filename is not None
    text = content.removesuffix(b"\r\n").decode()
    return filename.group(1).decode(), list(csv.reader(io.StringIO(text, newline="")))


def response(status: int, payload: object | None = None, **kw: object) -> httpx.Response:
    request = httpx.Request("POST", f"{BASE}/campaigns/campaign_abc/batch/messages")
    if payload is None:
        return httpx.Response(status, request=request, **kw)  # type: ignore[arg-type]
    return httpx.Response(status, json=payload, request=request, **kw)  # type: ignore[arg-type]


# ---- capabilities ------------------------------------------------------------------------------------------


def test_capabilities_declare_the_documented_behaviour() -> None:
    caps = PostmanProvider.caps
    assert caps.idempotency is Idempotency.NONE and not caps.resend_safe
    assert caps.rejection is Rejection.WHOLE_BATCH
    assert caps.rate_per_second == 10.0
    assert caps.max_request_bytes == 40_000_000
    assert caps.default_base_url == "https://postman.gov.sg/api/v2"
    # A full batch of maximal rows plus the header can never exceed the file limit.
    assert MAX_ROWS * MAX_ROW_BYTES + 64 * 1024 <= MAX_FILE_BYTES


def test_test_environment_lowers_max_rows_to_20(monkeypatch: pytest.MonkeyPatch) -> None:
    assert PostmanProvider(SETTINGS).caps.max_rows == MAX_ROWS
    on_test_host = ProviderSettings(base_url="https://test.postman.gov.sg/api/v2", api_key=None)
    assert PostmanProvider(on_test_host).caps.max_rows == 20
    monkeypatch.setenv("SMSCAST_POSTMAN_TEST_ENV", "1")
    provider = PostmanProvider(SETTINGS)
    assert provider.caps.max_rows == 20
    assert PostmanProvider.caps.max_rows == MAX_ROWS  # the class is untouched
    rows = plan(provider, template_spec(), frame(45))
    assert rows["batch_seq"].value_counts()["count"].max() == 15  # 45 rows -> 3 balanced batches of <= 20


# ---- request shape -----------------------------------------------------------------------------------------


def test_request_is_a_multipart_csv_upload_to_the_campaign() -> None:
    provider = PostmanProvider(SETTINGS)
    spec = template_spec()
    df = frame(
        4,
        language=["Chinese", None, " MALAY ", "tamil"],
        recipient_name=["Emily Yeo", 'Tan "JT" James', "line one\nline two", "=HYPERLINK(1)"],
        topic=["a,b", "+65 hotline", "-5 days", "@home"],
    )
    batch = one_batch(provider, spec, df)
    request = provider.build_request(batch)
    assert request.method == "POST"
    assert str(request.url) == f"{BASE}/campaigns/campaign_abc/batch/messages"
    assert request.headers["authorization"] == "Bearer pm-key-1"
    filename, records = uploaded_csv(request)
    assert filename == "pm1-a1-b000000.csv"
    assert records == [
        ["recipient", "language", "recipient_name", "topic"],
        ["6591230000", "chinese", "Emily Yeo", "a,b"],
        ["6591230001", "english", 'Tan "JT" James', "'+65 hotline"],  # null language -> spec.language
        ["6591230002", "malay", "line one\nline two", "'-5 days"],
        ["6591230003", "tamil", "'=HYPERLINK(1)", "'@home"],
    ]
    body = request.read()
    # RFC 4180: quotes doubled, a line break kept inside a quoted cell, CRLF between records.
    assert b'"Tan ""JT"" James"' in body and b'"line one\nline two"' in body
    assert b"recipient,language,recipient_name,topic\r\n6591230000,chinese" in body


def test_body_mode_sends_the_rendered_text_as_the_single_body_column() -> None:
    provider = PostmanProvider(SETTINGS)
    spec = template_spec(
        template="campaign_body", template_vars=(), body="Hi {{recipient_name}}, re {{topic}}"
    )
    provider.validate_spec(spec)
    assert csv_columns(spec) == ["recipient", "language", "body"]
    request = provider.build_request(one_batch(provider, spec, frame(2)))
    assert request.url.path == "/api/v2/campaigns/campaign_body/batch/messages"
    _, records = uploaded_csv(request)
    assert records == [
        ["recipient", "language", "body"],
        ["6591230000", "english", "Hi Name 0, re topic #0"],
        ["6591230001", "english", "Hi Name 1, re topic #1"],
    ]


def test_a_secret_never_reaches_an_error_message() -> None:
    provider = PostmanProvider(SETTINGS)
    with pytest.raises(AuthError) as exc:
        provider.parse_response(
            one_batch(provider, template_spec(), frame(1)),
            response(401, {"code": "invalid_api_key_provided", "message": "x"}),
        )
    assert "pm-key-1" not in str(exc.value)


# ---- responses -------------------------------------------------------------------------------------------


def test_201_accepts_every_row_with_the_batch_reference() -> None:
    provider = PostmanProvider(SETTINGS)
    batch = one_batch(provider, template_spec(), frame(3))
    out = provider.parse_response(batch, response(201, {"isValid": True, "batchId": "batch_42"}))
    assert [o.status for o in out] == [Status.ACCEPTED] * 3
    assert {o.provider_batch_ref for o in out} == {"campaign_abc/batch_42"}
    assert all(o.provider_message_id is None and o.error_code is None for o in out)


@pytest.mark.parametrize(
    ("message", "split"),
    [
        ("Validation failed: row 2: recipient is invalid", True),
        ("Test environment limit exceeded, max 20 rows", True),
        ("Validation failed (expected type is object)", False),
        ("File too large, max file size is 40MB", False),
    ],
)
def test_400_parameter_invalid_splits_only_when_a_row_caused_it(message: str, split: bool) -> None:
    provider = PostmanProvider(SETTINGS)
    batch = one_batch(provider, template_spec(), frame(4))
    with pytest.raises(BatchRejectedError) as exc:
        provider.parse_response(batch, response(400, {"code": "parameter_invalid", "message": message}))
    assert exc.value.code == "parameter_invalid"
    assert exc.value.retryable_split is split
    assert message in str(exc.value)


@pytest.mark.parametrize("code", ["invalid_api_key_provided", "invalid_ip_address_error"])
def test_401_is_an_auth_error_with_postmans_code(code: str) -> None:
    provider = PostmanProvider(SETTINGS)
    with pytest.raises(AuthError) as exc:
        provider.parse_response(
            one_batch(provider, template_spec(), frame(1)), response(401, {"code": code, "message": "…"})
        )
    assert exc.value.code == code


def test_429_without_retry_after_and_5xx_classes() -> None:
    provider = PostmanProvider(SETTINGS)
    batch = one_batch(provider, template_spec(), frame(1))
    with pytest.raises(RateLimitedError) as limited:
        provider.parse_response(
            batch, response(429, {"code": "too_many_requests", "message": "Too many requests"})
        )
    assert limited.value.retry_after is None
    with pytest.raises(ServerError):
        provider.parse_response(batch, response(503, {"message": "unavailable"}))
    for status in (500, 502, 504):
        with pytest.raises(AmbiguousError):  # may have been created: never re-sent blindly
            provider.parse_response(batch, response(status))


def test_unreadable_or_invalid_201() -> None:
    provider = PostmanProvider(SETTINGS)
    batch = one_batch(provider, template_spec(), frame(2))
    with pytest.raises(AmbiguousError):
        provider.parse_response(batch, response(201, content=b"<html>oops</html>"))
    with pytest.raises(AmbiguousError):
        provider.parse_response(batch, response(201, {"isValid": True}))
    with pytest.raises(BatchRejectedError) as exc:
        provider.parse_response(batch, response(201, {"isValid": False}))
    assert exc.value.retryable_split


def test_status_map_with_an_unknown_code() -> None:
    assert PostmanProvider.state_status("success") is Status.ACCEPTED
    assert PostmanProvider.state_status("sent_to_telco") is Status.ACCEPTED
    assert PostmanProvider.state_status("failure") is Status.FAILED
    assert PostmanProvider.state_status("vanished") is Status.UNKNOWN
    assert PostmanProvider.state_status(None) is Status.UNKNOWN


# ---- pre-send rules --------------------------------------------------------------------------------------


def test_check_spec() -> None:
    provider = PostmanProvider(SETTINGS)
    provider.check_spec(template_spec())
    bad = [
        template_spec(template=None, template_vars=(), body="hi"),  # body mode without a campaign id
        template_spec(template_vars=("RecipientName",)),
        template_spec(template_vars=("recipient-name",)),
        template_spec(template_vars=("language",)),
        template_spec(template="camp/../x"),
        template_spec(sender="GOVSG"),
        template_spec(language="klingon"),
    ]
    for spec in bad:
        with pytest.raises(ConfigError):
            provider.check_spec(spec)


def test_row_rules_quarantine_language_and_oversized_rows() -> None:
    provider = PostmanProvider(SETTINGS)
    df = frame(
        4, language=["english", "french", None, "TAMIL"], topic=["ok", "ok", "ok", "x" * (MAX_ROW_BYTES + 1)]
    )
    out = validate_recipients(df, template_spec(language=None), provider.caps, provider).sort("row_index")
    assert out["error_code"].to_list() == [None, "language_invalid", "language_invalid", "row_too_large"]
    # No language column at all: --language fills every row; without it every row is quarantined.
    no_col = frame(2)
    ok = validate_recipients(no_col, template_spec(language="malay"), provider.caps, provider)
    assert ok["status"].to_list() == [None, None]
    missing = validate_recipients(no_col, template_spec(language=None), provider.caps, provider)
    assert missing["error_code"].to_list() == ["language_invalid", "language_invalid"]
    # The row budget counts bytes, not characters (UTF-8 Chinese is 3 bytes a character).
    wide = frame(1, topic=["中" * (MAX_ROW_BYTES // 3)])
    assert validate_recipients(wide, template_spec(), provider.caps, provider)["error_code"].to_list() == [
        "row_too_large"
    ]


def test_an_empty_template_parameter_is_quarantined_not_sent() -> None:
    provider = PostmanProvider(SETTINGS)
    out = validate_recipients(frame(2, topic=["ok", "  "]), template_spec(), provider.caps, provider)
    assert out["status"].to_list() == [None, "invalid"]
    assert out["error_code"].to_list() == [None, "template_var_missing"]


# ---- through the send engine ---------------------------------------------------------------------------


def run(
    provider: PostmanProvider,
    rows: pl.DataFrame,
    spec: CampaignSpec,
    handler: Callable[[httpx.Request], httpx.Response],
) -> pl.DataFrame:
    ratelimit._BUCKETS.clear()
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    out, _ = asyncio.run(send_rows(provider, rows, spec, policy=FAST, client=client))
    return out.sort("row_index")


def test_a_row_error_fails_the_file_and_bisection_isolates_it() -> None:
    provider = PostmanProvider(SETTINGS)
    spec = template_spec()
    rows = plan(provider, spec, frame(10)).filter(pl.col("status").is_null())
    bad = "6591230006"
    uploads: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        _, records = uploaded_csv(request)
        uploads.append(len(records) - 1)
        if any(r[0] == bad for r in records[1:]):
            return httpx.Response(
                400,
                json={
                    "code": "parameter_invalid",
                    "message": "Validation failed: row 1: recipient is invalid",
                },
            )
        return httpx.Response(201, json={"isValid": True, "batchId": f"batch_{len(uploads)}"})

    out = run(provider, rows, spec, handler)
    statuses = dict(zip(out["row_index"].to_list(), out["status"].to_list(), strict=True))
    assert statuses[6] == "rejected" and [s for i, s in statuses.items() if i != 6] == ["accepted"] * 9
    assert out.filter(pl.col("row_index") == 6)["error_code"].item() == "parameter_invalid"
    assert uploads[0] == 10 and 1 in uploads  # the whole file, then halves down to the lone bad row
    assert all(
        r.startswith("campaign_abc/batch_")
        for r in out.filter(pl.col("status") == "accepted")["provider_batch_ref"].to_list()
    )


def test_a_read_timeout_is_unknown_and_never_resent() -> None:
    provider = PostmanProvider(SETTINGS)
    spec = template_spec()
    rows = plan(provider, spec, frame(3)).filter(pl.col("status").is_null())
    calls = {"n": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        raise httpx.ReadTimeout("slow", request=request)

    out = run(provider, rows, spec, handler)
    assert out["status"].to_list() == ["unknown"] * 3
    assert calls["n"] == 1


def test_a_gateway_timeout_is_unknown_but_503_is_retried() -> None:
    provider = PostmanProvider(SETTINGS)
    spec = template_spec()
    rows = plan(provider, spec, frame(2)).filter(pl.col("status").is_null())
    seen: list[int] = []

    def gateway(request: httpx.Request) -> httpx.Response:
        seen.append(1)
        return httpx.Response(504)

    assert run(provider, rows, spec, gateway)["status"].to_list() == ["unknown"] * 2
    assert len(seen) == 1
    answers = iter([httpx.Response(503), httpx.Response(201, json={"isValid": True, "batchId": "b9"})])
    assert run(provider, rows, spec, lambda r: next(answers))["status"].to_list() == ["accepted"] * 2


# ---- lookup ----------------------------------------------------------------------------------------------


def test_lookup_status_pages_through_retrieve_batch_messages() -> None:
    provider = PostmanProvider(SETTINGS)
    requests: list[httpx.Request] = []
    pages = {
        None: {
            "data": [
                {
                    "id": "m1",
                    "recipient": "6591230000",
                    "latestStatus": "success",
                    "messageAttempts": [{"status": "success", "errorCode": None}],
                }
            ],
            "pageData": {"endCursor": "m1", "hasNextPage": True},
        },
        "m1": {
            "data": [
                {
                    "id": "m2",
                    "recipient": "6591230001",
                    "latestStatus": "failure",
                    "messageAttempts": [
                        {
                            "status": "failure",
                            "errorType": "server_error",
                            "errorCode": "server_unknown_error",
                        }
                    ],
                },
                {"id": "m3", "recipient": "6591230002", "latestStatus": "teleported"},
            ],
            "pageData": {"endCursor": "m3", "hasNextPage": False},
        },
    }

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(200, json=pages[request.url.params.get("after")])

    async def go() -> list[object]:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            return list(await provider.lookup_status(client, "campaign_abc/batch_42"))

    found = asyncio.run(go())
    assert [r.url.path for r in requests] == ["/api/v2/campaigns/campaign_abc/batch/batch_42/messages"] * 2
    assert requests[0].url.params["limit"] == "1000"
    assert requests[0].headers["authorization"] == "Bearer pm-key-1"
    assert [(f.phone, f.status, f.provider_status, f.provider_message_id, f.error_code) for f in found] == [  # type: ignore[attr-defined]
        ("+6591230000", Status.ACCEPTED, "success", "m1", None),
        ("+6591230001", Status.FAILED, "failure", "m2", "server_unknown_error"),
        ("+6591230002", Status.UNKNOWN, "teleported", "m3", None),
    ]
    with pytest.raises(ConfigError):
        asyncio.run(provider.lookup_status(httpx.AsyncClient(), "batch_42"))


def test_the_row_budget_bounds_the_encoded_row() -> None:
    """A row that passes `row_too_large` encodes to at most MAX_ROW_BYTES, whatever it holds (quotes to double,
    a formula to neutralise, line breaks, multi-byte characters), so a full file stays under 40 MB."""
    provider = PostmanProvider(SETTINGS)
    spec = template_spec()
    unit = '中"\n'  # 3 + 1 + 1 bytes, and the quote is doubled: 6 bytes encoded
    k = MAX_ROW_BYTES // 6
    while True:
        df = frame(1, recipient_name=["=" + unit * k], topic=['"' * 10])
        checked = validate_recipients(df, spec, provider.caps, provider)
        if checked["status"].item() is None:
            break
        k -= 1
    assert k > MAX_ROW_BYTES // 6 - 20  # the rule let a row close to the budget through
    data = csv_bytes(one_batch(provider, spec, df))
    header_len = len(b"recipient,language,recipient_name,topic\r\n")
    assert MAX_ROW_BYTES - 64 <= len(data) - header_len <= MAX_ROW_BYTES
