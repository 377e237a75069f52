"""Region, number type, validity and time zones of E.164 numbers, as libphonenumber gives them, at columnar speed.

`phonenumbers` costs tens of microseconds per number in Python; here its metadata is compiled once per process
(smscast/numbering_metadata.py) into a few regexes and lookup tables that Polars applies to whole columns.
What is reproduced, for a string "+<digits>" (smscast.phone.E164_PATTERN):

- parse(): the calling code is the 1-3 digit prefix that is a known code (none is a prefix of another); the
  national significant number (NSN) is the rest, with a national prefix stripped as parse() strips it even
  after "+cc" ("+44 07400 123456" is a British mobile number), with the code's main region's rules.
- region_code_for_number(): among the regions sharing a calling code, the first whose leading digits start
  the NSN (for regions that have them) or that gives it a type (for those that do not); none: no region.
- number_type() / is_valid_number(): the descriptions in _number_type_helper's order, each a possible length
  then a full match, under the chosen region; valid means the type is not unknown.
- time_zones_for_number(): see `time_zones`, which differs on purpose for the numbers it cannot place.

Anything that is not an E.164 string gets nulls. An E.164 string under no known calling code is a number of
type "unknown", not valid, with no country and no time zones.
"""

from __future__ import annotations

import re

import polars as pl

from smscast.numbering_metadata import (
    FIXED_LINE,
    FIXED_LINE_OR_MOBILE,
    MOBILE,
    TYPE_NAMES,
    UNKNOWN,
    Tables,
    region_calling_code,
    tables,
    zones,
)
from smscast.phone import E164_PATTERN

__all__ = [
    "FACTS_DTYPE",
    "number_facts",
    "region_calling_code",
    "time_zones",
    "with_number_facts",
    "with_number_facts_lazy",
    "with_time_zones",
]

FACTS_DTYPE = pl.Struct(
    {"home_country": pl.String, "country": pl.String, "number_type": pl.String, "phone_valid": pl.Boolean}
)
_T = pl.UInt8  # type codes: libphonenumber's PhoneNumberType values
_SPECIAL = 200  # a placeholder: one of the special types (premium rate ... voicemail), decided afterwards


def with_number_facts(df: pl.DataFrame, phone: str = "phone") -> pl.DataFrame:
    """`df` with `country` (ISO region; null for non-geographic codes such as +800, and where none
    applies), `number_type` (libphonenumber's PhoneNumberType name in lower case) and `phone_valid`
    (is_valid_number) for the E.164 strings in `phone`; all three null for anything else. `home_country`:
    the main region of the number's calling code (GB for every +44 number, US for +1), which a number
    libphonenumber cannot place still has."""
    facts = _classify(df.get_column(phone))
    kind = facts.get_column("_t")
    t = tables()
    return df.with_columns(
        facts.get_column("_cc")
        .replace_strict(t.main, default=None, return_dtype=pl.String)
        .replace_strict(t.country, default=None, return_dtype=pl.String)
        .alias("home_country"),
        facts.get_column("_tag")
        .replace_strict(tables().country, default=None, return_dtype=pl.String)
        .alias("country"),
        kind.replace_strict(list(TYPE_NAMES), list(TYPE_NAMES.values()), return_dtype=pl.String).alias(
            "number_type"
        ),
        (kind != UNKNOWN).alias("phone_valid"),
    )


def with_number_facts_lazy(lf: pl.LazyFrame, phone: str = "phone") -> pl.LazyFrame:
    """`with_number_facts` for a LazyFrame."""
    return lf.with_columns(number_facts(pl.col(phone)).alias("_facts")).unnest("_facts")


def number_facts(phone: pl.Expr) -> pl.Expr:
    """A struct of `country`, `number_type` and `phone_valid` (FACTS_DTYPE) for each phone."""

    def facts(s: pl.Series) -> pl.Series:
        return with_number_facts(pl.DataFrame({"_p": s}), "_p").drop("_p").to_struct(s.name)

    return phone.map_batches(facts, return_dtype=FACTS_DTYPE, is_elementwise=True)


