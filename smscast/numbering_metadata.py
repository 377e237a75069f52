"""libphonenumber's metadata (the `phonenumbers` package) compiled into a few large regexes and lookup tables.

Every region gets a tag (0-based, 3 digits in text). Each kind of description (general, fixed line, mobile,
the special types) becomes ONE regex: an alternation of `\\+code(?:pattern)` branches, one per region that has
the description, in two forms. The "direct" form reads the numbers themselves ("+447400123456") and has the
main region of each calling code (unless leading digits choose the code's first region), every number's
first guess: no string is built for it. The "keyed" form reads tag + number and has every region, for the
few numbers judged under another one. Possible lengths are in tables by (tag, national length) rather than in
the regexes (but `which`'s), and every table here is indexed by small integers, for Polars' gather. So each
row costs one regex match per kind, whatever the mix of countries, and the process compiles about twenty
regexes once (Polars keeps them in its regex cache) instead of ~1,400 small ones for every call.

Rust's regexes stay fast because each runs a lazy DFA that a region's one pattern keeps small: one regex that
tracks several descriptions at once (all the types, or the general one then the types) outgrows its DFA cache
on a mix of regions and falls back to an engine a hundred times slower. The special types are the exception
that measures well: `which` tells the first that matches by where its match ends in the number + "#" + its
length + "x" * 8 (the branch of the type at position i ends i "x"s in); leading digits likewise.

Compiled once per process, on first use; importing this module imports nothing from `phonenumbers` (the
command line's start-up time is measured). `\\d` becomes `[0-9]`: the numbers are ASCII, and Unicode `\\d`
makes Rust's regexes several times slower to compile. Each combined regex is compiled by Polars here, so a
pattern its engine does not accept (look-around, back-references) fails at once, naming its region.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from typing import Any

import polars as pl

# libphonenumber's PhoneNumberType values (stable across its versions; tests/test_numbering.py checks them).
FIXED_LINE, MOBILE, FIXED_LINE_OR_MOBILE = 0, 1, 2
TOLL_FREE, PREMIUM_RATE, SHARED_COST, VOIP, PERSONAL_NUMBER, PAGER, UAN, VOICEMAIL = 3, 4, 5, 6, 7, 8, 9, 10
UNKNOWN = 99
TYPE_NAMES: dict[int, str] = {
    FIXED_LINE: "fixed_line",
    MOBILE: "mobile",
    FIXED_LINE_OR_MOBILE: "fixed_line_or_mobile",
    TOLL_FREE: "toll_free",
    PREMIUM_RATE: "premium_rate",
    SHARED_COST: "shared_cost",
    VOIP: "voip",
    PERSONAL_NUMBER: "personal_number",
    PAGER: "pager",
    UAN: "uan",
    VOICEMAIL: "voicemail",
    UNKNOWN: "unknown",
}
# The types _number_type_helper tries before fixed line and mobile, in its order.
_SPECIAL = (
    ("premium_rate", PREMIUM_RATE),
    ("toll_free", TOLL_FREE),
    ("shared_cost", SHARED_COST),
    ("voip", VOIP),
    ("personal_number", PERSONAL_NUMBER),
    ("pager", PAGER),
    ("uan", UAN),
    ("voicemail", VOICEMAIL),
)
SPECIAL_TYPES = tuple(t for _, t in _SPECIAL)
NON_GEO = "001"  # libphonenumber's region for +800, +882, ...
MAX_NSN = 17  # libphonenumber's longest national significant number
LENGTHS = 16  # tables by national length have 0-15 (an E.164 number has at most 14 national digits)
FIRST_ONE, FIRST_BY_TYPE, FIRST_RUN = (
    0,
    1,
    2,
)  # a code's first region: its only one, one claiming by type, a run


@dataclass(frozen=True, slots=True)
class Transform:
    """A national prefix with a transform rule (AR, BR, JP, ...): applied per calling code."""

    prefix: str  # "^(?:national_prefix_for_parsing)"
    rule: str  # in Polars' replacement syntax: ${1}
    last_group: int  # the rule applies only when this group took part in the match; else the prefix goes


@dataclass(frozen=True, slots=True)
class Tables:
    # By the first three digits after "+", as a number (0-999): the calling code they start with (null:
    # none), its length, its main region's tag (parse() strips national prefixes by it) and FIRST_*.
    cc: pl.Series
    cc_len: pl.Series
    main: pl.Series
    first: pl.Series
    # By tag: text, ISO region (null: non-geographic), whether fixed-line and mobile patterns are the same.
    tag: pl.Series
    country: pl.Series
    same: pl.Series
    # By tag * LENGTHS + national length: whether it is a possible length of "general" | "fixed" | "mobile",
    # and (main regions) whether parse() keeps a number of that length once it stripped a national prefix.
    allows: dict[str, pl.Series]
    kept: pl.Series
    tail: pl.Series  # by national length: "#" + the length in 2 digits + "x" * 8, for `which`
    type_name: pl.Series  # by type code
    # region_code_for_number tries a shared code's regions in order: a region without leading digits claims
    # the numbers it gives a type, a run of regions with leading digits claims by them.
    steps: dict[int, tuple[tuple[int, bool], ...]]  # calling code -> (region tag | run tag, is a run)
    run_region: pl.Series  # by run tag * run_width + position: the region
    run_width: int
    geo_mobile: list[int]  # calling codes whose mobile numbers are geographical (time zones)
    # (kind, keyed) -> regex; kinds: "general", "fixed", "mobile" (without the regions whose mobile pattern
    # is their fixed-line one), "special" (any special type's pattern), "which" (see the module's doc).
    regex: dict[tuple[str, bool], str | None]
    # Over run tag + NSN + "#" + "x" * run_width: the first region of the run whose leading digits start it.
    leading: str | None
    strip: str | None  # over the number: a national prefix, for the codes without a transform rule
    transforms: dict[int, Transform]  # by tag
    viable: str | None  # over tag + NSN: the general pattern, without lengths (main regions)


@cache
def tables() -> Tables:
    from phonenumbers import PhoneMetadata, is_number_type_geographical
    from phonenumbers.phonenumberutil import COUNTRY_CODE_TO_REGION_CODE

    main: dict[str, int] = {}
    steps: dict[str, list[tuple[int, bool]]] = {}
    runs: dict[int, list[tuple[int, str]]] = {}
    country: list[str | None] = []
    where: dict[str, str] = {}
    same: set[int] = set()
    branches: dict[tuple[str, bool], list[tuple[str, str]]] = {}  # (kind, keyed) -> (where, branch)
    lengths: dict[str, dict[int, frozenset[int]]] = {k: {} for k in ("general", "fixed", "mobile")}
    kept: dict[int, frozenset[int]] = {}
    strip: list[tuple[str, str]] = []
    viable: list[tuple[str, str]] = []
    transforms: dict[int, Transform] = {}
    for cc_int, names in sorted(COUNTRY_CODE_TO_REGION_CODE.items()):
        cc, single = str(cc_int), len(names) == 1
        mine = steps.setdefault(cc, [])
        for name in names:
            meta = PhoneMetadata.metadata_for_region_or_calling_code(cc_int, name)
            if meta is None:  # as _region_code_for_number_from_list: passed over
                continue
            tag, text = len(country), f"{len(country):03d}"
            country.append(None if name == NON_GEO else name)
            where[text] = where[cc] = f"{name} (+{cc})"
            if meta.leading_digits:
                if not mine or not mine[-1][1]:
                    mine.append((tag, True))
                runs.setdefault(mine[-1][0], []).append(
                    (tag, _check(_ascii(meta.leading_digits), where[text]))
                )
            else:
                mine.append((tag, False))
            if meta.same_mobile_and_fixed_line_pattern:
                same.add(tag)
            direct = cc not in main and (single or not mine[0][1])
            found = [(k, d, p) for k, d in _descs(meta, tag in same) if (p := _possible(d)) is not None]
            for kind, desc, possible in found:
                pattern = f"\\+{cc}(?:{_ascii(desc.national_number_pattern)})"
                if kind in lengths:
                    lengths[kind][tag] = possible
                    _add(branches, kind, text, pattern, direct)
                else:
                    i = SPECIAL_TYPES.index(int(kind))
                    _add(branches, "special", text, pattern, direct)
                    _add(branches, "which", text, f"{pattern}#{_lengths(possible)}x{{{i}}}", direct)
            if cc in main:
                continue
            main[cc] = tag
            general = meta.general_desc
            if meta.national_prefix_for_parsing and general and general.possible_length:
                prefix = meta.national_prefix_for_parsing
                rule = meta.national_prefix_transform_rule
                groups = re.compile(prefix).groups
                if rule:
                    if groups == 0:
                        raise ValueError(f"{where[text]}: a national prefix transform rule without a group")
                    polars_rule = re.sub(r"\\(\d)", r"${\1}", rule)
                    transforms[tag] = Transform(
                        _check(f"^(?:{_ascii(prefix)})", where[text]), polars_rule, groups
                    )
                else:
                    strip.append((cc, f"\\+{cc}(?:{_ascii(prefix)})"))
                if general.national_number_pattern:
                    viable.append((text, f"{text}(?:{_ascii(general.national_number_pattern)})"))
                kept[tag] = frozenset(
                    _kept_lengths(general.possible_length, general.possible_length_local_only)
                )

    width = max((len(r) for r in runs.values()), default=0)
    leading = [
        (
            f"{run:03d}",
            f"{run:03d}(?:" + "|".join(f"(?:{lead})[0-9]*#x{{{i}}}" for i, (_, lead) in enumerate(r)) + ")",
        )
        for run, r in runs.items()
    ]
    code = [next((c for c in (f"{i:03d}"[:n] for n in (1, 2, 3)) if c in steps), None) for i in range(1000)]
    first = {
        cc: FIRST_ONE
        if len(COUNTRY_CODE_TO_REGION_CODE[int(cc)]) == 1
        else FIRST_RUN
        if s[0][1]
        else FIRST_BY_TYPE
        for cc, s in steps.items()
    }
    tags = range(len(country))

    def by_prefix(values: dict[str, Any], dtype: type[pl.DataType]) -> pl.Series:
        return pl.Series([None if c is None else values[c] for c in code], dtype=dtype)

    def by_length(possible: dict[int, frozenset[int]]) -> pl.Series:
        return pl.Series(
            [n in possible.get(tag, ()) for tag in tags for n in range(LENGTHS)], dtype=pl.Boolean
        )

    return Tables(
        cc=by_prefix({c: int(c) for c in steps}, pl.UInt16),
        cc_len=by_prefix({c: len(c) for c in steps}, pl.UInt8),
        main=by_prefix(main, pl.UInt16),
        first=by_prefix(first, pl.UInt8),
        tag=pl.Series([f"{tag:03d}" for tag in tags], dtype=pl.String),
        country=pl.Series(country, dtype=pl.String),
        same=pl.Series([tag in same for tag in tags], dtype=pl.Boolean),
        allows={kind: by_length(possible) for kind, possible in lengths.items()},
        kept=by_length(kept),
        tail=pl.Series([f"#{n:02d}" + "x" * len(_SPECIAL) for n in range(LENGTHS)], dtype=pl.String),
        type_name=pl.Series([TYPE_NAMES.get(i) for i in range(UNKNOWN + 1)], dtype=pl.String),
        steps={int(cc): tuple(s) for cc, s in steps.items()},
        run_region=pl.Series(
            [
                r[i][0] if i < len(r) else None
                for tag in tags
                for r in [runs.get(tag, [])]
                for i in range(width)
            ],
            dtype=pl.UInt16,
        ),
        run_width=width,
        geo_mobile=[int(cc) for cc in steps if is_number_type_geographical(MOBILE, int(cc))],
        regex={
            key: _combined(found, "" if key[0] == "which" else "$", where) for key, found in branches.items()
        },
        leading=_combined(leading, "", where),
        strip=_combined(strip, "", where),
        transforms=transforms,
        viable=_combined(viable, "$", where),
    )


def _descs(meta: Any, same: bool) -> Iterator[tuple[str, Any]]:
    """(kind, description): general, fixed, mobile (unless the same as fixed), then the special types by their
    type code."""
    yield from (("general", meta.general_desc), ("fixed", meta.fixed_line))
    if not same:
        yield "mobile", meta.mobile
    yield from ((str(t), getattr(meta, attr)) for attr, t in _SPECIAL)


def _add(
    branches: dict[tuple[str, bool], list[tuple[str, str]]], kind: str, tag: str, branch: str, direct: bool
) -> None:
    branches.setdefault((kind, True), []).append((tag, f"{tag}{branch}"))
    if direct:
        branches.setdefault((kind, False), []).append((tag, branch))


def _possible(desc: Any) -> frozenset[int] | None:
    """The national lengths a description allows (no lengths: any), None when it can never match: no
    pattern, or libphonenumber's "no such numbers" length -1."""
    possible: tuple[int, ...] = tuple(getattr(desc, "possible_length", None) or ())
    if not getattr(desc, "national_number_pattern", None) or (possible and all(n < 0 for n in possible)):
        return None
    return frozenset(n for n in possible if n > 0) if possible else frozenset(range(LENGTHS))


