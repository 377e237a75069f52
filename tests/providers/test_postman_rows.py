"""Postman (gov.sg) adapter: the rules a campaign and its rows must pass before sending, and rows through the
send engine (bisection, timeouts), with httpx.MockTransport. The adapter's requests and answers:
tests/providers/test_postman.py."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import polars as pl
import pytest

from smscast import ratelimit
from smscast.campaign import CampaignSpec
from smscast.errors import ConfigError
from smscast.providers.postman import PostmanProvider
from smscast.providers.postman_csv import MAX_ROW_BYTES, csv_bytes
from smscast.tasks.send_batch import RetryPolicy
from smscast.tasks.send_engine import send_rows
from smscast.tasks.validate import validate_recipients
from tests.providers.test_postman import (
    SETTINGS,
    _clean_env,  # noqa: F401 (autouse)
    frame,
    one_batch,
    sendable,
    template_spec,
    uploaded_csv,
)

FAST = RetryPolicy(max_attempts=4, max_throttled=10, backoff_base=0.001, backoff_cap=0.01)

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
    rows = sendable(provider, spec, frame(10))
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
    rows = sendable(provider, spec, frame(3))
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
    rows = sendable(provider, spec, frame(2))
    seen: list[int] = []

    def gateway(request: httpx.Request) -> httpx.Response:
        seen.append(1)
        return httpx.Response(504)

    assert run(provider, rows, spec, gateway)["status"].to_list() == ["unknown"] * 2
    assert len(seen) == 1
    answers = iter([httpx.Response(503), httpx.Response(201, json={"isValid": True, "batchId": "b9"})])
    assert run(provider, rows, spec, lambda r: next(answers))["status"].to_list() == ["accepted"] * 2


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
