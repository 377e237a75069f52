"""The contract scenarios through the emulators: the happy path, a partial failure, a whole-batch rejection, a
429 storm, an idempotent re-send and an answer lost to a read timeout (tests/providers/contract/conftest.py)."""

from __future__ import annotations

import time

import polars as pl
import pytest
from provider_facts import ProviderFacts

from smscast import ratelimit
from smscast.providers.base import OutcomeTiming, Rejection
from smscast.servers.sandbox import SandboxServer
from smscast.status import Status
from tests.providers.contract.harness import (
    BAD,
    BAD_WHOLE,
    N_PARTIAL,
    N,
    accepted_phones,
    assert_isolated,
    assert_ledger_is,
    edit,
    ledger,
    prepare,
    recipients,
    requests_seen,
    statuses,
    suffix,
)

pytestmark = pytest.mark.integration


# ---- 1. happy path ---------------------------------------------------------------------------------------


def test_happy_path_every_row_accepted_once(facts: ProviderFacts, sandbox: SandboxServer) -> None:
    run = prepare(facts, sandbox, recipients(facts, N), "happy")
    assert run.sendable.height == N
    out, requests = run.send()
    assert statuses(out) == [Status.ACCEPTED.value] * N
    assert set(requests) <= {"200", "201"}

    entries = ledger(sandbox, facts)
    assert_ledger_is(entries, out["phone"].to_list())
    by_phone = {e["to"]: e for e in entries}
    if facts.contract.row_keys_in_ledger:  # our per-row key reached the provider
        keys = dict(zip(run.sendable["phone"], run.sendable["idempotency_key"], strict=True))
        assert {p: e["key"] for p, e in by_phone.items()} == keys
    if run.provider.caps.outcome is OutcomeTiming.ASYNC:
        # A batch reference now (textingline's job brc_…, Postman's <campaign>/<batchId>), no message ids.
        refs = out["provider_batch_ref"].to_list()
        assert all(refs) and out["provider_message_id"].null_count() == N
        for p, ref in zip(out["phone"], refs, strict=True):
            assert ref.rsplit("/", 1)[-1] == by_phone[p]["batch"]
    else:
        ids = dict(zip(out["phone"], out["provider_message_id"], strict=True))
        assert ids == {p: e["message_id"] for p, e in by_phone.items()}


# ---- 2. partial failure ----------------------------------------------------------------------------------


def test_partial_failure_refused_rows_rejected_rest_accepted(
    facts: ProviderFacts, sandbox: SandboxServer
) -> None:
    trigger = facts.contract.per_row
    df = recipients(facts, N_PARTIAL)
    if trigger.edit_input is not None:
        df = edit(df, BAD, trigger.edit_input)
    if trigger.by_suffix:
        sandbox.client.set_faults(provider=facts.emulator, reject_suffixes=[suffix(i) for i in BAD])
    run = prepare(facts, sandbox, df, "partial")
    assert run.sendable.height == N_PARTIAL  # the trigger passes our own validation
    out, requests = run.send()

    assert_isolated(run, out, BAD, trigger.code)
    if run.provider.caps.rejection is Rejection.WHOLE_BATCH:
        assert requests.get("batch_rejected", 0) >= 1
    assert_ledger_is(ledger(sandbox, facts), accepted_phones(out))


# ---- 3. whole-batch rejection ----------------------------------------------------------------------------


def test_whole_batch_rejection_isolates_the_bad_rows(facts: ProviderFacts, sandbox: SandboxServer) -> None:
    trigger = facts.contract.whole_batch
    if trigger is None:
        pytest.skip(facts.contract.whole_batch_skip)
    run = prepare(facts, sandbox, recipients(facts, N_PARTIAL), "whole")
    rows = run.sendable
    if trigger.edit_planned is not None:
        rows = edit(rows, BAD_WHOLE, trigger.edit_planned)
    out, requests = run.send(rows)

    # The sandbox refused whole requests (nothing of them recorded). A per-row provider names the bad rows
    # (sent.dm's `to[i]`): they alone are rejected and the rest go in one request, so one refusal per bad
    # row's batch. A whole-batch provider names none: the engine bisects (the full batch, then the halves
    # holding a bad row, ...).
    seen = requests_seen(sandbox, facts)
    assert seen.get("400", 0) == requests["batch_rejected"]
    if facts.caps.rejection is Rejection.PER_ROW:
        assert requests["batch_rejected"] == 1
    else:
        assert requests["batch_rejected"] >= 2
    assert_isolated(run, out, BAD_WHOLE, trigger.code)
    assert out.filter(pl.col("status") == Status.ACCEPTED.value).height >= N_PARTIAL - 19
    assert_ledger_is(ledger(sandbox, facts), accepted_phones(out))