def _lengths(possible: frozenset[int]) -> str:
    return "(?:" + "|".join(f"{n:02d}" for n in sorted(possible)) + ")"


def _kept_lengths(possible: Iterable[int], local: Iterable[int]) -> list[int]:
    """The lengths for which _test_number_length says IS_POSSIBLE or TOO_LONG: parse() keeps a stripped
    national number only then (not when too short, local-only, or in a gap between possible lengths)."""
    ordered, local_only = sorted(possible), set(local)
    return [n for n in range(MAX_NSN + 1) if n not in local_only and (n in ordered or n > ordered[-1])]


def _ascii(pattern: str) -> str:
    return pattern.replace("\\d", "[0-9]")


def _combined(branches: list[tuple[str, str]], end: str, where: dict[str, str]) -> str | None:
    """One anchored alternation of the branches (`where` names their regions); None when there are none."""
    if not branches:
        return None
    pattern = "^(?:" + "|".join(branch for _, branch in branches) + f"){end}"
    try:
        return _check(pattern, "several regions")
    except ValueError:
        for key, branch in branches:  # name the culprit
            _check(f"^(?:{branch})", where[key])
        raise


def _check(pattern: str, where: str) -> str:
    """The pattern, once Polars has compiled it (and so cached it for the calls to come)."""
    try:
        pl.Series(["0"], dtype=pl.String).str.contains(pattern)
    except pl.exceptions.PolarsError as e:
        raise ValueError(f"a libphonenumber pattern for {where} is not accepted by Polars: {e}") from e
    return pattern