def with_time_zones(df: pl.DataFrame, phone: str = "phone", out: str = "zones") -> pl.DataFrame:
    """`df` with `out`: the IANA time zones each `phone` may be in (List(String); see `time_zones`)."""
    return df.with_columns(_zone_lists(df.get_column(phone)).alias(out))


def time_zones(phone: pl.Expr) -> pl.Expr:
    """The IANA time zones a number may be in. For the numbers libphonenumber places, its
    time_zones_for_number: valid numbers of a geographical type (fixed lines, and mobiles under the codes
    whose mobile numbers are geographical) by the longest prefix in its time-zone data, other valid numbers by
    their calling code. Where it says "Etc/Unknown" (an invalid number, or a valid one under no known prefix)
    this gives the calling code's country-level zones instead, and an empty list when there are none: a
    contact policy needs some set of zones, and "quiet in every zone it may be in" is then the careful
    reading. Null for anything that is not E.164."""
    return phone.map_batches(_zone_lists, return_dtype=pl.List(pl.String), is_elementwise=True)


def _classify(phone: pl.Series) -> pl.DataFrame:
    """Per phone, in order: `_e164`, `_cc` (null under no known code), `_n` (the NSN), `_tag` (its region's
    tag) and `_t` (its type code; null off E.164)."""
    t = tables()
    p = pl.col("_p")
    df = pl.DataFrame({"_p": phone.cast(pl.String)}).select(
        pl.when(p.str.contains(E164_PATTERN)).then(p.str.slice(1)).alias("_d")
    )
    cc = pl.col("_d").str.slice(0, 3).replace_strict(t.by_prefix, default=None, return_dtype=pl.String)
    df = df.select(pl.col("_d").is_not_null().alias("_e164"), cc.alias("_cc"), "_d")
    df = df.select(
        pl.int_range(pl.len(), dtype=pl.UInt32).alias("_i"),
        "_e164",
        "_cc",
        pl.col("_d").str.slice(pl.col("_cc").str.len_bytes()).alias("_n"),
        pl.col("_cc").replace_strict(t.main, default=None, return_dtype=pl.String).alias("_tag"),
    )
    df = df.with_columns(_strip_national_prefix(t, df))
    # region_code_for_number: a shared code's regions (and runs of regions chosen by leading digits) claim the
    # numbers still unclaimed, in turn. The first step has every number (its region is the main one, or the
    # one of the main one's run); later ones only the few the first region of a shared code turned down.
    first_is_run = pl.col("_cc").is_in([cc for cc, s in t.steps.items() if s[0][1] and cc not in t.single])
    df = df.with_columns(pl.when(first_is_run).then("_tag").alias("_run"))
    df = df.with_columns(pl.when(~first_is_run).then("_tag").alias("_tag"))
    df = _claim(t, df.with_columns(_by_leading_digits(t, df)))
    kind, tag, claimed = df.get_column("_t"), df.get_column("_tag"), df.get_column("_claimed")
    todo = df.filter(pl.col("_cc").is_not_null() & ~pl.col("_claimed")).select("_i", "_cc", "_n")
    for step in range(1, max(len(s) for s in t.steps.values())):
        todo = todo.with_columns(_step(t, step)).filter(
            pl.col("_tag").is_not_null() | pl.col("_run").is_not_null()
        )
        if todo.is_empty():
            break
        todo = _claim(t, todo.with_columns(_by_leading_digits(t, todo)))
        done = todo.filter("_claimed")
        kind = kind.scatter(done.get_column("_i"), done.get_column("_t"))
        tag = tag.scatter(done.get_column("_i"), done.get_column("_tag"))
        claimed = claimed.scatter(done.get_column("_i"), True)
        todo = todo.filter(~pl.col("_claimed")).select("_i", "_cc", "_n")
    unclaimed = pl.col("_cc").is_not_null() & ~claimed
    return df.select(
        "_e164",
        "_cc",
        "_n",
        pl.when(~unclaimed).then(tag).alias("_tag"),
        pl.when(pl.col("_e164"))
        .then(pl.when(unclaimed).then(pl.lit(UNKNOWN, _T)).otherwise(kind))
        .alias("_t"),
    )


