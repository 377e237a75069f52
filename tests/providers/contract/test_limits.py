"""The documented limits at the boundary, checked against the adapter's declaration, our validation and the
emulator: rows per request, body characters, GSM-7 against UCS-2 (tests/providers/contract/conftest.py)."""

from __future__ import annotations

import httpx
import orjson
import pytest
from provider_facts import ProviderFacts

from smscast.encoding import GSM7_MULTI_PART, GSM7_SINGLE, UCS2_ENCODING, UCS2_MULTI_PART, UCS2_SINGLE
from smscast.errors import BatchRejectedError
from smscast.providers.base import Batch, Rejection
from smscast.servers.sandbox import SandboxServer
from smscast.status import Status
from tests.providers.contract.harness import (
    EMOJI,
    UCS2_CHAR,
    assert_ledger_is,
    codes,
    ledger,
    make_adapter,
    phone,
    prepare,
    recipients,
    statuses,
)

pytestmark = pytest.mark.integration


# ---- 6. limits at the boundary ---------------------------------------------------------------------------


def test_max_rows_per_request_at_the_boundary(facts: ProviderFacts, sandbox: SandboxServer) -> None:
    m = facts.contract.max_rows
    # Asked for bigger requests, the plan still never makes one over the maximum: one row more is two.
    over = prepare(facts, sandbox, recipients(facts, m + 1), "max-over", batch_size=m + 1)
    assert over.provider.caps.max_rows == m  # the adapter declares the documented maximum
    sizes = over.sendable.group_by("batch_seq").len()["len"].to_list()
    assert len(sizes) == 2 and sum(sizes) == m + 1 and max(sizes) <= m

    # Exactly the maximum: one request, every row accepted, one ledger batch.
    run = prepare(facts, sandbox, recipients(facts, m), "max")
    assert run.sendable["batch_seq"].n_unique() == 1
    out, requests = run.send()
    assert statuses(out) == [Status.ACCEPTED.value] * m
    assert sum(requests.values()) == 1 and set(requests) <= {"200", "201"}
    entries = ledger(sandbox, facts)
    assert_ledger_is(entries, out["phone"].to_list())
    assert len({e["batch"] for e in entries}) == 1

    # One more row in ONE request, built by hand: the emulator refuses it with the documented error and
    # records nothing.
    batch, response = over.by_hand(over.sendable, "over")
    status, code = facts.contract.over_max
    assert response.status_code == status, response.text[:300]
    with pytest.raises(BatchRejectedError) as refused:
        over.provider.parse_response(batch, response)
    assert refused.value.code == code
    assert len(ledger(sandbox, facts)) == m


def test_body_at_the_character_limit_and_one_over(facts: ProviderFacts, sandbox: SandboxServer) -> None:
    if facts.contract.body_chars is None:
        pytest.skip(facts.contract.body_skip)
    limit = facts.contract.body_chars
    p0 = make_adapter(facts, sandbox.base_url)
    assert p0.caps.max_body_chars == limit  # the adapter declares the documented limit
    fillers = max(1, p0.caps.min_rows - 1)  # the hand-made request must meet the provider's minimum
    n = 2 + fillers
    run = prepare(facts, sandbox, recipients(facts, n, {0: "a" * limit, 1: "a" * (limit + 1)}), "body")
    found = codes(run)
    # One character over: quarantined by validation.
    assert "body_too_long" in (found[1] or "").split(";")
    # At the limit: never `body_too_long`; quarantined only if the provider's SEGMENT limit is the tighter one
    # (smscast's sandbox: 1600 GSM-7 characters are 11 segments, over its 10).
    at = run.planned.row(0, named=True)
    caps = run.provider.caps
    over_segments = caps.max_segments is not None and at["segments"] > caps.max_segments
    assert found[0] == ("too_many_segments" if over_segments else None)

    # Sent anyway, by hand: the emulator takes the body at the limit and refuses the one over it.
    batch, response = run.by_hand(run.planned, "body")
    if caps.rejection is Rejection.WHOLE_BATCH:
        with pytest.raises(BatchRejectedError) as refused:
            run.provider.parse_response(batch, response)
        assert refused.value.code == facts.contract.body_over_code
        assert ledger(sandbox, facts) == []
    else:
        outcomes = run.provider.parse_response(batch, response)
        assert outcomes[0].status is Status.ACCEPTED
        assert (outcomes[1].status, outcomes[1].error_code) == (
            Status.REJECTED,
            facts.contract.body_over_code,
        )
        assert all(o.status is Status.ACCEPTED for o in outcomes[2:])

    # Through the engine, the rows validation passed are accepted (the body at the limit among them when its
    # segments allow); the body one over never reaches the ledger.
    out, _ = run.send()
    assert set(statuses(out)) == {Status.ACCEPTED.value}
    bodies = {e["to"]: e["body"] for e in ledger(sandbox, facts)}
    assert phone(1) not in bodies
    assert len(bodies[phone(0)]) == limit


def test_gsm7_against_ucs2_limits(facts: ProviderFacts, sandbox: SandboxServer) -> None:
    if facts.contract.encoding is None:
        pytest.skip(facts.contract.encoding_skip)
    if facts.contract.encoding == "segments":
        _segments_depend_on_encoding(facts, sandbox)
    elif facts.contract.encoding == "chars":
        _characters_do_not_depend_on_encoding(facts, sandbox)
    else:
        _allow_unicode_follows_encoding(facts, sandbox)


