"""libphonenumber's metadata (the `phonenumbers` package) compiled into a few large regexes for Polars.

Every region gets a 3-digit tag; a number becomes the key tag + its national length (2 digits) + its national
significant number, and each kind of description (general, fixed line, mobile, toll free, ...) becomes ONE
regex over such keys: an alternation of `tag(?:lengths)(?:pattern)`, one branch per region that has the
description. So each row costs one regex match per kind, whatever the mix of countries, and the process
compiles about twenty regexes once (Polars keeps them in its regex cache) instead of ~1,400 small ones for
every call. The tag decides the branch in its first three characters, so only the row's own region's pattern
is ever tried, and Python's leftmost-first choice inside a pattern is Rust's too.

Compiled once per process, on first use; importing this module imports nothing from `phonenumbers` (the
command line's start-up time is measured). `\\d` becomes `[0-9]`: the keys are ASCII, and Unicode `\\d`
makes Rust's regexes several times slower to compile. Each combined regex is compiled by Polars here, so a
pattern its engine does not accept (look-around, back-references) fails at once, naming its region.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache

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
NON_GEO = "001"  # libphonenumber's region for +800, +882, ...
MAX_NSN = 17  # libphonenumber's longest national significant number


@dataclass(frozen=True, slots=True)
class Transform:
    """A national prefix with a transform rule (AR, BR, JP, ...): applied per calling code."""

    prefix: str  # "^(?:national_prefix_for_parsing)"
    rule: str  # in Polars' replacement syntax: ${1}
    last_group: int  # the rule applies only when this group took part in the match; else the prefix goes


@dataclass(frozen=True, slots=True)
class Tables:
    by_prefix: dict[str, str]  # the first three digits after "+" -> the calling code they start with
    main: dict[str, str]  # calling code -> its main region's tag (parse() strips national prefixes by it)
    single: frozenset[str]  # calling codes of one region, which is then every number's region whatever it is
    # region_code_for_number tries a shared code's regions in order: a region without leading digits claims
    # the numbers it gives a type, a run of regions with leading digits claims by them (one regex per run).
    steps: dict[str, tuple[tuple[str, bool], ...]]  # calling code -> (region tag | run tag, is a run)
    runs: dict[str, tuple[tuple[str, str], ...]]  # run tag -> (region tag, its leading digits), in order
    country: dict[str, str | None]  # tag -> ISO region (None for non-geographic entities)
    same_fixed_mobile: frozenset[str]  # tags whose fixed-line and mobile patterns are the same
    geo_mobile: frozenset[str]  # calling codes whose mobile numbers are geographical (time zones)
    # parse()'s national prefix stripping, by the main region's tag:
    strip: str | None  # over tag + NSN: the prefix, for the codes without a transform rule
    transforms: dict[str, Transform]
    strip_viable: str | None  # over tag + NSN: the general pattern, without lengths
    strip_lengths: str | None  # over tag + length: the lengths for which parse() keeps the stripped number
    leading: str | None  # over run tag + NSN: every run's regions' leading digits, in order
    # Over tag + length + NSN:
    general: str | None
    special_any: str | None
    special: tuple[tuple[int, str], ...]
    fixed: str | None
    mobile: str | None  # without the regions whose mobile pattern is their fixed-line one


@cache
def tables() -> Tables:
    from phonenumbers import PhoneMetadata, PhoneNumberDesc, is_number_type_geographical
    from phonenumbers.phonenumberutil import COUNTRY_CODE_TO_REGION_CODE

    main: dict[str, str] = {}
    steps: dict[str, list[tuple[str, bool]]] = {}
    runs: dict[str, list[tuple[str, str]]] = {}
    country: dict[str, str | None] = {}
    where: dict[str, str] = {}
    leading: list[tuple[str, str]] = []
    same: set[str] = set()
    kinds: dict[str, list[tuple[str, str]]] = {}  # kind -> (tag, branch)
    strip: list[tuple[str, str]] = []
    viable: list[tuple[str, str]] = []
    lengths: list[tuple[str, str]] = []
    transforms: dict[str, Transform] = {}
    attrs = {"general_desc": "general", "fixed_line": "fixed", **{a: str(t) for a, t in _SPECIAL_ATTRS}}
    for cc_int, names in sorted(COUNTRY_CODE_TO_REGION_CODE.items()):
        cc = str(cc_int)
        mine = steps.setdefault(cc, [])
        for name in names:
            meta = PhoneMetadata.metadata_for_region_or_calling_code(cc_int, name)
            if meta is None:  # as _region_code_for_number_from_list: passed over
                continue
            tag = f"{len(country):03d}"
            country[tag] = None if name == NON_GEO else name
            where[tag] = f"{name} (+{cc})"
            if meta.leading_digits:
                if not mine or not mine[-1][1]:
                    mine.append((tag, True))
                run = mine[-1][0]
                runs.setdefault(run, []).append((tag, meta.leading_digits))
                # Checked alone too: in the combined regex its branch carries its run's tag, not its own.
                leading.append((run, _check(f"(?:{_ascii(meta.leading_digits)})", where[tag])))
            else:
                mine.append((tag, False))
            if meta.same_mobile_and_fixed_line_pattern:
                same.add(tag)
            for attr, kind in [*attrs.items(), *([] if tag in same else [("mobile", "mobile")])]:
                desc = getattr(meta, attr)
                if isinstance(desc, PhoneNumberDesc) and (branch := _branch(desc)) is not None:
                    kinds.setdefault(kind, []).append((tag, branch))
            general = meta.general_desc
            if cc in main:
                continue
            main[cc] = tag
            if meta.national_prefix_for_parsing and general and general.possible_length:
                prefix = meta.national_prefix_for_parsing
                rule = meta.national_prefix_transform_rule
                groups = re.compile(prefix).groups
                if rule:
                    if groups == 0:
                        raise ValueError(f"{where[tag]}: a national prefix transform rule without a group")
                    polars_rule = re.sub(r"\\(\d)", r"${\1}", rule)
                    transforms[tag] = Transform(
                        _check(f"^(?:{_ascii(prefix)})", where[tag]), polars_rule, groups
                    )
                else:
                    strip.append((tag, f"(?:{_ascii(prefix)})"))
                if general.national_number_pattern:
                    viable.append((tag, f"(?:{_ascii(general.national_number_pattern)})"))
                kept = _kept_lengths(general.possible_length, general.possible_length_local_only)
                lengths.append((tag, "(?:" + "|".join(f"{n:02d}" for n in kept) + ")"))

    def one(branches: Iterable[tuple[str, str]] | None, end: str = "$") -> str | None:
        return _combined(list(branches or ()), end, where)

    three = (f"{i:03d}" for i in range(1000))
    by_prefix = {p: cc for p in three for cc in (p[:1], p[:2], p) if cc in steps}
    return Tables(
        by_prefix=by_prefix,
        main=main,
        single=frozenset(str(cc) for cc, regions in COUNTRY_CODE_TO_REGION_CODE.items() if len(regions) == 1),
        steps={cc: tuple(s) for cc, s in steps.items()},
        runs={run: tuple(regions) for run, regions in runs.items()},
        country=country,
        same_fixed_mobile=frozenset(same),
        geo_mobile=frozenset(cc for cc in steps if is_number_type_geographical(MOBILE, int(cc))),
        strip=one(strip, ""),
        transforms=transforms,
        strip_viable=one(viable),
        strip_lengths=one(lengths),
        leading=one(leading, ""),
        general=one(kinds.get("general")),
        special_any=one([b for _, t in _SPECIAL_ATTRS for b in kinds.get(str(t), [])]),
        special=tuple((t, p) for _, t in _SPECIAL_ATTRS if (p := one(kinds.get(str(t)))) is not None),
        fixed=one(kinds.get("fixed")),
        mobile=one(kinds.get("mobile")),
    )


# The types _number_type_helper tries before fixed line and mobile, in its order.
_SPECIAL_ATTRS = (
    ("premium_rate", PREMIUM_RATE),
    ("toll_free", TOLL_FREE),
    ("shared_cost", SHARED_COST),
    ("voip", VOIP),
    ("personal_number", PERSONAL_NUMBER),
    ("pager", PAGER),
    ("uan", UAN),
    ("voicemail", VOICEMAIL),
)


def _branch(desc: object) -> str | None:
    """`(?:lengths)(?:pattern)` for a description, None when it can never match: no pattern, or
    libphonenumber's "no such numbers" length -1. No lengths: any length (the general ones hold already)."""
    pattern = getattr(desc, "national_number_pattern", None)
    possible: tuple[int, ...] = tuple(getattr(desc, "possible_length", None) or ())
    if not pattern or (possible and all(n < 0 for n in possible)):
        return None
    lengths = "|".join(f"{n:02d}" for n in possible if n > 0) if possible else "[0-9]{2}"
    return f"(?:{lengths})(?:{_ascii(pattern)})"


