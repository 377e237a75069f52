"""textingline's batch API (docs/providers/textingline.md).

    POST https://platform.textingline.com/api/v1/messaging/batch
    Authorization: Basic base64(key_id:secret)          (the doc's `curl -u "your_key_id:your_key_secret"`)
    {"from": "+18005559876",
     "recipients": [{"to": "+18005551001", "body": "Hi Alice…", "idempotencyKey": "sc-…"},
                    {"to": "+18005551002", "mediaUrl": "https://…", "body": "…", "idempotencyKey": "sc-…"}],
     "idempotencyKey": "scb-…"}

    2xx {"id": "brc_…", "from": "…", "totalRecipients": 3, "status": "queued", "createdAt": "…"}

The quirks, each from the doc unless marked otherwise:

* 10 to 5,000 recipients per call ("Min 10, max 5,000"): `min_rows=10`. The plan balances batches and
  quarantines groups under 10; the engine's bisection stops below 2 * 10 rows, so a bad row ends up in a
  refused sub-batch of 10–19 rows, all rejected with the reason.
* Whole-batch refusals only: duplicates or a recipient without body/mediaUrl (33024), any recipient's
  content violating compliance rules "the entire batch is rejected" (33019), invalid characters (33016).
  Those are caused by rows, so the batch is bisected. The sender not assigned (33004), the daily quota
  (33012) and insufficient credits (33023) are the account's: no split helps and every other batch of the
  campaign would fail the same way, so they stop the campaign (rows `failed`, re-sendable with
  `smscast retry` once the account is fixed / tomorrow) — see `AccountRefusedError`.
* The success answer is an async job (`status: queued`), with no per-recipient message id: every row is
  `accepted` with `provider_batch_ref` = the job's `brc_…` id; `lookup_status` reads the per-recipient
  outcome later.
* Two levels of idempotency ("Batch-level + per-recipient keys"): the batch key makes a re-sent request
  return the original job; the recipient keys (our stable row keys) stop a recipient being texted twice
  across re-sends in other batches (after bisection, or by the retry flow).
* body ≤ 640 characters; no SMS/MMS mix in one batch ("not yet supported"): `batch_group_keys` plans SMS
  and MMS rows into separate batches.
* 5 requests per minute on this endpoint ("Rate limits"): `rate_per_second=5/60`, burst 1 (see `caps`).

ASSUMED, because the doc does not show them (vendor's style, from its public Error Codes / Rate Limits pages):
* the error body `{"code": 33019, "message": "…", "status": 400, "moreInfo": "…"}` (also read if nested under
  `error`), with the HTTP statuses 400 (33003, 33005, 33016, 33019, 33024), 401 (33001), 403 (33004,
  33010, 33020-33022), 429 (33002 rate limit, with Retry-After; and 33012 daily quota, which is not a rate
  limit), 402 for 33023;
* the batch status endpoint the doc names without a shape: `GET /api/v1/messaging/batch/{id}` →
  `{"id", "from", "totalRecipients", "status", "createdAt", "recipients": [{"to", "idempotencyKey",
  "messageId", "status", "errorCode"}]}` with per-recipient statuses queued/sending/sent/delivered/
  undelivered/failed/duplicate (a duplicate adds `messageStatus`/`messageErrorCode`: its earlier message's);
  404 code 33404 for an unknown id. No per-recipient time; no reporting window (72 h ASSUMED).
* the vendor's API reference restricts idempotency keys to 2-100 characters of letters, digits and
  `: @ - _ ( )`: our keys (`scb-<hex>`, bisected `scb-<hex>-L-R`) fit; `wire_key` guards it anyway.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from datetime import timedelta
from typing import Any, ClassVar, NoReturn
from urllib.parse import quote

import httpx
import polars as pl

from smscast import transport
from smscast.campaign import CampaignSpec
from smscast.delivery import DeliveryStatus
from smscast.errors import (
    AmbiguousError,
    CampaignStopError,
    ConfigError,
    TerminalError,
    TransientError,
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
    json_request,
)
from smscast.settings import ProviderSettings
from smscast.status import Status

BATCH_PATH = "/api/v1/messaging/batch"
MAX_BODY_CHARS = 640
# "Sender phone number in E.164 format or short code (5-6 digits)".
SENDER_PATTERN = r"\+[1-9][0-9]{6,14}|[0-9]{5,6}"
# What we treat as textingline's "invalid characters" (33016), the doc naming none: C0 control characters
# other than tab, line feed and carriage return, DEL, and the C1 controls. Readable by both Polars (Rust
# regex) and Python's re; sandbox/emulators/textingline.py refuses exactly these.
INVALID_CHARS = r"[\x00-\x08\x0B\x0C\x0E-\x1F\x7F-\x9F]"
# Allowed in idempotency keys (vendor API reference): letters, digits and : @ - _ ( ).
_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9:@\-_()]")
BATCH_NOT_FOUND = "33404"  # ASSUMED: the status endpoint's code for an id it does not know

# Whole-batch refusals caused by some recipient(s): bisect to isolate them. 33016/33019/33024 are the doc's;
# 33003 (a number not E.164), 33010 (recipient blocked, sent with HTTP 403) and 33028 (recipients not opted
# in) are from the vendor's error reference and are row-caused too.
ROW_CODES = frozenset({"33003", "33010", "33016", "33019", "33024", "33028"})
# Refusals of the account or sender: no split can fix them and every further batch would fail alike
# (33004 sender not assigned, 33009 sender not active, 33011 sender blocked, 33012 daily quota,
# 33020-33022 account set-up, 33023 credits).
ACCOUNT_CODES = frozenset({"33004", "33009", "33011", "33012", "33020", "33021", "33022", "33023"})


class AccountRefusedError(CampaignStopError):
    """textingline refused the account, not the rows (sender not assigned, daily quota, credits…). A
    CampaignStopError so that the engine stops the campaign: every batch not yet sent is `failed` (never sent,
    re-sendable once the account is fixed, or tomorrow for the daily quota) instead of each batch spending
    one of the 5 requests a minute on the same refusal."""


def basic_credentials(raw: str) -> tuple[str, str]:
    """Split `key_id:secret`; ConfigError (which never shows the value) when it is not of that shape."""
    key_id, sep, secret = raw.partition(":")
    if not sep or not key_id.strip() or not secret.strip():
        raise ConfigError(
            "textingline uses HTTP basic auth: set SMSCAST_TEXTINGLINE_API_KEY to 'key_id:secret' "
            "(your API key id and its secret joined by a colon)"
        )
    return key_id, secret


def wire_key(key: str) -> str:
    """Our key within textingline's alphabet and length (a guard: the plan's keys already comply)."""
    return _KEY_UNSAFE.sub("_", key)[:100]


def _vendor_error(payload: Any) -> tuple[str | None, str]:
    """(code, message) from the vendor's error envelope (ASSUMED shape, see the module docstring)."""
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        payload = payload["error"]
    if not isinstance(payload, dict):
        return None, ""
    code = payload.get("code")
    message = payload.get("message")
    code_s = str(code) if isinstance(code, int | str) and not isinstance(code, bool) and str(code) else None
    return code_s, str(message) if message is not None else ""