def region_calling_code(region: str) -> int:
    """The calling code of an ISO region (GB -> 44); 0 for a region libphonenumber does not know."""
    from phonenumbers import country_code_for_region

    return int(country_code_for_region(region.upper()))


@dataclass(frozen=True, slots=True)
class Zones:
    lists: pl.Series  # every distinct list of IANA zones in the data, by id; id 0 is the empty list
    by_length: tuple[tuple[int, dict[str, int]], ...]  # prefixes of the E.164 digits -> id, longest first
    # By the first three digits after "+" (as Tables.cc): the calling code's country-level list (0 under no
    # code), and whether its numbers' zones may differ from that (then a number's type and prefix decide).
    country: pl.Series
    varies: pl.Series
    # The first WIDTH digits as a number: `bounds` splits 0..10**WIDTH into ranges under one longest prefix
    # each, and `ids` has each range's list id (null: under no prefix).
    bounds: pl.Series
    ids: pl.Series


WIDTH = 9  # TIMEZONE_LONGEST_PREFIX in phonenumbers 9.x; zones() checks it


@cache
def zones() -> Zones:
    from phonenumbers.tzdata import TIMEZONE_DATA, TIMEZONE_LONGEST_PREFIX

    if TIMEZONE_LONGEST_PREFIX > WIDTH:
        raise ValueError(f"phonenumbers' time-zone prefixes reach {TIMEZONE_LONGEST_PREFIX} digits")
    lists: tuple[tuple[str, ...], ...] = ((), *sorted(set(TIMEZONE_DATA.values())))
    ids = {z: i for i, z in enumerate(lists)}
    grouped: dict[int, dict[str, int]] = {n: {} for n in range(TIMEZONE_LONGEST_PREFIX, 0, -1)}
    for prefix, names in TIMEZONE_DATA.items():
        grouped[len(prefix)][prefix] = ids[names]
    by_length = tuple((n, g) for n, g in grouped.items() if g)
    codes = {str(cc) for cc in tables().steps}
    extending: dict[str, set[int]] = {}  # code -> the lists of the prefixes that extend it
    for prefix, names in TIMEZONE_DATA.items():
        for cc in (prefix[:n] for n in (1, 2, 3) if n <= len(prefix) and prefix[:n] in codes):
            extending.setdefault(cc, set()).add(ids[names])
    country: dict[int, int] = {}
    varies: dict[int, bool] = {}
    for cc in codes:
        # As _country_level_time_zones_for_number, quirk included: it tries cc[:1+n] for n from the longest
        # prefix length down to 1, so a 3-digit code falls back to its first two digits, never to one.
        found = [cc[: 1 + n] for n in range(TIMEZONE_LONGEST_PREFIX, 0, -1) if cc[: 1 + n] in TIMEZONE_DATA]
        country[int(cc)] = ids[TIMEZONE_DATA[found[0]]] if found else 0
        # The lists a number under cc may get: those of the prefixes of cc, and of those that extend it.
        under = {i for _, i in _prefixes_of(cc, by_length)} | extending.get(cc, set())
        varies[int(cc)] = bool(under - {country[int(cc)]})
    # Each range between two consecutive prefix boundaries lies under the same prefixes: its longest one
    # is the one of its first number.
    starts = {int(p) * 10 ** (WIDTH - len(p)) for p in TIMEZONE_DATA}
    points = sorted({0} | starts | {(int(p) + 1) * 10 ** (WIDTH - len(p)) for p in TIMEZONE_DATA})
    code = tables().cc.to_list()
    return Zones(
        lists=pl.Series([list(names) for names in lists], dtype=pl.List(pl.String)),
        by_length=by_length,
        country=pl.Series([0 if c is None else country[c] for c in code], dtype=pl.UInt32),
        varies=pl.Series([c is not None and varies[c] for c in code], dtype=pl.Boolean),
        bounds=pl.Series(points, dtype=pl.UInt64),
        ids=pl.Series(
            [next((i for _, i in _prefixes_of(f"{b:0{WIDTH}d}", by_length)), None) for b in points],
            dtype=pl.UInt32,
        ),
    )


def _prefixes_of(digits: str, by_length: tuple[tuple[int, dict[str, int]], ...]) -> Iterator[tuple[str, int]]:
    """The time-zone prefixes that start `digits`, longest first, with their list ids."""
    for n, prefixes in by_length:
        if n <= len(digits) and (i := prefixes.get(digits[:n])) is not None:
            yield digits[:n], i
