"""Instasent Transactional API bulk send, as Instasent documents it (docs/providers/instasent.md) (the
adapter is providers/instasent.py).

    POST /transactional/v1/sms/bulk             Authorization: Bearer <token>
         [{"from", "to", "text", "allowUnicode"?, "clientId"?}, ...]      a top-level JSON array
    201  {"entities": [{"id", "clientId", "from", "to", "text", "allowUnicode", "status": "enqueued"}],
          "errors": [{"fields": {"to": ["This value is not valid."]}}]}
    400  {"message": "Problems parsing JSON"} | {"message": "Body should be a JSON array"}   (a wrapper object
         such as {"messages": [...]} is refused here: "Wrapping it breaks validation")
    413  {"message": "Request Too Large: at most 100 items per request"}    over 100 items. The document says
         "413 … or 422"; the emulator answers 413 (and 422 for an empty array)
    401  {"message": "Unauthorized"}
    429  empty body, X-RateLimit-Limit / X-RateLimit-Remaining / X-RateLimit-Reset (a Unix time, whole
         seconds): Instasent's rate-limit page; no Retry-After. Default 5 requests per second, burst 5, the
         adapter's ASSUMED default (the document defers to a page it does not include); raise it with the
         `rate_limit_rps` knob (provider "instasent").

Each item is validated on its own; a refused item lands in `errors`, in the input order of the refused items
and without an index, and the rest go through:
* `from`: required, 3-11 letters and digits or 3-14 digits;
* `to`: required, E.164 (`+` and 7-15 digits, no leading 0);
* `text`: required, not blank; with characters outside GSM-7 (our own table of it, below), `allowUnicode` must
  be true, else `text: ["This value contains characters outside GSM-7; set allowUnicode to true."]`;
* `allowUnicode`: a boolean when present; `clientId`: a string of at most 40 characters when present.
Several problems in one item are reported together in that item's `fields`.

Idempotency on `clientId` ("Must be unique per SMS"): a clientId seen before (any earlier request) creates no
message and no ledger entry; the existing message comes back in `entities` with its first id (ASSUMED: the
document does not say how a repeat is answered). Items without a clientId are never de-duplicated.

Deterministic triggers for tests: the `reject_suffixes` knob refuses an item whose `to` ends in one of them
(`to: ["This number cannot receive SMS."]`); `transient_suffixes` has no Instasent meaning (the API has no
per-item transient refusal) and is ignored. Ledger entries: provider `instasent`, batch = `bulk_<n>` (the
request; Instasent has no batch id of its own), batch_key null, key = the clientId.

Delivery reports ("DLRs work the same as for a single send: one webhook POST per status transition, keyed by
the message id"; the clientId "is echoed on every DLR"). The payload is ASSUMED (the document points to a
page it does not include). With the `dlr_url` knob set, each new message's reports are POSTed to
`<dlr_url path>/instasent`, one JSON object per POST: `sent` at acceptance, then the final one
`dlr_delay_ms` later on the sandbox clock:

    {"id": "<message id>", "clientId": "<the clientId sent>" | null,
     "status": "sent" | "delivered" | "failed" | "expired", "errorCode": str | null,
     "updatedAt": "2026-05-01T08:00:00.000000Z"}

`sent` is pending (smscast/delivery.py), `failed` undelivered (`undelivered_share` knob), with one of
ERROR_CODES (ASSUMED); `expired` is in the vocabulary but never produced. A de-duplicated item (a clientId
seen before) is no new message and has no reports of its own.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from smscast.sandbox.callbacks import Report
from smscast.sandbox.framework import Emulator, RequestRefused, json_response
from smscast.sandbox.ledger import Adder

MAX_ITEMS = 100
MAX_CLIENT_ID = 40
SENDER = re.compile(r"[A-Za-z0-9]{3,11}|[0-9]{3,14}", re.ASCII)
E164 = re.compile(r"\+[1-9][0-9]{6,14}", re.ASCII)

BLANK = "This value should not be blank."
INVALID = "This value is not valid."
NEEDS_UNICODE = "This value contains characters outside GSM-7; set allowUnicode to true."

# The GSM 03.38 alphabet (default table and extension table), written out here rather than taken from
# smscast.encoding: this emulator checks smscast's choice of allowUnicode, so it must not share the table that
# choice is made with. Every printable ASCII character but the backtick, line feed, carriage return, form feed
# (extension), and these letters and signs.
_GSM7_LATIN = "£¥¤§¡¿èéùìòÇØøÅåÆæßÉÄÖÑÜäöñüà€"
_GSM7_GREEK = "ΔΦΓΛΩΠΨΣΘΞ"
GSM7 = frozenset(chr(c) for c in range(0x20, 0x7F) if chr(c) != "`") | frozenset(
    "\n\r\x0c" + _GSM7_LATIN + _GSM7_GREEK
)


def is_gsm7(text: str) -> bool:
    return all(c in GSM7 for c in text)


CLIENT_ID_TOO_LONG = f"This value is too long. It should have {MAX_CLIENT_ID} characters or less."
NOT_BOOL = "This value should be of type bool."
UNREACHABLE = "This number cannot receive SMS."
# Why a message was not delivered (ASSUMED codes, in the carriers' usual terms).
ERROR_CODES = (
    ("ABSENT_SUBSCRIBER", "Handset switched off or out of coverage"),
    ("UNKNOWN_SUBSCRIBER", "Number not in service"),
    ("CARRIER_REJECTED", "Rejected by the carrier"),
    ("BLOCKED", "Recipient blocked the sender"),
)
DLR_STATUS = {"pending": "sent", "delivered": "delivered", "undelivered": "failed", "expired": "expired"}


def item_errors(item: Any, reject_sfx: tuple[str, ...]) -> dict[str, list[str]]:
    """The per-field problems of one bulk item (empty when it is valid)."""
    if not isinstance(item, dict):
        return {"item": ["This value should be of type object."]}
    fields: dict[str, list[str]] = {}

    def bad(name: str, message: str) -> None:
        fields.setdefault(name, []).append(message)

    sender = item.get("from")
    if sender is None or sender == "":
        bad("from", BLANK)
    elif not isinstance(sender, str) or SENDER.fullmatch(sender) is None:
        bad("from", INVALID)
    to = item.get("to")
    if to is None or to == "":
        bad("to", BLANK)
    elif not isinstance(to, str) or E164.fullmatch(to) is None:
        bad("to", INVALID)
    elif reject_sfx and to.endswith(reject_sfx):
        bad("to", UNREACHABLE)
    text = item.get("text")
    unicode = item.get("allowUnicode", False)
    if unicode is not None and not isinstance(unicode, bool):
        bad("allowUnicode", NOT_BOOL)
    if not isinstance(text, str) or not text.strip():
        bad("text", BLANK if text is None or isinstance(text, str) else INVALID)
    elif unicode is not True and not is_gsm7(text):
        bad("text", NEEDS_UNICODE)
    client_id = item.get("clientId")
    if client_id is not None:
        if not isinstance(client_id, str) or not client_id:
            bad("clientId", INVALID)
        elif len(client_id) > MAX_CLIENT_ID:
            bad("clientId", CLIENT_ID_TOO_LONG)
    return fields


class InstasentEmulator(Emulator):
    name = "instasent"
    # Instasent's 429 carries X-RateLimit-Reset, not Retry-After. The flag makes the pipeline hand `error`
    # the wait (as a Retry-After header), which `error` turns into the vendor's header.
    sends_retry_after = True
    default_knobs: ClassVar[Mapping[str, Any]] = {"rate_limit_rps": 5.0, "rate_limit_burst": 5}
    error_codes = ERROR_CODES
    dlr_route = "instasent"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._request_seq = 0  # not reset: ledger batch names stay unique for the life of the process
        self._senders: dict[int, str] = {}  # ledger position -> `from`, to echo a de-duplicated entity

    def reset(self) -> None:
        self._senders.clear()

    def routes(self) -> Sequence[BaseRoute]:
        return [self.endpoint("/transactional/v1/sms/bulk", self.bulk)]

    def message_id(self, seq: int) -> str:
        return f"{seq:024x}"

    def dlr_report(self, report: Report) -> dict[str, Any]:
        return {
            "id": report.message_id,
            "clientId": report.key,
            "status": DLR_STATUS[report.outcome.status],
            "errorCode": report.outcome.error_code,
            "updatedAt": report.at_iso,
        }

    def error(
        self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None
    ) -> Response:
        if status == 429:
            wait = int((headers or {}).get("Retry-After", "1"))
            return Response(
                b"",
                status_code=429,
                headers={
                    "X-RateLimit-Limit": str(self.faults.knobs(self.name).rate_limit_burst or 1),
                    "X-RateLimit-Remaining": "0",
                    "X-RateLimit-Reset": str(math.ceil(self.clock.time() + wait)),
                },
            )
        if status == 401:
            message = "Unauthorized"
        return json_response({"message": message}, status)

    def _entity(self, pos: int, allow_unicode: bool) -> dict[str, Any]:
        return {
            "id": self.ledger.message_id(pos),
            "clientId": self.ledger.key(pos),
            "from": self._senders.get(pos),
            "to": self.ledger.to(pos),
            "text": self.ledger.body(pos),
            "allowUnicode": allow_unicode,
            "status": "enqueued",
        }

    async def bulk(self, request: Request) -> Response:
        try:
            items = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            raise RequestRefused(400, "invalid_json", "Problems parsing JSON") from None
        if not isinstance(items, list):
            raise RequestRefused(400, "invalid_body", "Body should be a JSON array")
        if not items:
            raise RequestRefused(422, "empty", "At least 1 item is required")
        if len(items) > MAX_ITEMS:
            raise RequestRefused(
                413,
                "too_large",
                f"Request Too Large: at most {MAX_ITEMS} items per request, got {len(items)}",
            )

        self._request_seq += 1
        name = self.name
        ledger = self.ledger
        counters = ledger.counters(name)
        index = ledger.index(name)
        reject_sfx, _ = self.row_suffixes()
        add: Adder | None = None  # the request's ledger batch is opened with its first new message
        entities: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        for item in items:
            fields = item_errors(item, reject_sfx)
            if fields:
                counters.reject(f"{next(iter(fields))}:invalid")
                errors.append({"fields": fields})
                continue
            client_id = item.get("clientId")
            allow_unicode = item.get("allowUnicode") is True
            hit = index.get(client_id) if client_id is not None else None
            if hit is not None:
                counters.duplicates += 1
                entities.append(self._entity(hit, allow_unicode))
                continue
            if add is None:
                add = self.open_batch(f"bulk_{self._request_seq}", None, index)
            pos = add(item["to"], item["text"], client_id)
            self._senders[pos] = item["from"]
            entities.append(self._entity(pos, allow_unicode))
        return json_response({"entities": entities, "errors": errors}, 201)


EMULATOR = InstasentEmulator
