"""Postman (gov.sg) v2 batch send, as its vendor documents it (docs/providers/postman.md).

Wire format (the document's words in quotes):

    POST /campaigns/:campaignId/batch/messages            Authorization: Bearer <key>
    multipart/form-data, "The form field name must be file", holding a CSV:

        recipient,language,<template parameters...>
        6599999999,english,Emily Yeo,passport application #12345F

    201 {"isValid": true, "batchId": "batch_…"}
    400 {"code": "parameter_invalid",
         "message": "File too large, max file size is 40MB"
                  | "Validation failed (expected type is object)" | <a row error>}
    401 {"code": "invalid_api_key_provided" | "invalid_ip_address_error", …}
    429 {"code": "too_many_requests", "message": "Too many requests"}

Quirks this module handles, each from the document:

* `campaignId` is Postman's campaign, which holds the message template: smscast's `spec.template`. In body
  mode ("you may use a single {{body}} variable": `--template <campaignId>` with no `--template-var`) our
  rendered text goes out as a `body` column (capability `template_body`).
* "recipient column: Phone number with country code, without the + prefix": E.164 minus the `+`.
* "language column: Must be one of: english, chinese, malay, tamil": from the row's `language` column, else
  `spec.language`; lower-cased and checked before sending (`row_rules`).
* "Header row: … (lowercase letters, numbers, and _ only)": checked in `check_spec`.
* "All template parameters must be filled for every row": smscast's own validation already quarantines an
  empty template variable (`template_var_missing`) and an empty body (`body_missing`).
* "Max file size 40 MB": `max_rows` x `MAX_ROW_BYTES` (+ the header) stays under 40,000,000 bytes, the
  stricter reading of "40 MB"; a row that could break that budget is quarantined (`row_too_large`).
* "Test environment limit: 20 rows maximum": SMSCAST_POSTMAN_TEST_ENV=1, or a base URL on
  test.postman.gov.sg, lowers `max_rows` to 20.
* "Any errors in the CSV rows will cause the entire file upload to fail": a row-caused 400 is a
  `BatchRejectedError(retryable_split=True)` so the engine bisects; a header mismatch or an oversized file
  is not (no split fixes the header, and our plan never builds an oversized file).
* No idempotency key of any kind: `Idempotency.NONE`. The engine then records `unknown` after a read timeout
  and never re-sends blindly; this module keeps that promise by treating a 5xx that may come after the batch
  was created (500/502/504) as ambiguous, and an unreadable 201 likewise.
* "Default is 10 TPS per campaign, shared across all endpoints": `rate_per_second=10`. The document says
  nothing of Retry-After ("Implement exponential backoff"): the engine's bucket halves its rate per 429.
* Async outcome: 201 means "the batch was created", not delivered. Every row is `accepted` with
  `provider_batch_ref = "<campaignId>/<batchId>"`: Retrieve Batch Messages needs both ids and
  `lookup_status` receives nothing but the reference.

ASSUMED (the document names these endpoints without their shape; the shapes follow Postman v2's public API
reference, and sandbox/emulators/postman.py serves the same):

    GET  /campaigns/:campaignId/batch/:batchId/messages?limit=1000&after=<cursor>   (Retrieve Batch Messages)
    200 {"data": [{"id", "recipient", "language", "values", "latestStatus", "messageAttempts": [
                   {"status", "errorType", "errorCode"}], …}],
         "pageData": {"startCursor", "endCursor", "hasNextPage", "hasPreviousPage"}}
    POST /campaigns/:campaignId/batch/:batchId/retry     201, no body                 (Retry Batch Send)

Also ASSUMED: the JSON shape of error bodies (`code`, `message`, `statusCode`) and the message of a row error
(the document lists only the header and size messages; any other `parameter_invalid` is taken as row-caused);
a lookup of a batch Postman does not hold answers 404 `batch_not_found`; a message's `updatedAt` is when it
reached its latest status; and the reporting window (none is documented: 72 h).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from datetime import timedelta
from typing import Any, ClassVar, NoReturn
from urllib.parse import urlsplit

import httpx
import polars as pl

from smscast import transport
from smscast.campaign import CampaignSpec
from smscast.delivery import DeliveryStatus
from smscast.errors import (
    AmbiguousError,
    AuthError,
    BatchRejectedError,
    ConfigError,
    ServerError,
    TerminalError,
)
from smscast.providers.base import (
    Batch,
    BatchNotFoundError,
    Capabilities,
    Content,
    DeliveryChannel,
    Idempotency,
    OutcomeTiming,
    Pace,
    Provider,
    Refusal,
    Rejection,
    RowOutcome,
    RowRule,
    StatusLookup,
    json_body,
)
from smscast.providers.http import iso_time
from smscast.providers.postman_csv import (
    CELL_OVERHEAD,
    FIXED_CELLS_BYTES,
    HEADER_NAME,
    HEADER_RESERVE,
    LANGUAGES,
    MAX_FILE_BYTES,
    MAX_ROW_BYTES,
    MAX_ROWS,
    RESERVED_COLUMNS,
    body_mode,
    csv_bytes,
    csv_columns,
    language_expr,
)
from smscast.settings import ProviderSettings
from smscast.status import Status

CAMPAIGN_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")  # one URL path segment
TEST_ENV_MAX_ROWS = 20  # "20 rows maximum if you are in the test environment"
TEST_ENV_VAR = "SMSCAST_POSTMAN_TEST_ENV"
TEST_ENV_HOST = "test.postman.gov.sg"
LOOKUP_PAGE = 1000  # Retrieve Batch Messages: "limit … The maximum value is 1000"

# The two 400 messages the document attributes to the file as a whole, not to a row.
HEADER_MISMATCH = "Validation failed (expected type is object)"
FILE_TOO_LARGE = "File too large"


def campaign_id(spec: CampaignSpec) -> str | None:
    """Postman's campaign (which holds the template) is what smscast calls the provider template."""
    return spec.template


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def is_test_environment(base_url: str) -> bool:
    """The test environment caps a batch at 20 rows: opted into with SMSCAST_POSTMAN_TEST_ENV=1, and implied
    by Postman's own test host."""
    host = urlsplit(base_url).hostname or ""
    return _truthy(os.environ.get(TEST_ENV_VAR)) or host == TEST_ENV_HOST


