"""Validate: normalise phones, render bodies, count segments, and quarantine every bad row with its reasons.

Polars computes the features (E.164 candidate, rendered body, encoding, segments, first-of-phone); a Pandera
schema built from the provider's capabilities holds the rules, one named check per reason code. Pandera runs
on the collected frame with lazy=True so that a row failing several checks reports all of them (on a
LazyFrame it would only check the schema, and bad rows would pass silently: docs/design.md). Rows are quarantined
by `failure_cases["index"]`, never dropped: `drop_invalid_rows` would lose the reasons.
"""

from __future__ import annotations

import pandera.polars as pa
import polars as pl
from pandera.api.polars.types import PolarsData

from smscast.campaign import TEMPLATE_VAR, CampaignSpec
from smscast.encoding import segment_frame
from smscast.numbering import with_number_facts
from smscast.phone import FLOAT_MARK, is_e164, is_number, looks_like_float, normalise
from smscast.providers.base import Capabilities, Provider, RowRule
from smscast.status import Status

# Reason code -> message. Codes are the machine-readable contract (results `error_code`, `;`-joined).
MESSAGES: dict[str, str] = {
    "phone_missing": "no phone number",
    "phone_float": "phone was stored as a floating-point number: digits may be lost (a spreadsheet keeps 15 "
    "significant digits at most, often fewer); store the phone column as text and export it again",
    "phone_not_a_number": "phone is not a number: it holds letters or symbols besides the digits, spaces, "
    "dashes, dots, parentheses and leading + that phone numbers are written with",
    "phone_invalid": "phone is not a valid international number (E.164) after normalisation",
    "phone_needs_country": "phone has no country code: write it as +<country><number> or pass --default-country",
    "duplicate_phone": "same phone as an earlier row of this campaign; the first is kept",
    "duplicate_recipient_id": "same recipient_id as an earlier row; ids must be unique within a campaign",
    "body_missing": "message body is empty",
    "body_too_long": "body has more characters than the provider allows",
    "too_many_segments": "body needs more SMS segments than the provider allows",
    "template_var_missing": "a template variable is empty",
    "timezone_unknown": "the timezone column holds a name that is not an IANA time zone (Europe/London, "
    "America/New_York, …); leave it empty to use the number's",
    "template_unrendered": "body still holds a {{placeholder}} after rendering (an unrendered template?); "
    "fill it, or pass --allow-braces if the braces are meant",
}

# A `{{…}}` left in a body after rendering: an export whose template was never filled in, or a variable's
# value that is itself a placeholder. Sent as is, real people would read "Hi {{name}}".
UNRENDERED = r"\{\{[^{}]*\}\}"


# Every rule, ours and the provider's, is a RowRule: its first column is the one the Pandera check is attached
# to (Pandera reports that column's value as the failure case).


def _ours(code: str, column: str, valid: pl.Expr, message: str | None = None) -> RowRule:
    """One of validation's own rules, checked on `column`, with its message from MESSAGES unless given."""
    return RowRule(code, message or MESSAGES[code], valid, (column,))


def _check(rule: RowRule) -> pa.Check:
    expr = rule.valid.fill_null(False)

    def run(data: PolarsData, e: pl.Expr = expr) -> pl.LazyFrame:
        return data.lazyframe.select(e.alias("ok"))

    return pa.Check(run, name=rule.code, ignore_na=False)


def with_country(df: pl.DataFrame) -> pl.DataFrame:
    """`country`: libphonenumber's region for the row's number, else (a number it cannot place, such as a
    range reserved for drama) the main country of its calling code, so that country rules and prices still
    apply to it; null for non-geographic codes (+800 …) and for what is not a number. `number_type`:
    libphonenumber's type for it (`unknown` for a number it does not know as valid)."""
    facts = with_number_facts(df.select("phone"))
    return df.with_columns(
        facts.select(pl.coalesce("country", "home_country")).to_series().alias("country"),
        facts.get_column("number_type"),
    )


