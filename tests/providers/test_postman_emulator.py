"""The Postman emulator over real loopback HTTP (one `python -m smscast.sandbox` for the module), and the adapter
against it."""

from __future__ import annotations

import asyncio
import time

import httpx
import polars as pl
import pytest
from support import sandbox_clock

from smscast import ratelimit
from smscast.campaign import CampaignSpec
from smscast.providers.postman import PostmanProvider
from smscast.sandbox.client import SandboxClient
from smscast.servers.sandbox import SandboxServer
from smscast.settings import ProviderSettings, Secret
from smscast.status import Status
from smscast.tasks.plan import plan_campaign
from smscast.tasks.send_batch import RetryPolicy
from smscast.tasks.send_engine import send_rows
from smscast.tasks.validate import validate_recipients

pytestmark = pytest.mark.integration

KEY = "pm-emulator-key"
EMULATOR, API_KEY, HTTP_TIMEOUT = "postman", KEY, 60.0  # the fixtures: tests/providers/conftest.py
AUTH = {"Authorization": f"Bearer {KEY}"}
MIB40 = 40 * 1024 * 1024
HEADER_MISMATCH = "Validation failed (expected type is object)"


def csv_of(rows: list[list[str]], header: str = "recipient,language,name") -> bytes:
    lines = [header] + [",".join(r) for r in rows]
    return ("\r\n".join(lines) + "\r\n").encode()


def people(n: int, start: int = 0) -> list[list[str]]:
    return [[f"659100{start + i:04d}", "english", f"Person {start + i}"] for i in range(n)]


def upload(
    http: httpx.Client,
    data: bytes,
    campaign: str = "campaign_a",
    prefix: str = "",
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    return http.post(
        f"{prefix}/campaigns/{campaign}/batch/messages",
        headers=AUTH if headers is None else headers,
        files={"file": ("batch.csv", data, "text/csv")},
    )


def test_batch_send_creates_a_batch_and_ledger_entries(admin: SandboxClient, http: httpx.Client) -> None:
    r = upload(http, csv_of(people(3)))
    assert r.status_code == 201
    payload = r.json()
    assert payload["isValid"] is True and payload["batchId"].startswith("batch_")
    ledger = admin.ledger(provider="postman")
    assert [e["to"] for e in ledger] == ["+6591000000", "+6591000001", "+6591000002"]
    assert {e["batch"] for e in ledger} == {payload["batchId"]}
    assert {e["key"] for e in ledger} == {None}  # Postman has no idempotency key
    assert ledger[0]["body"] == '{"name":"Person 0"}'


def test_single_body_variable_and_quoted_line_breaks(admin: SandboxClient, http: httpx.Client) -> None:
    data = b'recipient,language,body\r\n6591000000,malay,"Line one\nline ""two"""\r\n'
    assert upload(http, data, campaign="campaign_body").status_code == 201
    assert admin.ledger(provider="postman")[0]["body"] == 'Line one\nline "two"'


def test_no_idempotency_the_same_file_twice_is_two_batches(admin: SandboxClient, http: httpx.Client) -> None:
    data = csv_of(people(2))
    first, second = upload(http, data), upload(http, data)
    assert first.status_code == second.status_code == 201
    assert first.json()["batchId"] != second.json()["batchId"]
    assert len(admin.ledger(provider="postman")) == 4  # exactly why the adapter declares Idempotency.NONE


@pytest.mark.parametrize(
    ("header", "row"),
    [
        ("recipient,language,Name", ["6591000000", "english", "x"]),  # uppercase header
        ("language,recipient,name", ["english", "6591000000", "x"]),  # first two columns swapped
        ("recipient,name", ["6591000000", "x"]),  # no language column
        ("recipient,language,other", ["6591000000", "english", "x"]),  # not the campaign's parameters
    ],
)
def test_header_mismatch(admin: SandboxClient, http: httpx.Client, header: str, row: list[str]) -> None:
    assert upload(http, csv_of(people(1))).status_code == 201  # campaign_a's template: name
    r = upload(http, csv_of([row], header=header))
    assert r.status_code == 400
    assert r.json() == {"code": "parameter_invalid", "message": HEADER_MISMATCH, "statusCode": 400}


def test_a_missing_file_field_is_a_validation_failure(admin: SandboxClient, http: httpx.Client) -> None:
    r = http.post(
        "/campaigns/campaign_a/batch/messages", headers=AUTH, files={"csv": ("b.csv", b"x", "text/csv")}
    )
    assert r.status_code == 400 and r.json()["message"] == HEADER_MISMATCH


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        (["+6591000009", "english", "x"], "recipient must be"),
        (["6591000009", "french", "x"], "language must be one of"),
        (["6591000009", "english", "  "], "name is required"),
        (["6591000009", "english"], "expected 3 columns"),
    ],
)
def test_any_row_error_fails_the_whole_file(
    admin: SandboxClient, http: httpx.Client, bad: list[str], why: str
) -> None:
    r = upload(http, csv_of([*people(3), bad, *people(2, start=5)]))
    assert r.status_code == 400
    body = r.json()
    assert body["code"] == "parameter_invalid" and body["message"].startswith("Validation failed: row 4: ")
    assert why in body["message"]
    assert admin.ledger(provider="postman") == []  # nothing of the file was created


