"""What every provider module fills in, in the shape of django-anymail's backends:

    capabilities (data) -> build_request(batch) -> post -> parse_response(batch, response) -> RowOutcome per row

plus a table from the provider's own codes to our closed status vocabulary. The send engine
(`tasks/send_engine.py`) owns everything around that: rate limits, concurrency, retries, backoff,
bisection of whole-batch rejections. A provider module only knows its own wire format.
"""

from __future__ import annotations

import base64
import email.utils
import functools
import re
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar, NamedTuple

import httpx
import orjson
import polars as pl

from smscast.campaign import CampaignSpec
from smscast.errors import (
    AmbiguousError,
    AuthError,
    BatchRejectedError,
    CampaignStopError,
    ConfigError,
    RateLimitedError,
    SendError,
    ServerError,
    TransientError,
)
from smscast.settings import ProviderSettings
from smscast.status import Status


class Idempotency(StrEnum):
    HEADER = "header"  # one key per request, in a header: a re-send is safe only with the same batch
    ROW = "row"  # a key per row in the body
    BATCH_AND_ROW = "batch_and_row"  # a key for the request and one per row
    CLIENT_ID = "client_id"  # the provider de-duplicates on our per-row reference
    NONE = "none"  # nothing: a re-send after an unknown outcome can duplicate


class Rejection(StrEnum):
    PER_ROW = "per_row"  # bad rows are refused one by one, the rest go through
    WHOLE_BATCH = "whole_batch"  # one bad row fails the whole request


class OutcomeTiming(StrEnum):
    SYNC = "sync"  # per-recipient result (and usually a message id) in the response
    ASYNC = "async"  # a job/batch reference now, per-recipient status from a later lookup


class Content(StrEnum):
    BODY = "body"  # we send the text
    TEMPLATE = "template"  # the provider renders a template it holds
    EITHER = "either"


class Wire(StrEnum):
    JSON = "json"
    MULTIPART_CSV = "multipart_csv"


@dataclass(frozen=True)
class Capabilities:
    """A provider's limits and behaviour, declared as data (dlt-style) and read by validate, plan and send."""

    name: str
    max_rows: int
    min_rows: int = 1
    max_body_chars: int | None = None  # characters, as the provider counts them
    max_segments: int | None = None
    max_request_bytes: int | None = None
    rate_per_second: float = 10.0  # documented request rate
    burst: int = 1
    concurrency: int = 4
    idempotency: Idempotency = Idempotency.NONE
    rejection: Rejection = Rejection.PER_ROW
    outcome: OutcomeTiming = OutcomeTiming.SYNC
    content: Content = Content.BODY
    template_body: bool = False  # the provider template can carry our rendered text as one {{body}} parameter
    supports_media: bool = False  # a `media_url` row is an MMS and needs no body
    wire: Wire = Wire.JSON
    unique_phones_per_batch: bool = False
    sender_required: bool = False
    sender_pattern: str | None = None  # full-match regex for the sender id
    languages: tuple[str, ...] = ()
    request_timeout: float = 30.0
    default_base_url: str | None = None
    notes: str = ""

    def sends_body(self, spec: CampaignSpec) -> bool:
        """Whether rows carry our text (rendered from --body or a body column) rather than only template
        variables: then body presence, length and segments are checked."""
        if spec.template is None:
            return True
        return self.template_body and not spec.template_vars

    @property
    def resend_safe(self) -> bool:
        """Whether re-sending a batch whose outcome is unknown cannot create a second message."""
        return self.idempotency is not Idempotency.NONE


@dataclass(frozen=True)
class Batch:
    """One provider request's worth of rows. `rows` has at least row_index, recipient_id, phone, body,
    idempotency_key, plus the template variables and the optional language, media_url and send_at."""

    campaign_id: str
    batch_id: str
    batch_key: str  # idempotency key for the request as a whole
    rows: pl.DataFrame
    spec: CampaignSpec

    def __len__(self) -> int:
        return self.rows.height

    def subset(self, positions: Sequence[int], suffix: str) -> Batch:
        """A part of this batch (bisection). Its key is derived so the provider never confuses the two."""
        # "-": the one separator every vendor's key alphabet allows (sent.dm: [A-Za-z0-9_-]).
        return Batch(
            campaign_id=self.campaign_id,
            batch_id=f"{self.batch_id}-{suffix}",
            batch_key=f"{self.batch_key}-{suffix}",
            rows=self.rows[list(positions)],
            spec=self.spec,
        )


