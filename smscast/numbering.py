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

Cost: every row pays a lookup of its first three digits and four regex matches over the number itself (a
national prefix, the general description, any special type's pattern, fixed line; mobile for most). The rest
is done on the rows that need it alone: which special type, a national prefix to strip, a shared calling
code's other regions, the E.164 check of the numbers no region took (a number one took has passed it).
"""

from __future__ import annotations

from functools import partial

import polars as pl

from smscast.numbering_metadata import (
    FIRST_BY_TYPE,
    FIRST_RUN,
    FIXED_LINE,
    FIXED_LINE_OR_MOBILE,
    LENGTHS,
    MOBILE,
    SPECIAL_TYPES,
    TYPE_NAMES,
    UNKNOWN,
    WIDTH,
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
    "time_zone_ids",
    "time_zones",
    "with_number_facts",
    "with_number_facts_lazy",
    "with_time_zones",
    "zone_lists",
]

FACTS_DTYPE = pl.Struct(
    {"home_country": pl.String, "country": pl.String, "number_type": pl.String, "phone_valid": pl.Boolean}
)
_T = pl.UInt8  # type codes: libphonenumber's PhoneNumberType values
_SPECIAL = pl.Series(SPECIAL_TYPES, dtype=_T)
_P, _Q = pl.col("_p"), pl.col("_q")


def with_number_facts(df: pl.DataFrame, phone: str = "phone") -> pl.DataFrame:
    """`df` with `country` (ISO region; null for non-geographic codes such as +800, and where none
    applies), `number_type` (libphonenumber's PhoneNumberType name in lower case) and `phone_valid`
    (is_valid_number) for the E.164 strings in `phone`; all three null for anything else. `home_country`:
    the main region of the number's calling code (GB for every +44 number, US for +1), which a number
    libphonenumber cannot place still has."""
    t = tables()
    facts = _classify(df.get_column(phone)).select(
        pl.lit(t.country).gather("_main").alias("home_country"),
        pl.lit(t.country).gather("_tag").alias("country"),
        pl.lit(t.type_name).gather("_t").alias("number_type"),
        (pl.col("_t") != UNKNOWN).alias("phone_valid"),
    )
    return df.with_columns(facts.get_columns())


def with_number_facts_lazy(lf: pl.LazyFrame, phone: str = "phone") -> pl.LazyFrame:
    """`with_number_facts` for a LazyFrame."""
    return lf.with_columns(number_facts(pl.col(phone)).alias("_facts")).unnest("_facts")


def number_facts(phone: pl.Expr) -> pl.Expr:
    """A struct of `country`, `number_type` and `phone_valid` (FACTS_DTYPE) for each phone."""

    def facts(s: pl.Series) -> pl.Series:
        return with_number_facts(pl.DataFrame({"_p": s}), "_p").drop("_p").to_struct(s.name)

    return phone.map_batches(facts, return_dtype=FACTS_DTYPE, is_elementwise=True)


def with_time_zones(
    df: pl.DataFrame, phone: str = "phone", out: str = "zones", number_type: str | None = None
) -> pl.DataFrame:
    """`df` with `out`: the IANA time zones each `phone` may be in (List(String); see `time_zones`).
    `number_type`: a column of `df` with each phone's type as `with_number_facts` gave it (validation adds
    one), so that the numbers are not classified again; without it, only the numbers of the calling codes
    whose zones depend on a number's type are."""
    kinds = None if number_type is None else df.get_column(number_type)
    return df.with_columns(zone_lists().gather(time_zone_ids(df.get_column(phone), kinds)).alias(out))


def time_zone_ids(phone: pl.Series, number_type: pl.Series | None = None) -> pl.Series:
    """Each phone's time zones (see `time_zones`) as an index into `zone_lists()`; null for anything that
    is not E.164. `number_type`: as `with_time_zones`'. Numbers share a few hundred lists at most: work done
    per list (quiet hours, say) is done on `zone_lists()`, or its rows the ids name, and gathered by them."""
    return _zone_ids(phone, number_type).alias(phone.name)


def zone_lists() -> pl.Series:
    """Every list of IANA time zones libphonenumber's data has (List(String)), by `time_zone_ids`' ids."""
    return zones().lists


def time_zones(phone: pl.Expr) -> pl.Expr:
    """The IANA time zones a number may be in. For the numbers libphonenumber places, its
    time_zones_for_number: valid numbers of a geographical type (fixed lines, and mobiles under the codes
    whose mobile numbers are geographical) by the longest prefix in its time-zone data, other valid numbers by
    their calling code. Where it says "Etc/Unknown" (an invalid number, or a valid one under no known prefix)
    this gives the calling code's country-level zones instead, and an empty list when there are none: a
    contact policy needs some set of zones, and "quiet in every zone it may be in" is then the careful
    reading. Null for anything that is not E.164."""
    ids = partial(_zone_ids, kinds=None)
    return phone.map_batches(lambda s: zone_lists().gather(ids(s)), pl.List(pl.String), is_elementwise=True)


def _parsed(phone: pl.Series) -> pl.DataFrame:
    """Per phone (`_p`): `_cc` (the calling code its first digits start with, null under none), `_ccl` (its
    length), `_main` (the code's main region's tag), `_first` (FIRST_*), `_q` (the number as parse() reads
    it: "+", the code, the NSN with a national prefix stripped; most often the phone itself) and `_len` (the
    NSN's length). Whether the phone is E.164 at all is left to the caller."""
    t = tables()
    df = pl.DataFrame({"_p": phone.cast(pl.String)})
    pre = df.select(_first_digits()).to_series()
    df = df.with_columns(
        *(
            s.gather(pre).alias(c)
            for c, s in (("_cc", t.cc), ("_ccl", t.cc_len), ("_main", t.main), ("_first", t.first))
        )
    )
    df = df.with_columns(
        _P.alias("_q"), (_P.str.len_bytes().cast(pl.Int64) - 1 - pl.col("_ccl").cast(pl.Int64)).alias("_len")
    )
    stripped = _strip_national_prefix(t, df)
    if stripped.height:
        j, nsn = stripped.get_column("_j"), stripped.get_column("_s")
        number = stripped.select(pl.concat_str(pl.lit("+"), pl.col("_cc").cast(pl.String), "_s")).to_series()
        df = df.with_columns(
            df.get_column("_q").scatter(j, number),
            df.get_column("_len").scatter(j, nsn.str.len_bytes().cast(pl.Int64)),
        )
    return df


def _first_digits() -> pl.Expr:
    """The first three digits after "+" as a number: the tables' index by calling code."""
    return _P.str.slice(1, 3).cast(pl.UInt16, strict=False)


def _nsn() -> pl.Expr:
    return _Q.str.slice(pl.col("_ccl").cast(pl.Int64) + 1)


def _by_length(tag: str) -> pl.Expr:
    """The index of (tag, NSN length) in the tables by both; null for a length no number has."""
    length = pl.col("_len")
    return pl.when(length < LENGTHS).then(pl.col(tag).cast(pl.Int64) * LENGTHS + length)


def _classify(phone: pl.Series) -> pl.DataFrame:
    """Per phone: `_e164`, and where it is E.164: `_cc`, `_ccl`, `_main`, `_q` (see `_parsed`), `_tag` (its
    region's tag, null where none claims it) and `_t` (its type code)."""
    t = tables()
    df = _parsed(phone)
    # region_code_for_number: a shared code's regions (and runs of regions chosen by leading digits) claim the
    # numbers still unclaimed, in turn. The first step has every number (its region is the main one, or the
    # one of the main one's run); later ones only the few the first region of a shared code turned down.
    run = pl.col("_first") == FIRST_RUN
    df = df.with_columns(pl.when(~run).then("_main").alias("_tag"), pl.when(run).then("_main").alias("_run"))
    runs = df.select(pl.arg_where(run)).to_series()
    if 2 * runs.len() < df.height:
        kind = _types(t, df, keyed=False)  # the run rows too, done again below: cheaper than cutting them out
    else:
        direct = df.select(pl.arg_where(~run.fill_null(False))).to_series()
        kind = _full("_t", UNKNOWN, df.height, _T).scatter(direct, _types(t, df[direct], keyed=False))
    tag = df.get_column("_tag")
    if runs.len():
        rows = df[runs].with_columns(_by_leading_digits(t, df[runs]))
        kind = kind.scatter(runs, _types(t, rows, keyed=True))
        tag = tag.scatter(runs, rows.get_column("_tag"))
    claimed = tag.is_not_null() & ((df.get_column("_first") != FIRST_BY_TYPE) | (kind != UNKNOWN))
    done = claimed.fill_null(False)
    rest = ["_i", "_q", "_cc", "_ccl", "_len"]
    todo = df.with_row_index("_i").filter(pl.col("_cc").is_not_null() & ~done).select(rest)
    for step in range(1, max(len(s) for s in t.steps.values())):
        todo = todo.with_columns(_step(t, step)).filter(
            pl.col("_tag").is_not_null() | pl.col("_run").is_not_null()
        )
        if todo.is_empty():
            break
        todo = todo.with_columns(_by_leading_digits(t, todo))
        todo = todo.with_columns(_types(t, todo, keyed=True))
        claims = pl.col("_tag").is_not_null() & (pl.col("_run").is_not_null() | (pl.col("_t") != UNKNOWN))
        now = todo.filter(claims)
        kind = kind.scatter(now.get_column("_i"), now.get_column("_t"))
        tag = tag.scatter(now.get_column("_i"), now.get_column("_tag"))
        done = done.scatter(now.get_column("_i"), True)
        todo = todo.filter(~claims).select(rest)
    kind = pl.select(pl.when(done).then(kind).otherwise(pl.lit(UNKNOWN, _T))).to_series()
    # A number some region's regex took is "+", a code and digits (a national prefix too, where one was
    # stripped): E.164 if its length is. The others are checked in full.
    e164 = df.select(_P.str.len_bytes().is_between(8, 16) & (kind != UNKNOWN)).to_series()
    unknown = pl.select(pl.arg_where(kind == UNKNOWN)).to_series()
    ok = pl.lit(e164.scatter(unknown, df.get_column("_p").gather(unknown).str.contains(E164_PATTERN)))
    return df.select(
        ok.alias("_e164"),
        *(pl.when(ok).then(c).alias(c) for c in ("_cc", "_ccl", "_main", "_q")),
        pl.when(ok & done).then(tag).alias("_tag"),
        pl.when(ok).then(kind).alias("_t"),
    )


def _step(t: Tables, step: int) -> list[pl.Expr]:
    """`_tag` (a region that claims by type) or `_run` (a run of regions that claim by leading digits): the
    `step`-th of each row's calling code; both null when the code has no more."""
    regions = {cc: s[step][0] for cc, s in t.steps.items() if len(s) > step and not s[step][1]}
    runs = {cc: s[step][0] for cc, s in t.steps.items() if len(s) > step and s[step][1]}
    cc = pl.col("_cc")
    return [
        cc.replace_strict(regions, default=None, return_dtype=pl.UInt16).alias("_tag"),
        cc.replace_strict(runs, default=None, return_dtype=pl.UInt16).alias("_run"),
    ]


def _by_leading_digits(t: Tables, rows: pl.DataFrame) -> pl.Series:
    """`_tag` for the rows of a run: the first of its regions whose leading digits start the NSN."""
    tag = rows.get_column("_tag")
    mine = rows.with_row_index("_j").filter(pl.col("_run").is_not_null())
    if mine.is_empty() or t.leading is None:
        return tag
    run = pl.col("_run").cast(pl.Int64)
    # Which region: where the match ends in the run's tag + NSN + "#" + "x" * run_width.
    text = pl.concat_str(pl.lit(t.tag).gather(run), _nsn())
    position = _position(text, pl.lit("#" + "x" * t.run_width), t.leading, 1)
    found = mine.select(pl.lit(t.run_region).gather(run * t.run_width + position)).to_series()
    return tag.scatter(mine.get_column("_j"), found)


def _types(t: Tables, rows: pl.DataFrame, keyed: bool) -> pl.Series:
    """`_t`: _number_type_helper under each row's region (`_tag`, by the keyed regexes; else `_main`, by
    the direct ones). Each regex reads only the rows whose type it may still decide: the general
    description all, the special types those it allows, fixed line and mobile those of no special type."""
    tag = "_tag" if keyed else "_main"
    rows = rows.select(_Q, tag, _by_length(tag).alias("_at"), pl.col("_len").clip(0, LENGTHS - 1))
    # The keyed regexes read tag + number; possible lengths come from the tables.
    text = pl.concat_str(pl.lit(t.tag).gather(tag), _Q) if keyed else _Q

    def matches(kind: str) -> pl.Expr:
        found = _contains(t.regex.get((kind, keyed)), text)
        return (pl.lit(t.allows[kind]).gather("_at") & found).fill_null(False).alias(kind[0])

    # The special types' patterns without their lengths ("special") may match more than they should: they
    # only choose the rows for "which", read over text + "#" + length + "x" * 8, whose match ends as many
    # "x"s in as the first matching type's position in SPECIAL_TYPES.
    flags = rows.select(matches("general"), _contains(t.regex.get(("special", keyed)), text).alias("s"))
    which = pl.lit(_SPECIAL).gather(
        _position(text, pl.lit(t.tail).gather("_len"), t.regex.get(("which", keyed)), 3)
    )
    special = _full("s", None, rows.height, _T)
    some = pl.select(pl.arg_where(flags.get_column("g") & flags.get_column("s"))).to_series()
    if some.len():
        special = special.scatter(some, rows[some].select(which).to_series())
    plain = pl.select(pl.arg_where(flags.get_column("g") & special.is_null())).to_series()
    fixed, mobile = _full("f", False, rows.height, pl.Boolean), _full("m", False, rows.height, pl.Boolean)
    if plain.len():
        found = rows[plain].select(matches("fixed"), matches("mobile"))
        fixed, mobile = fixed.scatter(plain, found.to_series(0)), mobile.scatter(plain, found.to_series(1))
    same = rows.select(pl.lit(t.same).gather(tag)).to_series().alias("same")
    f, m, code = pl.col("f"), pl.col("m"), partial(pl.lit, dtype=_T)
    fixed_line = (
        pl.when(f & (pl.col("same") | m)).then(code(FIXED_LINE_OR_MOBILE)).when(f).then(code(FIXED_LINE))
    )
    kind = pl.when("g").then(pl.coalesce("s", fixed_line, pl.when(m).then(code(MOBILE)))).fill_null(UNKNOWN)
    flags = pl.DataFrame([flags.get_column("g"), special, fixed, mobile, same])
    return flags.select(kind.alias("_t")).to_series()


def _position(text: pl.Expr, tail: pl.Expr, pattern: str | None, skip: int) -> pl.Expr:
    """Where `pattern`'s match in text + tail ends, counted from `skip` characters into the tail: the
    position that a regex of the "which" kind tells (numbering_metadata)."""
    ends = pl.concat_str(text, tail).str.extract(pattern or "^$", 0).str.len_bytes().cast(pl.Int64)
    return ends - text.str.len_bytes().cast(pl.Int64) - skip


def _full(name: str, value: int | bool | None, n: int, dtype: pl.DataType | type[pl.DataType]) -> pl.Series:
    return pl.repeat(value, n, dtype=dtype, eager=True).alias(name)


def _contains(pattern: str | None, on: pl.Expr) -> pl.Expr:
    return on.str.contains(pattern) if pattern else pl.lit(False)


def _strip_national_prefix(t: Tables, df: pl.DataFrame) -> pl.DataFrame:
    """`_j` (row), `_cc` and `_s` (its NSN) for the rows whose NSN parse() leaves shorter: a national prefix
    after the calling code is dropped (or transformed) when the rest has a length the main region keeps and,
    if the whole was a viable number, is still viable. `df` has `_q` (the phone), `_cc`, `_ccl` and `_main`."""
    n = pl.col("_n")
    # Most numbers start with no national prefix: one match over all rows finds those that may.
    may = _contains(t.strip, _Q)
    rows = df.with_row_index("_j").filter(may | pl.col("_main").is_in(list(t.transforms)))
    rows = rows.select("_j", "_q", "_cc", "_main", "_ccl", _nsn().alias("_n"))
    prefix = (
        _Q.str.extract(t.strip or "^$", 0).str.len_bytes().cast(pl.Int64) - 1 - pl.col("_ccl").cast(pl.Int64)
    )
    parts = [rows.filter(may).with_columns(n.str.slice(prefix).alias("_c"))]
    for tag, tr in t.transforms.items():
        mine = rows.filter((pl.col("_main") == tag) & n.str.contains(tr.prefix))
        # A transform applies only when the rule's last group took part; otherwise the prefix just goes.
        grouped = n.str.extract(tr.prefix, tr.last_group).is_not_null()
        cand = (
            pl.when(grouped).then(n.str.replace(tr.prefix, tr.rule)).otherwise(n.str.replace(tr.prefix, ""))
        )
        parts.append(mine.with_columns(cand.alias("_c")))
    cand, text = pl.col("_c"), pl.lit(t.tag).gather("_main")
    length = cand.str.len_bytes().cast(pl.Int64)
    keeps = pl.lit(t.kept).gather(
        pl.when(length < LENGTHS).then(pl.col("_main").cast(pl.Int64) * LENGTHS + length)
    )
    if t.viable:
        viable, still = (pl.concat_str(text, x).str.contains(t.viable) for x in (n, cand))
        keeps = keeps & ~(viable & ~still)
    return (
        pl.concat(parts, how="vertical").filter(keeps.fill_null(False)).select("_j", "_cc", cand.alias("_s"))
    )


def _zone_ids(phone: pl.Series, kinds: pl.Series | None) -> pl.Series:
    """`time_zone_ids`; `kinds`: the phones' `number_type`s, when known already."""
    z, t = zones(), tables()
    p = phone.cast(pl.String)
    e164 = _P.str.contains(E164_PATTERN)
    pre = p.to_frame("_p").select(pl.when(e164).then(_first_digits())).to_series()
    ids = z.country.gather(pre)
    # Most calling codes have one list of zones for all their numbers: only the others' numbers of a
    # geographical type need their prefix looked up.
    varies = pl.select(pl.arg_where(z.varies.gather(pre).fill_null(False))).to_series()
    if not varies.len():
        return ids
    if kinds is None:
        kind = pl.col("_t")
        geo = (
            (kind == FIXED_LINE)
            | (kind == FIXED_LINE_OR_MOBILE)
            | ((kind == MOBILE) & pl.col("_cc").is_in(t.geo_mobile))
        )
        placed = _classify(p.gather(varies)).with_columns(_j=varies).filter(geo)
    else:
        k, cc = kinds.gather(varies), t.cc.gather(pre.gather(varies))
        names = [TYPE_NAMES[FIXED_LINE], TYPE_NAMES[FIXED_LINE_OR_MOBILE]]
        j = varies.filter(
            (k.is_in(names) | ((k == TYPE_NAMES[MOBILE]) & cc.is_in(t.geo_mobile))).fill_null(False)
        )
        placed = _parsed(p.gather(j)).with_columns(_j=j)
    if placed.height:
        best = _longest_prefix(placed.get_column("_q").str.slice(1))
        fallback = ids.gather(placed.get_column("_j"))
        ids = ids.scatter(placed.get_column("_j"), best.fill_null(fallback))
    return ids


def _longest_prefix(digits: pl.Series) -> pl.Series:
    """The zone list id of the longest time-zone prefix that starts each string of digits (null: none)."""
    z = zones()
    df = digits.to_frame("_d").with_row_index("_j")
    d = pl.col("_d")
    # A number of at least WIDTH digits: its first WIDTH digits as a number fall in one of the ranges.
    full = df.filter(d.str.len_bytes() >= WIDTH)
    where = z.bounds.search_sorted(full.get_column("_d").str.head(WIDTH).cast(pl.UInt64), side="right") - 1
    out = _full("", None, len(digits), pl.UInt32).scatter(full.get_column("_j"), z.ids.gather(where))
    short = df.filter(d.str.len_bytes() < WIDTH)
    if short.height:
        # Shorter than the longest prefixes (which must not match it): each length in turn, as phonenumbers.
        lookups = (
            d.str.slice(0, n).replace_strict(p, default=None, return_dtype=pl.UInt32) for n, p in z.by_length
        )
        out = out.scatter(short.get_column("_j"), short.select(pl.coalesce(*lookups)).to_series())
    return out