def _claim(t: Tables, rows: pl.DataFrame) -> pl.DataFrame:
    """`_t` under each row's `_tag` region, and `_claimed`: the region takes the number."""
    rows = rows.with_columns(_types(t, rows))
    claims = pl.col("_cc").is_in(t.single) | pl.col("_run").is_not_null() | (pl.col("_t") != UNKNOWN)
    return rows.with_columns((claims & pl.col("_tag").is_not_null()).alias("_claimed"))


def _step(t: Tables, step: int) -> list[pl.Expr]:
    """`_tag` (a region that claims by type) or `_run` (a run of regions that claim by leading digits): the
    `step`-th of each row's calling code; both null when the code has no more."""
    regions = {cc: s[step][0] for cc, s in t.steps.items() if len(s) > step and not s[step][1]}
    runs = {cc: s[step][0] for cc, s in t.steps.items() if len(s) > step and s[step][1]}
    cc = pl.col("_cc")
    return [
        cc.replace_strict(regions, default=None, return_dtype=pl.String).alias("_tag"),
        cc.replace_strict(runs, default=None, return_dtype=pl.String).alias("_run"),
    ]


def _by_leading_digits(t: Tables, rows: pl.DataFrame) -> pl.Series:
    """`_tag` for the rows of a run: the first of its regions whose leading digits start the NSN."""
    tag = rows.get_column("_tag")
    mine = rows.with_row_index("_j").filter(pl.col("_run").is_not_null())
    if mine.is_empty() or t.leading is None:
        return tag
    # One regex for every run: the text it matched belongs to the first region (in order) of the run whose
    # leading digits match it, since no earlier region's matched any start of the number.
    matched = mine.select(pl.concat_str("_run", "_n").str.extract(t.leading, 0)).to_series()
    found = {m: _first_leading(t, m) for m in matched.unique().drop_nulls().to_list()}
    return tag.scatter(
        mine.get_column("_j"), matched.replace_strict(found, default=None, return_dtype=pl.String)
    )


def _first_leading(t: Tables, matched: str) -> str | None:
    run, digits = matched[:3], matched[3:]
    return next((tag for tag, pattern in t.runs[run] if re.fullmatch(pattern, digits)), None)


def _types(t: Tables, rows: pl.DataFrame) -> pl.Series:
    """`_t`: _number_type_helper under each row's `_tag` region (null where it has none)."""
    length = pl.col("_n").str.len_bytes().replace_strict(_TWO_DIGITS, default=None, return_dtype=pl.String)
    flags = rows.select(pl.concat_str("_tag", length, "_n").alias("_k"), "_tag").select(
        _contains(t.general).alias("_g"),
        _contains(t.special_any).alias("_s"),
        _contains(t.fixed).alias("_f"),
        _contains(t.mobile).alias("_m"),
        pl.col("_tag").is_in(t.same_fixed_mobile).alias("_same"),
        "_k",
    )
    g, s, f, m, same = (pl.col(c) for c in ("_g", "_s", "_f", "_m", "_same"))
    kind = (
        pl.when(~g)
        .then(pl.lit(UNKNOWN, _T))
        .when(s)
        .then(pl.lit(_SPECIAL, _T))
        .when(f & (same | m))
        .then(pl.lit(FIXED_LINE_OR_MOBILE, _T))
        .when(f)
        .then(pl.lit(FIXED_LINE, _T))
        .when(m)
        .then(pl.lit(MOBILE, _T))
        .otherwise(pl.lit(UNKNOWN, _T))
    )
    flags = flags.select(kind.alias("_t"), "_k").with_row_index("_j")
    out = flags.get_column("_t")
    # Premium rate ... voicemail are rare: which one, only for the rows that match one of them.
    special = flags.filter(pl.col("_t") == _SPECIAL)
    if not special.is_empty():
        which = special.select(
            pl.coalesce(
                *(pl.when(_contains(p)).then(pl.lit(c, _T)) for c, p in t.special), pl.lit(UNKNOWN, _T)
            )
        ).to_series()
        out = out.scatter(special.get_column("_j"), which)
    return out.alias("_t")


