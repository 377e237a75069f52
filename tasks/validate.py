"""Validate: normalise phones, render bodies, count segments, and quarantine every bad row with its reasons.

Polars computes the features (E.164 candidate, rendered body, encoding, segments, the number's country and
type); a Pandera schema built from the provider's capabilities holds the rules, one named check per reason
code. Every rule's expression is evaluated once, in one `with_columns` (Polars runs them in parallel and shares
their common parts), into a hidden boolean column; each Pandera check reads its column, so Pandera runs the
schema and reports the failure cases while a check costs it a column read. Pandera runs on the collected frame
with lazy=True so that a row failing several checks reports all of them (on a LazyFrame it would only check the
schema, and bad rows would pass silently: docs/design.md). The checks Pandera reports failed name the codes;
the same boolean columns name the rows. Rows are quarantined, never dropped: `drop_invalid_rows` would lose
the reasons.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import pandera.polars as pa
import polars as pl
from pandera.api.polars.types import PolarsData

from smscast.campaign import TEMPLATE_VAR, CampaignSpec
from smscast.encoding import segment_frame
from smscast.numbering import with_number_facts
from smscast.phone import FLOAT_MARK, is_e164, is_number, looks_like_float, normalise, number_key
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
    "phone_invalid_for_country": "phone is not a valid number for its country: no such number range there, "
    "or a digit too many or too few",
    "phone_not_mobile": "phone is a landline or service number that cannot receive SMS (--require-mobile)",
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

# The number types (libphonenumber's, `number_type`) that --require-mobile lets through: those that can
# receive SMS. fixed_line_or_mobile is in because libphonenumber cannot tell the two apart where they share
# ranges (the whole NANP: every US and Canadian mobile is one); pagers, personal numbers (forwarded to a
# person's phone) and VoIP numbers commonly take SMS. Refused: fixed_line, toll_free, premium_rate,
# shared_cost, uan and voicemail, which are landlines or services that do not.
SMS_NUMBER_TYPES: frozenset[str] = frozenset(
    {"mobile", "fixed_line_or_mobile", "pager", "personal_number", "voip"}
)

# A `{{…}}` left in a body after rendering: an export whose template was never filled in, or a variable's
# value that is itself a placeholder. Sent as is, real people would read "Hi {{name}}".
UNRENDERED = r"\{\{[^{}]*\}\}"

# What people type is mostly already E.164, and normalising it changes nothing: those rows skip `normalise`
# (cleaning, separators, prefixes: several regex passes) and the float test, which cannot match them.
_ALREADY_E164 = r"^\+[0-9]+$"

# Messages that name the row's own facts, for the codes that have one; built only for the rows that fail.
_country = pl.col("country")
ROW_MESSAGES: dict[str, pl.Expr] = {
    "phone_invalid_for_country": pl.when(_country.is_not_null())
    .then(
        pl.format(
            "phone is not a valid number in {}: no such number range there, or a digit too many or too few",
            _country,
        )
    )
    .otherwise(pl.lit(MESSAGES["phone_invalid_for_country"])),
    "phone_not_mobile": pl.format(
        "phone is a {} number, which cannot receive SMS (--require-mobile)",
        pl.col("number_type").str.replace_all("_", " "),
    ),
}


# Every rule, ours and the provider's, is a RowRule: its first column is the one the Pandera check is attached
# to (Pandera reports that column's value as the failure case).


def _ours(code: str, column: str, valid: pl.Expr, message: str | None = None) -> RowRule:
    """One of validation's own rules, checked on `column`, with its message from MESSAGES unless given."""
    return RowRule(code, message or MESSAGES[code], valid, (column,))


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


