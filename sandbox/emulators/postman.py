"""Postman (gov.sg) v2 batch send, as Postman documents it (docs/providers/postman.md) (the adapter
is providers/postman.py).

    POST /campaigns/{campaignId}/batch/messages          Authorization: Bearer <key>
         multipart/form-data, the CSV in the form field `file`
    201  {"isValid": true, "batchId": "batch_<uuid>"}
    400  {"code": "parameter_invalid", "message": …, "statusCode": 400}   the whole file is refused:
           "File too large, max file size is 40MB"          the file is over 40 MB (40 MiB here)
           "Validation failed (expected type is object)"    no `file` field, or the header is not
                                                            recipient,language,<the campaign's parameters>
           "Validation failed: row 3: …; row 9: …"          any row error (ASSUMED wording; the document only
                                                            says that a row error fails the whole file)
           "Test environment limit exceeded, max 20 rows"   test environment only (ASSUMED wording)
    401  {"code": "invalid_api_key_provided", "message": "The API key provided is invalid."}
    429  {"code": "too_many_requests", "message": "Too many requests"}   no Retry-After: the document only
         says "Implement exponential backoff". 10 requests per second per campaign (`rate_scope`), the
         document's default; raise it with the `rate_limit_rps` knob (provider "postman").

Row rules, checked for every row before anything is created: as many cells as header names; `recipient` is
digits only with the country code and no `+` (7-15 digits, no leading 0); `language` is english, chinese,
malay or tamil (all four are configured for every campaign here); every template parameter is filled. Header
names are lowercase letters, digits and `_`, the first two are `recipient` and `language`. A campaign's
template parameters are the header of the first upload with a well-formed header (as if the campaign had
been created in the portal with them); a later upload with other parameters is a header mismatch.

Deterministic triggers for tests:
* `reject_suffixes` knob: a recipient ending in one of them is a row error, so the WHOLE file is refused
  (400 parameter_invalid), as the document says of any row error.
* `transient_suffixes` knob: the row is accepted (ledger: `undelivered`), but Retrieve Batch Messages
  reports it `failure` (errorType server_error, errorCode server_unknown_error); Retry Batch Send retries it.
* a header that is not the campaign's (or not lowercase) gives the header-mismatch 400.
* Test environment: the same API under `/test` (base URL `http://host:port/test`) refuses more than 20 rows.

No idempotency: the document has none, so sending the same file twice creates two batches and two ledger
entries per recipient (exactly what the adapter's Idempotency.NONE declares). Ledger entries: provider
`postman`, batch = the batchId, batch_key and key null (nothing to carry them), `to` = +recipient, body = the
`body` cell when the campaign is a single {{body}} template, else the parameter values as JSON.

ASSUMED (named by the document, shapes from Postman v2's public API reference; the adapter uses the same):

    GET  /campaigns/{campaignId}/batch/{batchId}/messages?limit=1..1000&after=<cursor>&search=<digits>
    200  {"data": [{"id", "recipient", "language", "values", "latestStatus", "campaignId", "batchId",
                    "numAttempts", "messageAttempts": [{"status", "errorType", "errorCode"}] (the latest
                    attempt), "createdAt", "updatedAt"}],
          "pageData": {"startCursor", "endCursor", "hasNextPage", "hasPreviousPage"}}
    404  {"code": "batch_not_found", …}
    POST /campaigns/{campaignId}/batch/{batchId}/retry   201 with no body;
         400 batch_not_found_or_is_not_retryable or no_failed_batch_messages_to_retry. Failed messages (at
         most 3 retries each) are sent again under their own ids: no new ledger entry.

Lookups are not counted against the rate limit here (the framework keeps fault knobs off status lookups).

`latestStatus` follows each message's delivery truth (sandbox/truth.py), final `dlr_delay_ms` after the
send (or the retry) on the sandbox clock:

    sent_to_telco  pending: handed on, no final word yet
    success        final: delivered
    failure        final: not delivered. errorType server_error / errorCode server_unknown_error (the
                   `transient_suffixes` knob), or errorType telco_error with one of ERROR_CODES (the
                   `undelivered_share` knob; codes ASSUMED). Retry Batch Send retries either kind; a retried
                   message gets a fresh outcome (the hash of its id and attempt number).
"""

from __future__ import annotations

import csv
import io
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from smscast.sandbox.callbacks import iso
from smscast.sandbox.framework import Emulator, RequestRefused, json_response
from smscast.sandbox.truth import DELIVERED_STATUS, PENDING_STATUS, UNDELIVERED_STATUS, Outcome

