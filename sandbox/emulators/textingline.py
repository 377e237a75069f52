"""textingline's batch API, as textingline documents it (docs/providers/textingline.md) (adapter:
providers/textingline.py).

    POST /api/v1/messaging/batch          Authorization: Basic base64(key_id:secret)
    {"from": "+18005559876", "idempotencyKey": "…",
     "recipients": [{"to": "+1…", "body": "…", "mediaUrl": "https://…", "idempotencyKey": "…"}, …]}

    201 {"id": "brc_…", "from": "…", "totalRecipients": n, "status": "queued", "createdAt": "…Z"}
    4xx {"code": 33xxx, "message": "…", "status": <http>, "moreInfo": "…"}

    GET /api/v1/messaging/batch/{id}      ASSUMED: the doc names a batch status but shows no endpoint
    200 {"id", "from", "totalRecipients", "status": "completed", "createdAt",
         "recipients": [{"to", "idempotencyKey", "messageId", "status", "errorCode"}]}   (request order;
         a `duplicate` also has "messageStatus", "messageErrorCode": the state of the message it names)
    404 {"code": 33404, …}                ASSUMED code (the vendor's reference shows none for "not found")

Credentials: the configured key is `key_id:secret`; a key without a colon (the sandbox's default
`sandbox-key`) is accepted as `<key>:<key>`, i.e. `SMSCAST_TEXTINGLINE_API_KEY=sandbox-key:sandbox-key`.

Whole-request refusals, checked in this order (the error body and its HTTP statuses are ASSUMED from the
vendor's Error Codes page: the batch doc shows codes, not bodies):

    33005 400  body not JSON / not an object, `from` or `recipients` missing; and, ASSUMED (the doc gives no
               code): 10-5,000 recipients, body > 640 characters, mediaUrl not http(s), an idempotency key
               not 2-100 of [A-Za-z0-9:@-_()], SMS and MMS recipients mixed ("not yet supported")
    33003 400  `from` not E.164 or a 5-6 digit short code, a `to` not E.164
    33004 403  `from` not assigned to the account: the magic sender +15005550004
    33024 400  a recipient without body or mediaUrl, or a phone twice in the batch
    33016 400  a body with invalid characters: C0 controls other than tab/LF/CR, DEL, C1 controls
    33019 400  compliance: any body containing the marker SHAFT-TEST (case-sensitive) refuses the whole
               batch. This is the deterministic trigger for tests of bisection.
    33012 429  daily messaging quota reached: the magic sender +15005550012 (no Retry-After: not a rate limit)
    33023 402  insufficient credits: the magic sender +15005550023 (HTTP status ASSUMED)
    33001 401 / 33002 429 (+ Retry-After) / 33000 5xx   from the framework (auth, rate limit, injected faults)

A refused request records nothing and does not consume its keys ("failed sends do not consume the key").

Idempotency, both levels: a repeated batch `idempotencyKey` answers the original job (same id, same body,
whatever the new payload) and creates nothing; a recipient `idempotencyKey` seen before creates no ledger
entry — the job lists that recipient as `duplicate` with the original message id. Without a batch key the
batch is never de-duplicated as a whole (the doc: "no dedup protection without an explicit key").

Rate limit: 5 requests per minute ("The batch endpoint allows 5 requests per minute"), a token bucket of 5 at
5/60 per second: the 6th request within a minute gets 429 with `Retry-After` (the vendor sends one) in whole
seconds until the next token, about 12. Raise it with the `rate_limit_rps` / `rate_limit_burst` knobs. The
status lookup is not rate limited and ignores the fault knobs.

Per-recipient outcomes are asynchronous, decided when the job is created (sandbox/truth.py) and reported by
the status lookup from `dlr_delay_ms` after it on (sandbox clock). Per-recipient `status` (ASSUMED names):

    queued       the job has not processed the recipient yet (only one it will fail itself, see below)
    sent         handed to the carrier, no final word yet: pending
    delivered    final: the handset has it
    undelivered  final, with errorCode: 33010 (recipient blocked: the `reject_suffixes` knob), or one of
                 ERROR_CODES 33030-33032 (the `undelivered_share` knob; codes ASSUMED)
    failed       final, errorCode 33007 ("message send failed", retry): the `transient_suffixes` knob
                 (a ledger message), or the job failed the recipient itself (`async_reject_share`)
    duplicate    a recipient key seen before: no new message; messageId is the earlier one

Every recipient the job sent is in the ledger (its delivery_status `undelivered`, code 33007, for a
`transient_suffixes` failure). The `async_reject_share` knob makes the job fail that share of a queued job's
recipients itself, never sending them: no ledger message, no messageId, `queued` then `failed` 33007. Their
idempotencyKey is not consumed ("failed sends do not consume the key"): the recipient key is what stops a
duplicate across batches, and only a message the job sent takes it, so a re-send of such a recipient in a
new batch is a new message. Re-sending under the SAME batch idempotencyKey replays the original job instead
(batch-level idempotency), so a re-send must come in a batch with a key of its own.
"""

