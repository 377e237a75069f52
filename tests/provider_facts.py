"""Every provider's facts the test suites need, in one table: `FACTS[name]`, keyed by the names of
smscast.providers.names (tests/providers/test_registry.py checks that each name has its row).

What smscast's own code declares is read from there, never copied here: the adapter class (the registry), the
sandbox's name for the emulator, the credential variables (smscast.settings.env_prefix) and the capabilities
(`caps`: limits, idempotency, whole-batch refusals, what content it sends). What is here is what only the tests
know: a sender each vendor takes, a template for the template-only ones, the API key's shape, how to lift an
emulator's documented rate limit, the vendor's test environment, and, per suite:

* `contract` (tests/providers/contract/): the limits as each vendor's document states them, written here
  independently of the adapter's declaration so that the suite's comparison of the two can fail; how to make
  rows refused; and the vendor's answer refusing rows with a code no adapter lists;
* `soak` (tests/reliability/): the soak campaigns' content and what the emulator's per-row fault knobs do.

The hostile-input suites (tests/hostile/) and the end-to-end tests (tests/providers/test_*_e2e.py) need only the
common facts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from smscast.providers.base import Provider
from smscast.providers.model import Capabilities, Content
from smscast.providers.names import ProviderName, emulator_name
from smscast.providers.postman import TEST_ENV_VAR as POSTMAN_TEST_ENV_VAR
from smscast.providers.registry import provider_class
from smscast.settings import env_prefix

# ---- the types -------------------------------------------------------------------------------------------

# An answer refusing the rows whose phones are in the set, the rest taken, in the vendor's documented shape.
Answer = Callable[[httpx.Request, set[str]], httpx.Response]


@dataclass(frozen=True)
class Edit:
    """A column of some rows replaced by value(old value)."""

    column: str
    value: Callable[[Any], str]


@dataclass(frozen=True)
class Refusal:
    """How to make given rows refused, and the code the refused rows then carry."""

    code: str
    by_suffix: bool = False  # the emulator's `reject_suffixes` knob names the rows' phones
    edit_input: Edit | None = None  # applied to the input rows: they still pass our validation
    edit_planned: Edit | None = None  # applied to the planned rows: validation would have stopped them


@dataclass(frozen=True)
class ContractFacts:
    """What the contract suite needs: a scenario that does not apply is skipped with the document's reason."""

    row: Callable[[int], dict[str, Any]]  # the input columns of recipient i, phone aside
    per_row: Refusal  # one or two rows refused (per row, or isolated by bisection)
    whole_batch: Refusal | None  # a row that refuses its whole request, or None ...
    whole_batch_skip: str  # ... and the document's reason
    max_rows: int  # documented rows per request
    over_max: tuple[int, str]  # HTTP status and our error code for one row more than that
    unlisted_answer: Answer  # refusing rows with a code the adapter does not list ...
    unlisted_code: str  # ... and the code those rows keep
    body_chars: int | None = None  # documented body limit in characters
    body_over_code: str | None = None  # the emulator's code for a body one character over
    body_skip: str = ""
    encoding: str | None = None  # "segments", "chars" or "allow_unicode": what GSM-7 vs UCS-2 means here
    encoding_skip: str = ""
    waits_on_429: bool = True  # the vendor's 429 says how long to wait (Retry-After, X-RateLimit-Reset)
    row_keys_in_ledger: bool = True  # the wire carries our per-row key, and the ledger records it


@dataclass(frozen=True)
class SoakFacts:
    """What the reliability suite needs: its campaigns' content, and what the emulator does with the per-row
    fault knobs at send time."""

    content: Mapping[str, Any]  # CampaignSpec fields beside the common ones: body, template_vars
    columns: Callable[[int], dict[str, str]] | None = None  # extra input columns by row
    per_row_reject: bool = True  # reject_suffixes -> that row `rejected` (bisected out where whole-batch)
    transient_at_send: bool = True  # transient_suffixes -> `failed` rows now (else only in a later lookup)
    transient_suffix: str = "77"  # 1 % of the rows
    reject_suffix: str = "013"  # 0.1 %: a whole-file refusal (Postman) bisects ~14 requests per bad row
    marker_rejects: bool = False  # textingline: a SHAFT-TEST body refuses its whole (sub-)batch


