"""The groups of the campaign form (smscast/form.py): CampaignSpec's settings as a person fills them in, one
card each in Prefect's UI. How the UI renders a group, and so the choices made here, is in smscast/form.py's
docstring."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from smscast.campaign import ProviderName

__all__ = [
    "Advanced",
    "FormGroup",
    "Limits",
    "Message",
    "Policy",
    "Provider",
    "Recipients",
    "number_or_empty",
]


def _positions(schema: dict[str, Any]) -> None:
    """Number the properties in declaration order: the UI sorts by `position` and would otherwise rely on
    its sort being stable."""
    for position, prop in enumerate(schema.get("properties", {}).values()):
        prop["position"] = position


def number_or_empty(schema: dict[str, Any]) -> None:
    """An optional number's schema as the number alone, without a default: one plain box, empty meaning
    "the provider's value" (the model still takes None, and the server's check adds null back)."""
    branches = [s for s in schema.pop("anyOf", []) if s.get("type") != "null"]
    if branches:
        schema.update(branches[0])
    schema.pop("default", None)


class FormGroup(BaseModel):
    # hide_input_in_errors: a refused value (a URL with a password in it) must not be echoed by pydantic.
    model_config = ConfigDict(
        frozen=True, extra="forbid", hide_input_in_errors=True, json_schema_extra=_positions
    )


class Recipients(FormGroup):
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


class Message(FormGroup):
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


class Provider(FormGroup):
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
    fallback: str = Field(
        default="",
        title="Fallback provider",
        description="Another provider for rows the first provably never accepted (failed after retries, an "
        "open circuit), in the same run. Empty: none.",
    )
    fallback_sender: str = Field(
        default="", title="Fallback sender", description="Its sender, if it needs one."
    )


class Limits(FormGroup):
    """How fast. Empty: the provider's own limits, which suit almost every campaign."""

    rate: float | None = Field(
        default=None,
        gt=0,
        title="Requests per second",
        description="Empty: the provider's limit.",
        json_schema_extra=number_or_empty,
    )
    concurrency: int | None = Field(
        default=None,
        ge=1,
        title="Concurrent requests",
        description="Requests in flight at once. Empty: the provider's.",
        json_schema_extra=number_or_empty,
    )
    batch_size: int | None = Field(
        default=None,
        ge=1,
        title="Rows per request",
        description="Empty: the provider's maximum.",
        json_schema_extra=number_or_empty,
    )
    request_timeout: float | None = Field(
        default=None,
        gt=0,
        title="Request timeout (seconds)",
        description="How long to wait for the provider's answer. Empty: the provider's.",
        json_schema_extra=number_or_empty,
    )
    max_failure_rate: float = Field(
        default=0.5,
        gt=0,
        le=1,
        title="Circuit breaker: failure share",
        description="Pause when more than this share of the last rows failed at the provider.",
    )
    min_sample: int = Field(
        default=500, ge=1, title="Circuit breaker: rows", description="Over how many rows."
    )


class Advanced(FormGroup):
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
    require_mobile: bool = Field(
        default=False,
        title="Mobile numbers only",
        description="Hold back numbers that cannot receive SMS (landlines, toll-free, premium rate…) as "
        "phone_not_mobile.",
    )
    runner: Literal["threads", "dask"] = Field(
        default="threads",
        title="Runner",
        description="threads: on the worker that runs the flow. dask: shards run on a Dask cluster (results on "
        "s3://).",
    )
    dask_address: str = Field(
        default="", title="Dask scheduler", description="tcp://HOST:PORT. Empty: local."
    )
    dask_workers: int | None = Field(
        default=None,
        ge=1,
        title="Dask workers",
        description="Without a scheduler: local worker processes.",
        json_schema_extra=number_or_empty,
    )


_QUIET = "HH:MM-HH:MM in each recipient's local time (21:00-08:00): their rows wait (held) until it ends."
_PRICES = (
    "CSV or Parquet (provider, country or calling_code, price_per_segment, currency): the estimated cost."
)


class Policy(FormGroup):
    """Who may be messaged, when, and at what cost. Empty: only the results location's opt-out list applies."""

    max_per_recipient: int | None = Field(
        default=None,
        ge=1,
        title="Messages per recipient",
        description="At most this many messages accepted to one number within the window below, counting "
        "every campaign under the same results location. Empty: no cap.",
        json_schema_extra=number_or_empty,
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
        json_schema_extra=number_or_empty,
    )