# ---- 4. a 429 storm --------------------------------------------------------------------------------------


STORM = 3


def test_429_storm_everything_accepted_in_the_end(facts: ProviderFacts, sandbox: SandboxServer) -> None:
    sandbox.client.set_faults(provider=facts.emulator, next_429=STORM, retry_after_s=1)
    run = prepare(facts, sandbox, recipients(facts, N), "storm")
    started = time.monotonic()
    out, requests = run.send()
    elapsed = time.monotonic() - started  # only ever bounded from below: a slow machine only adds to it

    assert statuses(out) == [Status.ACCEPTED.value] * N
    assert requests.get("429") == STORM and requests_seen(sandbox, facts).get("429") == STORM
    assert_ledger_is(ledger(sandbox, facts), out["phone"].to_list())
    bucket = ratelimit._BUCKETS[(run.provider.caps.name, run.provider.settings.base_url)]
    assert bucket.throttled == STORM
    if facts.contract.waits_on_429:
        # Each 429 said "1 s" (Instasent: X-RateLimit-Reset, a whole second at least 1 s away): the engine
        # paused for it every time, so the three took at least ~3 s.
        assert elapsed >= STORM * 0.9, f"{elapsed:.2f}s: Retry-After was not honoured"
    else:
        # No wait given: the engine backs off by halving its rate, not by inventing a wait.
        assert bucket.rate < bucket.target_rate


# ---- 5. an idempotent re-send ----------------------------------------------------------------------------


def test_resend_creates_nothing_new_unless_the_provider_has_no_idempotency(
    facts: ProviderFacts, sandbox: SandboxServer
) -> None:
    run = prepare(facts, sandbox, recipients(facts, N), "resend")
    first, _ = run.send()
    second, _ = run.send()  # the same planned rows: same batch keys, same row keys
    assert statuses(first) == statuses(second) == [Status.ACCEPTED.value] * N
    entries = ledger(sandbox, facts)
    stats = sandbox.client.stats()["providers"][facts.emulator]

    if run.provider.caps.resend_safe:
        assert_ledger_is(entries, first["phone"].to_list())
        assert stats["duplicates"] == N
        if run.provider.caps.outcome is OutcomeTiming.SYNC:  # the first messages' ids, answered again
            assert second["provider_message_id"].to_list() == first["provider_message_id"].to_list()
            assert first["provider_message_id"].null_count() == 0
        else:  # the original job, replayed
            assert second["provider_batch_ref"].to_list() == first["provider_batch_ref"].to_list()
    else:
        # Postman has no idempotency: the same file makes a second batch and texts everyone twice. This is
        # why the engine records `unknown` after an ambiguous failure instead of re-sending blindly.
        assert len(entries) == 2 * N
        assert sorted(e["to"] for e in entries) == sorted(first["phone"].to_list() * 2)
        assert len({e["batch"] for e in entries}) == 2
        assert set(first["provider_batch_ref"]).isdisjoint(set(second["provider_batch_ref"]))


def test_lost_answer_is_resent_only_where_idempotency_makes_it_harmless(
    facts: ProviderFacts, sandbox: SandboxServer
) -> None:
    # The emulator processes (and records) the request, then holds the answer past our read timeout.
    # A read timeout of 5 s against an answer held for 60: no ordinary answer on a loaded machine takes 5 s.
    sandbox.client.set_faults(provider=facts.emulator, next_timeout=1, timeout_delay_s=60)
    run = prepare(facts, sandbox, recipients(facts, N), "lost")
    out, requests = run.send(read_timeout=5.0)
    entries = ledger(sandbox, facts)
    assert requests.get("read_timeout") == 1
    # Either way nobody is texted twice.
    assert_ledger_is(entries, out["phone"].to_list())
    if run.provider.caps.resend_safe:
        # The engine re-sent with the same keys; the provider answered the first messages.
        assert statuses(out) == [Status.ACCEPTED.value] * N
        assert sandbox.client.stats()["providers"][facts.emulator]["duplicates"] == N
    else:
        # No idempotency: the rows are `unknown`, for reconciliation, and the file went up once.
        assert statuses(out) == [Status.UNKNOWN.value] * N
        assert set(out["error_code"]) == {"read_timeout"}
        assert sum(requests.values()) == 1