def _segment_capacity(segments: int, single: int, part: int) -> int:
    return single if segments == 1 else part * segments


def _segments_depend_on_encoding(facts: ProviderFacts, sandbox: SandboxServer) -> None:
    caps = make_adapter(facts, sandbox.base_url).caps
    assert caps.max_segments is not None
    gsm = _segment_capacity(caps.max_segments, GSM7_SINGLE, GSM7_MULTI_PART)  # 1530 for 10 segments
    ucs = _segment_capacity(caps.max_segments, UCS2_SINGLE, UCS2_MULTI_PART)  # 670
    assert caps.max_body_chars is None or gsm <= caps.max_body_chars  # so the char limit stays out of it
    bodies = {
        0: "a" * gsm,  # fits in GSM-7
        1: "a" * (gsm + 1),  # one GSM-7 character more: one segment too many
        2: "a" * (gsm - 1) + UCS2_CHAR,  # the same length with one UCS-2 character: far too many
        3: UCS2_CHAR * ucs,  # fits in UCS-2
        4: UCS2_CHAR * (ucs + 1),  # one more
    }
    run = prepare(facts, sandbox, recipients(facts, 5, bodies), "gsm-ucs")
    assert codes(run) == {
        0: None,
        1: "too_many_segments",
        2: "too_many_segments",
        3: None,
        4: "too_many_segments",
    }
    segments = run.planned["segments"].to_list()
    assert segments[:4] == [
        caps.max_segments,
        caps.max_segments + 1,
        -(-gsm // UCS2_MULTI_PART),
        caps.max_segments,
    ]
    out, _ = run.send()
    assert out["row_index"].to_list() == [0, 3] and set(statuses(out)) == {Status.ACCEPTED.value}
    sent = {e["to"]: e["body"] for e in ledger(sandbox, facts)}
    assert sent == {phone(0): bodies[0], phone(3): bodies[3]}


def _characters_do_not_depend_on_encoding(facts: ProviderFacts, sandbox: SandboxServer) -> None:
    # A limit in characters (robase 1600, textingline 640) is the same in GSM-7 and UCS-2: a UCS-2 body at
    # the limit passes, though it is many more segments than its GSM-7 twin.
    limit = facts.contract.body_chars
    assert limit is not None
    caps = make_adapter(facts, sandbox.base_url).caps
    assert caps.max_segments is None
    bodies = {
        0: "a" * (limit - 1) + UCS2_CHAR,
        1: UCS2_CHAR * limit,
        2: UCS2_CHAR * (limit + 1),
        3: "a" * limit,
        # An astral character is one character (code point) on both sides, though two UTF-16 units.
        4: "a" * (limit - 1) + EMOJI,
    }
    n = max(len(bodies), caps.min_rows + 1)
    run = prepare(facts, sandbox, recipients(facts, n, bodies), "gsm-ucs")
    found = codes(run)
    assert [found[i] for i in bodies] == [None, None, "body_too_long", None, None]
    encodings = run.planned["encoding"].to_list()
    assert encodings[: len(bodies)] == [UCS2_ENCODING, UCS2_ENCODING, UCS2_ENCODING, "GSM-7", UCS2_ENCODING]
    out, _ = run.send()
    assert set(statuses(out)) == {Status.ACCEPTED.value} and out.height == n - 1
    sent = {e["to"]: e["body"] for e in ledger(sandbox, facts)}
    assert phone(2) not in sent
    assert {i: sent[phone(i)] for i in (0, 1, 3, 4)} == {i: bodies[i] for i in (0, 1, 3, 4)}


def _allow_unicode_follows_encoding(facts: ProviderFacts, sandbox: SandboxServer) -> None:
    # Instasent: "allowUnicode … Set to true if the text may contain non-GSM-7 characters". GSM-7 texts (the
    # extension table included) go with false, keeping 160-character segments; UCS-2 ones with true.
    bodies = {
        0: "Hello there, see you at 10",
        1: "Price: €5 {promo} [ok] ~^|\\",
        2: f"Olá! Ça va? {UCS2_CHAR}",
    }
    run = prepare(facts, sandbox, recipients(facts, 3, bodies), "gsm-ucs")
    assert run.sendable.height == 3
    request = run.provider.build_request(Batch("c", "b", "k", run.sendable, run.spec))
    items = orjson.loads(request.content)
    assert [it["allowUnicode"] for it in items] == [False, False, True]

    # Sent by hand with allowUnicode false, the UCS-2 text is refused by the emulator, per item.
    for it in items:
        it["allowUnicode"] = False
    forced = httpx.Request(
        "POST", request.url, headers={"Authorization": request.headers["authorization"]}, json=items
    )
    with httpx.Client(timeout=30.0) as http:
        response = http.send(forced)
    outcomes = run.provider.parse_response(Batch("c", "b", "k", run.sendable, run.spec), response)
    assert [o.status for o in outcomes] == [Status.ACCEPTED, Status.ACCEPTED, Status.REJECTED]
    assert outcomes[2].error_code == "text:needs_unicode"

    # Through the engine: all three accepted, the UCS-2 one with allowUnicode set.
    out, _ = run.send()
    assert set(statuses(out)) == {Status.ACCEPTED.value}
    sent = {e["to"]: e["body"] for e in ledger(sandbox, facts)}
    assert sent == {phone(i): bodies[i] for i in range(3)}
