"""Postman (gov.sg) adapter: capabilities, request shape, response parsing and the status lookup, with
httpx.MockTransport. Pre-send rules and rows through the send engine: tests/providers/test_postman_rows.py."""

from __future__ import annotations

import asyncio
import csv
import io
import re
from collections.abc import Iterator
from typing import Any

import httpx
import polars as pl
import pytest

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
from smscast.providers.postman import PostmanProvider
from smscast.providers.postman_csv import MAX_FILE_BYTES, MAX_ROW_BYTES, MAX_ROWS, csv_columns
from smscast.settings import ProviderSettings, Secret
from smscast.status import Status
from smscast.tasks.plan import plan_campaign
from smscast.tasks.validate import validate_recipients

BASE = "https://postman.test/api/v2"
SETTINGS = ProviderSettings(base_url=BASE, api_key=Secret("pm-key-1"))


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("SMSCAST_POSTMAN_TEST_ENV", raising=False)
    yield


def template_spec(**kw: object) -> CampaignSpec:
    args: dict[str, Any] = dict(
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
    return CampaignSpec(**args)


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


def sendable(provider: PostmanProvider, spec: CampaignSpec, df: pl.DataFrame) -> pl.DataFrame:
    """The planned rows that validation let through."""
    return plan(provider, spec, df).filter(pl.col("status").is_null())


def one_batch(provider: PostmanProvider, spec: CampaignSpec, df: pl.DataFrame) -> Batch:
    return Batch(spec.campaign_id, "pm1-a1-b000000", "scb-x", sendable(provider, spec, df), spec)


def batch_of(provider: PostmanProvider, n: int) -> Batch:
    """One batch of `n` rows of the default template campaign."""
    return one_batch(provider, template_spec(), frame(n))


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
            batch_of(provider, 1),
            response(401, {"code": "invalid_api_key_provided", "message": "x"}),
        )
    assert "pm-key-1" not in str(exc.value)


# ---- responses -------------------------------------------------------------------------------------------


def test_201_accepts_every_row_with_the_batch_reference() -> None:
    provider = PostmanProvider(SETTINGS)
    batch = batch_of(provider, 3)
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
    batch = batch_of(provider, 4)
    with pytest.raises(BatchRejectedError) as exc:
        provider.parse_response(batch, response(400, {"code": "parameter_invalid", "message": message}))
    assert exc.value.code == "parameter_invalid"
    assert exc.value.retryable_split is split
    assert message in str(exc.value)


@pytest.mark.parametrize("code", ["invalid_api_key_provided", "invalid_ip_address_error"])
def test_401_is_an_auth_error_with_postmans_code(code: str) -> None:
    provider = PostmanProvider(SETTINGS)
    with pytest.raises(AuthError) as exc:
        provider.parse_response(batch_of(provider, 1), response(401, {"code": code, "message": "…"}))
    assert exc.value.code == code


def test_429_without_retry_after_and_5xx_classes() -> None:
    provider = PostmanProvider(SETTINGS)
    batch = batch_of(provider, 1)
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
    batch = batch_of(provider, 2)
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