from __future__ import annotations

import re
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from smscast.sandbox.auth import BasicAuth
from smscast.sandbox.framework import Emulator, RequestRefused, SandboxState, json_response, read_json
from smscast.sandbox.idempotency import fingerprint
from smscast.sandbox.ledger import Adder
from smscast.sandbox.truth import DELIVERED_STATUS, PENDING_STATUS, UNDELIVERED_STATUS, Outcome, chance

BATCH_PATH = "/api/v1/messaging/batch"
MIN_RECIPIENTS = 10
MAX_RECIPIENTS = 5000
MAX_BODY_CHARS = 640
MORE_INFO = "https://docs.smsfactory.com/docs/error-codes"
COMPLIANCE_MARKER = "SHAFT-TEST"
UNASSIGNED_SENDER = "+15005550004"
QUOTA_SENDER = "+15005550012"
NO_CREDIT_SENDER = "+15005550023"
NOT_FOUND = 33404  # ASSUMED
SEND_FAILED = "33007"  # "message send failed": transient, the lookup's `failed`
BLOCKED = Outcome(UNDELIVERED_STATUS, "33010", "Recipient blocked")
TRANSIENT = Outcome(UNDELIVERED_STATUS, SEND_FAILED, "Message send failed, retry the request")
# Why a message was not delivered (ASSUMED codes, next to the vendor's 330xx).
ERROR_CODES = (
    ("33030", "Unreachable destination handset"),
    ("33031", "Unknown destination handset"),
    ("33032", "Message filtered by the carrier"),
)
ASYNC_FAILED = -(1 << 62)  # the slot of a recipient the job failed itself: no ledger message

E164 = re.compile(r"\+[1-9]\d{6,14}", re.ASCII)
SENDER = re.compile(r"\+[1-9]\d{6,14}|\d{5,6}", re.ASCII)
INVALID_CHARS = re.compile(r"[\x00-\x08\x0B\x0C\x0E-\x1F\x7F-\x9F]")
KEY = re.compile(r"[A-Za-z0-9:@\-_()]{2,100}", re.ASCII)
MEDIA_URL = re.compile(r"https?://[^\s/]+\S*", re.ASCII | re.IGNORECASE)

# The framework's codes for the refusals it answers itself -> the vendor's (Error Codes page).
FRAMEWORK_CODES: dict[str, tuple[int, str]] = {
    "unauthorized": (33001, "Authentication failed"),
    "rate_limited": (33002, "Rate limit exceeded"),
    "invalid_json": (33005, "Request body is not valid JSON"),
    "service_unavailable": (33000, "An unexpected error occurred"),
}


@dataclass
class Job:
    """An accepted batch, for the status lookup. `slots[i]` is the ledger position of recipient i,
    -(position + 1) of the earlier entry a repeated recipient key points at, or ASYNC_FAILED."""

    id: str
    sender: str
    created_at: str
    due: float  # when the job's recipients reach their final state (sandbox clock)
    slots: array[int] = field(default_factory=lambda: array("q"))
    repeated_to: dict[int, str] = field(default_factory=dict)  # recipient index -> `to` of a repeated key
    failed: dict[int, tuple[str, str | None]] = field(
        default_factory=dict
    )  # index -> (to, key): ASYNC_FAILED

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "from": self.sender,
            "totalRecipients": len(self.slots),
            "status": "queued",
            "createdAt": self.created_at,
        }