MAX_FILE_BYTES = 40 * 1024 * 1024  # "40 MB" read as multer/NestJS limits are written: 40 * 1024 * 1024
TEST_ENV_MAX_ROWS = 20
MAX_RETRIES = 3  # Retry Batch Send: "Maximum 3 retry attempts per message"
LANGUAGES = frozenset({"english", "chinese", "malay", "tamil"})
HEADER_NAME = re.compile(r"[a-z0-9_]+", re.ASCII)
RECIPIENT = re.compile(r"[1-9][0-9]{6,14}", re.ASCII)
BOUNDARY = re.compile(r'boundary="?([^";]+)"?', re.IGNORECASE)
DISPOSITION_NAME = re.compile(rb'\bname="([^"]*)"', re.IGNORECASE)

HEADER_MISMATCH = "Validation failed (expected type is object)"
FILE_TOO_LARGE = "File too large, max file size is 40MB"
TEST_ENV_LIMIT = f"Test environment limit exceeded, max {TEST_ENV_MAX_ROWS} rows"
MAX_ROW_ERRORS_SHOWN = 10
SERVER_FAILURE = Outcome(UNDELIVERED_STATUS, "server_unknown_error", "Postman could not send the message")
# Why a message was not delivered: errorType telco_error (ASSUMED codes).
ERROR_CODES = (
    ("telco_unreachable_recipient", "The recipient's handset could not be reached"),
    ("telco_invalid_recipient", "The number is not in service"),
    ("telco_rejected", "The telco rejected the message"),
)
LATEST_STATUS = {PENDING_STATUS: "sent_to_telco", DELIVERED_STATUS: "success"}  # anything else: failure

# The framework's generic codes, in Postman's words.
_VENDOR_ERRORS: dict[str, tuple[str, str]] = {
    "unauthorized": ("invalid_api_key_provided", "The API key provided is invalid."),
    "rate_limited": ("too_many_requests", "Too many requests"),
}


@dataclass
class _Message:
    pos: int  # ledger position (message id, recipient and delivery truth live there)
    language: str
    values: dict[str, str]
    created_at: str
    attempts: int = 1
    updated_at: str = ""


@dataclass
class _Batch:
    campaign: str
    messages: list[_Message]


def _bad_request(message: str) -> RequestRefused:
    return RequestRefused(400, "parameter_invalid", message)


def file_part(content_type: str, body: bytes) -> bytes | None:
    """The content of the multipart part named `file`, or None. A small parser: the sandbox has no
    python-multipart, and the whole body is in memory already."""
    if not content_type.lower().startswith("multipart/form-data"):
        return None
    m = BOUNDARY.search(content_type)
    if m is None:
        return None
    delimiter = b"--" + m.group(1).encode("latin-1")
    for part in body.split(delimiter)[1:]:
        if part.startswith(b"--"):  # the closing delimiter
            break
        head, sep, content = part.partition(b"\r\n\r\n")
        if not sep:
            continue
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-disposition:"):
                name = DISPOSITION_NAME.search(line)
                if name is not None and name.group(1) == b"file":
                    return content[:-2] if content.endswith(b"\r\n") else content
    return None


