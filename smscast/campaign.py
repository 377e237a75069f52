"""A campaign's parameters as one typed model: the command line fills it, the flows take it, and the
Prefect UI renders it as a form (titles, descriptions, defaults and choices come from here)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from smscast.providers.names import PROVIDER_NAMES, ProviderName

__all__ = [
    "CONTENT_FIELDS",
    "PROVIDER_NAMES",
    "QUIET_HOURS",
    "TEMPLATE_VAR",
    "CampaignSpec",
    "ProviderName",
    "duration_seconds",
]

# The fields that decide who is messaged and with what. A re-run of a campaign id must agree with the recorded
# campaign on all of them; the others (endpoint, rate, concurrency, timeouts, batch sizes, dry run, attempt) are
# how this run goes about it and may change between runs.
CONTENT_FIELDS: tuple[str, ...] = (
    "provider",
    "source",
    "query",
    "columns",
    "body",
    "template",
    "template_vars",
    "sender",
    "default_country",
    "language",
    "allow_braces",
    "require_mobile",
    "encoding",
    "suppress",
    "suppress_query",
    "max_per_recipient",
    "per_window",
    "quiet_hours",
    "allow_countries",
    "block_countries",
    "fallback",
    "fallback_sender",
)

TEMPLATE_VAR = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
QUIET_HOURS = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)$")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def duration_seconds(text: str) -> float:
    """`90m`, `24h`, `7d`, `2w`, `30s` in seconds; ValueError naming the accepted forms otherwise."""
    match = _DURATION.match(text.strip().lower())
    if match is None or float(match.group(1)) <= 0:
        raise ValueError(f"{text!r} is not a duration: use a number and a unit, as in 90m, 24h, 7d or 2w")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


class CampaignSpec(BaseModel):
    # hide_input_in_errors: a refused value (a URL with a password in it) must not be echoed by pydantic.
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    campaign_id: str = Field(
        title="Campaign id",
        description="Names the campaign in results and idempotency keys. Re-running the same id resumes it.",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
    )
    provider: ProviderName = Field(
        default="sandbox", title="Provider", description="SMS provider to send through."
    )
    source: str = Field(
        title="Recipients source",
        description="A local path, s3://bucket/key (CSV, Parquet, NDJSON), postgresql://… or duckdb:///file.db.",
    )
    results: str = Field(title="Results location", description="Local directory or s3://bucket/prefix.")
    query: str | None = Field(default=None, title="SQL query", description="Required for SQL sources.")
    sender: str | None = Field(
        default=None, title="Sender", description="Sender id or number, as the provider expects."
    )
    body: str | None = Field(
        default=None,
        title="Message body",
        description="Text with {{variable}} placeholders filled from columns. Omit to use the source's body column.",
    )
    allow_braces: bool = Field(
        default=False,
        title="Braces are meant",
        description="Send bodies that still hold {{…}} after rendering. Off: such rows are quarantined as "
        "template_unrendered (an export whose template was never filled in).",
    )
    require_mobile: bool = Field(
        default=False,
        title="Mobile numbers only",
        description="Quarantine valid numbers of a type that cannot receive SMS (landlines, toll-free, premium "
        "rate, shared cost, UAN, voicemail) as phone_not_mobile. Off: only numbers invalid for their country "
        "are refused.",
    )
    template: str | None = Field(
        default=None,
        title="Provider template",
        description="Provider-side template: sent.dm template id, robase template name, Postman campaign id. "
        "With a body too only where the provider's template takes our text (Postman's single {{body}}).",
    )
    template_vars: tuple[str, ...] = Field(
        default=(),
        title="Template variables",
        description="Columns the provider template needs in every row.",
    )
    default_country: str | None = Field(
        default=None,
        title="Default country",
        description="ISO region (GB, SG, …) for numbers typed without +.",
    )
    columns: dict[str, str] = Field(
        default_factory=dict,
        title="Column mapping",
        description="Our column name -> the source's, e.g. {'phone': 'msisdn', 'body': 'text'}.",
    )
    encoding: str = Field(
        default="utf-8",
        title="Text encoding",
        description="Encoding of CSV and NDJSON sources: utf-8 (default), latin-1, cp1252, utf-16, or any "
        "other Python codec name.",
    )
    allow_empty: bool = Field(
        default=False,
        title="Allow an empty source",
        description="Run a campaign whose source has no rows (it completes with nothing sent). Off: an "
        "empty source is an error.",
    )
    language: str | None = Field(default=None, title="Language", description="Default language (Postman).")
    suppress: tuple[str, ...] = Field(
        default=(),
        title="Suppression lists",
        description="Sources with a phone column (paths, s3://, postgresql://, duckdb://) whose numbers are "
        "not messaged in this campaign: their rows end `suppressed` (opted_out). The results location's "
        "managed opt-out list applies as well, always.",
    )
    suppress_query: str | None = Field(
        default=None,
        title="Suppression query",
        description="SQL for the suppression lists that are postgresql:// or duckdb:// sources.",
    )
    max_per_recipient: int | None = Field(
        default=None,
        ge=1,
        title="Messages per recipient",
        description="At most this many messages accepted to one number within --per-window, counting every "
        "campaign under the same results location (running ones too). Rows over it end suppressed "
        "(frequency_cap).",
    )
    per_window: str | None = Field(
        default=None,
        title="Frequency window",
        description="The window of the per-recipient cap: 90m, 24h, 7d, 2w.",
    )
    quiet_hours: str | None = Field(
        default=None,
        title="Quiet hours",
        description="HH:MM-HH:MM in the recipient's local time (e.g. 21:00-08:00): rows inside it end held "
        "(quiet_hours) and a release sends them when it ends. The zone comes from a `timezone` column (IANA "
        "name), else from the number.",
    )
    allow_countries: tuple[str, ...] = Field(
        default=(),
        title="Allowed countries",
        description="ISO codes (GB, IE): numbers of any other country end suppressed (country_blocked).",
    )
    block_countries: tuple[str, ...] = Field(
        default=(),
        title="Blocked countries",
        description="ISO codes whose numbers end suppressed (country_blocked).",
    )
    prices: str | None = Field(
        default=None,
        title="Price list",
        description="CSV or Parquet (provider, country or calling_code, price_per_segment, currency): the "
        "dry run and the summary show the estimated cost.",
    )
    max_cost: float | None = Field(
        default=None,
        gt=0,
        title="Spend cap",
        description="The campaign does not start if its estimated cost (from --prices) exceeds it, and stops "
        "before it would: rows it did not send end failed (over_budget).",
    )
    base_url: str | None = Field(
        default=None, title="Provider base URL", description="Overrides the environment."
    )
    dry_run: bool = Field(
        default=False, title="Dry run", description="Validate, plan and count segments; send nothing."
    )
    batch_size: int | None = Field(
        default=None, ge=1, title="Rows per request", description="Defaults to the provider's maximum."
    )
    shard_batches: int | None = Field(
        default=None, ge=1, title="Batches per task run", description="Batches sent by one mapped task run."
    )
    rate: float | None = Field(
        default=None, gt=0, title="Requests per second", description="Defaults to the provider's limit."
    )
    concurrency: int | None = Field(
        default=None, ge=1, title="Concurrent requests", description="Defaults to the provider's."
    )
    request_timeout: float | None = Field(
        default=None, gt=0, title="Request timeout (s)", description="Defaults to the provider's."
    )
    attempt: int = Field(
        default=1, ge=1, title="Attempt", description="1 for a campaign; the retry flow writes 2, 3, …"
    )
    runner: Literal["threads", "dask"] = Field(
        default="threads",
        title="Runner",
        description="threads: shards run in this process. dask: shards run as task runs on a Dask cluster "
        "(dask_address, or dask_workers local worker processes), results on shared storage.",
    )
    dask_address: str | None = Field(
        default=None, title="Dask scheduler", description="tcp://HOST:PORT of an existing Dask scheduler."
    )
    dask_workers: int | None = Field(
        default=None, ge=1, title="Dask workers", description="Without dask_address: local worker processes."
    )
    max_failure_rate: float = Field(
        default=0.5,
        gt=0,
        le=1,
        title="Circuit breaker: failure share",
        description="The campaign pauses when the share of rows the provider failed or refused, over the "
        "last min_sample rows, exceeds this: rows not yet sent end failed (circuit_open).",
    )
    min_sample: int = Field(
        default=500,
        ge=1,
        title="Circuit breaker: window",
        description="Rows the failure share is taken over.",
    )
    fallback: ProviderName | None = Field(
        default=None,
        title="Fallback provider",
        description="Rows provably never accepted by the provider (failed after retries, an open circuit, "
        "429s) are sent through this one in the same run; rows in doubt never are.",
    )
    fallback_sender: str | None = Field(
        default=None,
        title="Fallback sender",
        description="The sender for the fallback provider, if it needs one.",
    )

    @field_validator("base_url")
    @classmethod
    def _endpoint(cls, v: str | None, info: ValidationInfo) -> str | None:
        # Checked here, not only when settings resolve: Prefect records flow parameters as given, so a
        # `user:password@` URL must be refused before it becomes one.
        if v is not None:
            from smscast.errors import ConfigError
            from smscast.settings import check_base_url

            try:
                # `provider` is declared first, so it is validated (or absent, if it was refused) by now.
                check_base_url(v, str(info.data.get("provider") or "sandbox"))
            except ConfigError as exc:  # pydantic turns ValueError into a ValidationError naming the field
                raise ValueError(str(exc)) from None
        return v

    @field_validator("source")
    @classmethod
    def _no_password(cls, v: str) -> str:
        # Prefect records flow parameters as given and the spec is saved beside the results: a password in
        # the source URI would be stored in both (smscast/sources/credentials.py says where it goes instead).
        from smscast.errors import ConfigError
        from smscast.sources.credentials import refuse_recorded_password

        try:
            refuse_recorded_password(v)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return v

    @field_validator("suppress")
    @classmethod
    def _no_password_in_lists(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        # Recorded like the source (spec.json, Prefect's parameters): the same rule, for the same reason.
        return tuple(cls._no_password(s) for s in v)

    @field_validator("encoding")
    @classmethod
    def _codec(cls, v: str) -> str:
        # The codec's own name, so that "latin1" and "Latin-1" are the same campaign content on a re-run.
        import codecs

        try:
            info = codecs.lookup(v.strip())
        except LookupError:
            raise ValueError(
                f"unknown encoding {v!r}: use a Python codec name such as utf-8, latin-1, cp1252 or utf-16"
            ) from None
        if not getattr(info, "_is_text_encoding", True):  # base64, rot13, zlib: not a text encoding
            raise ValueError(
                f"{v!r} is not a text encoding: use one such as utf-8, latin-1, cp1252 or utf-16"
            )
        return info.name

    @field_validator("default_country")
    @classmethod
    def _upper(cls, v: str | None) -> str | None:
        return v.upper() if v else v

    @field_validator("allow_countries", "block_countries")
    @classmethod
    def _regions(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        import phonenumbers

        codes = tuple(dict.fromkeys(c.strip().upper() for c in v if c.strip()))
        unknown = [c for c in codes if c not in phonenumbers.SUPPORTED_REGIONS]
        if unknown:
            raise ValueError(
                f"not ISO region codes with phone numbers: {', '.join(unknown)} (use GB, IE, US, …)"
            )
        return codes

    @field_validator("quiet_hours")
    @classmethod
    def _quiet_hours(cls, v: str | None) -> str | None:
        if v is None:
            return v
        text = v.replace(" ", "")
        match = QUIET_HOURS.match(text)
        if match is None or match.group(1, 2) == match.group(3, 4):
            raise ValueError(f"quiet hours {v!r}: use HH:MM-HH:MM with two different times, e.g. 21:00-08:00")
        return text

    @field_validator("per_window")
    @classmethod
    def _window(cls, v: str | None) -> str | None:
        if v is not None:
            duration_seconds(v)
        return v

    @model_validator(mode="after")
    def _cap_has_window(self) -> CampaignSpec:
        if (self.max_per_recipient is None) != (self.per_window is None):
            raise ValueError("--max-per-recipient and --per-window go together (e.g. 1 --per-window 24h)")
        if self.max_cost is not None and self.prices is None:
            raise ValueError("--max-cost needs --prices: the cost is estimated from the price list")
        if self.runner != "dask" and (self.dask_address or self.dask_workers):
            raise ValueError("--dask-address and --dask-workers need --runner dask")
        if self.runner == "dask" and self.max_cost is not None:
            # The spend cap's running account lives in the flow's process; shards on a cluster cannot share it.
            raise ValueError(
                "--max-cost works with the thread runner only: leave out --runner dask, or the cap"
            )
        if self.fallback is not None and self.fallback == self.provider:
            raise ValueError("--fallback must be another provider than --provider")
        return self

    def content_differences(self, recorded: CampaignSpec) -> list[str]:
        """The content fields (CONTENT_FIELDS) in which this spec differs from `recorded`."""
        return [f for f in CONTENT_FIELDS if getattr(self, f) != getattr(recorded, f)]

    def body_vars(self) -> tuple[str, ...]:
        """Variables named in the body text, in order of first appearance."""
        if not self.body:
            return ()
        return tuple(dict.fromkeys(TEMPLATE_VAR.findall(self.body)))

    def required_vars(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((*self.body_vars(), *self.template_vars)))