def test_reject_suffix_knob_refuses_the_whole_file(admin: SandboxClient, http: httpx.Client) -> None:
    admin.set_faults(provider="postman", reject_suffixes=["0002"])
    r = upload(http, csv_of(people(4)))
    assert r.status_code == 400 and "row 3: recipient 6591000002" in r.json()["message"]
    assert admin.ledger(provider="postman") == []


def test_test_environment_takes_exactly_20_rows(admin: SandboxClient, http: httpx.Client) -> None:
    assert upload(http, csv_of(people(20)), prefix="/test").status_code == 201
    r = upload(http, csv_of(people(21)), prefix="/test")
    assert r.status_code == 400
    assert r.json()["message"] == "Test environment limit exceeded, max 20 rows"
    assert upload(http, csv_of(people(21))).status_code == 201  # production has no row limit
    assert len(admin.ledger(provider="postman")) == 41


def test_file_size_limit_exactly_40mb_and_one_byte_more(admin: SandboxClient, http: httpx.Client) -> None:
    header = b"recipient,language,name\r\n"
    rows = 400
    row_len = (MIB40 - len(header)) // rows
    lead = b"6591000000,english,"
    rows_bytes = [lead + b"x" * (row_len - len(lead) - 2) + b"\r\n" for _ in range(rows)]
    data = header + b"".join(rows_bytes)
    data = data[:-2] + b"x" * (MIB40 - len(data)) + b"\r\n"  # pad the last cell to exactly 40 MiB
    assert len(data) == MIB40
    assert upload(http, data).status_code == 201
    over = data[:-2] + b"x\r\n"
    r = upload(http, over)
    assert r.status_code == 400
    assert r.json() == {
        "code": "parameter_invalid",
        "message": "File too large, max file size is 40MB",
        "statusCode": 400,
    }


def test_auth_failure(admin: SandboxClient, http: httpx.Client) -> None:
    r = upload(http, csv_of(people(1)), headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401
    assert r.json()["code"] == "invalid_api_key_provided"
    r = upload(http, csv_of(people(1)), headers={})
    assert r.status_code == 401
    assert admin.ledger(provider="postman") == []


def test_429_past_10_tps_per_campaign(admin: SandboxClient, server: SandboxServer) -> None:
    data = csv_of(people(1))

    async def burst(campaign: str, n: int) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=30.0) as client:
            return list(
                await asyncio.gather(
                    *(
                        client.post(
                            f"/campaigns/{campaign}/batch/messages",
                            headers=AUTH,
                            files={"file": ("b.csv", data, "text/csv")},
                        )
                        for _ in range(n)
                    )
                )
            )

    # A bucket of 10 refilling at 10 per second; the sandbox's clock stands still, so the 14 requests all
    # arrive in the same instant however long the machine takes over them.
    sandbox_clock(server.base_url, freeze=True)
    answers = asyncio.run(burst("campaign_fast", 14))
    codes = sorted(r.status_code for r in answers)
    assert codes == [201] * 10 + [429] * 4
    limited = next(r for r in answers if r.status_code == 429)
    assert limited.json() == {"code": "too_many_requests", "message": "Too many requests", "statusCode": 429}
    assert "retry-after" not in limited.headers  # the document says nothing of Retry-After
    # The limit is per campaign: another campaign is not throttled by this one.
    assert [r.status_code for r in asyncio.run(burst("campaign_other", 3))] == [201] * 3
    assert len(admin.ledger(provider="postman")) == codes.count(201) + 3