class TextinglineEmulator(Emulator):
    name = "textingline"
    auth = BasicAuth()
    sends_retry_after = True  # "a 429 response is returned with a Retry-After header" (API reference)
    default_knobs: ClassVar[Mapping[str, Any]] = {"rate_limit_rps": 5 / 60, "rate_limit_burst": 5}
    error_codes = ERROR_CODES

    def __init__(self, state: SandboxState) -> None:
        super().__init__(state)
        if ":" not in self.api_key:
            self.api_key = f"{self.api_key}:{self.api_key}"
        self._batch_seq = 0  # not reset: batch ids stay unique for the life of the process
        self._jobs: dict[str, Job] = {}
        self._async_failed = 0  # recipients failed by their job (the async_reject_share knob)

    def reset(self) -> None:
        self._jobs.clear()
        self._async_failed = 0

    def stats(self) -> dict[str, Any]:
        return {"async_rejected": self._async_failed}

    def routes(self) -> Sequence[BaseRoute]:
        return [
            self.endpoint(BATCH_PATH, self.send_batch),
            self.endpoint(f"{BATCH_PATH}/{{batch_id}}", self.batch_status, methods=("GET",), faults=False),
        ]

    def message_id(self, seq: int) -> str:
        return f"msg_{seq:022d}"

    def error(
        self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None
    ) -> Response:
        if code.isdigit():
            vendor = int(code)
        else:
            vendor, message = FRAMEWORK_CODES.get(code, (33000, message))
        body = {"code": vendor, "message": message, "status": status, "moreInfo": MORE_INFO}
        return json_response(body, status, headers)

    # ---- POST /api/v1/messaging/batch --------------------------------------------------------------

    def _refuse(self, status: int, code: int, message: str, rows: int = 0) -> RequestRefused:
        if rows:
            self.ledger.counters(self.name).reject(str(code), rows)
        return RequestRefused(status, str(code), message)

    async def send_batch(self, request: Request) -> Response:
        payload = await read_json(request)
        if not isinstance(payload, dict):
            raise self._refuse(400, 33005, "the request body must be a JSON object")
        batch_key = payload.get("idempotencyKey")
        if batch_key is not None and not (isinstance(batch_key, str) and KEY.fullmatch(batch_key)):
            raise self._refuse(400, 33005, "idempotencyKey: 2-100 letters, digits or : @ - _ ( )")
        name = self.name
        if batch_key is not None:
            stored = self.idempotency.get(name, batch_key)
            if stored is not None:
                # The original job, whatever this request carries: nothing is created.
                self.ledger.counters(name).duplicates += len(payload.get("recipients") or ())
                return stored.replay()

        sender = payload.get("from")
        if not isinstance(sender, str) or not sender:
            raise self._refuse(400, 33005, "from is required")
        if not SENDER.fullmatch(sender):
            raise self._refuse(400, 33003, "from must be an E.164 number or a 5-6 digit short code")
        recipients = payload.get("recipients")
        if not isinstance(recipients, list):
            raise self._refuse(400, 33005, "recipients is required and must be an array")
        n = len(recipients)
        if sender == UNASSIGNED_SENDER:
            raise self._refuse(403, 33004, "The sender number is not assigned to this account", n)
        if not MIN_RECIPIENTS <= n <= MAX_RECIPIENTS:
            raise self._refuse(
                400,
                33005,
                f"recipients must contain between {MIN_RECIPIENTS} and {MAX_RECIPIENTS} entries",
                n,
            )
        self._validate(recipients)
        if sender == QUOTA_SENDER:
            raise self._refuse(429, 33012, "Daily messaging quota reached", n)
        if sender == NO_CREDIT_SENDER:
            raise self._refuse(402, 33023, "Insufficient credits", n)

        job = self._accept(sender, batch_key, recipients)
        response = json_response(job.public(), 201)
        if batch_key is not None:
            # Only a successful send consumes the key (vendor API reference).
            self.idempotency.put(name, batch_key, fingerprint(await request.body()), response)
        return response

    def _validate(self, recipients: list[Any]) -> None:
        """Whole-batch validation: the first problem refuses the request (nothing is recorded)."""
        n = len(recipients)
        seen: set[str] = set()
        kinds: set[bool] = set()  # True for MMS
        compliance: int | None = None
        for i, r in enumerate(recipients):
            if type(r) is not dict:
                raise self._refuse(400, 33005, f"recipients[{i}] must be an object", n)
            to = r.get("to")
            if type(to) is not str or E164.fullmatch(to) is None:
                raise self._refuse(400, 33003, f"recipients[{i}].to is not a valid E.164 phone number", n)
            body, media = r.get("body"), r.get("mediaUrl")
            if (body is not None and type(body) is not str) or (media is not None and type(media) is not str):
                raise self._refuse(400, 33005, f"recipients[{i}]: body and mediaUrl must be strings", n)
            if not body and not media:
                raise self._refuse(400, 33024, f"recipients[{i}] must have a body or a mediaUrl", n)
            if body:
                if len(body) > MAX_BODY_CHARS:
                    raise self._refuse(
                        400, 33005, f"recipients[{i}].body must be at most {MAX_BODY_CHARS} characters", n
                    )
                if INVALID_CHARS.search(body):
                    raise self._refuse(400, 33016, f"recipients[{i}].body contains invalid characters", n)
                if compliance is None and COMPLIANCE_MARKER in body:
                    compliance = i
            if media and not MEDIA_URL.fullmatch(media):
                raise self._refuse(400, 33005, f"recipients[{i}].mediaUrl must be a public http(s) URL", n)
            key = r.get("idempotencyKey")
            if key is not None and not (type(key) is str and KEY.fullmatch(key)):
                raise self._refuse(
                    400, 33005, f"recipients[{i}].idempotencyKey: 2-100 letters, digits or : @ - _ ( )", n
                )
            if to in seen:
                raise self._refuse(400, 33024, "recipients must not contain duplicate phone numbers", n)
            seen.add(to)
            kinds.add(bool(media))
        if len(kinds) > 1:
            raise self._refuse(
                400, 33005, "mixed SMS and MMS recipients in a single batch is not yet supported", n
            )
        if compliance is not None:
            raise self._refuse(
                400, 33019, f"recipients[{compliance}].body violates messaging compliance rules (SHAFT)", n
            )

    def _accept(self, sender: str, batch_key: str | None, recipients: list[dict[str, Any]]) -> Job:
        self._batch_seq += 1
        knobs = self.faults.knobs(self.name)
        now = self.clock.time()
        job = Job(f"brc_{self._batch_seq:022d}", sender, self.clock.iso(), now + knobs.dlr_delay_ms / 1000)
        ledger = self.ledger
        counters = ledger.counters(self.name)
        index = ledger.index(self.name)
        reject_sfx, transient_sfx = self.row_suffixes()
        seed, reject_share = knobs.seed or 0, knobs.async_reject_share
        add: Adder | None = None  # the ledger batch is opened with the first recipient the job sends
        slots = job.slots
        for i, r in enumerate(recipients):
            key, to = r.get("idempotencyKey"), r["to"]
            hit = index.get(key) if key is not None else None
            if hit is not None:
                counters.duplicates += 1
                slots.append(-(hit + 1))
                job.repeated_to[i] = to
                continue
            if chance(seed, reject_share, "async", job.id, str(i)):
                # Never sent: no ledger message, and the key stays free for a re-send.
                slots.append(ASYNC_FAILED)
                job.failed[i] = (to, key)
                self._async_failed += 1
                continue
            if add is None:
                add = self.open_batch(job.id, batch_key, index)
            pos = add(to, r.get("body") or None, key)
            slots.append(pos)
            if reject_sfx and to.endswith(reject_sfx):
                ledger.set_outcome(pos, BLOCKED)
            elif transient_sfx and to.endswith(transient_sfx):
                ledger.set_outcome(pos, TRANSIENT)
        self._jobs[job.id] = job
        return job

    # ---- GET /api/v1/messaging/batch/{id} (ASSUMED) -------------------------------------------------

    async def batch_status(self, request: Request) -> Response:
        job = self._jobs.get(request.path_params["batch_id"])
        if job is None:
            raise RequestRefused(404, str(NOT_FOUND), "Batch not found")
        ledger = self.ledger
        now = self.clock.time()
        items: list[dict[str, Any]] = []
        for i, slot in enumerate(job.slots):
            if slot == ASYNC_FAILED:
                to, key = job.failed[i]
                final = now >= job.due
                status, error = ("failed", int(SEND_FAILED)) if final else ("queued", None)
                items.append(
                    {"to": to, "idempotencyKey": key, "messageId": None, "status": status, "errorCode": error}
                )
                continue
            pos = slot if slot >= 0 else -slot - 1
            status, error = _state(ledger.state(pos, now))
            item = {
                "to": job.repeated_to[i] if slot < 0 else ledger.to(pos),
                "idempotencyKey": ledger.key(pos),
                "messageId": ledger.message_id(pos),
                "status": status,
                "errorCode": error,
            }
            if slot < 0:
                item.update(status="duplicate", errorCode=None, messageStatus=status, messageErrorCode=error)
            items.append(item)
        return json_response({**job.public(), "status": "completed", "recipients": items})


def _state(outcome: Outcome) -> tuple[str, int | None]:
    """The lookup's (status, errorCode) of a ledger message's state."""
    if outcome.status == PENDING_STATUS:
        return "sent", None
    if outcome.status == DELIVERED_STATUS:
        return "delivered", None
    code = None if outcome.error_code is None else int(outcome.error_code)
    return ("failed" if outcome.error_code == SEND_FAILED else "undelivered"), code


EMULATOR = TextinglineEmulator
