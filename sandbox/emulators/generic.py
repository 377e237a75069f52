"""smscast's own generic sandbox API, as specified by providers/sandbox.py:

    POST /sandbox/v1/messages/batch      Authorization: Bearer <key>      Idempotency-Key: <batch key>
    {"sender": "ACME", "messages": [{"to": "+447400900123", "body": "Hi", "ref": "<row key>"}, ...]}

    200 {"batch": "bat_…",
         "results": [{"index": 0, "status": "accepted", "message_id": "sbx_…"},
                     {"index": 1, "status": "accepted", "message_id": "sbx_…", "duplicate": true},
                     {"index": 2, "status": "rejected", "code": "invalid_number", "message": "…"}]}
    400 {"error": {"code": "invalid_json" | "invalid_request" | "empty_batch" | "batch_too_large"
                           | "invalid_sender", "message": "…"}}
    401 {"error": {"code": "unauthorized", …}}   429 (Retry-After) / 503 {"error": …} from the fault knobs

Per-row codes: invalid_number (not E.164, or a `reject_suffixes` knob match), body_missing, body_too_long
(> 1600 characters), invalid_ref, invalid_message (not an object), carrier_unavailable (a
`transient_suffixes` knob match; transient, nothing recorded). A `ref` seen before (per provider) answers the
first message's id with `"duplicate": true` and records nothing; the `Idempotency-Key` header is recorded as
the entries' batch_key.

Delivery truth (sandbox/truth.py): each accepted message ends `delivered`, or `undelivered` (the
`undelivered_share` knob) with one of the codes of ERROR_CODES. With the `dlr_url` knob set, delivery reports
are POSTed to `<dlr_url path>/generic`, a JSON ARRAY of up to 100 reports per POST (grouping is what lets a
receiver keep up with volume), one report per state transition: `pending` at acceptance, then the final one
`dlr_delay_ms` later (sandbox clock):

    [{"message_id": "sbx_…", "client_ref": "<the message's ref>" | null, "status": "pending" | "delivered"
      | "undelivered" | "expired", "error_code": str | null, "error_message": str | null,
      "reported_at": "2026-05-01T08:00:00.000000Z"}, …]

`expired` is in the vocabulary but never produced. `reported_at` is when the state was reached (sandbox clock).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from smscast.sandbox.callbacks import Report
from smscast.sandbox.framework import Emulator, RequestRefused, json_response, read_json
from smscast.sandbox.ledger import Adder

MAX_ROWS = 1000
MAX_BODY_CHARS = 1600
MAX_REF_CHARS = 256
E164 = re.compile(r"\+[1-9]\d{6,14}", re.ASCII)
SENDER = re.compile(r"[A-Za-z0-9 ]{1,11}|\+?[0-9]{3,15}", re.ASCII)
# Why a message was not delivered, in this API's own snake_case vocabulary.
ERROR_CODES = (
    ("absent_subscriber", "the handset is switched off or out of coverage"),
    ("unknown_subscriber", "the number is not in service"),
    ("carrier_rejected", "the carrier refused the message"),
    ("blocked_number", "the recipient blocks messages from this sender"),
)


class GenericEmulator(Emulator):
    name = "generic"
    error_codes = ERROR_CODES
    dlr_route = "generic"
    dlr_group = 100

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._batch_seq = 0  # not reset: batch ids stay unique for the life of the process

    def routes(self) -> Sequence[BaseRoute]:
        return [self.endpoint("/sandbox/v1/messages/batch", self.send_batch)]

    def message_id(self, seq: int) -> str:
        return f"sbx_{seq}"

    def dlr_report(self, report: Report) -> dict[str, Any]:
        outcome = report.outcome
        return {
            "message_id": report.message_id,
            "client_ref": report.key,
            "status": outcome.status,
            "error_code": outcome.error_code,
            "error_message": outcome.error_message,
            "reported_at": report.at_iso,
        }

    async def send_batch(self, request: Request) -> Response:
        payload = await read_json(request)
        if not isinstance(payload, dict):
            raise RequestRefused(400, "invalid_request", "the body must be a JSON object")
        messages = payload.get("messages")
        if not isinstance(messages, list):
            raise RequestRefused(400, "invalid_request", "`messages` must be an array")
        if not messages:
            raise RequestRefused(400, "empty_batch", "`messages` is empty")
        if len(messages) > MAX_ROWS:
            raise RequestRefused(
                400, "batch_too_large", f"{len(messages)} messages; at most {MAX_ROWS} per request"
            )
        sender = payload.get("sender")
        if sender is not None and not (isinstance(sender, str) and SENDER.fullmatch(sender)):
            raise RequestRefused(
                400, "invalid_sender", "`sender`: 1-11 letters, digits or spaces, or a number"
            )

        self._batch_seq += 1
        batch = f"bat_{self._batch_seq}"
        batch_key = request.headers.get("idempotency-key")
        name = self.name
        ledger = self.ledger
        counters = ledger.counters(name)
        index = ledger.index(name)
        seq0 = ledger.seq(0)  # seq of the entry at position p is seq0 + p
        reject_sfx, transient_sfx = self.row_suffixes()
        check_sfx = bool(reject_sfx or transient_sfx)
        e164 = E164.fullmatch
        add: Adder | None = None  # set when the first row is accepted (the batch is recorded then)
        duplicates = 0
        results: list[dict[str, Any]] = []
        append = results.append

        def refuse(i: int, code: str, message: str) -> None:
            counters.reject(code)
            append({"index": i, "status": "rejected", "code": code, "message": message})

        for i, m in enumerate(messages):
            if type(m) is not dict:
                refuse(i, "invalid_message", "a message must be an object")
                continue
            to = m.get("to")
            if type(to) is not str or e164(to) is None:
                refuse(i, "invalid_number", "`to` must be an E.164 number (+ and 7-15 digits)")
                continue
            body = m.get("body")
            if type(body) is not str or not body:
                refuse(i, "body_missing", "`body` is required")
                continue
            if len(body) > MAX_BODY_CHARS:
                refuse(i, "body_too_long", f"`body` has {len(body)} characters; at most {MAX_BODY_CHARS}")
                continue
            ref = m.get("ref")
            if ref is not None:
                if type(ref) is not str or not ref or len(ref) > MAX_REF_CHARS:
                    refuse(i, "invalid_ref", f"`ref` must be a string of 1-{MAX_REF_CHARS} characters")
                    continue
                hit = index.get(ref)
                if hit is not None:
                    duplicates += 1
                    append(
                        {
                            "index": i,
                            "status": "accepted",
                            "message_id": f"sbx_{seq0 + hit}",
                            "duplicate": True,
                        }
                    )
                    continue
            if check_sfx:
                if to.endswith(reject_sfx):
                    refuse(i, "invalid_number", "the number cannot receive SMS")
                    continue
                if to.endswith(transient_sfx):
                    refuse(i, "carrier_unavailable", "the carrier is unavailable, try again later")
                    continue
            if add is None:
                add = self.open_batch(batch, batch_key, index)
            pos = add(to, body, ref)
            append({"index": i, "status": "accepted", "message_id": f"sbx_{seq0 + pos}"})

        counters.duplicates += duplicates
        return json_response({"batch": batch, "results": results})


EMULATOR = GenericEmulator
