"""robase batch sends, as robase documents them (docs/providers/robase.md) (adapter: providers/robase.py).

    POST /v1/sms/batch        Authorization: Bearer <key>
    {"from": "SHUTTLERS", "template"?: "ride-reminder", "send_at"?: "2026-05-01T08:00:00.000Z",
     "messages": [{"to": "+234…", "body": "…" | "template"?: "…", "variables"?: {…},
                   "idempotency_key"?: "…"}, … 1-1000]}

    200 {"accepted": 2, "failed": 1, "success": false,
         "data": [{"index": 0, "sms": {"id": "sms_…", "status": "queued", "to", "from", "idempotency_key",
                                        "send_at", "created_at"}},
                  {"index": 1, "error": {"type": "phone_invalid", "message": "…", "field": "to"}}, …]}

"Batch always returns HTTP 200 — even when some rows fail", so every row-level problem is a `data[]` error:

    phone_invalid            `to` not E.164 (the document's example), or a `reject_suffixes` knob match
    body_required            no template and no non-empty `body`
    body_too_long            body over 1600 characters ("Max body per row 1600 chars")
    template_not_found       a template name beginning with `missing` (deterministic trigger)
    variables_invalid        `variables` not an object of scalar values
    idempotency_key_invalid  not a string of 1-255 characters
    idempotency_key_conflict the key was used before for a different message (to/body/template/variables)
    carrier_unavailable      a `transient_suffixes` knob match: transient, nothing recorded
    validation_error         a message that is not an object, or has both body and template

Only the row-level `phone_invalid` type is the document's; the other names are ASSUMED in its style.

A whole-request problem cannot be answered per row; the document does not show those answers, so they are
ASSUMED in the shape of the row error, `{"success": false, "error": {"type", "message", "field"}}`:
400 `invalid_json`; 422 `validation_error` (`from` missing, `messages` not an array, `template` or `send_at`
of the wrong type), `batch_empty`, `batch_too_large` (over "Max rows per call 1000"), `send_at_invalid`
(not ISO 8601 with a time zone); 401 `unauthorized`; 429 `rate_limited` with Retry-After (the document
says nothing of 429: ASSUMED); 503 `service_unavailable` from the fault knobs. The whole-batch trigger for
tests: 1001 rows (or a bad `send_at`).

Idempotency: a row whose `idempotency_key` was accepted before (per provider, across calls) answers the
first message's `sms` again and records nothing; with a different message it is `idempotency_key_conflict`.
Rate: 4 calls per second, burst 4 ("4 batches/s"; "each batch call counts as 1 request"). Ledger entries:
provider `robase`, batch `rb_batch_<n>` (robase has no request-level key: batch_key None), key = the row's
idempotency_key, body = the text, or `{"template", "variables"}` as JSON for template rows.

Delivery truth (sandbox/truth.py): each message ends `delivered`, or `undelivered` (`undelivered_share` knob)
with one of ERROR_CODES (ASSUMED, in the style of the row error types), `dlr_delay_ms` after acceptance
(not after `send_at`); the emulator has no status lookup or delivery report, so only the ledger says so.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from smscast.sandbox.auth import BearerAuth
from smscast.sandbox.framework import Emulator, RequestRefused, json_response, read_json
from smscast.sandbox.ledger import Adder

MAX_ROWS = 1000
MAX_BODY_CHARS = 1600
MAX_KEY_CHARS = 255
E164 = re.compile(r"\+[1-9]\d{6,14}", re.ASCII)
MISSING_TEMPLATE_PREFIX = "missing"
_FIELDS = {  # request-level type -> the field it names
    "batch_empty": "messages",
    "batch_too_large": "messages",
    "send_at_invalid": "send_at",
}


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _send_at(raw: Any) -> str | None:
    """The batch's send_at normalised to UTC (as toISOString writes it), None when absent."""
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise RequestRefused(422, "validation_error:send_at", "`send_at` must be an ISO 8601 string")
    try:
        when = datetime.fromisoformat(raw.strip())
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        raise RequestRefused(
            422, "send_at_invalid", "`send_at` must be an ISO 8601 date-time with a time zone"
        )
    return _iso(when)


# Why a message was not delivered (ASSUMED, in the style of robase's error types).
ERROR_CODES = (
    ("phone_unreachable", "the handset could not be reached"),
    ("phone_inactive", "the number is not in service"),
    ("carrier_rejected", "the carrier refused the message"),
)


