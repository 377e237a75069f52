"""Instasent Transactional API bulk send, as its vendor documents it (docs/providers/instasent.md).

Wire format:

    POST /transactional/v1/sms/bulk                  Authorization: Bearer <api_sms token>
    [{"from": "Instasent", "to": "+34600000001", "text": "Hello one", "allowUnicode": false,
      "clientId": "sc-…"}, ...]                      a top-level JSON array, 1-100 items

    201 {"entities": [{"id": "…", "clientId": "sc-…", "from", "to", "text", "status", …}, ...],
         "errors":   [{"fields": {"to": ["This value is not valid"]}}, ...]}

Quirks this module handles, each from the document:

* "a JSON **array** of items as the body — there is no wrapper object" (pitfall #1: "Wrapping it breaks
  validation").
* "Items per request 1 – 100": `max_rows=100`. Over it the answer is "413 Request Entity Too Large or 422":
  our plan never builds such a request, so either is a planning bug on our side, not a row problem, and the
  batch is refused without a split.
* `from`: "3–14 characters — up to 11 alphanumeric chars or up to 14 digits": `check_spec`.
* `clientId`: "Your own reference (≤40 chars). Must be unique per SMS": our per-row idempotency key
  (`sc-` + 24 hex, 27 characters, stable per campaign and recipient). Instasent de-duplicates on it, so a
  re-send after a timeout cannot text anyone twice: `Idempotency.CLIENT_ID`.
* `allowUnicode`: "Defaults to false. Set to true if the text may contain non-GSM-7 characters": true exactly
  for the rows validation counted as UCS-2 (the `encoding` column), so GSM-7 texts keep 160-character
  segments.
* "errors — one object per rejected item … The order mirrors the input array position of the rejected
  items", and carries no index. Accepted entities are matched to rows by the `clientId` they echo; the rows
  without an entity are the refused ones, and the errors are given to them in input order. When the counts do
  not add up, the rows we cannot place are never silently accepted nor lost: `unknown` if an entity is not
  matched to a row (it may be one of them), else `failed` (every accepted message is accounted for, so they
  were not accepted; a re-send with the same clientIds gets each its own answer).
* Per-field messages become `error_code` (`to:invalid`, `text:needs_unicode`, …) and `error_message`; every
  refused item is `rejected`, whatever its field or message.
* A 201 "does not mean every item was accepted": each row's status comes from the two arrays, never from the
  HTTP status.

ASSUMED (the document points at pages it does not include):
* Rate limit: "See Rate limits". Instasent's public rate-limit page speaks of a per-organisation,
  per-endpoint request-per-minute window and a 429 with an empty body and `X-RateLimit-Reset` (a Unix time)
  instead of Retry-After. We declare a conservative 5 requests per second (300 per minute) and read
  X-RateLimit-Reset (or Retry-After, should it come) as the wait.
* A clientId Instasent has seen before: answered with the existing message in `entities` (which the sandbox
  does). Should it instead come back as an error on the `clientId` field saying the value is already used,
  the row is taken as accepted earlier (`clientId:duplicate`), since our clientIds are unique per recipient.
* 402 Payment Required (out of balance, from Instasent's errors page) stops the campaign like a refused
  credential: every later batch would be refused too, and the unsent rows stay `failed` for a retry once the
  account is topped up.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from datetime import timedelta
from typing import Any, ClassVar, NoReturn

import httpx

from smscast.campaign import CampaignSpec
from smscast.encoding import UCS2_ENCODING, is_gsm7
from smscast.errors import AuthError, ConfigError
from smscast.providers.base import (
    Batch,
    Capabilities,
    Content,
    DeliveryChannel,
    Idempotency,
    OutcomeTiming,
    Provider,
    Refusal,
    Rejection,
    RowOutcome,
    retry_after,
)
from smscast.status import Status

MAX_ITEMS = 100
MAX_CLIENT_ID = 40
SENDER_PATTERN = (
    r"[A-Za-z0-9]{3,11}|[0-9]{3,14}"  # "3–14 characters — up to 11 alphanumeric or up to 14 digits"
)
SENDER = re.compile(SENDER_PATTERN, re.ASCII)
MAX_RESET_WAIT = 120.0  # seconds; an X-RateLimit-Reset further away than this is a clock problem, not a wait


class InstasentProvider(Provider):
    caps = Capabilities(
        name="instasent",
        max_rows=MAX_ITEMS,  # "Items per request 1 – 100"
        # The document gives no body limit. Without one a 10 MB body would be billed as ~66,000 segments:
        # 10 segments is our guard (1530 GSM-7 / 670 UCS-2 characters), not Instasent's rule.
        max_segments=10,
        min_rows=1,
        rate_per_second=5.0,  # ASSUMED: the document defers to a rate-limit page it does not include
        burst=1,
        concurrency=4,
        idempotency=Idempotency.CLIENT_ID,
        # "The invalid item lands in errors; the rest of the batch still goes through"
        rejection=Rejection.PER_ROW,
        outcome=OutcomeTiming.SYNC,  # each accepted entity carries its own id
        content=Content.BODY,
        sender_required=True,  # `from`: required
        sender_pattern=SENDER_PATTERN,
        request_timeout=30.0,
        default_base_url="https://api.instasent.com",  # + the document's full path, /transactional/v1/…
        # "Delivery status arrives on the webhook": one DLR per status transition, echoing our clientId.
        # Window ASSUMED: the document links a DLR page it does not include.
        delivery_reports=frozenset({DeliveryChannel.WEBHOOK}),
        report_window=timedelta(hours=72),
        resend_fixes=frozenset({"ABSENT_SUBSCRIBER"}),  # switched off or out of coverage
    )

    # A message's `status`, on an entity or a DLR (Instasent's DLR status list; `enqueued` ASSUMED for a fresh
    # entity). Entities are accepted messages by the document's definition, so an entity whose status is
    # absent or not in this table is still accepted; the table only turns a known negative status into ours.
    STATES: ClassVar[Mapping[str, Status]] = {
        "enqueued": Status.ACCEPTED,
        "sent": Status.ACCEPTED,
        "accepted": Status.ACCEPTED,
        "buffered": Status.ACCEPTED,
        "delivered": Status.ACCEPTED,
        # Re-sending with the same clientId returns this same message, so none of these is worth a retry.
        "error": Status.REJECTED,
        "failed": Status.REJECTED,
        "expired": Status.REJECTED,
        "canceled": Status.REJECTED,
        "rejected": Status.REJECTED,
        "unknown": Status.UNKNOWN,
    }

    def check_spec(self, spec: CampaignSpec) -> None:
        if spec.template is not None:
            raise ConfigError("instasent sends text, it has no provider-side templates: use --body")
        if not spec.sender:
            raise ConfigError("instasent needs a sender (`from`): pass --sender")
        if not SENDER.fullmatch(spec.sender):
            raise ConfigError(
                f"instasent: sender {spec.sender!r} must be 3-11 letters and digits, or 3-14 digits "
                "(Instasent's `from`)"
            )

    # ---- the request ---------------------------------------------------------------------------------------

    def build_request(self, batch: Batch) -> httpx.Request:
        rows = batch.rows
        if "encoding" in rows.columns:
            unicode = [e == UCS2_ENCODING for e in rows.get_column("encoding").to_list()]
        else:
            unicode = [not is_gsm7(b or "") for b in rows.get_column("body").to_list()]
        sender = batch.spec.sender
        items = [
            {"from": sender, "to": to, "text": text, "allowUnicode": uni, "clientId": key}
            for (to, text, key), uni in zip(
                rows.select("phone", "body", "idempotency_key").iter_rows(), unicode, strict=True
            )
        ]
        return httpx.Request(
            "POST",
            self.url("/transactional/v1/sms/bulk"),
            headers={"Authorization": f"Bearer {self.api_key()}"},
            json=items,  # the array itself: "there is no wrapper object"
        )

    # ---- the response --------------------------------------------------------------------------------------

    def raise_for_refusal(self, response: httpx.Response, payload: Any) -> NoReturn:
        if response.status_code == 402:
            raise AuthError("instasent: HTTP 402, the account is out of balance", code="http_402")
        # 400 malformed body, 413/422 too many items (our plan never sends more than 100), 404: no split can
        # fix any of them (`read_refusal`).
        super().raise_for_refusal(response, payload)

    def read_refusal(self, response: httpx.Response, payload: Any) -> Refusal:
        message = str(payload.get("message", "")) if isinstance(payload, dict) else ""
        return Refusal(None, message)

    def wait(self, response: httpx.Response) -> float | None:
        return _wait(response)

    def read_outcomes(
        self, batch: Batch, response: httpx.Response, payload: Any
    ) -> list[RowOutcome | None] | None:
        # A 201 "does not mean every item was accepted": each row's status comes from the two arrays.
        if (
            not isinstance(payload, dict)
            or not isinstance(payload.get("entities"), list)
            or not isinstance(payload.get("errors", []), list)
        ):
            # A 2xx we cannot read: the items may well be queued; clientIds make the engine's re-send safe.
            return None
        return self.outcomes(batch, payload["entities"], payload.get("errors") or [])

    def outcomes(self, batch: Batch, entities: list[Any], errors: list[Any]) -> list[RowOutcome | None]:
        keys: list[str] = batch.rows.get_column("idempotency_key").to_list()
        by_key = {e.get("clientId"): e for e in entities if isinstance(e, dict) and e.get("clientId")}
        out: list[RowOutcome | None] = [None] * len(keys)
        refused: list[int] = []
        for i, key in enumerate(keys):
            entity = by_key.get(key)
            if entity is None:
                refused.append(i)
                continue
            provider_status = entity.get("status")
            mapped = self.STATES.get(provider_status) if isinstance(provider_status, str) else None
            final = mapped or Status.ACCEPTED
            out[i] = RowOutcome(
                status=final,
                error_code=None if final is Status.ACCEPTED else str(provider_status),
                provider_message_id=None if entity.get("id") is None else str(entity.get("id")),
            )
        matched = len(keys) - len(refused)
        counted = f"{len(entities)} entities ({matched} matched by clientId) and {len(errors)} errors"
        if len(entities) != matched:
            # An entity that is not matched to our rows (no clientId, or another one) may be one of these
            # rows, accepted: this row's fate cannot be told.
            for i in refused:
                out[i] = RowOutcome(
                    Status.UNKNOWN, "response_mismatch", f"{counted} for {len(keys)} items; fate unknown"
                )
        elif len(errors) == len(refused):
            # Errors follow the input order of the rejected items.
            for i, err in zip(refused, errors, strict=True):
                out[i] = self.row_error(err)
        else:
            # Every accepted message is accounted for, so these rows were not accepted; but which error is
            # whose cannot be told. Not accepted and clientId-keyed: `failed`, a re-send is harmless and
            # gets each row its own answer.
            for i in refused:
                out[i] = RowOutcome(
                    Status.FAILED,
                    "response_mismatch",
                    f"{counted} for {len(keys)} items: not accepted, but which error is this row's is unclear",
                )
        return out

    def row_error(self, err: Any) -> RowOutcome:
        """One `errors` item -> a rejected row with `field:kind` codes and the provider's own messages (an
        item without `fields` but with a `code` keeps that code)."""
        fields = err.get("fields") if isinstance(err, dict) else None
        if not isinstance(fields, dict) or not fields:
            code = err.get("code") if isinstance(err, dict) else None
            if isinstance(code, str | int) and not isinstance(code, bool) and str(code):
                message = err.get("message")
                return self.refused(str(code), None if message is None else str(message)[:500])
            return self.refused("item:invalid", str(err)[:500])
        codes: list[str] = []
        messages: list[str] = []
        for name, raw in fields.items():
            texts = [str(t) for t in raw] if isinstance(raw, list) else [str(raw)]
            codes.append(f"{name}:{_kind(' '.join(texts))}")
            messages.append(f"{name}: {'; '.join(texts)}")
        code = ";".join(codes)
        if codes == ["clientId:duplicate"]:
            # ASSUMED fallback (module docstring): the message exists already under this clientId.
            return RowOutcome(Status.ACCEPTED, code, "; ".join(messages))
        return self.refused(code, "; ".join(messages))


def _kind(message: str) -> str:
    """A short machine-readable kind for a validation message (Symfony-style texts such as "This value is not
    valid", "This value should not be blank")."""
    m = message.lower()
    if "blank" in m or "required" in m or "missing" in m or "null" in m:
        return "missing"
    if "already" in m or "unique" in m or "duplicate" in m:
        return "duplicate"
    if "gsm" in m or "unicode" in m:
        return "needs_unicode"
    if "too long" in m or "or less" in m:
        return "too_long"
    if "too short" in m or "or more" in m:
        return "too_short"
    return "invalid"


def _wait(response: httpx.Response) -> float | None:
    """Seconds to wait after a 429: Retry-After if sent, else Instasent's X-RateLimit-Reset (a Unix time)."""
    wait = retry_after(response)
    if wait is not None:
        return wait
    raw = response.headers.get("x-ratelimit-reset")
    try:
        reset = float(raw) if raw is not None else None
    except ValueError:
        return None
    if reset is None:
        return None
    return min(MAX_RESET_WAIT, max(0.0, reset - time.time()))


ADAPTER = InstasentProvider