_TWO_DIGITS = {n: f"{n:02d}" for n in range(100)}


def _contains(pattern: str | None, on: str = "_k") -> pl.Expr:
    return pl.col(on).str.contains(pattern) if pattern else pl.lit(False)


def _strip_national_prefix(t: Tables, df: pl.DataFrame) -> pl.Series:
    """`_n` as parse() leaves it: a national prefix after the calling code is dropped (or transformed) when
    the rest has a length the main region keeps and, if the whole was a viable number, is still viable.
    `df` has `_n` and `_tag` (the main region's)."""
    n = pl.col("_n")
    out = df.get_column("_n")
    rows = df.select("_tag", "_n").with_row_index("_j")
    # Most numbers start with no national prefix: one cheap match over all rows finds those that may.
    tagged = pl.concat_str("_tag", "_n")
    plain = rows.filter(tagged.str.contains(t.strip)) if t.strip else rows.clear()
    plain = plain.with_columns(
        n.str.slice(tagged.str.extract(t.strip or "^$", 0).str.len_bytes() - 3).alias("_c")
    )
    parts = [plain]
    transformed = rows.filter(pl.col("_tag").is_in(list(t.transforms)))
    for tag, tr in t.transforms.items():
        mine = transformed.filter(pl.col("_tag") == tag)
        mine = mine.filter(n.str.contains(tr.prefix))
        if mine.is_empty():
            continue
        # A transform applies only when the rule's last group took part; otherwise the prefix just goes.
        grouped = n.str.extract(tr.prefix, tr.last_group).is_not_null()
        cand = (
            pl.when(grouped).then(n.str.replace(tr.prefix, tr.rule)).otherwise(n.str.replace(tr.prefix, ""))
        )
        parts.append(mine.with_columns(cand.alias("_c")))
    rows = pl.concat(parts, how="vertical")
    if rows.is_empty():
        return out
    cand = pl.col("_c")
    length = cand.str.len_bytes().replace_strict(_TWO_DIGITS, default=None, return_dtype=pl.String)
    keeps = _contains(t.strip_lengths, "_l")
    if t.strip_viable:
        keeps = keeps & ~(_contains(t.strip_viable, "_v") & ~_contains(t.strip_viable, "_w"))
    rows = rows.with_columns(
        pl.concat_str("_tag", length).alias("_l"), tagged.alias("_v"), pl.concat_str("_tag", cand).alias("_w")
    )
    kept = rows.filter(keeps)
    return out.scatter(kept.get_column("_j"), kept.get_column("_c"))


def _zone_lists(phone: pl.Series) -> pl.Series:
    """`time_zones` for a Series of phones."""
    z, t = zones(), tables()
    df = _classify(phone).with_row_index("_j")
    country = df.get_column("_cc").replace_strict(z.country, default=0, return_dtype=pl.UInt32)
    ids = df.select(pl.when("_e164").then(country)).to_series()
    geo = (pl.col("_t") == FIXED_LINE) | (pl.col("_t") == FIXED_LINE_OR_MOBILE)
    geo = geo | ((pl.col("_t") == MOBILE) & pl.col("_cc").is_in(t.geo_mobile))
    placed = df.filter(geo)
    if not placed.is_empty():
        # time_zones_for_geographical_number: the longest prefix of the E.164 digits in the data.
        digits = pl.concat_str("_cc", "_n")
        found = [
            digits.str.slice(0, n).replace_strict(prefixes, default=None, return_dtype=pl.UInt32)
            for n, prefixes in z.by_length
        ]
        best = placed.select(pl.coalesce(*found)).to_series()
        fallback = ids.gather(placed.get_column("_j"))
        ids = ids.scatter(placed.get_column("_j"), best.fill_null(fallback))
    lists = pl.Series([list(names) for names in z.lists], dtype=pl.List(pl.String))
    return lists.gather(ids).alias(phone.name)