def test_retrieve_batch_messages_and_retry(admin: SandboxClient, http: httpx.Client) -> None:
    admin.set_faults(provider="postman", transient_suffixes=["0001"])
    batch_id = upload(http, csv_of(people(3))).json()["batchId"]
    path = f"/campaigns/campaign_a/batch/{batch_id}/messages"
    page1 = http.get(path, headers=AUTH, params={"limit": 2}).json()
    assert [m["latestStatus"] for m in page1["data"]] == ["success", "failure"]
    assert page1["data"][1]["messageAttempts"][0]["errorCode"] == "server_unknown_error"
    assert page1["pageData"]["hasNextPage"] is True
    page2 = http.get(path, headers=AUTH, params={"limit": 2, "after": page1["pageData"]["endCursor"]}).json()
    assert [m["recipient"] for m in page2["data"]] == ["6591000002"] and not page2["pageData"]["hasNextPage"]
    assert http.get(path, headers=AUTH).status_code == 400  # limit is mandatory
    assert (
        http.get(f"/campaigns/other/batch/{batch_id}/messages", headers=AUTH, params={"limit": 5}).status_code
        == 404
    )

    admin.set_faults(provider="postman", transient_suffixes=None)
    retry = http.post(f"/campaigns/campaign_a/batch/{batch_id}/retry", headers=AUTH)
    assert retry.status_code == 201 and retry.content == b""
    after = http.get(path, headers=AUTH, params={"limit": 10}).json()["data"]
    assert [m["latestStatus"] for m in after] == ["success"] * 3 and after[1]["numAttempts"] == 2
    again = http.post(f"/campaigns/campaign_a/batch/{batch_id}/retry", headers=AUTH)
    assert again.status_code == 400 and again.json()["code"] == "no_failed_batch_messages_to_retry"
    assert len(admin.ledger(provider="postman")) == 3  # a retry keeps the message ids: no new entries


# ---- the adapter against the emulator ------------------------------------------------------------------


def send(server: SandboxServer, n: int, read_timeout: float = 30.0) -> tuple[pl.DataFrame, PostmanProvider]:
    provider = PostmanProvider(ProviderSettings(base_url=server.base_url, api_key=Secret(KEY)))
    spec = CampaignSpec(
        campaign_id="pm-emu",
        provider="postman",
        source="x",
        results="r",
        template="campaign_x",
        template_vars=("name",),
        language="english",
        rate=1000,
    )
    df = pl.DataFrame(
        {
            "row_index": list(range(n)),
            "phone_raw": [f"+659200{i:04d}" for i in range(n)],
            "name": [f"N{i}" for i in range(n)],
        }
    )
    planned = plan_campaign(
        validate_recipients(df, spec, provider.caps, provider), spec, provider.caps, provider
    )
    ratelimit._BUCKETS.clear()
    policy = RetryPolicy(max_attempts=3, backoff_base=0.01, backoff_cap=0.05)
    client = httpx.AsyncClient(timeout=httpx.Timeout(read_timeout, connect=5.0))
    out, _ = asyncio.run(send_rows(provider, planned.rows, spec, policy=policy, client=client))
    return out.sort("row_index"), provider


def test_adapter_timeout_is_unknown_and_the_file_went_up_once(
    admin: SandboxClient, server: SandboxServer
) -> None:
    admin.set_faults(provider="postman", next_timeout=1, timeout_delay_s=200)
    out, _ = send(server, 5, read_timeout=1.0)
    assert out["status"].to_list() == ["unknown"] * 5
    assert out["error_code"].to_list() == ["read_timeout"] * 5
    # On a busy machine the client may give up before the sandbox is through with the file: wait for the
    # sandbox to have processed it (the held response is counted as it is held), however long that takes.
    deadline = time.monotonic() + 120
    while admin.stats()["providers"]["postman"]["requests"].get("timeout", 0) < 1:
        assert time.monotonic() < deadline, admin.stats()
        time.sleep(0.05)
    assert len(admin.ledger(provider="postman")) == 5  # processed once, never re-sent
    assert admin.stats()["providers"]["postman"]["requests"] == {"timeout": 1}


def test_adapter_lookup_reads_the_emulators_statuses(admin: SandboxClient, server: SandboxServer) -> None:
    admin.set_faults(provider="postman", transient_suffixes=["0003"])
    out, provider = send(server, 5)
    assert out["status"].to_list() == ["accepted"] * 5
    (ref,) = set(out["provider_batch_ref"].to_list())
    assert ref.startswith("campaign_x/batch_")

    async def look() -> list[tuple[str, Status]]:
        async with httpx.AsyncClient() as client:
            return [(s.phone, s.status) for s in await provider.lookup_status(client, ref)]

    assert asyncio.run(look()) == [
        ("+6592000000", Status.ACCEPTED),
        ("+6592000001", Status.ACCEPTED),
        ("+6592000002", Status.ACCEPTED),
        ("+6592000003", Status.FAILED),
        ("+6592000004", Status.ACCEPTED),
    ]