@dataclass(frozen=True)
class ProviderFacts:
    name: ProviderName
    sender: str | None  # a sender id the vendor takes; None: a campaign gives none
    contract: ContractFacts
    soak: SoakFacts
    template: str | None = None  # template-only vendors: a template (Postman: the campaign that holds it)
    language: str | None = None  # Postman: the rows' language
    basic_auth: bool = False  # the API key is `key_id:secret`
    lift: Mapping[str, Any] = field(default_factory=dict)  # emulator knobs lifting its documented rate limit
    # A spec `rate` for tests where the documented one would make even a short campaign last minutes.
    test_rate: float | None = None
    # The vendor's test environment: the emulator's path for it, and the variables telling the adapter.
    test_env_path: str = ""
    test_env_vars: Mapping[str, str] = field(default_factory=dict)

    @property
    def emulator(self) -> str:
        """The sandbox's name for the emulator (its ledger, stats and knobs)."""
        return emulator_name(self.name)

    @property
    def adapter(self) -> type[Provider]:
        return provider_class(self.name)

    @property
    def caps(self) -> Capabilities:
        """The adapter's declared capabilities (production settings)."""
        return self.adapter.caps

    @property
    def sends_text(self) -> bool:
        """Whether a campaign can carry our own text: a body, or Postman's single-{{body}} template."""
        return self.caps.content is not Content.TEMPLATE or self.caps.template_body

    @property
    def key_env(self) -> str:
        return f"{env_prefix(self.name)}_API_KEY"

    @property
    def base_url_env(self) -> str:
        return f"{env_prefix(self.name)}_BASE_URL"

    def api_key(self, key: str) -> str:
        """`key` in the shape the adapter expects: a basic-auth pair is made of it, with parts that differ
        (`key-id:key-secret`), so that a search for either part finds only that part."""
        return f"{key}-id:{key}-secret" if self.basic_auth else key

    def spec_fields(self, **content: Any) -> dict[str, Any]:
        """CampaignSpec fields of a valid campaign: the sender, template and language this vendor needs, and
        the caller's `content` (body, template_vars, …)."""
        common = {"sender": self.sender, "template": self.template, "language": self.language}
        return {k: v for k, v in common.items() if v is not None} | content


# ---- the contract suite's row edits and vendor answers -----------------------------------------------------

# textingline refuses the WHOLE batch (33019) for a body with the emulator's compliance marker; the body passes
# our validation (the marker is content, not a rule we can check).
COMPLIANCE_MARKER = Edit("body", lambda b: f"{b} SHAFT-TEST")
# textingline's 33016 "invalid characters": validation quarantines it (invalid_characters).
CONTROL_CHARACTER = Edit("body", lambda b: f"{b} \x07")
# sent.dm refuses the whole request (400 VALIDATION_001, details["to[i]"]) for one malformed `to`.
MALFORMED_TO = Edit("phone", lambda p: "+0" + p[1:])
# Postman: "All template parameters must be filled for every row"; validation quarantines an empty variable.
BLANK_PARAMETER = Edit("name", lambda _: " ")

NO_TEXT = "the provider renders its own template: smscast sends no body, so there is no body limit to reach"
REFUSAL_TEXT = "the recipient opted out of all messages"


def body_row(i: int) -> dict[str, Any]:
    return {"body": f"Hi N{i}, your order #{1000 + i} has shipped"}


def _sandbox_answer(request: httpx.Request, bad: set[str]) -> httpx.Response:
    messages = orjson.loads(request.content)["messages"]
    results = [
        {"index": i, "status": "rejected", "code": "phone_blocked", "message": REFUSAL_TEXT}
        if m["to"] in bad
        else {"index": i, "status": "accepted", "message_id": f"sbx_{i}"}
        for i, m in enumerate(messages)
    ]
    return httpx.Response(200, json={"batch": "bat_mock", "results": results})


def _sent_dm_answer(request: httpx.Request, bad: set[str]) -> httpx.Response:
    # The document shows no per-recipient error; an entry with one and no message_id is a refusal.
    recipients = [
        {"to": to, "channel": "sms", "error": {"code": "RECIPIENT_OPTED_OUT", "message": REFUSAL_TEXT}}
        if to in bad
        else {"message_id": f"msg_{i}", "to": to, "channel": "sms"}
        for i, to in enumerate(orjson.loads(request.content)["to"])
    ]
    data = {"status": "QUEUED", "recipients": recipients}
    return httpx.Response(
        200, json={"success": True, "data": data, "error": None, "meta": {"request_id": "r"}}
    )


