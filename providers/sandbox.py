"""smscast's own sandbox provider: a JSON batch API served by `smscast sandbox` (sandbox/emulators/generic.py).

Wire format (both sides of it live in this repository, so this module is its specification):

    POST /sandbox/v1/messages/batch
    Authorization: Bearer <key>          Idempotency-Key: <batch key>
    {"sender": "ACME", "messages": [{"to": "+447700900123", "body": "Hi", "ref": "<row idempotency key>"}, ...]}

    200 {"batch": "<server batch id>",
         "results": [{"index": 0, "status": "accepted", "message_id": "sbx_…"},
                     {"index": 1, "status": "rejected", "code": "invalid_number", "message": "…"}]}
    400 {"error": {"code": "…", "message": "…"}}   whole request refused (too many rows, bad JSON)

A repeated `ref` returns the first message's id and creates nothing new: re-sending is always safe.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any, ClassVar

import httpx

from smscast.providers.base import (
    Batch,
    Capabilities,
    DeliveryChannel,
    Idempotency,
    Outcomes,
    Provider,
    Refusal,
    RowOutcome,
    json_request,
    json_rows,
)
from smscast.status import Status


class SandboxProvider(Provider):
    caps = Capabilities(
        name="sandbox",
        max_rows=1000,
        max_body_chars=1600,  # what the emulator accepts…
        max_segments=10,  # …and our own cost guard, the tighter of the two (10 parts = 1530 GSM-7 chars)
        rate_per_second=200.0,
        burst=20,
        concurrency=8,
        idempotency=Idempotency.ROW,
        sender_pattern=r"[A-Za-z0-9 ]{1,11}|\+?[0-9]{3,15}",
        request_timeout=30.0,
        # The emulator posts delivery reports to the receiver (its `dlr_url`); the window is ours to set, and
        # generous next to the emulator's delays (ASSUMED: a real deployment of this API would say).
        delivery_reports=frozenset({DeliveryChannel.WEBHOOK}),
        report_window=timedelta(hours=24),
        resend_fixes=frozenset({"absent_subscriber"}),  # switched off or out of coverage
    )

    STATES: ClassVar[Mapping[str, Status]] = {"accepted": Status.ACCEPTED}
    # A `rejected` result's code; any other code is REJECTED as well (Provider.refusal_status).
    REFUSALS: ClassVar[Mapping[str, Status]] = {
        "invalid_number": Status.REJECTED,
        "blocked_number": Status.REJECTED,
        "body_missing": Status.REJECTED,
        "body_too_long": Status.REJECTED,
        "invalid_ref": Status.REJECTED,
        "invalid_message": Status.REJECTED,
        "carrier_unavailable": Status.FAILED,  # the emulator's transient per-row failure
    }

    def build_request(self, batch: Batch) -> httpx.Request:
        messages = json_rows(batch.rows.select(to="phone", body="body", ref="idempotency_key"))
        return json_request(
            "POST",
            self.url("/sandbox/v1/messages/batch"),
            {"sender": batch.spec.sender, "messages": messages},
            {"Authorization": f"Bearer {self.api_key()}", "Idempotency-Key": batch.batch_key},
        )

    def read_refusal(self, response: httpx.Response, payload: Any) -> Refusal:
        err = payload.get("error") if isinstance(payload, dict) else None
        err = err if isinstance(err, dict) else {}
        # Every 400 of this API is about the request (size, JSON, sender), never one row: no split.
        return Refusal(_text(err.get("code")), str(err.get("message") or ""))

    def read_outcomes(
        self, batch: Batch, response: httpx.Response, payload: Any
    ) -> Sequence[RowOutcome | None] | None:
        if not isinstance(payload, dict) or not isinstance(payload.get("results"), list):
            return None
        ref = payload.get("batch")
        n = len(batch)
        if (fast := _all_accepted(payload["results"], n, ref)) is not None:
            return fast
        outcomes: list[RowOutcome | None] = [None] * n
        accepted = Status.ACCEPTED
        for item in payload["results"]:
            i = item.get("index")
            if not isinstance(i, int) or not 0 <= i < n:
                continue
            state = item.get("status")
            if state == "accepted":  # the common case, kept cheap: one tuple per recipient
                outcomes[i] = RowOutcome(accepted, None, None, item.get("message_id"), ref)
                continue
            code = _text(item.get("code"))
            if state == "rejected" or code is not None:
                message = item.get("message")
                outcomes[i] = self.refused(
                    code or "rejected",
                    None if message is None else str(message),
                    provider_message_id=item.get("message_id"),
                    provider_batch_ref=ref,
                )
            else:  # a state we do not know, without a refusal code: it may mean accepted
                outcomes[i] = RowOutcome(
                    self.state_status(_text(state)),
                    _text(state),
                    "sandbox result status not recognised",
                    item.get("message_id"),
                    ref,
                )
        return outcomes


def _all_accepted(results: list[Any], n: int, ref: Any) -> Outcomes | None:
    """The common answer, read as columns: one result per row, in row order, every one `accepted`. None
    for anything else, which the row-by-row reading handles (and reads the same way where both apply)."""
    if len(results) != n:
        return None
    try:
        index = [r["index"] for r in results]
        states = [r["status"] for r in results]
        ids = [r.get("message_id") for r in results]
    except (KeyError, TypeError, AttributeError):  # a result that is not an object, or lacks a field
        return None
    # Exactly 0..n-1, each an int (not 1.0 or True, which compare equal to one), every one accepted.
    if index != list(range(n)) or states.count("accepted") != n or set(map(type, index)) != {int}:
        return None
    return Outcomes.accepted(ids, ref)


def _text(value: object) -> str | None:
    """A code from JSON as text; None when absent or empty (never the string "None")."""
    return None if value is None or value == "" else str(value)


ADAPTER = SandboxProvider