def _kept_lengths(possible: Iterable[int], local: Iterable[int]) -> list[int]:
    """The lengths for which _test_number_length says IS_POSSIBLE or TOO_LONG: parse() keeps a stripped
    national number only then (not when too short, local-only, or in a gap between possible lengths)."""
    ordered, local_only = sorted(possible), set(local)
    return [n for n in range(MAX_NSN + 1) if n not in local_only and (n in ordered or n > ordered[-1])]


def _ascii(pattern: str) -> str:
    return pattern.replace("\\d", "[0-9]")


def _combined(branches: list[tuple[str, str]], end: str, where: dict[str, str]) -> str | None:
    """One anchored alternation over the tagged branches; None when no region has one."""
    if not branches:
        return None
    pattern = "^(?:" + "|".join(f"{tag}{branch}" for tag, branch in branches) + f"){end}"
    try:
        return _check(pattern, "several regions")
    except ValueError:
        for tag, branch in branches:  # name the culprit
            _check(f"^(?:{branch})", where[tag])
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
    # Every distinct list of IANA zones in the data: a list's index is its id, and id 0 is the empty list.
    lists: tuple[tuple[str, ...], ...]
    by_length: tuple[tuple[int, dict[str, int]], ...]  # prefixes of the E.164 digits -> id, longest first
    country: dict[str, int]  # calling code -> its country-level list; 0 when there is none


