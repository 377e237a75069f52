"""What every provider module fills in, in the shape of django-anymail's backends:

    capabilities (data) -> build_request(batch) -> post -> parse_response(batch, response) -> RowOutcome per row

plus a table from the provider's own codes to our closed status vocabulary. The send engine
(`tasks/send_engine.py`, `tasks/send_batch.py`) owns everything around that: rate limits, concurrency, retries, backoff,
bisection of whole-batch rejections. A provider module only knows its own wire format. The data it declares
and exchanges lives in providers/model.py, the HTTP helpers in providers/http.py; both are re-exported here.
"""

from __future__ import annotations

import base64
import functools
import re
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, ClassVar, NamedTuple, NoReturn

import httpx
import polars as pl

from smscast.campaign import CampaignSpec
from smscast.delivery import DeliveryStatus
from smscast.errors import (
    AmbiguousError,
    AuthError,
    BatchRejectedError,
    CampaignStopError,
    ConfigError,
    RateLimitedError,
    SendError,
    ServerError,
    TerminalError,
    TransientError,
)
from smscast.providers.http import json_body, json_request, json_rows, retry_after
from smscast.providers.model import (
    Batch,
    Capabilities,
    Content,
    DeliveryChannel,
    Idempotency,
    Outcomes,
    OutcomeTiming,
    Rejection,
    RowOutcome,
    RowRule,
    StatusLookup,
)
from smscast.settings import ProviderSettings
from smscast.status import Status

__all__ = [
    "Batch",
    "BatchNotFoundError",
    "Capabilities",
    "Content",
    "DeliveryChannel",
    "Idempotency",
    "OutcomeTiming",
    "Outcomes",
    "Pace",
    "Provider",
    "Refusal",
    "Rejection",
    "RowOutcome",
    "RowRule",
    "StatusLookup",
    "json_body",
    "json_request",
    "json_rows",
    "retry_after",
]


# Awaited before each request a lookup makes: the provider's rate limit (tasks/reconcile.py passes the
# same token bucket sending uses).
Pace = Callable[[], Awaitable[None]]


class BatchNotFoundError(TerminalError):
    """The provider answered, in its own words (its error code, not a bare 404), that it holds no such batch:
    proof that nothing of it was accepted."""


class Refusal(NamedTuple):
    """A module's reading of an error body."""

    code: str | None  # the provider's code, None if it gave none
    message: str
    split: bool = False  # a smaller request can avoid the cause (a row refuses the whole request, …)
    rows: tuple[int, ...] = ()  # positions of the rows the refusal names, where the provider names them