class PostmanProvider(Provider):
    caps = Capabilities(
        name="postman",
        max_rows=MAX_ROWS,
        max_request_bytes=MAX_FILE_BYTES,
        rate_per_second=10.0,  # "Default is 10 TPS per campaign, shared across all endpoints"
        burst=1,
        concurrency=4,
        idempotency=Idempotency.NONE,  # no key of any kind in the document
        # "Any errors in the CSV rows will cause the entire file upload to fail"
        rejection=Rejection.WHOLE_BATCH,
        # "The response confirms the batch was created, but does not indicate delivery status"
        outcome=OutcomeTiming.ASYNC,
        content=Content.TEMPLATE,  # always a Postman campaign's template…
        template_body=True,  # …which may be the single {{body}} filled with our text
        request_timeout=120.0,  # a file of up to 40 MB goes up in the request
        default_base_url="https://postman.gov.sg/api/v2",
        # "Use the Retrieve Batch Messages endpoint to check the delivery status"; no webhook is documented.
        delivery_reports=frozenset({DeliveryChannel.LOOKUP}),
        report_window=timedelta(hours=72),  # ASSUMED: not documented; a common SMS validity period
        resend_fixes=frozenset({"telco_unreachable_recipient"}),
    )

    # latestStatus of a message (Postman v2 message statuses). Everything short of `failure` means Postman has
    # the message; `failure` is not charged and must be re-sent by hand ("Postman will not retry").
    STATES: ClassVar[Mapping[str, Status]] = {
        "created": Status.ACCEPTED,
        "enqueued": Status.ACCEPTED,
        "sending": Status.ACCEPTED,
        "sent": Status.ACCEPTED,
        "sent_to_telco": Status.ACCEPTED,
        "success": Status.ACCEPTED,
        "failure": Status.FAILED,
    }
    # latestStatus as delivery: `failure` is Postman's final word that the message did not arrive.
    DELIVERY_STATES: ClassVar[Mapping[str, DeliveryStatus]] = {
        **dict.fromkeys(("created", "enqueued", "sending", "sent", "sent_to_telco"), DeliveryStatus.PENDING),
        "success": DeliveryStatus.DELIVERED,
        "failure": DeliveryStatus.UNDELIVERED,
    }

    @classmethod
    def capabilities(cls, settings: ProviderSettings) -> Capabilities:
        if is_test_environment(settings.base_url):
            return dataclasses.replace(cls.caps, max_rows=TEST_ENV_MAX_ROWS)
        return cls.caps

    # ---- rules before sending ------------------------------------------------------------------------------

    def check_spec(self, spec: CampaignSpec) -> None:
        cid = campaign_id(spec)
        if cid is None:
            raise ConfigError(
                "postman needs the Postman campaign id: pass --template <campaignId>, with its template's "
                "parameters as --template-var, or with --body for a campaign whose template is {{body}}"
            )
        if not CAMPAIGN_ID.fullmatch(cid):
            raise ConfigError(f"postman: campaign id {cid!r} must be letters, digits, '_' or '-'")
        if spec.sender is not None:
            raise ConfigError("postman sends from the campaign's registered sender; drop --sender")
        if spec.language is not None and spec.language.strip().lower() not in LANGUAGES:
            raise ConfigError(
                f"postman: --language must be one of {', '.join(LANGUAGES)}, not {spec.language!r}"
            )
        if body_mode(spec):
            return
        for name in spec.template_vars:
            if name in RESERVED_COLUMNS:
                raise ConfigError(f"postman: {name!r} is a reserved column, not a template parameter")
            if not HEADER_NAME.fullmatch(name):
                raise ConfigError(
                    f"postman: template parameter {name!r} must be lowercase letters, digits and '_' only "
                    "(the CSV header must match the campaign's parameters exactly)"
                )
        header = ",".join(csv_columns(spec))
        if len(header.encode()) > HEADER_RESERVE:
            raise ConfigError("postman: too many template parameters for one CSV header")

    def row_rules(self, spec: CampaignSpec) -> list[RowRule]:
        rules = [
            RowRule(
                code="language_invalid",
                message=f"language must be one of {', '.join(LANGUAGES)} (the language column or --language)",
                valid=language_expr(spec).is_in(LANGUAGES),
            )
        ]
        params = csv_columns(spec)[2:]
        if params:
            size = pl.lit(FIXED_CELLS_BYTES + 2, pl.Int64)  # + CRLF
            for p in params:
                cell = pl.col(p).cast(pl.String).fill_null("")
                size = size + cell.str.len_bytes() + cell.str.count_matches('"', literal=True) + CELL_OVERHEAD
            rules.append(
                RowRule(
                    code="row_too_large",
                    message=f"the row's CSV cells exceed {MAX_ROW_BYTES} bytes (Postman's 40 MB file limit, "
                    f"shared by up to {MAX_ROWS} rows)",
                    valid=size <= MAX_ROW_BYTES,
                    columns=tuple(params),
                )
            )
        return rules

    # ---- the request ---------------------------------------------------------------------------------------

    def build_request(self, batch: Batch) -> httpx.Request:
        cid = campaign_id(batch.spec)
        if cid is None:
            raise ConfigError("postman: no campaign id (see check_spec)")
        data = csv_bytes(batch)
        if self.caps.max_request_bytes is not None and len(data) > self.caps.max_request_bytes:
            # Cannot happen within the row budget; if it does, nothing was sent and halves are smaller.
            raise BatchRejectedError(
                f"postman: the CSV would be {len(data)} bytes, over the 40 MB limit",
                code="file_too_large",
                retryable_split=True,
            )
        return httpx.Request(
            "POST",
            self.url(f"/campaigns/{cid}/batch/messages"),
            headers={"Authorization": f"Bearer {self.api_key()}"},
            files={"file": (f"{batch.batch_id}.csv", data, "text/csv")},
        )

    # ---- the response --------------------------------------------------------------------------------------

    def raise_for_refusal(self, response: httpx.Response, payload: Any) -> NoReturn:
        """Postman has no idempotency, so a 5xx that may have followed the creation of the batch (500, 502
        from a gateway, 504 timeout) is ambiguous: the engine records `unknown` rather than sending the file
        again. A 503 is an overloaded or paused service that processed nothing: retried. A 401 keeps
        Postman's code (a wrong key or a source IP not allowed)."""
        code = response.status_code
        if code == 401:
            err = _error(response)
            raise AuthError(f"postman: HTTP 401 {err[0]}, credentials or source IP refused", code=err[0])
        if code >= 500 and code != 503:
            raise AmbiguousError(
                f"postman: HTTP {code}; the batch may have been created", code=f"http_{code}"
            )
        super().raise_for_refusal(response, payload)

    def read_refusal(self, response: httpx.Response, payload: Any) -> Refusal:
        code, message = _error(response)
        split = (
            response.status_code == 400
            and code == "parameter_invalid"
            and not message.startswith(HEADER_MISMATCH)
            and not message.startswith(FILE_TOO_LARGE)
        )
        return Refusal(code, message, split)

    def read_outcomes(
        self, batch: Batch, response: httpx.Response, payload: Any
    ) -> list[RowOutcome | None] | None:
        if not isinstance(payload, dict):
            return None
        batch_id = payload.get("batchId")
        if payload.get("isValid") is False and not batch_id:
            # "Whether the CSV was valid and the batch was created": not created, so nothing went out.
            raise self.reject_batch(response, "csv_invalid", "isValid is false", split=True)
        status = response.status_code
        if status not in (200, 201) or payload.get("isValid") is not True or not isinstance(batch_id, str):
            raise AmbiguousError(
                f"postman: HTTP {status} without a valid batchId", code="unreadable_response"
            )
        outcome = RowOutcome(
            status=Status.ACCEPTED, provider_batch_ref=f"{campaign_id(batch.spec)}/{batch_id}"
        )
        return [outcome] * len(batch)

    # ---- reconciliation ------------------------------------------------------------------------------------

    async def lookup_status(
        self, client: httpx.AsyncClient, batch_ref: str, *, pace: Pace | None = None
    ) -> list[StatusLookup]:
        """Retrieve Batch Messages (shape ASSUMED, see the module docstring), every page."""
        cid, sep, bid = batch_ref.rpartition("/")
        if not sep or not cid or not bid:
            raise ConfigError(f"postman: batch reference {batch_ref!r} is not '<campaignId>/<batchId>'")
        out: list[StatusLookup] = []
        after: str | None = None
        while True:
            params: dict[str, str | int] = {"limit": LOOKUP_PAGE}
            if after:
                params["after"] = after
            request = client.build_request(
                "GET",
                self.url(f"/campaigns/{cid}/batch/{bid}/messages"),
                headers={"Authorization": f"Bearer {self.api_key()}"},
                params=params,
            )
            if pace is not None:
                await pace()  # "10 TPS per campaign, shared across all endpoints": every page counts
            response = await transport.send(client, request, self.caps.name)
            self.raise_for_transport_status(response)
            if response.status_code >= 400:
                code, message = _error(response)
                error = BatchNotFoundError if code == "batch_not_found" else TerminalError
                raise error(
                    f"postman: batch lookup refused (HTTP {response.status_code}, {code}): {message}",
                    code=code,
                )
            payload = json_body(response)
            if not isinstance(payload, dict) or not isinstance(payload.get("data"), list):
                raise ServerError("postman: unreadable batch lookup response", code="unreadable_response")
            out.extend(self._lookup(m) for m in payload["data"] if isinstance(m, dict))
            page = payload.get("pageData") or {}
            after = page.get("endCursor") if isinstance(page, dict) else None
            if not (isinstance(page, dict) and page.get("hasNextPage") and after):
                return out

    def _lookup(self, message: dict[str, Any]) -> StatusLookup:
        latest = str(message.get("latestStatus"))
        attempts = message.get("messageAttempts") or message.get("attempts") or []
        error_code = error_type = None
        if isinstance(attempts, list) and attempts and isinstance(attempts[-1], dict):
            last = attempts[-1]
            nested = last.get("error")
            error_code = last.get("errorCode") or (nested.get("code") if isinstance(nested, dict) else None)
            error_type = last.get("errorType")
        delivery = self.delivery_state(latest)
        failed = latest == "failure"
        final = delivery is not None and delivery is not DeliveryStatus.PENDING
        return StatusLookup(
            phone="+" + str(message.get("recipient", "")),
            status=self.state_status(latest),
            provider_status=latest,
            provider_message_id=message.get("id"),
            error_code=error_code if failed else None,
            delivery_status=delivery,
            reported_at=iso_time(message.get("updatedAt")) if final else None,
            error_message=str(error_type) if failed and error_type else None,
        )


def _error(response: httpx.Response) -> tuple[str, str]:
    """(code, message) of a Postman error body; tolerant of the exact field names (their shape is ASSUMED)."""
    payload = json_body(response)
    if not isinstance(payload, dict):
        return f"http_{response.status_code}", ""
    code = (
        payload.get("code")
        or payload.get("errorCode")
        or payload.get("error")
        or f"http_{response.status_code}"
    )
    message = payload.get("message") or ""
    if isinstance(message, list):  # NestJS validation pipes answer a list of messages
        message = "; ".join(map(str, message))
    return str(code), str(message)


ADAPTER = PostmanProvider