@cache
def zones() -> Zones:
    from phonenumbers.phonenumberutil import COUNTRY_CODE_TO_REGION_CODE
    from phonenumbers.tzdata import TIMEZONE_DATA, TIMEZONE_LONGEST_PREFIX

    lists: tuple[tuple[str, ...], ...] = ((), *sorted(set(TIMEZONE_DATA.values())))
    ids = {z: i for i, z in enumerate(lists)}
    grouped: dict[int, dict[str, int]] = {n: {} for n in range(TIMEZONE_LONGEST_PREFIX, 0, -1)}
    for prefix, names in TIMEZONE_DATA.items():
        grouped[len(prefix)][prefix] = ids[names]
    country: dict[str, int] = {}
    for cc_int in COUNTRY_CODE_TO_REGION_CODE:
        cc = str(cc_int)
        # As _country_level_time_zones_for_number, quirk included: it tries cc[:1+n] for n from the longest
        # prefix length down to 1, so a 3-digit code falls back to its first two digits, never to one.
        found = [cc[: 1 + n] for n in range(TIMEZONE_LONGEST_PREFIX, 0, -1) if cc[: 1 + n] in TIMEZONE_DATA]
        country[cc] = ids[TIMEZONE_DATA[found[0]]] if found else 0
    return Zones(lists, tuple((n, g) for n, g in grouped.items() if g), country)