class Provider:
    """Base class. Subclasses set `caps`, `STATES` and `REFUSALS` and implement `build_request`,
    `read_outcomes` (a 2xx answer) and `read_refusal` (an error body).

    A provider speaks of a row in two different ways, and a word missing from our tables means opposite
    things in each, so there are two tables and two rules:

    * a refusal: "I did not take this row (or this request), code X" (robase's `error.type`, the sandbox's
      `code`, textingline's 33xxx). Whatever X is, the provider said no: the row was not accepted. A code in
      `REFUSALS` gets its status there (FAILED for the transient ones); any other code is REJECTED, with the
      code and the provider's message kept (`refused`, `refusal_status`). Never UNKNOWN.
    * a state: "I hold this message and it is X" (robase's `sms.status`, Postman's `latestStatus`). A state
      missing from `STATES` may well mean accepted, so it is UNKNOWN (`state_status`): reconcile, do not
      re-send blindly.

    `parse_response` is the same for every provider: a 4xx/5xx refuses the whole request (`raise_for_refusal`,
    then `http_refusal` for what the module has no specific handling for); a 2xx is read by the module; any
    other answer, or a 2xx it cannot read, may have been accepted (ambiguous); and a row the answer does not
    account for is UNKNOWN: sent, with no word on it.
    """

    # The class's declaration; an instance's `caps` are `capabilities(settings)`, which may differ.
    caps: Capabilities
    # The provider's message/batch states -> our status. An unlisted state is UNKNOWN (see `state_status`).
    STATES: ClassVar[Mapping[str, Status]] = {}
    # A message's state, as a lookup reports it -> what became of it (`delivery_state`). An unlisted state
    # says nothing: no delivery fact is recorded from it.
    DELIVERY_STATES: ClassVar[Mapping[str, DeliveryStatus]] = {}
    # The provider's refusal codes whose status is not plain REJECTED, and the documented ones for the
    # reader. An unlisted code is REJECTED (see `refusal_status`). Only REJECTED or FAILED may appear here.
    REFUSALS: ClassVar[Mapping[str, Status]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # At class definition, so that no table can ever turn an explicit refusal into "maybe accepted".
        wrong = {code: s for code, s in cls.REFUSALS.items() if s not in (Status.REJECTED, Status.FAILED)}
        if wrong:
            raise TypeError(f"{cls.__name__}.REFUSALS: a refusal is REJECTED or FAILED, not {wrong}")
        caps = cls.__dict__.get("caps")
        if not isinstance(caps, Capabilities):
            return
        # An asynchronous provider's rows are settled only by a later lookup: it must have one, and say so.
        looks_up = DeliveryChannel.LOOKUP in caps.delivery_reports
        if caps.outcome is OutcomeTiming.ASYNC and not looks_up:
            raise TypeError(f"{cls.__name__}: an ASYNC provider reports delivery by LOOKUP")
        if looks_up and (cls.lookup_status is Provider.lookup_status or not cls.DELIVERY_STATES):
            raise TypeError(f"{cls.__name__}: a LOOKUP provider implements lookup_status and DELIVERY_STATES")

    def __init__(self, settings: ProviderSettings) -> None:
        self.settings = settings
        self.caps = self.capabilities(settings)

    @classmethod
    def capabilities(cls, settings: ProviderSettings) -> Capabilities:
        """The capabilities under these settings: the class's own, unless a limit depends on where the
        provider sends (Postman's test environment allows fewer rows per file). Validate, plan and send read
        the instance's `caps`; only the registry reads the class's, for the default base URL."""
        return cls.caps

    # ---- the pipeline every provider fills in -------------------------------------------------------

    def build_request(self, batch: Batch) -> httpx.Request:
        raise NotImplementedError

    def parse_response(self, batch: Batch, response: httpx.Response) -> Sequence[RowOutcome]:
        """Outcomes in the order of `batch.rows` (`Outcomes` where the module read the answer as columns); a
        SendError subclass for whole-batch failures."""
        payload = json_body(response)
        status = response.status_code
        if status >= 400:
            self.raise_for_refusal(response, payload)
        outcomes = self.read_outcomes(batch, response, payload) if 200 <= status < 300 else None
        if outcomes is None:
            # Neither a refusal nor an answer we can read (a 3xx, a gateway's page with a 200): the request
            # may well have been accepted.
            raise AmbiguousError(
                f"{self.caps.name}: unreadable HTTP {status} response", code="unreadable_response"
            )
        if isinstance(outcomes, Outcomes):  # read as columns, every row accounted for
            return outcomes
        missing = RowOutcome(
            Status.UNKNOWN, "missing_in_response", f"row absent from {self.caps.name}'s answer"
        )
        # A row the answer does not account for was sent, with no word on it: unknown, not lost.
        return [o or missing for o in outcomes]

    def read_outcomes(
        self, batch: Batch, response: httpx.Response, payload: Any
    ) -> Sequence[RowOutcome | None] | None:
        """A 2xx answer read: one entry per row of `batch` (None for a row the answer does not account for,
        which becomes UNKNOWN), or None for an answer this module cannot read (ambiguous). `payload` is the
        body's JSON, None when it is not JSON. A module may answer `Outcomes` (columns, no None) for the
        common answer, which the engine then never turns into a tuple per row."""
        raise NotImplementedError

    def read_refusal(self, response: httpx.Response, payload: Any) -> Refusal:
        """The code, message and cause of an error answer, from the provider's error body."""
        return Refusal(None, "")

    def raise_for_refusal(self, response: httpx.Response, payload: Any) -> NoReturn:
        """A 4xx/5xx answer: the statuses every provider shares (`raise_for_transport_status`), then the
        module's code and message (`read_refusal`) through `http_refusal`. A module whose vendor codes
        outrank the HTTP status (textingline) or that reads a status differently (Postman) overrides it."""
        self.raise_for_transport_status(response)
        refusal = self.read_refusal(response, payload)
        raise self.http_refusal(
            response, refusal.code, refusal.message, split=refusal.split, rows=refusal.rows
        )

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

    async def lookup_status(
        self, client: httpx.AsyncClient, batch_ref: str, *, pace: Pace | None = None
    ) -> list[StatusLookup]:
        """Every recipient of a batch, as the provider reports it now (a provider with LOOKUP in its
        `delivery_reports`). `pace` is awaited before each request. Raises BatchNotFoundError when the
        provider says it has no such batch, and the send errors' classes for anything else (a 5xx, a
        timeout, a 429 with its wait)."""
        raise NotImplementedError(f"{self.caps.name} has no status lookup")

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
    def delivery_state(cls, state: str | None) -> DeliveryStatus | None:
        """What became of a message in `state` (DELIVERY_STATES); None for a state the table does not know."""
        return None if state is None else cls.DELIVERY_STATES.get(state)

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
                f"{self.caps.name}: HTTP 429 rate limited", code="http_429", retry_after=self.wait(response)
            )
        if code >= 500:
            raise ServerError(f"{self.caps.name}: HTTP {code}", code=f"http_{code}")

    def wait(self, response: httpx.Response) -> float | None:
        """Seconds a 429 asks us to wait (None: not said, the engine's bucket decides)."""
        return retry_after(response)

    def reject_batch(
        self, response: httpx.Response, code: str, message: str, *, split: bool, rows: tuple[int, ...] = ()
    ) -> BatchRejectedError:
        return BatchRejectedError(
            f"{self.caps.name}: batch refused (HTTP {response.status_code}, {code}): {message}",
            code=code,
            retryable_split=split,
            rows=rows,
        )

    def http_refusal(
        self,
        response: httpx.Response,
        code: str | None,
        message: str,
        *,
        split: bool = False,
        rows: tuple[int, ...] = (),
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
        return self.reject_batch(response, code, message, split=split, rows=rows)