class RowOutcome(NamedTuple):
    # A NamedTuple, not a dataclass: one is built per recipient on the hot path, and a tuple is ~5x cheaper
    # to make and transposes to columns with zip(*outcomes) in C.
    status: Status
    error_code: str | None = None
    error_message: str | None = None
    provider_message_id: str | None = None
    provider_batch_ref: str | None = None


@dataclass(frozen=True)
class RowRule:
    """A provider rule checked before sending, vectorised: `valid` is a Polars expression that is true for
    rows that pass. Columns available: phone, body, chars, encoding, segments, language, media_url, send_at
    and the template variables."""

    code: str
    message: str
    valid: pl.Expr
    columns: tuple[str, ...] = ()  # input columns the rule needs; the rule is skipped if one is absent


@dataclass(frozen=True, slots=True)
class StatusLookup:
    """A per-recipient status from an async provider's lookup endpoint, for the reconcile step."""

    phone: str
    status: Status
    provider_status: str
    provider_message_id: str | None = None
    error_code: str | None = None


class Provider:
    """Base class. Subclasses set `caps`, `STATES` and `REFUSALS` and implement `build_request` and
    `parse_response`.

    A provider speaks of a row in two different ways, and a word missing from our tables means opposite
    things in each, so there are two tables and two rules:

    * a refusal: "I did not take this row (or this request), code X" (robase's `error.type`, the sandbox's
      `code`, textingline's 33xxx). Whatever X is, the provider said no: the row was not accepted. A code in
      `REFUSALS` gets its status there (FAILED for the transient ones); any other code is REJECTED, with the
      code and the provider's message kept (`refused`, `refusal_status`). Never UNKNOWN.
    * a state: "I hold this message and it is X" (robase's `sms.status`, Postman's `latestStatus`). A state
      missing from `STATES` may well mean accepted, so it is UNKNOWN (`state_status`): reconcile, do not
      re-send blindly.

    A non-2xx answer the module has no specific handling for refuses the whole request: `http_refusal`.
    """

    caps: ClassVar[Capabilities]
    # The provider's message/batch states -> our status. An unlisted state is UNKNOWN (see `state_status`).
    STATES: ClassVar[Mapping[str, Status]] = {}
    # The provider's refusal codes whose status is not plain REJECTED, and the documented ones for the
    # reader. An unlisted code is REJECTED (see `refusal_status`). Only REJECTED or FAILED may appear here.
    REFUSALS: ClassVar[Mapping[str, Status]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # At class definition, so that no table can ever turn an explicit refusal into "maybe accepted".
        wrong = {code: s for code, s in cls.REFUSALS.items() if s not in (Status.REJECTED, Status.FAILED)}
        if wrong:
            raise TypeError(f"{cls.__name__}.REFUSALS: a refusal is REJECTED or FAILED, not {wrong}")

    def __init__(self, settings: ProviderSettings) -> None:
        self.settings = settings

    # ---- the pipeline every provider fills in -------------------------------------------------------

    def build_request(self, batch: Batch) -> httpx.Request:
        raise NotImplementedError

    def parse_response(self, batch: Batch, response: httpx.Response) -> list[RowOutcome]:
        """Outcomes in the order of `batch.rows`. Raise a SendError subclass for whole-batch failures."""
        raise NotImplementedError

    # ---- optional hooks -------------------------------------------------------------------------------

    def row_rules(self, spec: CampaignSpec) -> list[RowRule]:
        """Provider rules checked at validation, so that whole-batch rejections are rare."""
        return []

    def check_spec(self, spec: CampaignSpec) -> None:
        """Provider-specific campaign rules: raise ConfigError before anything runs."""

    def validate_spec(self, spec: CampaignSpec) -> None:
        """The rules every provider's capabilities imply, then the provider's own `check_spec`."""
        caps, name = self.caps, self.caps.name
        if spec.body is not None and spec.template is not None and not caps.template_body:
            raise ConfigError(f"{name}: give either --body or --template, not both")
        if caps.content is Content.TEMPLATE and spec.template is None:
            raise ConfigError(f"{name} sends provider-side templates: pass --template")
        if caps.content is Content.BODY and spec.template is not None:
            raise ConfigError(f"{name} has no provider-side templates: pass --body (or a body column)")
        if caps.sender_required and not spec.sender:
            raise ConfigError(f"{name} needs a sender: pass --sender")
        if spec.sender and caps.sender_pattern and not re.fullmatch(caps.sender_pattern, spec.sender):
            raise ConfigError(f"{name}: sender {spec.sender!r} is not valid (expected {caps.sender_pattern})")
        self.check_spec(spec)

    def batch_group_keys(self, spec: CampaignSpec) -> list[pl.Expr]:
        """Expressions whose values must be equal within one batch (e.g. sent.dm's batch-level template
        parameters, textingline's no SMS/MMS mix). Plan batches each group separately."""
        return []

    async def lookup_status(self, client: httpx.AsyncClient, batch_ref: str) -> list[StatusLookup]:
        """Per-recipient status of an async batch (reconcile). Sync providers have nothing to look up."""
        raise NotImplementedError(f"{self.caps.name} reports outcomes synchronously")

    # ---- shared helpers ----------------------------------------------------------------------------

    def url(self, path: str) -> str:
        return f"{self.settings.base_url}/{path.lstrip('/')}"

    def api_key(self) -> str:
        if self.settings.api_key is None:
            raise AuthError(f"{self.caps.name}: no API key configured", code="no_credentials")
        return self.settings.api_key.reveal()

    def redact(self, text: str) -> str:
        """`text` without this provider's key in any form a server might echo (a debug proxy or WAF page that
        reflects request headers): as given, its parts, and base64 / percent-encoded."""
        for form in self._key_forms:
            text = text.replace(form, "********")
        return text

    @functools.cached_property
    def _key_forms(self) -> tuple[str, ...]:
        # Computed once per instance: `refused` redacts every refused row's message on the hot path.
        key = self.settings.api_key.reveal() if self.settings.api_key else ""
        if len(key) < 4:
            return ()
        forms = {key, *(p for p in key.split(":") if len(p) >= 4)}
        forms |= {base64.b64encode(f.encode()).decode() for f in list(forms)}
        forms |= {urllib.parse.quote(f, safe="") for f in list(forms)}
        return tuple(sorted(forms, key=len, reverse=True))

    @classmethod
    def state_status(cls, state: str | None) -> Status:
        """Our status for a state the provider reports of a message it holds. Unlisted (or absent): UNKNOWN,
        since the provider has the message and we cannot read its fate."""
        if state is None:
            return Status.UNKNOWN
        return cls.STATES.get(state, Status.UNKNOWN)

    @classmethod
    def refusal_status(cls, code: str | None) -> Status:
        """Our status for a code the provider refused a row or a request with. Unlisted (or absent):
        REJECTED. The provider said no, so the row was not accepted; only its own document can make a code
        transient (FAILED, listed in REFUSALS)."""
        if code is None:
            return Status.REJECTED
        return cls.REFUSALS.get(code, Status.REJECTED)

    def refused(
        self,
        code: str,
        message: str | None = None,
        *,
        provider_message_id: str | None = None,
        provider_batch_ref: str | None = None,
    ) -> RowOutcome:
        """The outcome of a row the provider explicitly refused with `code`: the code's status (REJECTED
        unless REFUSALS says otherwise), the code and the provider's message kept, the message redacted
        (it is server text, which a misbehaving gateway can fill with our credentials)."""
        return RowOutcome(
            self.refusal_status(code),
            code,
            self.redact(message) if message else message,
            provider_message_id,
            provider_batch_ref,
        )

    def raise_for_transport_status(self, response: httpx.Response) -> None:
        """The HTTP statuses every provider shares: 401/403, 429, 5xx. Provider-specific 4xx are the
        module's own business (after this returns)."""
        code = response.status_code
        if code in (401, 403):
            raise AuthError(f"{self.caps.name}: HTTP {code}, credentials refused", code=f"http_{code}")
        if code == 429:
            raise RateLimitedError(
                f"{self.caps.name}: HTTP 429 rate limited", code="http_429", retry_after=retry_after(response)
            )
        if code >= 500:
            raise ServerError(f"{self.caps.name}: HTTP {code}", code=f"http_{code}")

    def reject_batch(
        self, response: httpx.Response, code: str, message: str, *, split: bool
    ) -> BatchRejectedError:
        return BatchRejectedError(
            f"{self.caps.name}: batch refused (HTTP {response.status_code}, {code}): {message}",
            code=code,
            retryable_split=split,
        )

    def http_refusal(
        self, response: httpx.Response, code: str | None, message: str, *, split: bool = False
    ) -> SendError:
        """The error for a non-2xx answer (after `raise_for_transport_status`) the module has no more specific
        handling for. The provider did not take the request: its rows are REJECTED with the provider's code
        (else `http_<status>`), bisected only where the module knows a row can cause the refusal (a guess
        would cost up to 2n-1 requests per batch). Exceptions, none UNKNOWN unless it may be accepted:

        * a code REFUSALS lists as transient: retried, then FAILED.
        * 404/405: the endpoint is wrong, not the rows: the campaign stops, its rows `failed` (retriable).
        * 408: by HTTP's definition the server did not receive the whole request in time, so it acted on
          none of it: retried like a request that never got through, then FAILED. Rows are not its cause.
        * 409 Conflict, from a provider that de-duplicates on our keys: its usual meaning (sent.dm's
          "concurrent modification", the IETF Idempotency-Key draft's "still processing a request with this
          key") is an earlier attempt in flight, which may be accepted: ambiguous, re-sent with the same
          keys, UNKNOWN if it never resolves. Without keys (Postman) it can only refuse this request.
        """
        status = response.status_code
        code = code or f"http_{status}"
        name = self.caps.name
        if status == 408:
            return TransientError(
                f"{name}: HTTP 408, the request did not reach the provider whole", code=code
            )
        if status in (404, 405):
            # Not a refusal of these rows: nothing answers where we post (a wrong base URL or path). Every
            # batch would meet it, so the campaign stops and its rows stay `failed`, sent once it is fixed.
            return CampaignStopError(
                f"{name}: HTTP {status}, no such endpoint: check the provider's base URL", code=code
            )
        if status == 409 and self.caps.resend_safe:
            return AmbiguousError(
                f"{name}: HTTP 409 {code}, a request with the same key may be in flight", code=code
            )
        if self.refusal_status(code) is Status.FAILED:
            return TransientError(
                f"{name}: request refused for now (HTTP {status}, {code}): {self.redact(message)}", code=code
            )
        return self.reject_batch(response, code, message, split=split)


def retry_after(response: httpx.Response) -> float | None:
    """Retry-After as seconds, from either delta-seconds or an HTTP date; None when absent or unreadable."""
    raw = response.headers.get("retry-after")
    if raw is None:
        return None
    raw = raw.strip()
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def json_request(method: str, url: str, payload: Any, headers: dict[str, str]) -> httpx.Request:
    """A JSON request serialised with orjson (httpx's `json=` uses the standard library, ~5x slower for a
    batch of a thousand messages)."""
    return httpx.Request(
        method, url, content=orjson.dumps(payload), headers={**headers, "Content-Type": "application/json"}
    )


def json_body(response: httpx.Response) -> Any:
    """The response's JSON, or None when it is not JSON (a proxy's HTML error page, an empty body)."""
    try:
        return orjson.loads(response.content)
    except ValueError:
        return None