def render_body(spec: CampaignSpec, columns: list[str], caps: Capabilities) -> pl.Expr:
    """The body for each row: the `--body` text with {{vars}} filled in (null if a variable is null), the
    source's `body` column, or null for provider-side templates (the provider renders those)."""
    if not caps.sends_body(spec):
        return pl.lit(None, pl.String)
    if spec.body is None:
        return pl.col("body").cast(pl.String) if "body" in columns else pl.lit(None, pl.String)
    parts: list[pl.Expr] = []
    pos = 0
    for m in TEMPLATE_VAR.finditer(spec.body):
        if m.start() > pos:
            parts.append(pl.lit(spec.body[pos : m.start()]))
        parts.append(pl.col(m.group(1)).cast(pl.String))
        pos = m.end()
    if pos < len(spec.body):
        parts.append(pl.lit(spec.body[pos:]))
    return pl.concat_str(parts) if parts else pl.lit("")  # concat_str is null if any part is null


def features(df: pl.DataFrame, spec: CampaignSpec, caps: Capabilities) -> pl.DataFrame:
    """Add phone (E.164 candidate), body (rendered), encoding, chars, segments and recipient_id."""
    # A float phone: the column was a float (marked by tasks/load.py), or its text is scientific notation.
    was_float = looks_like_float(pl.col("phone_raw"))
    if FLOAT_MARK in df.columns:
        was_float = was_float | pl.col(FLOAT_MARK).fill_null(False)
    out = df.with_columns(
        phone=normalise(pl.col("phone_raw"), spec.default_country),
        body=render_body(spec, df.columns, caps),
        **{FLOAT_MARK: was_float},
    )
    seg = segment_frame(out.get_column("body"))
    out = out.with_columns(seg.select("encoding", "chars", "segments"))
    out = with_country(out)
    if "recipient_id" in out.columns:
        rid = pl.col("recipient_id").cast(pl.String)
    else:
        # Stable across runs as long as the phone is: "p" + E.164 digits. Unparseable phones get their row.
        usable = is_e164(pl.col("phone")) & ~pl.col(FLOAT_MARK)
        rid = pl.when(usable).then(pl.lit("p") + pl.col("phone").str.strip_prefix("+"))
        rid = rid.otherwise(pl.lit("row-") + pl.col("row_index").cast(pl.String))
    return out.with_columns(recipient_id=rid)


def rules(
    spec: CampaignSpec,
    caps: Capabilities,
    provider: Provider | None,
    columns: list[str],
    input_columns: list[str],
) -> list[RowRule]:
    phone, body = pl.col("phone"), pl.col("body")
    # One phone reason per row, each calling for its own fix: missing; stored as a float (digits may be lost,
    # whatever they now look like); not a number at all; digits without a country code and no
    # --default-country; anything else that fails E.164 is "invalid".
    present = phone.is_not_null()
    was_float = pl.col(FLOAT_MARK)
    number = is_number(phone) & ~was_float
    valid_phone = is_e164(phone) & ~was_float
    # On the normalised value, so that invisible characters pasted before a "+" do not hide it.
    typed_intl = phone.str.starts_with("+").fill_null(False)
    national_ok = typed_intl if spec.default_country is None else pl.lit(True)
    out = [
        _ours("phone_missing", "phone", present),
        _ours("phone_float", "phone", ~present | ~was_float),
        _ours("phone_not_a_number", "phone", ~present | was_float | number),
        _ours("phone_needs_country", "phone", ~number | valid_phone | national_ok),
        _ours("phone_invalid", "phone", ~number | valid_phone | ~national_ok),
    ]
    # Keep the first row of each valid phone; invalid phones are reported by their own rule, not as duplicates.
    out.append(
        _ours(
            "duplicate_phone",
            "phone",
            ~valid_phone | pl.when(valid_phone).then(phone).otherwise(None).is_first_distinct(),
        )
    )
    if "recipient_id" in input_columns:  # a derived id repeats only with the phone, reported above
        out.append(
            _ours("duplicate_recipient_id", "recipient_id", pl.col("recipient_id").is_first_distinct())
        )
    if spec.quiet_hours is not None and "timezone" in input_columns:  # read only for quiet hours
        tz = pl.col("timezone").cast(pl.String).str.strip_chars()
        known = tz.is_null() | (tz == "") | tz.is_in(sorted(_zone_names()))
        out.append(_ours("timezone_unknown", "timezone", known))
    missing_var = pl.lit(False)
    for var in spec.required_vars():
        v = pl.col(var).cast(pl.String)
        ok = v.is_not_null() & (v.str.strip_chars().str.len_chars() > 0)
        out.append(_ours("template_var_missing", var, ok, f"template variable {var!r} is empty"))
        missing_var = missing_var | ~ok.fill_null(False)
    if caps.sends_body(spec):
        # A missing variable already explains an empty rendered body: report that, not body_missing too.
        has_body = (body.str.len_chars() > 0) | missing_var
        if caps.supports_media and "media_url" in columns:  # an MMS row may carry only its media
            has_body = has_body | (pl.col("media_url").cast(pl.String).str.len_chars() > 0)
        out.append(_ours("body_missing", "body", has_body))
        if not spec.allow_braces:
            rendered = body.is_null() | ~body.str.contains(UNRENDERED)
            out.append(_ours("template_unrendered", "body", rendered))
        limits = (
            ("body_too_long", "chars", caps.max_body_chars, "has more than {} characters"),
            ("too_many_segments", "segments", caps.max_segments, "needs more than {} SMS segments"),
        )
        for code, column, limit, says in limits:
            if limit is not None:
                within = pl.col(column).fill_null(0) <= limit
                out.append(_ours(code, column, within, f"body {says.format(limit)} ({caps.name}'s limit)"))
    if provider is not None:
        for r in provider.row_rules(spec):
            if all(
                c in columns or c in ("phone", "body", "chars", "encoding", "segments") for c in r.columns
            ):
                out.append(r)
    return out


