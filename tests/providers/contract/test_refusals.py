"""Refusals the adapter has no code for, and unhandled 4xx answers: the real engine against
httpx.MockTransport, no emulator (tests/providers/contract/conftest.py)."""

from __future__ import annotations

import httpx
import polars as pl
import pytest
from provider_facts import REFUSAL_TEXT, ProviderFacts

from smscast.providers.base import Rejection
from smscast.servers.sandbox import SandboxServer
from smscast.status import Status
from tests.providers.contract.harness import FAST, N, phone, prepare, recipients, send_mocked, statuses

pytestmark = pytest.mark.integration


# ---- 7. refusals the adapter has no code for (httpx.MockTransport, no emulator) ---------------------------
#
# Vendors refuse rows with more codes than their documents show (phone_blocked, opted_out, …). A refusal is
# the provider saying it did not take the row: `rejected` with its code and message kept, never `unknown`
# (which the retry flow and reconciliation read as "may have been sent"). Each provider's facts hold its vendor's
# answer, in the documented shape, carrying a code no adapter lists.

BAD_UNKNOWN = [2, 9]


def test_an_unrecognised_refusal_code_is_rejected_with_the_code_kept(
    facts: ProviderFacts, sandbox: SandboxServer
) -> None:
    answer, code = facts.contract.unlisted_answer, facts.contract.unlisted_code
    assert code not in facts.adapter.REFUSALS  # the point: a code the adapter does not list
    run = prepare(facts, sandbox, recipients(facts, N), "unknown-code")
    assert run.sendable.height == N and run.sendable["batch_seq"].n_unique() == 1
    bad = {phone(i) for i in BAD_UNKNOWN}
    out, requests = send_mocked(run, lambda request: answer(request, bad))

    assert Status.UNKNOWN.value not in statuses(out)
    refused = out.filter(pl.col("phone").is_in(list(bad)))
    assert set(statuses(refused)) == {Status.REJECTED.value}
    assert set(refused["error_code"]) == {code}
    assert refused["error_message"].str.contains(REFUSAL_TEXT, literal=True).all()
    rest = out.filter(~pl.col("phone").is_in(list(bad)))
    if run.provider.caps.rejection is Rejection.PER_ROW:
        assert set(statuses(rest)) == {Status.ACCEPTED.value}
    else:
        # Refused as a whole with a code the adapter cannot tell is caused by a row: no bisection on a guess
        # (textingline allows 5 requests a minute), so the request's every row is rejected with that code.
        assert set(statuses(rest)) == {Status.REJECTED.value} and set(rest["error_code"]) == {code}
        assert requests == {"batch_rejected": 1}


@pytest.mark.parametrize("http_status", [404, 418, 408, 409])
def test_an_unhandled_http_4xx_is_unknown_only_if_the_request_may_have_been_accepted(
    facts: ProviderFacts, sandbox: SandboxServer, http_status: int
) -> None:
    run = prepare(facts, sandbox, recipients(facts, N), f"http-{http_status}")
    out, requests = send_mocked(run, lambda request: httpx.Response(http_status, text="no"))

    if http_status == 404:
        # Nothing answers where we post: not these rows' fault. The campaign stops; rows stay retriable.
        assert set(statuses(out)) == {Status.FAILED.value}
        assert requests == {"http_404": 1}
        return
    assert set(out["error_code"]) == {f"http_{http_status}"}
    if http_status == 408:
        # The server did not receive the whole request: nothing was taken, retried, then `failed`.
        expected = Status.FAILED
        assert requests == {f"http_{http_status}": FAST.max_attempts}
    elif http_status == 409 and run.provider.caps.resend_safe:
        # An earlier request with our key may be in flight: re-sent with the same keys, and `unknown` (may
        # have been accepted) when the conflict never resolves.
        expected = Status.UNKNOWN
        assert requests == {f"http_{http_status}": FAST.max_attempts}
    else:
        # The provider refused the request: its rows are rejected, never unknown; nothing to bisect.
        expected = Status.REJECTED
        assert requests == {"batch_rejected": 1}
    assert set(statuses(out)) == {expected.value}