def _robase_answer(request: httpx.Request, bad: set[str]) -> httpx.Response:
    data = [
        {"index": i, "error": {"type": "opted_out", "message": REFUSAL_TEXT, "field": "to"}}
        if m["to"] in bad
        else {"index": i, "sms": {"id": f"sms_{i}", "status": "queued"}}
        for i, m in enumerate(orjson.loads(request.content)["messages"])
    ]
    failed = sum("error" in d for d in data)
    body = {"accepted": len(data) - failed, "failed": failed, "success": failed == 0, "data": data}
    return httpx.Response(200, json=body)


def _textingline_answer(request: httpx.Request, bad: set[str]) -> httpx.Response:
    recipients = orjson.loads(request.content)["recipients"]
    if any(r["to"] in bad for r in recipients):
        return httpx.Response(400, json={"code": 33099, "message": REFUSAL_TEXT, "status": 400})
    return httpx.Response(
        202, json={"id": "brc_mock", "totalRecipients": len(recipients), "status": "queued"}
    )


def _postman_answer(request: httpx.Request, bad: set[str]) -> httpx.Response:
    if any(p.removeprefix("+").encode() in request.content for p in bad):  # the CSV's recipient column
        return httpx.Response(400, json={"code": "recipient_opted_out", "message": REFUSAL_TEXT})
    return httpx.Response(201, json={"isValid": True, "batchId": "batch_mock"})


def _instasent_answer(request: httpx.Request, bad: set[str]) -> httpx.Response:
    items = orjson.loads(request.content)
    entities = [
        {"id": f"id_{i}", "clientId": it["clientId"], "to": it["to"], "status": "enqueued"}
        for i, it in enumerate(items)
        if it["to"] not in bad
    ]
    errors = [{"fields": {"recipient": [REFUSAL_TEXT]}} for it in items if it["to"] in bad]
    return httpx.Response(201, json={"entities": entities, "errors": errors})


# ---- the table -------------------------------------------------------------------------------------------

LIFTED = {"rate_limit_rps": 0}  # the emulator's documented rate limit off
TIERS = ("gold", "silver", "bronze")

