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

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from smscast.campaign import CampaignSpec
from smscast.form_groups import Advanced, FormGroup, Limits, Message, Policy, Provider, Recipients

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


class CampaignForm(FormGroup):
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
            "require_mobile": adv.require_mobile,
            **_policy_values(self.policy),
            "fallback": p.fallback.strip() or None,
            "fallback_sender": p.fallback_sender.strip() or None,
            "runner": adv.runner,
            "dask_address": adv.dask_address.strip() or None,
            "dask_workers": adv.dask_workers,
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
            provider=Provider(
                name=s.provider,
                sender=s.sender or "",
                fallback=s.fallback or "",
                fallback_sender=s.fallback_sender or "",
            ),
            limits=Limits(
                rate=s.rate,
                concurrency=s.concurrency,
                batch_size=s.batch_size,
                request_timeout=s.request_timeout,
                max_failure_rate=s.max_failure_rate,
                min_sample=s.min_sample,
            ),
            advanced=Advanced(
                results=s.results,
                columns=dict(s.columns),
                encoding=s.encoding,
                allow_empty=s.allow_empty,
                allow_braces=s.allow_braces,
                require_mobile=s.require_mobile,
                runner=s.runner,
                dask_address=s.dask_address or "",
                dask_workers=s.dask_workers,
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
