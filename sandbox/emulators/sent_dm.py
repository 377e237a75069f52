"""sent.dm v3 batch sends, as sent.dm documents them (docs/providers/sent-dm.md) (adapter:
providers/sent_dm.py).

    POST /v3/messages        x-api-key: <key>        Idempotency-Key: <key> (optional)
    {"to": ["+1…", … 1-1000], "template": {"id": "tmpl_…", "parameters": {…}}, "channel": ["sms"]}

    200 {"success": true, "data": {"status": "QUEUED", "template_id", "template_name",
         "recipients": [{"message_id": "msg_001", "to": "+1…", "channel": "sms"}, …]},
         "error": null, "meta": {"request_id": "req_…", "timestamp": "…", "version": "v3"}}

Every error is sent.dm's envelope (docs.sent.dm, Error Handling reference):
`{"success": false, "data": null, "error": {"code", "message", "details", "doc_url"}, "meta": {…}}`.

    400 VALIDATION_001  invalid JSON, `to` missing/empty/over 1000 (details.to), a `to[i]` that is not E.164
                        (details["to[i]"]: a bad recipient refuses the whole request), template/id/parameters
                        malformed (details.template…), unknown channel, an Idempotency-Key outside
                        [A-Za-z0-9_-]{1,255}. The 1000 limit's answer is not in the document: ASSUMED 400
                        VALIDATION_001, the catalogue's code for "request validation failed".
    401 AUTH_002        missing or wrong x-api-key ("Invalid or missing API key")
    404 RESOURCE_001    ASSUMED: template ids beginning with `missing` (the deterministic trigger for an
                        unknown template; nothing else is ever "not found" here)
    422 IDEMPOTENCY_001 ASSUMED: an Idempotency-Key seen before with a DIFFERENT request (the IETF
                        Idempotency-Key draft's 422; sent.dm's status table has 422 for "business rule
                        violations")
    429 RATE_LIMIT_001  past 200 requests/minute (token bucket, burst 200, as the document's own
                        RateLimiter(200, 200)); with `Retry-After` (the document's backoff reads
                        `retry-after`). The body code is ASSUMED.
    502 UPSTREAM_001    a `to` matching the `transient_suffixes` knob: "Upstream service error — provider
                        service unavailable" (sent.dm's status table). Nothing is processed; sent.dm's
                        answer has no per-recipient transient failure, so the whole request fails.
    503                 the `next_5xx` / `rate_5xx` knobs (envelope code SERVICE_001)

Per-recipient refusal: numbers matching the `reject_suffixes` knob are accepted by the request but left out
of `data.recipients` and recorded nowhere (the document's "Some recipients were rejected" pattern). A
number listed twice in `to` is sent once.

Idempotency: a repeated Idempotency-Key with the same request (canonical JSON) replays the first 200 byte
for byte (plus `Idempotent-Replayed: true`) and records nothing; only 200s are stored, so a refused request
may be corrected and re-sent under its key. Ledger entries: provider `sent-dm`, batch = meta.request_id,
batch_key = the Idempotency-Key, key = None (sent.dm has no per-message key), body = the template id and
parameters as JSON (sent.dm renders the text).

Delivery reports ("Subscribe to webhooks for delivery status"). The payload is ASSUMED (the document shows
none; this follows sent.dm's webhook envelope style). With the `dlr_url` knob set, each new message's reports
are POSTed to `<dlr_url path>/sent-dm`, one JSON object per POST: `SENT` at acceptance, then the final one
`dlr_delay_ms` later on the sandbox clock:

    {"field": "message", "sub_type": "message.status_updated",
     "payload": {"message_id": "msg_…", "message_status": "SENT" | "DELIVERED" | "FAILED", "channel": "sms",
                 "error_code": str | null, "error_message": str | null,
                 "updated_at": "2026-05-01T08:00:00.000000Z"}}

`SENT` is pending (smscast/delivery.py), `FAILED` undelivered (`undelivered_share` knob) with one of
ERROR_CODES (ASSUMED, in the catalogue's `AREA_NNN` style). A replayed request has no reports of its own.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from smscast.sandbox.auth import HeaderKeyAuth
from smscast.sandbox.callbacks import Report
from smscast.sandbox.framework import Emulator, RequestRefused, json_response, read_json
from smscast.sandbox.idempotency import fingerprint

MAX_RECIPIENTS = 1000
CHANNELS = frozenset({"sms", "whatsapp"})
E164 = re.compile(r"\+[1-9]\d{6,14}", re.ASCII)
IDEMPOTENCY_KEY = re.compile(r"[A-Za-z0-9_-]{1,255}", re.ASCII)
MISSING_TEMPLATE_PREFIX = "missing"
DOC_URL = "https://docs.sent.dm/errors/"
# Why a message was not delivered (ASSUMED codes, in the style of sent.dm's error catalogue).
ERROR_CODES = (
    ("DELIVERY_001", "Recipient handset unreachable"),
    ("DELIVERY_002", "Recipient number not in service"),
    ("DELIVERY_003", "Message filtered by the carrier"),
    ("DELIVERY_004", "Recipient has opted out"),
)
DLR_STATUS = {"pending": "SENT", "delivered": "DELIVERED", "undelivered": "FAILED", "expired": "FAILED"}

# The framework's generic codes (auth, fault knobs) in sent.dm's catalogue spelling.
_CODES = {
    "unauthorized": ("AUTH_002", "Invalid or missing API key"),
    "rate_limited": ("RATE_LIMIT_001", "Too many requests: 200 requests per minute"),
    "service_unavailable": ("SERVICE_001", "Service temporarily unavailable"),
    "invalid_json": ("VALIDATION_001", "Request validation failed"),
}


class SentDmEmulator(Emulator):
    name = "sent-dm"
    auth = HeaderKeyAuth("x-api-key")
    sends_retry_after = True
    default_knobs: ClassVar[Mapping[str, Any]] = {"rate_limit_rps": 200 / 60, "rate_limit_burst": 200}
    error_codes = ERROR_CODES
    dlr_route = "sent-dm"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._request_seq = 0  # not reset: request ids stay unique for the life of the process

    def routes(self) -> Sequence[BaseRoute]:
        return [self.endpoint("/v3/messages", self.send)]

    def message_id(self, seq: int) -> str:
        return f"msg_{seq:03d}"  # the document's "msg_001"

    def dlr_report(self, report: Report) -> dict[str, Any]:
        outcome = report.outcome
        return {
            "field": "message",
            "sub_type": "message.status_updated",
            "payload": {
                "message_id": report.message_id,
                "message_status": DLR_STATUS[outcome.status],
                "channel": "sms",
                "error_code": outcome.error_code,
                "error_message": outcome.error_message,
                "updated_at": report.at_iso,
            },
        }

    def _meta(self) -> dict[str, str]:
        self._request_seq += 1
        stamp = self.clock.iso("microseconds")
        return {"request_id": f"req_{self._request_seq:06d}", "timestamp": stamp, "version": "v3"}

    def error(
        self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None
    ) -> Response:
        details: Any = None
        if code in _CODES:
            if code == "invalid_json":
                details = {"body": [message]}
            code, message = _CODES[code]
        elif ":" in code:  # "VALIDATION_001:field" carries the field for `details`
            code, field = code.split(":", 1)
            details = {field: [message]}
            message = "Request validation failed"
        body = {
            "success": False,
            "data": None,
            "error": {"code": code, "message": message, "details": details, "doc_url": DOC_URL + code},
            "meta": self._meta(),
        }
        return json_response(body, status, headers)

    @staticmethod
    def _invalid(field: str, message: str) -> RequestRefused:
        return RequestRefused(400, f"VALIDATION_001:{field}", message)

    async def send(self, request: Request) -> Response:
        payload = await read_json(request)
        # Nothing below awaits: the key check, processing and storing of the answer happen in one step.
        key = request.headers.get("idempotency-key")
        if key is not None and not IDEMPOTENCY_KEY.fullmatch(key):
            raise self._invalid("Idempotency-Key", "1-255 characters: letters, digits, '-' and '_'")
        fp = fingerprint(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS))
        if key is not None:
            stored = self.idempotency.get(self.name, key)
            if stored is not None:
                if stored.fingerprint != fp:
                    raise RequestRefused(
                        422,
                        "IDEMPOTENCY_001",
                        "Idempotency-Key already used for a different request",
                    )
                self.ledger.counters(self.name).duplicates += _count(payload)
                return stored.replay({"Idempotent-Replayed": "true"})

        to, template_id, parameters, channel = self._validate(payload)
        reject_sfx, transient_sfx = self.row_suffixes()
        if transient_sfx and any(n.endswith(transient_sfx) for n in to):
            raise RequestRefused(502, "UPSTREAM_001", "Upstream service error: provider service unavailable")

        meta = self._meta()
        ledger = self.ledger
        counters = ledger.counters(self.name)
        body = orjson.dumps({"template": template_id, "parameters": parameters}).decode()
        fmt = ledger.message_id_format(self.name)
        seq0 = ledger.seq(0)
        recipients: list[dict[str, str]] = []
        add = None
        seen: set[str] = set()
        for number in to:
            if number in seen:
                continue
            seen.add(number)
            if reject_sfx and number.endswith(reject_sfx):
                counters.reject("recipient_rejected")
                continue
            if add is None:
                add = self.open_batch(meta["request_id"], key)
            pos = add(number, body, None)
            recipients.append({"message_id": fmt(seq0 + pos), "to": number, "channel": channel})
        response = json_response(
            {
                "success": True,
                "data": {
                    "status": "QUEUED",
                    "template_id": template_id,
                    "template_name": template_id,
                    "recipients": recipients,
                },
                "error": None,
                "meta": meta,
            }
        )
        if key is not None:
            self.idempotency.put(self.name, key, fp, response)
        return response

    def _validate(self, payload: Any) -> tuple[list[str], str, dict[str, Any], str]:
        if not isinstance(payload, dict):
            raise self._invalid("body", "the body must be a JSON object")
        to = payload.get("to")
        if not isinstance(to, list) or not to:
            raise self._invalid("to", "`to` must be a non-empty array of phone numbers")
        if len(to) > MAX_RECIPIENTS:
            raise self._invalid("to", f"{len(to)} recipients; at most {MAX_RECIPIENTS} per request")
        for i, number in enumerate(to):
            if not isinstance(number, str) or E164.fullmatch(number) is None:
                raise self._invalid(f"to[{i}]", "must be a phone number in E.164 format (+ and 7-15 digits)")
        template = payload.get("template")
        if not isinstance(template, dict):
            raise self._invalid("template", "`template` is required: {id, parameters}")
        template_id = template.get("id")
        if not isinstance(template_id, str) or not template_id.strip():
            raise self._invalid("template.id", "`template.id` is required")
        parameters = template.get("parameters", {})
        if parameters is None:
            parameters = {}
        if not isinstance(parameters, dict) or not all(
            isinstance(v, str | int | float | bool) for v in parameters.values()
        ):
            raise self._invalid("template.parameters", "`template.parameters` must map names to values")
        channels = payload.get("channel", ["sms"])
        if (
            not isinstance(channels, list)
            or not channels
            or not all(isinstance(c, str) and c in CHANNELS for c in channels)
        ):
            raise self._invalid("channel", "`channel`: a non-empty array of 'sms' and 'whatsapp'")
        if template_id.startswith(MISSING_TEMPLATE_PREFIX):
            raise RequestRefused(404, "RESOURCE_001", f"Template not found: {template_id}")
        return to, template_id, parameters, channels[0]


def _count(payload: Any) -> int:
    to = payload.get("to") if isinstance(payload, dict) else None
    return len(to) if isinstance(to, list) else 0


EMULATOR = SentDmEmulator