_FACTS = (
    ProviderFacts(
        name="sandbox",
        sender="ACME",
        # smscast's own API: 200 requests/s, never in a test's way.
        contract=ContractFacts(
            row=body_row,
            per_row=Refusal("invalid_number", by_suffix=True),
            whole_batch=None,
            whole_batch_skip="smscast's sandbox API refuses rows one by one (`results[]` by index); its 400s "
            "(batch_too_large, invalid_sender, bad JSON) are about the request, never caused by a row",
            max_rows=1000,
            over_max=(400, "batch_too_large"),
            unlisted_answer=_sandbox_answer,
            unlisted_code="phone_blocked",
            body_chars=1600,
            body_over_code="body_too_long",
            encoding="segments",
        ),
        soak=SoakFacts(content={"body": "Hi {{name}}, your order ships today."}),
    ),
    ProviderFacts(
        name="sent-dm",
        sender=None,
        template="tmpl_news",
        lift=LIFTED,  # 200 requests/minute
        contract=ContractFacts(
            # One value for every row: sent.dm's parameters are per request, so equal values share a batch.
            row=lambda i: {"announcement": "New feature launched!"},
            per_row=Refusal("recipient_rejected", by_suffix=True),
            whole_batch=Refusal("VALIDATION_001", edit_planned=MALFORMED_TO),
            whole_batch_skip="",
            max_rows=1000,
            over_max=(400, "VALIDATION_001"),
            unlisted_answer=_sent_dm_answer,
            unlisted_code="RECIPIENT_OPTED_OUT",
            body_skip=f"sent.dm sends templates only: {NO_TEXT}",
            encoding_skip=f"sent.dm sends templates only: {NO_TEXT}",
            row_keys_in_ledger=False,  # one Idempotency-Key header per request, no per-message key
        ),
        soak=SoakFacts(
            content={"template_vars": ("tier",)},
            columns=lambda i: {"tier": TIERS[i % 3]},
            # sent.dm answers a transient recipient with a 502 for the whole request: keep them rare.
            transient_suffix="0077",
        ),
    ),
    ProviderFacts(
        name="robase",
        sender="SHUTTLERS",
        lift=LIFTED,  # 4 batches/s
        contract=ContractFacts(
            row=body_row,
            per_row=Refusal("phone_invalid", by_suffix=True),
            whole_batch=None,
            whole_batch_skip="robase's document: 'Batch always returns HTTP 200 - even when some rows fail'; "
            "its only whole-request refusals (over 1000 rows, a bad send_at) are not caused by one row",
            max_rows=1000,
            over_max=(422, "batch_too_large"),
            unlisted_answer=_robase_answer,
            unlisted_code="opted_out",
            body_chars=1600,
            body_over_code="body_too_long",
            encoding="chars",
        ),
        soak=SoakFacts(content={"body": "Hi {{name}}, your ride is at 10:00am."}),
    ),
    ProviderFacts(
        name="textingline",
        sender="+18005559876",
        basic_auth=True,
        lift=LIFTED,  # 5 requests/minute
        test_rate=50.0,
        contract=ContractFacts(
            row=body_row,
            # Refused as a whole; bisection stops below 2 x 10 rows, so a sub-batch of 10-19 goes down with it.
            per_row=Refusal("33019", edit_input=COMPLIANCE_MARKER),
            whole_batch=Refusal("33016", edit_planned=CONTROL_CHARACTER),
            whole_batch_skip="",
            max_rows=5000,
            over_max=(400, "33005"),
            # A code the adapter cannot tell is caused by a row: the whole request's rows are rejected with it.
            unlisted_answer=_textingline_answer,
            unlisted_code="33099",
            body_chars=640,
            body_over_code="33005",  # whole batch
            encoding="chars",
        ),
        soak=SoakFacts(
            content={"body": "Hi {{name}}, order shipped."},
            per_row_reject=False,  # the per-row knobs only change the later status lookup
            transient_at_send=False,
            marker_rejects=True,
        ),
    ),
    ProviderFacts(
        name="postman",
        sender=None,  # Postman sends from the campaign's registered sender and refuses one given
        template="campaign_news",
        language="english",
        lift=LIFTED,  # 10 TPS per campaign
        # "20 rows maximum if you are in the test environment"; the production limit of 1,000 rows is only
        # the adapter's own budget under the 40 MB file limit, with no emulator refusal to test it against.
        test_env_path="/test",
        test_env_vars={POSTMAN_TEST_ENV_VAR: "1"},
        contract=ContractFacts(
            row=lambda i: {"name": f"Person {i}"},
            # Any row error fails the whole file; the engine bisects down to the single row (no minimum).
            per_row=Refusal("parameter_invalid", by_suffix=True),
            whole_batch=Refusal("parameter_invalid", edit_planned=BLANK_PARAMETER),
            whole_batch_skip="",
            max_rows=20,  # in the test environment, where the contract suite runs
            over_max=(400, "parameter_invalid"),
            unlisted_answer=_postman_answer,
            unlisted_code="recipient_opted_out",
            body_skip="Postman fills the campaign's template from CSV parameters; the document gives no body or "
            "segment limit, only the 40 MB file (the adapter's row_too_large budget, tested in test_postman.py)",
            encoding_skip="Postman renders the campaign's template; the document gives no segment or encoding "
            "limit for the CSV parameters",
            waits_on_429=False,  # "Implement exponential backoff": no Retry-After
            row_keys_in_ledger=False,  # no idempotency of any kind
        ),
        # Production (no /test): files of up to 1,000 rows; the campaign's template is a single {{body}}.
        soak=SoakFacts(
            content={"body": "Hi {{name}}, your application is ready."},
            transient_at_send=False,  # accepted; Retrieve Batch Messages reports the failure later
        ),
    ),
    ProviderFacts(
        name="instasent",
        sender="Instasent",
        lift=LIFTED,  # the adapter's ASSUMED 5 requests/s
        contract=ContractFacts(
            row=body_row,
            per_row=Refusal("to:invalid", by_suffix=True),
            whole_batch=None,
            whole_batch_skip="Instasent's document: 'The invalid item lands in errors; the rest of the batch "
            "still goes through'; 413/422 answer only a request of more than 100 items",
            max_rows=100,
            over_max=(413, "http_413"),
            unlisted_answer=_instasent_answer,
            unlisted_code="recipient:invalid",  # Instasent's codes are `field:kind`
            body_skip="Instasent documents no length limit for `text`",
            encoding="allow_unicode",
        ),
        soak=SoakFacts(
            content={"body": "Hola {{name}}, tu pedido sale hoy."},
            transient_at_send=False,  # no per-item transient refusal in Instasent's API
        ),
    ),
)

FACTS: dict[str, ProviderFacts] = {f.name: f for f in _FACTS}  # in the order of providers/names.py