class TextinglineProvider(Provider):
    caps = Capabilities(
        name="textingline",
        max_rows=5000,  # "Min 10, max 5,000"
        min_rows=10,
        max_body_chars=MAX_BODY_CHARS,  # "up to 640 characters"
        rate_per_second=5 / 60,  # "The batch endpoint allows 5 requests per minute"
        # Burst 1: one request every 12 s never exceeds 5 in any minute, whether the vendor counts a fixed or
        # a sliding window (its Rate Limits page says a 60-second window); a burst of 5 could make 9.
        burst=1,
        # At 5 requests a minute more in flight gains nothing; 2 keeps one slow 5,000-recipient request
        # from holding up the next.
        concurrency=2,
        idempotency=Idempotency.BATCH_AND_ROW,
        rejection=Rejection.WHOLE_BATCH,
        outcome=OutcomeTiming.ASYNC,
        content=Content.BODY,  # no provider-side templates; MMS via media_url
        supports_media=True,
        sender_required=True,  # `from` is required
        sender_pattern=SENDER_PATTERN,
        request_timeout=60.0,  # up to 5,000 recipients, each checked for compliance before the answer
        default_base_url="https://platform.textingline.com",
        delivery_reports=frozenset({DeliveryChannel.LOOKUP}),  # the batch status endpoint; no webhook
        report_window=timedelta(hours=72),  # ASSUMED: not documented; a common SMS validity period
        resend_fixes=frozenset({"33030"}),  # "unreachable destination handset"
    )

    # per-recipient statuses of the (ASSUMED) batch status endpoint
    STATES: ClassVar[Mapping[str, Status]] = {
        "queued": Status.ACCEPTED,
        "sending": Status.ACCEPTED,
        "sent": Status.ACCEPTED,
        "delivered": Status.ACCEPTED,
        "duplicate": Status.ACCEPTED,  # an earlier request with the same recipient key carries it
        "undelivered": Status.REJECTED,  # the carrier refused it for good
        "failed": Status.FAILED,  # failed sends do not consume the key: re-sendable
    }
    # The same states as delivery (a recipient with a messageId: a message exists). `failed` of a message is
    # its delivery failing; of a recipient without one, the job's refusal (see `_lookup`).
    DELIVERY_STATES: ClassVar[Mapping[str, DeliveryStatus]] = {
        **dict.fromkeys(("queued", "sending", "sent"), DeliveryStatus.PENDING),
        "delivered": DeliveryStatus.DELIVERED,
        **dict.fromkeys(("undelivered", "failed"), DeliveryStatus.UNDELIVERED),
    }

    # The vendor's error codes. A code not listed is `rejected` (Provider.refusal_status): textingline said no.
    REFUSALS: ClassVar[Mapping[str, Status]] = {
        # whole-batch refusals caused by rows (bisected; what is left is rejected)
        **{code: Status.REJECTED for code in ROW_CODES},
        "33005": Status.REJECTED,  # a required field missing or invalid: the request, not a row
        # account refusals: the campaign stops and its rows are failed, re-sendable later
        **{code: Status.FAILED for code in ACCOUNT_CODES},
        "33001": Status.FAILED,  # authentication failed
        "33002": Status.FAILED,  # rate limited (retried by the engine first)
        "33000": Status.FAILED,  # unexpected server error
        "33007": Status.FAILED,  # message send failed, "Retry the request"
    }

    def __init__(self, settings: ProviderSettings) -> None:
        super().__init__(settings)
        if settings.api_key is not None:
            basic_credentials(settings.api_key.reveal())  # fail at start, not at the first request

    # ---- request --------------------------------------------------------------------------------------

    def _authorization(self) -> str:
        key_id, secret = basic_credentials(self.api_key())
        return "Basic " + base64.b64encode(f"{key_id}:{secret}".encode()).decode("ascii")

    def build_request(self, batch: Batch) -> httpx.Request:
        sender = batch.spec.sender
        if not sender:
            raise ConfigError("textingline needs a sender (--sender): a number assigned to your account")
        rows = batch.rows
        n = rows.height
        phones = rows.get_column("phone").to_list()
        bodies = rows.get_column("body").to_list() if "body" in rows.columns else [None] * n
        keys = rows.get_column("idempotency_key").to_list()
        media = rows.get_column("media_url").to_list() if "media_url" in rows.columns else [None] * n
        recipients: list[dict[str, str]] = []
        for to, body, url, key in zip(phones, bodies, media, keys, strict=True):
            item = {"to": to}
            if body:
                item["body"] = body
            if url:
                item["mediaUrl"] = url  # "When provided, the message is sent as MMS"
            item["idempotencyKey"] = key
            recipients.append(item)
        return json_request(
            "POST",
            self.url(BATCH_PATH),
            {"from": sender, "recipients": recipients, "idempotencyKey": wire_key(batch.batch_key)},
            {"Authorization": self._authorization()},
        )

    # ---- response -------------------------------------------------------------------------------------

    def raise_for_refusal(self, response: httpx.Response, payload: Any) -> NoReturn:
        status = response.status_code
        code, message, *_ = self.read_refusal(response, payload)
        # Decided on the vendor's code before the HTTP status: 33004 comes with 403 and 33012 with 429,
        # neither of which is a credentials problem or a rate limit.
        if code in ACCOUNT_CODES:
            raise AccountRefusedError(
                f"textingline: account refused the batch (HTTP {status}, {code}): {message}; campaign "
                "stopped, rows not sent: fix the account (or wait for the daily quota), then "
                "`smscast retry`",
                code=code or "account",
            )
        if code in ROW_CODES:
            raise self.reject_batch(response, code or "", message, split=True)
        # 401 (33001), other 403s, 429 (33002), 5xx; then any other code, known or not: the batch is refused
        # as it stands, and no split (at 5 requests a minute, bisecting on a guess would cost hours for a
        # refusal no row may cause).
        super().raise_for_refusal(response, payload)

    def read_refusal(self, response: httpx.Response, payload: Any) -> Refusal:
        return Refusal(*_vendor_error(payload))

    def read_outcomes(
        self, batch: Batch, response: httpx.Response, payload: Any
    ) -> list[RowOutcome | None] | None:
        if not isinstance(payload, dict):
            return None
        ref = payload.get("id")
        if not isinstance(ref, str) or not ref:
            # A 2xx without a job id: the batch may well have been queued.
            raise AmbiguousError(
                "textingline: success response without a batch id", code="unreadable_response"
            )
        total = payload.get("totalRecipients")
        if isinstance(total, int) and not isinstance(total, bool) and total != len(batch):
            # The job does not hold the rows we sent: some may be in it, some not. Reconcile by lookup.
            outcome = RowOutcome(
                Status.UNKNOWN,
                "recipient_count_mismatch",
                f"textingline queued {total} recipients of the {len(batch)} sent; look up batch {ref}",
                provider_batch_ref=ref,
            )
        else:
            outcome = RowOutcome(Status.ACCEPTED, provider_batch_ref=ref)
        return [outcome] * len(batch)

    # ---- pre-send rules -------------------------------------------------------------------------------

    def check_spec(self, spec: CampaignSpec) -> None:
        if spec.template is not None:
            raise ConfigError("textingline has no provider-side templates: give the text with --body")
        if not spec.sender:
            raise ConfigError(
                "textingline needs --sender: an E.164 number (+18005559876) or a 5-6 digit short code "
                "assigned to your account"
            )
        if not re.fullmatch(SENDER_PATTERN, spec.sender):
            raise ConfigError(
                f"textingline sender {spec.sender!r} must be an E.164 number (+18005559876) or a 5-6 digit "
                "short code"
            )
        if self.settings.api_key is not None:
            basic_credentials(self.settings.api_key.reveal())

    def row_rules(self, spec: CampaignSpec) -> list[RowRule]:
        body, media = pl.col("body"), pl.col("media_url")
        has_body = body.str.len_chars().fill_null(0) > 0
        has_media = media.str.len_chars().fill_null(0) > 0
        return [
            RowRule(
                "invalid_characters",
                "body contains control characters textingline refuses for the whole batch (33016)",
                body.is_null() | ~body.str.contains(INVALID_CHARS),
                ("body",),
            ),
            RowRule(
                "body_or_media_missing",
                "textingline needs a body or a media_url for each recipient (33024)",
                has_body | has_media,
                ("body", "media_url"),
            ),
            RowRule(
                "media_url_invalid",
                "media_url must be a public http(s) URL",
                media.is_null() | (media == "") | media.str.contains(r"^https?://[^\s/]+\S*$"),
                ("media_url",),
            ),
            RowRule(
                "send_at_unsupported",
                "textingline's batch endpoint cannot schedule: leave send_at empty",
                pl.col("send_at").is_null() | (pl.col("send_at").cast(pl.String).str.strip_chars() == ""),
                ("send_at",),
            ),
        ]

    def batch_group_keys(self, spec: CampaignSpec) -> list[pl.Expr]:
        # "Mixed SMS and MMS recipients in a single batch is not yet supported": plan them apart. The regex
        # selection matches nothing when the source has no media_url column, and the group is then SMS.
        has_media = (pl.col("^media_url$").str.len_chars() > 0).fill_null(False)
        return [pl.any_horizontal(has_media, pl.lit(False)).alias("_mms")]

    # ---- async status ---------------------------------------------------------------------------------

    async def lookup_status(
        self, client: httpx.AsyncClient, batch_ref: str, *, pace: Pace | None = None
    ) -> list[StatusLookup]:
        """Per-recipient status of a batch job. ASSUMED endpoint and shape (see the module docstring)."""
        url = self.url(f"{BATCH_PATH}/{quote(batch_ref, safe='')}")
        request = httpx.Request("GET", url, headers={"Authorization": self._authorization()})
        if pace is not None:
            await pace()
        response = await transport.send(client, request, self.caps.name)
        payload = json_body(response)
        if response.status_code >= 400:
            code, message = _vendor_error(payload)
            self.raise_for_transport_status(response)
            error = BatchNotFoundError if code == BATCH_NOT_FOUND else TerminalError
            raise error(
                f"textingline: status of batch {batch_ref} refused "
                f"(HTTP {response.status_code}, {code}): {message}",
                code=code or f"http_{response.status_code}",
            )
        items = payload.get("recipients") if isinstance(payload, dict) else None
        if not isinstance(items, list):
            raise TransientError(
                f"textingline: unreadable status of batch {batch_ref}", code="unreadable_response"
            )
        return [self._lookup(i) for i in items if isinstance(i, dict) and isinstance(i.get("to"), str)]

    def _lookup(self, item: dict[str, Any]) -> StatusLookup:
        state, message_id = _text(item.get("status")) or "", _text(item.get("messageId"))
        status = self.state_status(state or None)
        duplicate = state == "duplicate"  # names an earlier message: its fate is that message's
        error = _text(item.get("messageErrorCode" if duplicate else "errorCode"))
        fate = _text(item.get("messageStatus")) if duplicate else state
        # Without a message, a failure (or a state we do not know, with a code) is the job refusing the
        # recipient, never sending it: a send outcome by its code (33007, transient: `failed`).
        failure = status in (Status.FAILED, Status.REJECTED)
        refused = message_id is None and (failure or (status is Status.UNKNOWN and error is not None))
        return StatusLookup(
            phone=item["to"],
            status=self.refusal_status(error) if refused and error else status,
            provider_status=state,
            provider_message_id=message_id,
            error_code=error,
            delivery_status=self.delivery_state(fate) if message_id else None,
            client_ref=_text(item.get("idempotencyKey")),
            refused=refused,
        )


def _text(value: Any) -> str | None:
    return str(value) if value is not None and value != "" else None


ADAPTER = TextinglineProvider
