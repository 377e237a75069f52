"""robase batch sends (docs/providers/robase.md has the facts and the vendor's page).

Wire format, as the document shows it:

    POST https://api.robase.dev/v1/sms/batch
    Authorization: Bearer rb_live_…
    {"from": "SHUTTLERS",
     "messages": [{"to": "+2348012345678", "body": "Hi Chidi…", "idempotency_key": "trip-1-sms"}, …],
     "send_at": "2026-05-01T08:00:00.000Z"}                                   (send_at optional)
    or, with a shared template:  {"from", "template": "ride-reminder",
                                  "messages": [{"to", "variables": {…}, "idempotency_key"}, …]}

    200 {"accepted": 2, "failed": 1, "success": false,
         "data": [{"index": 0, "sms": {"id": "…", "status": "queued", …}},
                  {"index": 1, "error": {"type": "phone_invalid", "message": "…", "field": "to"}}, …]}

Quirks that shape this module:

* "Batch always returns HTTP 200 — even when some rows fail": per-row outcomes come from `data[]` by
  `index`; `success` and the counts are conveniences we do not rely on. A row the answer does not mention
  is `unknown` (sent, no word on it) — safe to re-send thanks to its per-row key.
* Per-row idempotency: "Each message can carry its own idempotency_key, scoped per row … retries are
  safe". We send the plan's row key (stable per campaign + recipient), so any re-send — after a timeout, a
  5xx (robase's own 60 s request timeout can cut a batch half-way), or by the retry flow — answers the
  first message instead of texting twice.
* Limits: "Max rows per call 1000", "Max body per row 1600 chars" (checked at validation through
  `max_body_chars`; chars are code points, as our `chars` column counts them), "Request timeout 60 s"
  (our client waits a little longer, so that robase's own timeout answer reaches us).
* `send_at` is batch-level ("Schedule every message in the batch for the same time"), so batches are
  grouped by the `send_at` column when the source has one; values must be ISO 8601 with a time zone (the
  document sends `toISOString()`), checked before sending.
* Templates: "a shared template at the batch level, override variables per row" — `--template` is sent
  once per batch, each row carries its `variables`.
* `from` is in every example, the minimal one included: `check_spec` requires a sender.
* Rate: "Rate limits count each batch call as 1 request", and the document's chunking loop waits 250 ms
  ("4 batches/s"): 4 requests per second. The document says nothing of 429; the emulator answers 429
  with Retry-After (ASSUMED), and without one the engine waits a token's time.
* Error `type`s: the document names `phone_invalid` only. The others, the whole-request refusals (401,
  422 `batch_too_large`, …) and their body `{"success": false, "error": {type, message, field}}` are
  ASSUMED, in the shape of the per-row error object (see sandbox/emulators/robase.py). A row with an
  `error` of a type we do not list is `rejected` with that type and message, never `unknown`: robase said
  it did not take the row, and no sms exists for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import httpx
import polars as pl

from smscast.campaign import CampaignSpec
from smscast.errors import BatchRejectedError, ConfigError
from smscast.providers.base import (
    Batch,
    Capabilities,
    Content,
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

PATH = "/v1/sms/batch"
MAX_ROWS = 1000
MAX_BODY_CHARS = 1600
# ISO 8601 date-time with a zone (Z or ±hh[:]mm), as `new Date(…).toISOString()` writes it.
SEND_AT_PATTERN = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}:?\d{2})$"
# Whole-request refusals that a split fixes: too many rows for one call.
SPLITTABLE = frozenset({"batch_too_large"})


def send_at_group() -> pl.Expr:
    """The batch's send_at (stripped, empty = none), or null when the source has no send_at column:
    `^send_at$` selects the column when it exists and nothing otherwise, and coalesce fills in the null."""
    return pl.coalesce(
        pl.col("^send_at$").cast(pl.String).str.strip_chars().replace("", None), pl.lit(None, pl.String)
    )


class RobaseProvider(Provider):
    caps = Capabilities(
        name="robase",
        max_rows=MAX_ROWS,
        min_rows=1,
        max_body_chars=MAX_BODY_CHARS,
        rate_per_second=4.0,  # "4 batches/s"; each batch call counts as 1 request
        burst=1,  # the document paces calls evenly (250 ms apart) rather than in bursts
        concurrency=8,  # a 1000-row call can take seconds; 4/s needs several in flight
        idempotency=Idempotency.ROW,
        rejection=Rejection.PER_ROW,
        outcome=OutcomeTiming.SYNC,
        content=Content.EITHER,
        sender_required=True,
        request_timeout=65.0,  # robase's own request timeout is 60 s
        default_base_url="https://api.robase.dev",
        # The document names no webhook and no status lookup: nothing reports delivery (delivery_reports
        # empty), so reconciliation leaves robase's rows as sent.
    )

    # sms.status of a row robase created an sms for. Another status: unknown (the sms exists, its fate is
    # not readable), never lost: the row's key makes a re-send answer this same sms.
    STATES: ClassVar[Mapping[str, Status]] = {
        "queued": Status.ACCEPTED,
        "scheduled": Status.ACCEPTED,  # accepted with a send_at
        "sending": Status.ACCEPTED,
        "sent": Status.ACCEPTED,
        "delivered": Status.ACCEPTED,
        "failed": Status.REJECTED,  # an sms that exists but already failed: robase will not retry it
        "undelivered": Status.REJECTED,
    }

    # error.type of a refused row (or of a refused request). The document names only phone_invalid, and a
    # real account answers more (phone_blocked, opted_out, country_not_supported, …): any type not listed
    # here is `rejected` with robase's type and message, since robase said it did not take the row.
    REFUSALS: ClassVar[Mapping[str, Status]] = {
        # Permanent: the same row would be refused again.
        "phone_invalid": Status.REJECTED,  # the document's own example
        "body_required": Status.REJECTED,
        "body_too_long": Status.REJECTED,
        "template_not_found": Status.REJECTED,
        "variables_invalid": Status.REJECTED,
        "idempotency_key_invalid": Status.REJECTED,
        "idempotency_key_conflict": Status.REJECTED,  # our key already names a different message
        "validation_error": Status.REJECTED,
        # Transient: nothing was created for the row (no sms object), so a re-send — with the same key —
        # cannot duplicate, and the cause (a carrier route down, a hiccup inside robase, an empty balance
        # being topped up) goes away by itself or by the account owner's hand.
        "carrier_unavailable": Status.FAILED,
        "internal_error": Status.FAILED,
        "insufficient_balance": Status.FAILED,
    }

    # ---- campaign-level rules -----------------------------------------------------------------------------

    def check_spec(self, spec: CampaignSpec) -> None:
        if not spec.sender or not spec.sender.strip():
            raise ConfigError("robase needs a sender: pass --sender (the batch's `from`, e.g. SHUTTLERS)")

    def batch_group_keys(self, spec: CampaignSpec) -> list[pl.Expr]:
        return [send_at_group()]  # send_at is one value per call

    def row_rules(self, spec: CampaignSpec) -> list[RowRule]:
        send_at = pl.col("send_at").cast(pl.String).str.strip_chars()
        return [
            RowRule(
                "send_at_invalid",
                "send_at must be an ISO 8601 date-time with a time zone, e.g. 2026-05-01T08:00:00Z",
                send_at.is_null() | (send_at == "") | send_at.str.contains(SEND_AT_PATTERN),
                columns=("send_at",),
            ),
            RowRule(
                "media_unsupported",
                "robase's batch API sends text SMS; a media_url cannot be attached",
                pl.col("media_url").is_null() | (pl.col("media_url").cast(pl.String).str.strip_chars() == ""),
                columns=("media_url",),
            ),
        ]

    # ---- the wire ---------------------------------------------------------------------------------------

    def build_request(self, batch: Batch) -> httpx.Request:
        spec = batch.spec
        rows = batch.rows
        phones = rows.get_column("phone").to_list()
        keys = rows.get_column("idempotency_key").to_list()
        payload: dict[str, object] = {"from": spec.sender}
        if spec.template:
            names = spec.template_vars
            payload["template"] = spec.template
            if names:
                values = rows.select([pl.col(n).cast(pl.String) for n in names]).rows()
                messages = [
                    {"to": to, "variables": dict(zip(names, vals, strict=True)), "idempotency_key": key}
                    for to, vals, key in zip(phones, values, keys, strict=True)
                ]
            else:
                messages = [{"to": to, "idempotency_key": key} for to, key in zip(phones, keys, strict=True)]
        else:
            bodies = rows.get_column("body").to_list()
            messages = [
                {"to": to, "body": body, "idempotency_key": key}
                for to, body, key in zip(phones, bodies, keys, strict=True)
            ]
        payload["messages"] = messages
        send_at = self._send_at(batch)
        if send_at is not None:
            payload["send_at"] = send_at
        return json_request(
            "POST",
            self.url(PATH),
            payload,
            {"Authorization": f"Bearer {self.api_key()}", "Accept": "application/json"},
        )

    def _send_at(self, batch: Batch) -> str | None:
        values = batch.rows.select(send_at_group().alias("s")).get_column("s").unique().to_list()
        if len(values) > 1:
            # The plan groups by send_at, so this batch was built elsewhere; bisection separates them.
            raise BatchRejectedError(
                "robase: rows of one call must share send_at", code="send_at_differs", retryable_split=True
            )
        return values[0] if values else None

    def read_refusal(self, response: httpx.Response, payload: Any) -> Refusal:
        err = payload.get("error") if isinstance(payload, dict) else None
        err = err if isinstance(err, dict) else {}
        code = str(err.get("type") or "") or None
        return Refusal(code, _with_field(err), code in SPLITTABLE)

    def read_outcomes(
        self, batch: Batch, response: httpx.Response, payload: Any
    ) -> list[RowOutcome | None] | None:
        data = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(data, list):
            return None
        n = len(batch)
        outcomes: list[RowOutcome | None] = [None] * n
        for item in data:
            if not isinstance(item, dict):
                continue
            i = item.get("index")
            if type(i) is not int or not 0 <= i < n:
                continue
            sms, error = item.get("sms"), item.get("error")
            if isinstance(sms, dict):
                code = str(sms.get("status") or "queued")
                status = self.state_status(code)
                sms_id = sms.get("id")
                outcomes[i] = RowOutcome(
                    status,
                    error_code=None if status is Status.ACCEPTED else code,
                    error_message=None if status is Status.ACCEPTED else f"robase sms status {code}",
                    provider_message_id=str(sms_id) if sms_id is not None else None,
                )
            elif isinstance(error, dict):
                outcomes[i] = self.refused(str(error.get("type") or "row_error"), _with_field(error))
        return outcomes


def _with_field(error: dict[str, Any]) -> str:
    """robase's error message, with the field it names."""
    message = str(error.get("message") or "")
    return f"{message} (field {error['field']})" if error.get("field") else message


ADAPTER = RobaseProvider