def _phones(df: pl.DataFrame, default_country: str | None) -> tuple[pl.Series, pl.Series]:
    """The E.164 candidate of every `phone_raw`, and whether it was a float (see `features`)."""
    raw = df.get_column("phone_raw").cast(pl.String)
    todo = raw.to_frame("r").select(pl.arg_where(~pl.col("r").str.contains(_ALREADY_E164).fill_null(False)))
    rows = todo.to_series()
    whole = rows.len() == raw.len()  # e.g. national numbers with --default-country: no gather, no scatter
    worked = (
        (raw if whole else raw.gather(rows))
        .to_frame("r")
        .select(normalise(pl.col("r"), default_country).alias("p"), looks_like_float(pl.col("r")).alias("f"))
    )
    if whole:
        phone, was_float = worked.get_column("p"), worked.get_column("f")
    else:
        phone = raw.scatter(rows, worked.get_column("p")) if rows.len() else raw
        was_float = pl.repeat(False, raw.len(), eager=True).scatter(rows, worked.get_column("f"))
    if FLOAT_MARK in df.columns:
        was_float = was_float | df.get_column(FLOAT_MARK).fill_null(False)
    return phone.alias("phone"), was_float.alias(FLOAT_MARK)


def features(df: pl.DataFrame, spec: CampaignSpec, caps: Capabilities) -> pl.DataFrame:
    """Add phone (E.164 candidate), body (rendered), encoding, chars, segments, country, number_type and
    recipient_id."""
    # A float phone: the column was a float (marked by tasks/load.py), or its text is scientific notation.
    phone, was_float = _phones(df, spec.default_country)
    out = df.with_columns(phone, was_float, body=render_body(spec, df.columns, caps))
    seg = segment_frame(out.get_column("body"))
    out = out.with_columns(seg.select("encoding", "chars", "segments"))
    out = with_country(out)
    if "recipient_id" in out.columns:
        rid = pl.col("recipient_id").cast(pl.String)
    else:
        # Stable across runs as long as the phone is: "p" + E.164 digits. Unparseable phones get their row.
        usable = is_e164(pl.col("phone")) & ~pl.col(FLOAT_MARK)
        # An E.164 phone's one "+" is its first character: a literal replace is the cheapest way to swap it.
        rid = pl.when(usable).then(pl.col("phone").str.replace("+", "p", literal=True))
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
    # --default-country; anything else that fails E.164 is "invalid"; E.164 but no such number in its country
    # (libphonenumber's metadata, smscast/numbering.py); with --require-mobile, a valid number of a type that
    # cannot receive SMS.
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
    # Rows re-checked from an older campaign's results may have no number_type: then E.164 is all there is.
    if "number_type" in columns:
        kind = pl.col("number_type")
        out.append(_ours("phone_invalid_for_country", "phone", ~valid_phone | (kind != "unknown")))
        valid_phone = valid_phone & (kind != "unknown")
        if spec.require_mobile:
            sms = kind.is_in(sorted(SMS_NUMBER_TYPES))
            out.append(_ours("phone_not_mobile", "phone", ~valid_phone | sms))
            valid_phone = valid_phone & sms
    # Keep the first row of each fully valid phone; the others are reported by their own rule, not as
    # duplicates. Distinct on the digits as an integer: several times cheaper than on the text.
    first = pl.when(valid_phone).then(number_key(phone)).is_first_distinct()
    out.append(_ours("duplicate_phone", "phone", ~valid_phone | first))
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


@dataclass(frozen=True, slots=True)
class _Flag:
    """The rules of one (column, code), merged: a row fails when it fails any of them. Pandera names a check
    by its column and code, so those rules are one check, with the first rule's message."""

    column: str
    code: str
    message: str
    valid: pl.Expr
    name: str  # the hidden boolean column: true where the row passes


def _flags(rule_list: list[RowRule]) -> list[_Flag]:
    merged: dict[tuple[str, str], _Flag] = {}
    for r in rule_list:
        key = (r.column, r.code)
        if key in merged:
            f = merged[key]
            merged[key] = _Flag(f.column, f.code, f.message, f.valid & r.valid.fill_null(False), f.name)
        else:
            merged[key] = _Flag(r.column, r.code, r.message, r.valid.fill_null(False), f"_ok{len(merged)}")
    return list(merged.values())