class RobaseEmulator(Emulator):
    name = "robase"
    auth = BearerAuth()
    error_codes = ERROR_CODES
    sends_retry_after = True  # ASSUMED: the document does not mention 429 at all
    default_knobs: ClassVar[Mapping[str, Any]] = {"rate_limit_rps": 4, "rate_limit_burst": 4}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._batch_seq = 0  # not reset: batch names stay unique for the life of the process
        self._batch_send_at: dict[str, str | None] = {}  # batch name -> its send_at, for replays

    def routes(self) -> Sequence[BaseRoute]:
        return [self.endpoint("/v1/sms/batch", self.send_batch)]

    def message_id(self, seq: int) -> str:
        return f"sms_{seq}"

    def reset(self) -> None:
        self._batch_send_at.clear()

    def error(
        self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None
    ) -> Response:
        kind, _, field = code.partition(":")
        body = {
            "success": False,
            "error": {"type": kind, "message": message, "field": field or _FIELDS.get(kind)},
        }
        return json_response(body, status, headers)

    async def send_batch(self, request: Request) -> Response:
        payload = await read_json(request)
        if not isinstance(payload, dict):
            raise RequestRefused(422, "validation_error", "the body must be a JSON object")
        sender = payload.get("from")
        if not isinstance(sender, str) or not sender.strip():
            raise RequestRefused(422, "validation_error:from", "`from` is required")
        messages = payload.get("messages")
        if not isinstance(messages, list):
            raise RequestRefused(422, "validation_error:messages", "`messages` must be an array")
        if not messages:
            raise RequestRefused(422, "batch_empty", "`messages` is empty")
        if len(messages) > MAX_ROWS:
            raise RequestRefused(
                422, "batch_too_large", f"{len(messages)} messages; at most {MAX_ROWS} per call"
            )
        shared_template = payload.get("template")
        if shared_template is not None and not isinstance(shared_template, str):
            raise RequestRefused(422, "validation_error:template", "`template` must be a template name")
        send_at = _send_at(payload.get("send_at"))
        return self._process(sender, messages, shared_template, send_at)

    def _process(
        self, sender: str, messages: list[Any], shared_template: str | None, send_at: str | None
    ) -> Response:
        # No awaits from here on: the rows of one call are recorded contiguously (sandbox/ledger.py).
        name = self.name
        ledger = self.ledger
        counters = ledger.counters(name)
        index = ledger.index(name)
        seq0 = ledger.seq(0)
        fmt = ledger.message_id_format(name)
        reject_sfx, transient_sfx = self.row_suffixes()
        created_at = _iso(self.clock.now())
        batch = ""
        add: Adder | None = None
        data: list[dict[str, Any]] = []
        accepted = failed = duplicates = 0

        def refuse(i: int, kind: str, message: str, field: str | None) -> None:
            nonlocal failed
            failed += 1
            counters.reject(kind)
            data.append({"index": i, "error": {"type": kind, "message": message, "field": field}})

        for i, m in enumerate(messages):
            if type(m) is not dict:
                refuse(i, "validation_error", "a message must be an object", None)
                continue
            to = m.get("to")
            if type(to) is not str or E164.fullmatch(to) is None:
                refuse(i, "phone_invalid", "`to` must be an E.164 phone number", "to")
                continue
            content = self._content(m, shared_template)
            if isinstance(content, tuple):
                refuse(i, *content)
                continue
            key = m.get("idempotency_key")
            if key is not None and (type(key) is not str or not 0 < len(key) <= MAX_KEY_CHARS):
                refuse(
                    i,
                    "idempotency_key_invalid",
                    f"`idempotency_key` must be a string of 1-{MAX_KEY_CHARS} characters",
                    "idempotency_key",
                )
                continue
            if key is not None:
                hit = index.get(key)
                if hit is not None:
                    if ledger.to(hit) != to or ledger.body(hit) != content:
                        refuse(
                            i,
                            "idempotency_key_conflict",
                            "this idempotency_key was used for a different message",
                            "idempotency_key",
                        )
                        continue
                    # The first message, as it was answered then; nothing new is recorded.
                    duplicates += 1
                    accepted += 1
                    _, first_batch, _, first_at = ledger.batch_of(hit)
                    first = self._sms(
                        fmt(seq0 + hit),
                        to,
                        sender,
                        key,
                        self._batch_send_at.get(first_batch),
                        _iso(datetime.fromtimestamp(first_at, UTC)),
                    )
                    data.append({"index": i, "sms": first})
                    continue
            if reject_sfx and to.endswith(reject_sfx):
                refuse(i, "phone_invalid", "the number cannot receive SMS", "to")
                continue
            if transient_sfx and to.endswith(transient_sfx):
                refuse(i, "carrier_unavailable", "the carrier is unavailable, try again later", "to")
                continue
            if add is None:
                self._batch_seq += 1
                batch = f"rb_batch_{self._batch_seq}"
                self._batch_send_at[batch] = send_at
                add = self.open_batch(batch, None, index)
            pos = add(to, content, key)
            accepted += 1
            data.append({"index": i, "sms": self._sms(fmt(seq0 + pos), to, sender, key, send_at, created_at)})

        counters.duplicates += duplicates
        return json_response({"accepted": accepted, "failed": failed, "success": failed == 0, "data": data})

    @staticmethod
    def _sms(
        sms_id: str, to: str, sender: str, key: str | None, send_at: str | None, created_at: str
    ) -> dict[str, Any]:
        return {
            "id": sms_id,
            "status": "scheduled" if send_at else "queued",
            "to": to,
            "from": sender,
            "idempotency_key": key,
            "send_at": send_at,
            "created_at": created_at,
        }

    @staticmethod
    def _content(m: dict[str, Any], shared_template: str | None) -> str | tuple[str, str, str | None]:
        """The message's content as stored in the ledger (the body, or its template and variables as JSON),
        or the (type, message, field) of its refusal."""
        template = m.get("template", shared_template)
        body = m.get("body")
        if template is not None:
            if body is not None:
                return "validation_error", "give either `body` or a template, not both", "body"
            if type(template) is not str or not template:
                return "template_not_found", "`template` must be a template name", "template"
            if template.startswith(MISSING_TEMPLATE_PREFIX):
                return "template_not_found", f"no template named {template!r}", "template"
            variables = m.get("variables") or {}
            if type(variables) is not dict or not all(
                isinstance(v, str | int | float | bool) for v in variables.values()
            ):
                return "variables_invalid", "`variables` must map names to values", "variables"
            return orjson.dumps(
                {"template": template, "variables": variables}, option=orjson.OPT_SORT_KEYS
            ).decode()
        if type(body) is not str or not body:
            return "body_required", "`body` is required (or a template)", "body"
        if len(body) > MAX_BODY_CHARS:
            return "body_too_long", f"`body` has {len(body)} characters; at most {MAX_BODY_CHARS}", "body"
        return body


EMULATOR = RobaseEmulator