def _zone_names() -> set[str]:
    import zoneinfo

    return zoneinfo.available_timezones()


def schema_for(rule_list: list[RowRule]) -> pa.DataFrameSchema:
    by_column: dict[str, list[pa.Check]] = {}
    for r in rule_list:
        by_column.setdefault(r.column, []).append(_check(r))
    return pa.DataFrameSchema(
        {col: pa.Column(nullable=True, checks=checks) for col, checks in by_column.items()}, strict=False
    )


def failing(df: pl.DataFrame, rule_list: list[RowRule]) -> pl.DataFrame:
    """Run the Pandera schema of `rule_list` on `df`; add error_code (every failed check's code, `;`-joined in
    rule order) and error_message, both null for rows that pass every check."""
    try:
        schema_for(rule_list).validate(df, lazy=True)
        return df.with_columns(error_code=pl.lit(None, pl.String), error_message=pl.lit(None, pl.String))
    except pa.errors.SchemaErrors as exc:
        failures = exc.failure_cases.select(
            pl.col("index").cast(pl.Int64), pl.col("column").cast(pl.String), pl.col("check").cast(pl.String)
        ).filter(pl.col("index").is_not_null())
    # Per rule, a membership test of the row's position among its failure cases, then the codes and messages
    # concatenated in rule order: cheaper than grouping the failure cases by row, which costs seconds when a
    # large share of a million rows fails.
    pos = pl.int_range(pl.len(), dtype=pl.Int64)
    seen: set[tuple[str, str]] = set()
    codes: list[pl.Expr] = []
    messages: list[pl.Expr] = []
    for r in rule_list:
        if (r.column, r.code) in seen:  # Pandera reports a (column, check) pair once: the first rule's
            continue
        seen.add((r.column, r.code))
        rows = failures.filter((pl.col("column") == r.column) & (pl.col("check") == r.code)).get_column(
            "index"
        )
        if rows.len() == 0:
            continue
        hit = pos.is_in(rows.implode())
        codes.append(pl.when(hit).then(pl.lit(r.code)))
        messages.append(pl.when(hit).then(pl.lit(r.message)))
    if not codes:
        return df.with_columns(error_code=pl.lit(None, pl.String), error_message=pl.lit(None, pl.String))
    return df.with_columns(
        error_code=pl.concat_str(codes, separator=";", ignore_nulls=True).replace("", None),
        error_message=pl.concat_str(messages, separator="; ", ignore_nulls=True).replace("", None),
    )


def quarantine(df: pl.DataFrame, rule_list: list[RowRule]) -> pl.DataFrame:
    """Run the Pandera schema; add status/error_code/error_message (null for valid rows)."""
    out = failing(df, rule_list)
    return out.with_columns(
        status=pl.when(pl.col("error_code").is_not_null()).then(pl.lit(Status.INVALID.value)).otherwise(None)
    )


def validate_recipients(
    df: pl.DataFrame, spec: CampaignSpec, caps: Capabilities, provider: Provider | None = None
) -> pl.DataFrame:
    enriched = features(df, spec, caps)
    checked = quarantine(enriched, rules(spec, caps, provider, enriched.columns, df.columns))
    return checked.drop(FLOAT_MARK)