def _check(flag: _Flag) -> pa.Check:
    def run(data: PolarsData, name: str = flag.name) -> pl.LazyFrame:
        return data.lazyframe.select(pl.col(name))

    return pa.Check(run, name=flag.code, ignore_na=False)


def _schema(flags: list[_Flag]) -> pa.DataFrameSchema:
    by_column: dict[str, list[pa.Check]] = {}
    for f in flags:
        by_column.setdefault(f.column, []).append(_check(f))
    return pa.DataFrameSchema(
        {col: pa.Column(nullable=True, checks=checks) for col, checks in by_column.items()}, strict=False
    )


def failing(
    df: pl.DataFrame, rule_list: list[RowRule], row_messages: Mapping[str, pl.Expr] | None = None
) -> pl.DataFrame:
    """Run the Pandera schema of `rule_list` on `df`; add error_code (every failed check's code, `;`-joined in
    rule order) and error_message, both null for rows that pass every check. `row_messages`: a message per
    row for the codes it names (an expression over the row's columns) instead of the rule's constant one."""
    flags = _flags(rule_list)
    # Lazily, so that Polars shares the rules' common parts (is_e164 of the phone, …): eager with_columns
    # does not eliminate common subexpressions.
    flagged = df.lazy().with_columns(f.valid.alias(f.name) for f in flags).collect()
    nulls = {"error_code": pl.lit(None, pl.String), "error_message": pl.lit(None, pl.String)}
    try:
        _schema(flags).validate(flagged, lazy=True)
        return flagged.drop(f.name for f in flags).with_columns(**nulls)
    except pa.errors.SchemaErrors as exc:
        reported = exc.failure_cases.select(pl.col("column").cast(pl.String), pl.col("check").cast(pl.String))
        failed = set(reported.unique().iter_rows())
    # The checks Pandera found failing, and, from the same boolean columns it read, the rows that fail one:
    # codes and messages are built for those rows alone (often a small share) and scattered back.
    hit = [f for f in flags if (f.column, f.code) in failed]
    if not hit:
        return flagged.drop(f.name for f in flags).with_columns(**nulls)
    rows = flagged.select(pl.arg_where(~pl.all_horizontal(f.name for f in hit))).to_series()
    # A row message needs its columns (rows re-checked from older results may lack them): else the constant.
    texts = {
        c: e for c, e in (row_messages or {}).items() if set(e.meta.root_names()) <= set(flagged.columns)
    }
    needed = {f.name for f in hit} | {c for e in texts.values() for c in e.meta.root_names()}
    bad = flagged.select(c for c in flagged.columns if c in needed)[rows]
    said = bad.select(
        pl.concat_str(
            [pl.when(~pl.col(f.name)).then(pl.lit(f.code)) for f in hit], separator=";", ignore_nulls=True
        ).alias("error_code"),
        pl.concat_str(
            [pl.when(~pl.col(f.name)).then(texts.get(f.code, pl.lit(f.message))) for f in hit],
            separator="; ",
            ignore_nulls=True,
        ).alias("error_message"),
    )

    def spread(column: str) -> pl.Series:  # null for the rows that pass
        empty = pl.repeat(None, flagged.height, dtype=pl.String, eager=True)
        return empty.scatter(rows, said.get_column(column)).alias(column)

    return flagged.drop(f.name for f in flags).with_columns(spread("error_code"), spread("error_message"))


def quarantine(df: pl.DataFrame, rule_list: list[RowRule]) -> pl.DataFrame:
    """Run the Pandera schema; add status/error_code/error_message (null for valid rows)."""
    out = failing(df, rule_list, ROW_MESSAGES)
    return out.with_columns(
        status=pl.when(pl.col("error_code").is_not_null()).then(pl.lit(Status.INVALID.value)).otherwise(None)
    )


def validate_recipients(
    df: pl.DataFrame, spec: CampaignSpec, caps: Capabilities, provider: Provider | None = None
) -> pl.DataFrame:
    enriched = features(df, spec, caps)
    checked = quarantine(enriched, rules(spec, caps, provider, enriched.columns, df.columns))
    return checked.drop(FLOAT_MARK)
