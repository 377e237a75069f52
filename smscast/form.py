"""The campaign form of the deployed flows: CampaignSpec's settings grouped the way a person fills them in.

Prefect's UI renders a flow parameter that is a pydantic model as a form, and each nested model as a card
of its own. What prefect 3.8.8's UI does with the JSON schema (its schema form, ui-v2), and so the choices
made here:

* fields are shown in `position` order (absent: declaration order), labelled with their `title` and
  described by their `description`; a field not in `required` gets " (Optional)" after its label;
* an enum is a choice; a `default` is filled in when the deployment gives no value; an empty text or number
  box is left out of the parameters, so the model's default applies;
* `X | None` is a choice between X and None ("Property is type 'None'"), hence optional text is `str = ""`
  here (empty: not set, None in the spec) and optional numbers show the number alone (`_number_or_empty`);
* the UI and the server check values against the schema with jsonschema, whose words for a `pattern` are
  the regex itself: no pattern is put in the schema. The campaign id's rule is in its description and checked
  here, in words; so is everything CampaignSpec checks (`to_spec` runs when the form is validated).

CampaignSpec stays flat (the command line, the flows and the results use it): `CampaignForm.to_spec()` builds
it. The endpoint (`base_url`: the worker's SMSCAST_<PROVIDER>_BASE_URL), `shard_batches` and `attempt` are
how smscast runs, not what a person decides, so they are not on the form.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from smscast.campaign import CampaignSpec, ProviderName

__all__ = [
    "OFF_FORM",
    "Advanced",
    "CampaignForm",
    "Limits",
    "Message",
    "Policy",
    "Provider",
    "Recipients",
]

# CampaignSpec's fields that the form leaves to their defaults (tests/test_form.py: every other field is on it).
OFF_FORM: tuple[str, ...] = ("base_url", "shard_batches", "attempt")

_CAMPAIGN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_CAMPAIGN_ID_RULE = "1–64 letters, digits, '_', '.' or '-', starting with a letter or digit"


def _positions(schema: dict[str, Any]) -> None:
    """Number the properties in declaration order: the UI sorts by `position` and would otherwise rely on
    its sort being stable."""
    for position, prop in enumerate(schema.get("properties", {}).values()):
        prop["position"] = position


def _number_or_empty(schema: dict[str, Any]) -> None:
    """An optional number's schema as the number alone, without a default: one plain box, empty meaning
    "the provider's value" (the model still takes None, and the server's check adds null back)."""
    branches = [s for s in schema.pop("anyOf", []) if s.get("type") != "null"]
    if branches:
        schema.update(branches[0])
    schema.pop("default", None)


class _Group(BaseModel):
    # hide_input_in_errors: a refused value (a URL with a password in it) must not be echoed by pydantic.
    model_config = ConfigDict(
        frozen=True, extra="forbid", hide_input_in_errors=True, json_schema_extra=_positions
    )


class Recipients(_Group):
    """Who is messaged."""

    source: str = Field(
        title="Source",
        description="Where the recipients are: a path or s3://bucket/key (CSV, Parquet, NDJSON), "
        "postgresql://… or duckdb:///file.db. A phone column is required; a body column gives each row "
        "its own text.",
        min_length=1,
    )
    query: str = Field(
        default="",
        title="SQL query",
        description="For postgresql:// and duckdb:// sources: the SELECT that returns the recipients.",
    )
    default_country: str = Field(
        default="",
        title="Default country",
        description="ISO region (GB, SG, …) for numbers written without +. Empty: every number needs its "
        "country code.",
    )
    suppress: list[str] = Field(
        default_factory=list,
        title="Do not message (opt-out lists)",
        description="Sources with a phone column whose numbers are held back (status suppressed, opted_out), "
        "besides the results location's managed opt-out list, which always applies.",
    )
    suppress_query: str = Field(
        default="",
        title="Opt-out SQL query",
        description="For opt-out lists that are postgresql:// or duckdb:// sources: the SELECT of their phones.",
    )


class Message(_Group):
    """What they are sent. Empty body and template: each row's text comes from the source's body column."""

    body: str = Field(
        default="",
        title="Message body",
        description="The text, with {{column}} placeholders filled from each recipient's row, e.g. "
        "Hi {{name}}. Empty: the source's body column.",
    )
    template: str = Field(
        default="",
        title="Provider template",
        description="A template kept by the provider: sent.dm template id, robase template name, Postman "
        "campaign id. Empty: none.",
    )
    template_vars: list[str] = Field(
        default_factory=list,
        title="Template variables",
        description="Columns the provider template needs in every row.",
    )
    language: str = Field(default="", title="Language", description="Default language (Postman only).")


class Provider(_Group):
    """Who sends it."""

    name: ProviderName = Field(
        title="Provider",
        description="The SMS provider to send through. sandbox is smscast's own test provider: nothing "
        "reaches a phone.",
    )
    sender: str = Field(
        default="",
        title="Sender",
        description="Sender id or number, as the provider has it registered. Empty: the provider's "
        "default, where it has one.",
    )


class Limits(_Group):
    """How fast. Empty: the provider's own limits, which suit almost every campaign."""

    rate: float | None = Field(
        default=None,
        gt=0,
        title="Requests per second",
        description="Empty: the provider's limit.",
        json_schema_extra=_number_or_empty,
    )
    concurrency: int | None = Field(
        default=None,
        ge=1,
        title="Concurrent requests",
        description="Requests in flight at once. Empty: the provider's.",
        json_schema_extra=_number_or_empty,
    )
    batch_size: int | None = Field(
        default=None,
        ge=1,
        title="Rows per request",
        description="Empty: the provider's maximum.",
        json_schema_extra=_number_or_empty,
    )
    request_timeout: float | None = Field(
        default=None,
        gt=0,
        title="Request timeout (seconds)",
        description="How long to wait for the provider's answer. Empty: the provider's.",
        json_schema_extra=_number_or_empty,
    )


class Advanced(_Group):
    """Where results go, and what to do with unusual sources."""

    results: str = Field(
        title="Results location",
        description="A directory or s3://bucket/prefix where the campaign's results and report are written.",
        min_length=1,
    )
    columns: dict[str, str] = Field(
        default_factory=dict,
        title="Column mapping",
        description='Our column name → the source\'s, when they differ, e.g. {"phone": "msisdn", '
        '"body": "text"}.',
    )
    encoding: str = Field(
        default="utf-8",
        title="Text encoding",
        description="Of CSV and NDJSON sources: utf-8, latin-1, cp1252, utf-16, or another Python codec name.",
    )
    allow_empty: bool = Field(
        default=False,
        title="Allow an empty source",
        description="Run the campaign when the source has no rows (it completes with nothing sent). "
        "Off: an empty source is an error.",
    )
    allow_braces: bool = Field(
        default=False,
        title="Braces are meant",
        description="Send texts that still hold {{…}} after the placeholders are filled. Off: such rows are "
        "held back as template_unrendered.",
    )


_QUIET = "HH:MM-HH:MM in each recipient's local time (21:00-08:00): their rows wait (held) until it ends."
_PRICES = (
    "CSV or Parquet (provider, country or calling_code, price_per_segment, currency): the estimated cost."
)


class Policy(_Group):
    """Who may be messaged, when, and at what cost. Empty: only the results location's opt-out list applies."""

    max_per_recipient: int | None = Field(
        default=None,
        ge=1,
        title="Messages per recipient",
        description="At most this many messages accepted to one number within the window below, counting "
        "every campaign under the same results location. Empty: no cap.",
        json_schema_extra=_number_or_empty,
    )
    per_window: str = Field(default="", title="Frequency window", description="Of the cap: 90m, 24h, 7d, 2w.")
    quiet_hours: str = Field(default="", title="Quiet hours", description=_QUIET)
    allow_countries: list[str] = Field(
        default=[], title="Only these countries", description="ISO codes (GB)."
    )
    block_countries: list[str] = Field(default=[], title="Never these countries", description="ISO codes.")
    prices: str = Field(default="", title="Price list", description=_PRICES)
    max_cost: float | None = Field(
        default=None,
        gt=0,
        title="Spend cap",
        description="Needs a price list. A campaign estimated above it does not start; one that would pass it "
        "stops (over_budget).",
        json_schema_extra=_number_or_empty,
    )


# Where each CampaignSpec field is on the form, for messages about it.
_WHERE: dict[str, str] = {
    "campaign_id": "Campaign id",
    "dry_run": "Dry run",
    **{f: f"Recipients › {Recipients.model_fields[f].title}" for f in Recipients.model_fields},
    **{f: f"Message › {Message.model_fields[f].title}" for f in Message.model_fields},
    "provider": "Provider › Provider",
    "sender": "Provider › Sender",
    **{f: f"Limits › {Limits.model_fields[f].title}" for f in Limits.model_fields},
    **{f: f"Advanced › {Advanced.model_fields[f].title}" for f in Advanced.model_fields},
    **{f: f"Contact policy › {Policy.model_fields[f].title}" for f in Policy.model_fields},
}


class CampaignForm(_Group):
    """A campaign: who, what, through which provider. Re-running a campaign id resumes it; it never sends
    twice."""

    campaign_id: str = Field(
        title="Campaign id",
        description=f"Names the campaign in its results and idempotency keys: {_CAMPAIGN_ID_RULE}. The same "
        "id again resumes the campaign. (Nightly and inbox deployments add the date or the file to it.)",
        min_length=1,
        max_length=64,
    )
    dry_run: bool = Field(
        default=True,
        title="Dry run",
        description="On: load, check and plan the campaign and count its segments, and send nothing. "
        "Turn it off to send.",
    )
    recipients: Recipients = Field(title="Recipients", description=Recipients.__doc__)
    message: Message = Field(default_factory=Message, title="Message", description=Message.__doc__)
    provider: Provider = Field(title="Provider", description=Provider.__doc__)
    limits: Limits = Field(default_factory=Limits, title="Limits", description=Limits.__doc__)
    policy: Policy = Field(default_factory=Policy, title="Contact policy", description=Policy.__doc__)
    advanced: Advanced = Field(title="Advanced", description=Advanced.__doc__)

    @field_validator("campaign_id")
    @classmethod
    def _campaign_id(cls, v: str) -> str:
        v = v.strip()
        if not _CAMPAIGN_ID.fullmatch(v):
            raise PydanticCustomError("campaign_id", f"must be {_CAMPAIGN_ID_RULE}")
        return v

    @model_validator(mode="after")
    def _is_a_campaign(self) -> CampaignForm:
        # CampaignSpec's own checks (a password in the source, an unknown encoding, …) as form errors in
        # words, when the parameters are validated: before the flow starts, not halfway through it.
        self.to_spec()
        return self

    def to_spec(self) -> CampaignSpec:
        """The flat CampaignSpec; empty text becomes None. A CampaignSpec refusal is raised as one
        PydanticCustomError naming the form's fields."""
        r, m, p, lim, adv = self.recipients, self.message, self.provider, self.limits, self.advanced
        values: dict[str, Any] = {
            "campaign_id": self.campaign_id,
            "dry_run": self.dry_run,
            "source": r.source.strip(),
            "query": r.query.strip() or None,
            "default_country": r.default_country.strip() or None,
            "suppress": tuple(s.strip() for s in r.suppress if s.strip()),
            "suppress_query": r.suppress_query.strip() or None,
            "body": m.body if m.body.strip() else None,
            "template": m.template.strip() or None,
            "template_vars": tuple(v.strip() for v in m.template_vars if v.strip()),
            "language": m.language.strip() or None,
            "provider": p.name,
            "sender": p.sender.strip() or None,
            **lim.model_dump(),
            "results": adv.results.strip(),
            "columns": {k.strip(): v.strip() for k, v in adv.columns.items()},
            "encoding": adv.encoding.strip() or "utf-8",
            "allow_empty": adv.allow_empty,
            "allow_braces": adv.allow_braces,
            **_policy_values(self.policy),
        }
        try:
            return CampaignSpec.model_validate(values)
        except ValidationError as exc:
            raise PydanticCustomError(
                "campaign_settings", "{problems}", {"problems": "; ".join(_in_form_words(exc))}
            ) from None

    @classmethod
    def from_spec(cls, spec: CampaignSpec) -> CampaignForm:
        """The form holding a CampaignSpec (what the fields off the form hold is not carried)."""
        s = spec
        return cls(
            campaign_id=s.campaign_id,
            dry_run=s.dry_run,
            recipients=Recipients(
                source=s.source,
                query=s.query or "",
                default_country=s.default_country or "",
                suppress=list(s.suppress),
                suppress_query=s.suppress_query or "",
            ),
            message=Message(
                body=s.body or "",
                template=s.template or "",
                template_vars=list(s.template_vars),
                language=s.language or "",
            ),
            provider=Provider(name=s.provider, sender=s.sender or ""),
            limits=Limits(
                rate=s.rate,
                concurrency=s.concurrency,
                batch_size=s.batch_size,
                request_timeout=s.request_timeout,
            ),
            advanced=Advanced(
                results=s.results,
                columns=dict(s.columns),
                encoding=s.encoding,
                allow_empty=s.allow_empty,
                allow_braces=s.allow_braces,
            ),
            policy=Policy(
                max_per_recipient=s.max_per_recipient,
                per_window=s.per_window or "",
                quiet_hours=s.quiet_hours or "",
                allow_countries=list(s.allow_countries),
                block_countries=list(s.block_countries),
                prices=s.prices or "",
                max_cost=s.max_cost,
            ),
        )


def _policy_values(p: Policy) -> dict[str, Any]:
    return {
        "max_per_recipient": p.max_per_recipient,
        "per_window": p.per_window.strip() or None,
        "quiet_hours": p.quiet_hours.strip() or None,
        "allow_countries": tuple(p.allow_countries),
        "block_countries": tuple(p.block_countries),
        "prices": p.prices.strip() or None,
        "max_cost": p.max_cost,
    }


def _in_form_words(exc: ValidationError) -> list[str]:
    """CampaignSpec's errors in the preflight's words, each named by where it is on the form."""
    from smscast.preflight import describe_validation_error

    where = {name.replace("_", " "): label for name, label in _WHERE.items()}
    lines = []
    for line in describe_validation_error(exc):
        field, sep, words = line.partition(": ")
        lines.append(f"{where.get(field, field)}{sep}{words}")
    return lines