class PostmanEmulator(Emulator):
    name = "postman"
    sends_retry_after = False  # the document mentions no Retry-After
    # "Default is 10 TPS per campaign, shared across all endpoints."
    default_knobs: ClassVar[Mapping[str, Any]] = {"rate_limit_rps": 10.0, "rate_limit_burst": 10}
    error_codes = ERROR_CODES

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._batch_seq = 0  # not reset: batch ids stay unique for the life of the process
        self._campaign_params: dict[str, tuple[str, ...]] = {}
        self._batches: dict[str, _Batch] = {}

    def reset(self) -> None:
        self._campaign_params.clear()
        self._batches.clear()

    def routes(self) -> Sequence[BaseRoute]:
        routes: list[BaseRoute] = []
        for prefix, test_env in (("", False), ("/test", True)):

            async def send(request: Request, test_env: bool = test_env) -> Response:
                return await self.batch_send(request, test_env=test_env)

            routes += [
                self.endpoint(f"{prefix}/campaigns/{{campaignId}}/batch/messages", send),
                self.endpoint(
                    f"{prefix}/campaigns/{{campaignId}}/batch/{{batchId}}/messages",
                    self.batch_messages,
                    methods=("GET",),
                    faults=False,
                ),
                self.endpoint(f"{prefix}/campaigns/{{campaignId}}/batch/{{batchId}}/retry", self.batch_retry),
            ]
        return routes

    def message_id(self, seq: int) -> str:
        return f"message_{uuid.UUID(int=seq)}"

    def error(
        self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None
    ) -> Response:
        code, message = _VENDOR_ERRORS.get(code, (code, message))
        return json_response({"code": code, "message": message, "statusCode": status}, status, headers)

    def rate_scope(self, request: Request) -> str:
        return str(request.path_params.get("campaignId", ""))  # "10 TPS per campaign"

    # ---- Batch send ----------------------------------------------------------------------------------------

    async def batch_send(self, request: Request, *, test_env: bool) -> Response:
        campaign = str(request.path_params["campaignId"])
        data = file_part(request.headers.get("content-type", ""), await request.body())
        if data is None:
            raise _bad_request(HEADER_MISMATCH)
        if len(data) > MAX_FILE_BYTES:
            raise _bad_request(FILE_TOO_LARGE)
        try:
            text = data.decode("utf-8-sig")  # Excel saves "CSV UTF-8" with a byte order mark
        except UnicodeDecodeError:
            raise _bad_request(HEADER_MISMATCH) from None
        records = [r for r in csv.reader(io.StringIO(text, newline="")) if any(cell for cell in r)]
        if not records:
            raise _bad_request(HEADER_MISMATCH)
        header, rows = records[0], records[1:]
        params = self._check_header(campaign, header)
        if not rows:
            raise _bad_request("Validation failed: the CSV has no rows")
        if test_env and len(rows) > TEST_ENV_MAX_ROWS:
            raise _bad_request(TEST_ENV_LIMIT)

        counters = self.ledger.counters(self.name)
        reject_sfx, transient_sfx = self.row_suffixes()
        errors: list[str] = []
        for n, row in enumerate(rows, start=1):
            problem = self._row_problem(row, header, params, reject_sfx)
            if problem is not None:
                errors.append(f"row {n}: {problem}")
        if errors:
            # "Any errors in the CSV rows will cause the entire file upload to fail."
            counters.reject("parameter_invalid", len(errors))
            shown = "; ".join(errors[:MAX_ROW_ERRORS_SHOWN])
            more = len(errors) - MAX_ROW_ERRORS_SHOWN
            raise _bad_request(f"Validation failed: {shown}" + (f" (and {more} more)" if more > 0 else ""))

        self._batch_seq += 1
        batch_id = f"batch_{uuid.UUID(int=self._batch_seq)}"
        add = self.open_batch(batch_id)
        body_mode = params == ("body",)
        messages: list[_Message] = []
        created_at = self.clock.iso()
        for row in rows:
            recipient, language = row[0], row[1]
            values = dict(zip(params, row[2:], strict=True))
            body = values["body"] if body_mode else orjson.dumps(values, option=orjson.OPT_SORT_KEYS).decode()
            pos = add(f"+{recipient}", body, None)
            if transient_sfx and recipient.endswith(transient_sfx):
                self.ledger.set_outcome(pos, SERVER_FAILURE)
            messages.append(_Message(pos, language, values, created_at))
        self._batches[batch_id] = _Batch(campaign, messages)
        return json_response({"isValid": True, "batchId": batch_id}, 201)

    def _check_header(self, campaign: str, header: list[str]) -> tuple[str, ...]:
        """The template parameters named by a well-formed header; a header mismatch otherwise."""
        if (
            len(header) < 2
            or header[0] != "recipient"
            or header[1] != "language"
            or len(set(header)) != len(header)
            or not all(HEADER_NAME.fullmatch(h) for h in header)
        ):
            raise _bad_request(HEADER_MISMATCH)
        params = tuple(header[2:])
        known = self._campaign_params.setdefault(campaign, params)
        if set(known) != set(params):
            raise _bad_request(HEADER_MISMATCH)
        return params

    @staticmethod
    def _row_problem(
        row: list[str], header: list[str], params: tuple[str, ...], reject_sfx: tuple[str, ...]
    ) -> str | None:
        if len(row) != len(header):
            return f"expected {len(header)} columns, found {len(row)}"
        recipient, language = row[0], row[1]
        if RECIPIENT.fullmatch(recipient) is None:
            return "recipient must be a phone number with country code, digits only, without the + prefix"
        if reject_sfx and recipient.endswith(reject_sfx):
            return f"recipient {recipient} is not a valid mobile number"
        if language not in LANGUAGES:
            return "language must be one of english, chinese, malay, tamil"
        for name, value in zip(params, row[2:], strict=True):
            if not value.strip():
                return f"{name} is required"
        return None

    # ---- Retrieve Batch Messages (ASSUMED shape) -----------------------------------------------------------

    def _batch(self, request: Request) -> tuple[str, _Batch] | None:
        batch_id = str(request.path_params["batchId"])
        found = self._batches.get(batch_id)
        if found is None or found.campaign != request.path_params["campaignId"]:
            return None
        return batch_id, found

    def _latest(self, m: _Message, now: float) -> tuple[str, str | None, str | None]:
        """(latestStatus, errorType, errorCode) of a message at `now`."""
        outcome = self.ledger.state(m.pos, now)
        status = LATEST_STATUS.get(outcome.status, "failure")
        if status != "failure":
            return status, None, None
        kind = "server_error" if outcome.error_code == SERVER_FAILURE.error_code else "telco_error"
        return status, kind, outcome.error_code

    def _message_object(self, batch_id: str, batch: _Batch, m: _Message, now: float) -> dict[str, Any]:
        status, error_type, error_code = self._latest(m, now)
        attempt = {"status": status, "errorType": error_type, "errorCode": error_code}
        due = self.ledger.due(m.pos)
        return {
            "createdAt": m.created_at,
            "updatedAt": iso(due) if now >= due else (m.updated_at or m.created_at),
            "id": self.ledger.message_id(m.pos),
            "recipient": self.ledger.to(m.pos).removeprefix("+"),
            "values": m.values,
            "language": m.language,
            "latestStatus": status,
            "campaignId": batch.campaign,
            "batchId": batch_id,
            "numAttempts": m.attempts,
            "messageAttempts": [attempt],
        }

    async def batch_messages(self, request: Request) -> Response:
        found = self._batch(request)
        if found is None:
            raise RequestRefused(404, "batch_not_found", "Batch not found")
        batch_id, batch = found
        q = request.query_params
        try:
            limit = int(q.get("limit", ""))
        except ValueError:
            limit = 0
        if not 1 <= limit <= 1000:
            raise _bad_request("limit must be a number from 1 to 1000")
        messages = batch.messages
        search = q.get("search")
        if search:
            messages = [m for m in messages if search in self.ledger.to(m.pos)]
        ids = [self.ledger.message_id(m.pos) for m in messages]
        start = 0
        after = q.get("after")
        if after:
            start = ids.index(after) + 1 if after in ids else len(ids)
        page = messages[start : start + limit]
        now = self.clock.time()
        data = [self._message_object(batch_id, batch, m, now) for m in page]
        return json_response(
            {
                "data": data,
                "pageData": {
                    "startCursor": data[0]["id"] if data else None,
                    "endCursor": data[-1]["id"] if data else None,
                    "hasNextPage": start + limit < len(messages),
                    "hasPreviousPage": start > 0,
                },
            }
        )

    # ---- Retry Batch Send (ASSUMED shape) ------------------------------------------------------------------

    async def batch_retry(self, request: Request) -> Response:
        found = self._batch(request)
        if found is None:
            raise RequestRefused(
                400,
                "batch_not_found_or_is_not_retryable",
                "Batch cannot be retried as it does not exist or is currently not retryable.",
            )
        _, batch = found
        now = self.clock.time()
        retryable = [
            m for m in batch.messages if m.attempts <= MAX_RETRIES and self._latest(m, now)[0] == "failure"
        ]
        if not retryable:
            raise RequestRefused(
                400,
                "no_failed_batch_messages_to_retry",
                "Batch cannot be retried as either all messages are successful or all failed messages have "
                "exceeded the maximum number of attempts.",
            )
        stamp, knobs = self.clock.iso(), self.faults.knobs(self.name)
        due, fate = now + knobs.dlr_delay_ms / 1000, self.fate(knobs)
        for m in retryable:
            m.attempts += 1
            m.updated_at = stamp
            # Still failing while the knob says so; otherwise the retry gets a fresh outcome.
            if self.row_fault(self.ledger.to(m.pos)) == "transient":
                outcome = SERVER_FAILURE
            else:
                outcome = fate(self.ledger.message_id(m.pos), salt=str(m.attempts))
            self.ledger.set_outcome(m.pos, outcome, due)
        return Response(b"", status_code=201)


EMULATOR = PostmanEmulator
