"""sent.dm v3 batch sends (docs/providers/sent-dm.md).

Wire format, as the document shows it:

    POST https://api.sent.dm/v3/messages
    x-api-key: <key>          Idempotency-Key: <batch key>
    {"to": ["+1234567890", ...up to 1000], "template": {"id": "tmpl_announcement",
     "parameters": {"announcement": "New feature launched!"}}, "channel": ["sms"]}

    200 {"success": true,
         "data": {"status": "QUEUED", "template_id": "…", "template_name": "…",
                  "recipients": [{"message_id": "msg_001", "to": "+1234567890", "channel": "sms"}, ...]},
         "error": null, "meta": {"request_id": "req_batch_001", "timestamp": "…", "version": "v3"}}

Quirks that shape this module:

* Templates only. Every example sends `template: {id, parameters}`; the document shows no free-text body,
  so `check_spec` requires `--template` (the sent.dm template id).
* The template and its parameters belong to the REQUEST and are shared by all its recipients, so a batch
  may only carry rows whose template variables are equal: `batch_group_keys` returns the template_vars
  columns and the plan batches each distinct combination separately.
* No sender field in the request: sent.dm sends from the account's own configuration, so a `--sender`
  would be silently ignored; `check_spec` refuses it instead.
* Per-recipient outcome by omission. The response lists the recipients it accepted, each with a
  `message_id`; the document's "Always Handle Partial Failures" practice reads a shorter list as "Some
  recipients were rejected" (its sandbox-mode check). There is no per-recipient error code, so a row
  missing from `data.recipients` is `rejected` with our code `recipient_rejected` (not `unknown`: the
  answer is explicit about what it accepted, and a re-send of the same request would replay the same
  answer under the same Idempotency-Key). Outcomes are matched to rows by `to`: phones are unique in a
  campaign (validation quarantines duplicates), and the response carries no index. A listed recipient
  without a `message_id` but with an `error` of its own (not in the document) is `rejected` with its code.
* Idempotency is one key per request, in the `Idempotency-Key` header ("Send via Idempotency-Key header,
  not request body"). We send the plan's batch key. sent.dm's idempotency reference (docs.sent.dm, API
  reference → Idempotency; not part of the shared document) allows 1–255 characters of [A-Za-z0-9_-] and
  caches the first response for 24 h. Our keys (`scb-<hex>`, bisected `scb-<hex>-L-R`) already fit;
  `idempotency_key` guards the alphabet and length anyway.
* Rate limit: "Each POST /v3/messages call counts as one request toward the 200 req/min limit, regardless
  of how many recipients are included" (the "10 for sensitive endpoints" of the limits table are other
  endpoints). 429s carry `retry-after` (the document's backoff example reads that header).
* Errors use sent.dm's envelope `{"success": false, "data": null, "error": {"code", "message", "details",
  "doc_url"}, "meta": {…}}` (docs.sent.dm Error Handling reference): AUTH_* 401/403, VALIDATION_001 400
  with field-level `details`. Which whole-request refusals a split can fix is decided from those details
  (a refusal naming `to` is caused by some recipient). 422 for a key re-used with a different request and
  404 for an unknown template are ASSUMED shapes in that envelope (see sandbox/emulators/sent_dm.py).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import timedelta
from typing import Any, ClassVar

import httpx
import polars as pl

from smscast.campaign import CampaignSpec
from smscast.errors import AmbiguousError, BatchRejectedError, ConfigError
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
    RowRule,
    json_request,
)
from smscast.status import Status

PATH = "/v3/messages"
MAX_RECIPIENTS = 1000  # "Send the same message to up to 1000 recipients in one request"
CHANNEL = ["sms"]  # the document's channels are sms and whatsapp; smscast sends SMS only
REJECTED_CODE = "recipient_rejected"  # ours: sent.dm omits a refused recipient and gives no code
_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def idempotency_key(batch_key: str) -> str:
    """The header value for a batch key: sent.dm accepts [A-Za-z0-9_-]{1,255}."""
    return _KEY_UNSAFE.sub("_", batch_key)[:255]


def _digits(phone: str) -> str:
    # Match on digits only, in case the answer spells the number differently ("+1 234…" or "1234…").
    return "".join(c for c in phone if c.isdigit())


class SentDmProvider(Provider):
    caps = Capabilities(
        name="sent-dm",
        max_rows=MAX_RECIPIENTS,
        min_rows=1,
        max_body_chars=None,  # sent.dm renders its own templates; we send no text
        rate_per_second=200 / 60,  # "200 requests … 1 minute", counted per request
        burst=20,  # the window allows 200 at once; a smaller burst leaves room for other clients
        concurrency=4,  # ~3.3 requests/s needs few in flight
        idempotency=Idempotency.HEADER,
        rejection=Rejection.PER_ROW,  # refused recipients are left out of `data.recipients`
        outcome=OutcomeTiming.SYNC,  # a message_id per accepted recipient; delivery is webhooks' business
        content=Content.TEMPLATE,
        sender_required=False,
        request_timeout=30.0,
        default_base_url="https://api.sent.dm",
        # "Subscribe to webhooks for delivery status": no lookup is documented. Window ASSUMED (none given).
        delivery_reports=frozenset({DeliveryChannel.WEBHOOK}),
        report_window=timedelta(hours=72),
        resend_fixes=frozenset({"DELIVERY_001"}),  # recipient handset unreachable
    )

    # data.status of a 200: the batch-level state of the recipients it lists (each with a message id). An
    # unlisted state is `unknown` for them: they have messages, whose fate we cannot read.
    STATES: ClassVar[Mapping[str, Status]] = {
        "QUEUED": Status.ACCEPTED,
        "ACCEPTED": Status.ACCEPTED,
        "PROCESSING": Status.ACCEPTED,
        "SENT": Status.ACCEPTED,
        "DELIVERED": Status.ACCEPTED,
        "REJECTED": Status.REJECTED,
    }
    # Ours, for a recipient left out of data.recipients ("Some recipients were rejected"); any code a
    # recipient entry carries itself is `rejected` too (Provider.refusal_status).
    REFUSALS: ClassVar[Mapping[str, Status]] = {REJECTED_CODE: Status.REJECTED}

    # ---- campaign-level rules -----------------------------------------------------------------------------

    def check_spec(self, spec: CampaignSpec) -> None:
        if not spec.template:
            # The document shows no free-text body: every send names a template and its parameters.
            raise ConfigError(
                "sent-dm sends templates only: pass --template <sent.dm template id> (and --template-var "
                "for each parameter column); a --body or body column cannot be sent"
            )
        if spec.sender:
            raise ConfigError(
                "sent-dm takes no sender in the request (it sends from your account's configuration); "
                "drop --sender"
            )

    def batch_group_keys(self, spec: CampaignSpec) -> list[pl.Expr]:
        # One template + parameters per request: rows of a batch must agree on every parameter value.
        return [pl.col(var).cast(pl.String) for var in spec.template_vars]

    def row_rules(self, spec: CampaignSpec) -> list[RowRule]:
        # The request has no scheduling and no media: sending such rows now, as plain template SMS, would
        # not be what the campaign asked for.
        return [
            RowRule(
                "send_at_unsupported",
                "sent-dm cannot schedule messages (no send_at in its API); remove send_at or send it later",
                pl.col("send_at").is_null() | (pl.col("send_at").str.strip_chars() == ""),
                columns=("send_at",),
            ),
            RowRule(
                "media_unsupported",
                "sent-dm sends SMS templates here; a media_url cannot be attached",
                pl.col("media_url").is_null() | (pl.col("media_url").str.strip_chars() == ""),
                columns=("media_url",),
            ),
        ]

    # ---- the wire ---------------------------------------------------------------------------------------

    def parameters(self, batch: Batch) -> dict[str, str]:
        names = batch.spec.template_vars
        if not names:
            return {}
        values = batch.rows.select([pl.col(n).cast(pl.String) for n in names])
        if values.unique().height > 1:
            # The plan groups by these columns, so this means the batch was built elsewhere. Bisection
            # (split=True) turns it into requests that each share one set of parameters.
            raise BatchRejectedError(
                "sent-dm: rows of one request must share the template parameters",
                code="template_parameters_differ",
                retryable_split=True,
            )
        first = values.row(0, named=True)
        return {n: "" if first[n] is None else str(first[n]) for n in names}

    def build_request(self, batch: Batch) -> httpx.Request:
        template = batch.spec.template
        if not template:
            raise ConfigError("sent-dm needs a template id")
        payload = {
            "to": batch.rows.get_column("phone").to_list(),
            "template": {"id": template, "parameters": self.parameters(batch)},
            "channel": CHANNEL,
        }
        return json_request(
            "POST",
            self.url(PATH),
            payload,
            {
                "x-api-key": self.api_key(),
                "Idempotency-Key": idempotency_key(batch.batch_key),
                "Accept": "application/json",
            },
        )

    def read_refusal(self, response: httpx.Response, payload: Any) -> Refusal:
        err = payload.get("error") if isinstance(payload, dict) else None
        err = err if isinstance(err, dict) else {}
        # A 409 is sent.dm's "Resource conflict … concurrent modification": the same Idempotency-Key is still
        # being processed, so the request may be accepted; `http_refusal` makes it ambiguous (re-sent with
        # the same key). Any other refusal leaves the request's recipients `rejected`.
        split, rows = _blamed_recipients(err.get("details"))
        return Refusal(str(err.get("code") or "") or None, str(err.get("message") or ""), split, rows)

    def read_outcomes(
        self, batch: Batch, response: httpx.Response, payload: Any
    ) -> list[RowOutcome | None] | None:
        if not isinstance(payload, dict):
            return None
        if payload.get("success") is False:
            # A 2xx carrying an error envelope: the request was refused as a whole.
            self.raise_for_refusal(response, payload)
        data = payload.get("data")
        recipients = data.get("recipients") if isinstance(data, dict) else None
        if not isinstance(data, dict) or not isinstance(recipients, list):
            raise AmbiguousError("sent-dm: 2xx response without data.recipients", code="unreadable_response")
        meta = payload.get("meta")
        request_id = meta.get("request_id") if isinstance(meta, dict) else None
        ref = str(request_id) if request_id is not None else None
        raw_status = data.get("status")
        # Listed recipients were accepted (they have message ids); the batch status says how far along.
        code = str(raw_status).upper() if raw_status is not None else "QUEUED"
        listed_status = self.state_status(code)

        by_phone: dict[str, Mapping[str, Any]] = {}
        for item in recipients:
            if isinstance(item, dict) and isinstance(item.get("to"), str):
                by_phone.setdefault(_digits(item["to"]), item)
        outcomes: list[RowOutcome | None] = []
        for phone in batch.rows.get_column("phone").to_list():
            item = by_phone.get(_digits(str(phone)))
            if item is None:
                outcomes.append(
                    self.refused(
                        REJECTED_CODE,
                        "sent.dm left this recipient out of data.recipients (the document's 'Some "
                        "recipients were rejected'); it gives no reason",
                        provider_batch_ref=ref,
                    )
                )
                continue
            message_id = item.get("message_id")
            refusal = _recipient_error(item) if message_id is None else None
            if refusal is not None:
                outcomes.append(self.refused(*refusal, provider_batch_ref=ref))
                continue
            accepted = listed_status is Status.ACCEPTED
            outcomes.append(
                RowOutcome(
                    listed_status,
                    error_code=None if accepted else code,
                    error_message=None if accepted else f"sent.dm batch status {code}",
                    provider_message_id=str(message_id) if message_id is not None else None,
                    provider_batch_ref=ref,
                )
            )
        return outcomes


def _recipient_error(item: Mapping[str, Any]) -> tuple[str, str | None] | None:
    """(code, message) of a listed recipient that has no message id but an error of its own. The document
    shows none; should sent.dm answer one, in its error object's shape `{code, message}` (or a bare code),
    the recipient was refused, not accepted and not `unknown`."""
    error = item.get("error")
    if isinstance(error, dict) and error.get("code"):
        message = error.get("message")
        return str(error["code"]), None if message is None else str(message)
    if isinstance(error, str) and error:
        return error, None
    return None


def _blamed_recipients(details: Any) -> tuple[bool, tuple[int, ...]]:
    """Whether field-level `details` blame the `to` list (a bad recipient refuses the whole request), and the
    positions they name (`to[3]`). Template, channel or key problems are the same for every part of the batch.
    sent.dm refuses per row otherwise (Rejection.PER_ROW): with the rows named, the engine sends the others at
    once instead of bisecting."""
    if isinstance(details, dict):
        fields = [str(k) for k in details]
        fields += [str(v.get("field")) for v in details.values() if isinstance(v, dict) and "field" in v]
    elif isinstance(details, list):
        fields = [str(d.get("field", "")) for d in details if isinstance(d, dict)]
    else:
        return False, ()
    blamed = any(f == "to" or f.startswith(("to[", "to.")) for f in fields)
    named = sorted({int(m.group(1)) for f in fields if (m := _TO_INDEX.fullmatch(f))})
    return blamed, tuple(named)


_TO_INDEX = re.compile(r"to\[(\d+)\]")


ADAPTER = SentDmProvider
