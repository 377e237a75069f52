"""smscast.numbering against phonenumbers itself: region, type, validity and time zones of E.164 numbers.

The sample (benchmarks/numbering.py) has, for every region phonenumbers knows and every non-geographic code,
the example number of each type, each with a digit dropped, a digit added, a trunk 0 after the code and
wrong leading digits, and random digit strings of the region's possible lengths (and one off them).
"""

from __future__ import annotations

import random
import subprocess
import sys
from collections.abc import Iterable

import phonenumbers
import polars as pl
import pytest
from phonenumbers.timezone import _country_level_time_zones_for_number, time_zones_for_number

from benchmarks.numbering import campaign_numbers, country_numbers, entities, reference, sample
from smscast import numbering, numbering_metadata
from smscast.numbering import (
    number_facts,
    region_calling_code,
    time_zone_ids,
    time_zones,
    with_number_facts,
    with_number_facts_lazy,
    with_time_zones,
    zone_lists,
)

ZONE_REGIONS = ["US", "CA", "AU", "BR", "RU", "ID", "MX"]
REQUIRED = [*ZONE_REGIONS, "GB", "DE", "FR", "IN", "SG", "JP", "CN", "NG", "ZA", "IT", "AR"]
UNKNOWN_ZONE = ("Etc/Unknown",)


def facts(phones: Iterable[str | None]) -> pl.DataFrame:
    return with_number_facts(pl.DataFrame({"phone": list(phones)}, schema={"phone": pl.String}))


def check_agreement(phones: list[str]) -> None:
    """Valid agreement >= 99.9 %, type agreement >= 99.5 % of the valid numbers, and the same country for
    every valid number; the disagreements are printed on failure."""
    out = facts(phones)
    theirs = [reference(p) for p in phones]
    ours = list(
        zip(*(out.get_column(c).to_list() for c in ("country", "number_type", "phone_valid")), strict=True)
    )
    bad = [
        f"{p}: phonenumbers {t} smscast {o}" for p, t, o in zip(phones, theirs, ours, strict=True) if t != o
    ]
    report = f"{len(bad)} disagreements:\n" + "\n".join(bad[:200])
    valid = [(t, o) for t, o in zip(theirs, ours, strict=True) if t[2]]
    assert sum(t[2] == o[2] for t, o in zip(theirs, ours, strict=True)) >= 0.999 * len(phones), report
    assert sum(t[1] == o[1] for t, o in valid) >= 0.995 * len(valid), report
    assert [(t, o) for t, o in valid if t[0] != o[0]] == [], report


def test_agrees_with_phonenumbers_on_every_region_and_its_variants() -> None:
    regions = {region for region, _ in entities()}
    assert set(REQUIRED) <= regions and len(regions) >= 50
    phones = sample()
    assert (
        sum(
            p.startswith(("+800", "+808", "+870", "+878", "+881", "+882", "+883", "+888", "+979"))
            for p in phones
        )
        >= 40
    )
    counts = dict.fromkeys(REQUIRED, 0)
    for p in phones:
        country = reference(p)[0]
        if country in counts:
            counts[country] += 1
    assert min(counts.values()) >= 10, counts  # each named region is really in the sample
    check_agreement(phones)


@pytest.mark.parametrize("region", ["GB", "US", "RU", "IN", "BR", "AR", "DE"])
def test_agrees_with_phonenumbers_on_a_campaign_in_one_country(region: str) -> None:
    """Mostly the country's mobiles (the rows the regexes over the numbers themselves decide), a tenth of
    everything else."""
    phones = country_numbers(2000, region, seed=11).to_list()
    assert sum(reference(p)[0] == region for p in phones) > 1500
    check_agreement(phones)


def test_the_sample_has_valid_and_invalid_numbers_of_many_types() -> None:
    """A guard on the guard: agreement on a sample of nothing but invalid numbers would prove little."""
    out = facts(sample(regions=REQUIRED))
    kinds = set(out.filter("phone_valid").get_column("number_type").to_list())
    assert {"mobile", "fixed_line", "fixed_line_or_mobile", "toll_free", "premium_rate", "voip"} <= kinds
    assert 0.2 < out.get_column("phone_valid").sum() / out.height < 0.8


@pytest.mark.parametrize(
    ("phone", "country", "kind", "valid"),
    [
        ("+447400123456", "GB", "mobile", True),
        ("+4407400123456", "GB", "mobile", True),  # the trunk 0 written after the code: parse() drops it
        ("+12015550123", "US", "fixed_line_or_mobile", True),
        ("+12684601234", "AG", "fixed_line", True),  # +1 shared: Antigua by its leading digits
        ("+14165550123", "CA", "fixed_line_or_mobile", True),  # ... Canada by a valid type
        ("+390612345678", "IT", "fixed_line", True),  # the Italian leading zero is part of the number
        ("+393123456789", "IT", "mobile", True),
        ("+5491123456789", "AR", "mobile", True),
        ("+77011234567", "KZ", "mobile", True),  # +7 shared: Kazakhstan by its leading digits
        ("+79161234567", "RU", "mobile", True),
        ("+789161234567", "RU", "mobile", True),  # the Russian trunk 8 after the code
        ("+447781123456", "GG", "mobile", True),  # +44: Guernsey claims what Britain's patterns do not
        ("+447624123456", "IM", "mobile", True),  # ... the Isle of Man by its leading digits
        ("+61891621234", "CC", "fixed_line", True),
        ("+358181234567", "AX", "fixed_line", True),
        ("+590590271234", "BL", "fixed_line", True),
        ("+540111234567", "AR", "unknown", False),  # a transform rule's prefix, and still invalid
        ("+80012345678", None, "toll_free", True),  # non-geographic: valid, no country
        ("+9991234567", None, "unknown", False),  # E.164 under no calling code
        ("+12", None, None, None),  # not E.164: nulls
        ("447400123456", None, None, None),
        ("+44 7400 123456", None, None, None),
        ("", None, None, None),
        (None, None, None, None),
    ],
)
def test_known_numbers(phone: str | None, country: str | None, kind: str | None, valid: bool | None) -> None:
    row = facts([phone]).row(0, named=True)
    assert (row["country"], row["number_type"], row["phone_valid"]) == (country, kind, valid)
    if phone is not None and phone.startswith("+") and valid is not None:
        assert reference(phone) == (country, kind, valid)


def zones_of(phones: list[str]) -> list[set[str] | None]:
    out = with_time_zones(pl.DataFrame({"phone": phones}, schema={"phone": pl.String}))
    return [None if z is None else set(z) for z in out.get_column("zones").to_list()]


def test_time_zones_equal_phonenumbers_for_valid_numbers() -> None:
    phones = sample(regions=ZONE_REGIONS, random_per_region=300) + campaign_numbers(3000).to_list()
    valid = [p for p in phones if reference(p)[2]]
    assert len({reference(p)[0] for p in valid} & set(ZONE_REGIONS)) == len(ZONE_REGIONS)
    mismatches = []
    placed = 0
    for phone, got in zip(valid, zones_of(valid), strict=True):
        number = phonenumbers.parse(phone)
        theirs = time_zones_for_number(number)
        if theirs == UNKNOWN_ZONE:  # documented difference: the calling code's zones instead
            theirs = tuple(z for z in _country_level_time_zones_for_number(number) if z != UNKNOWN_ZONE[0])
        else:
            placed += 1
        if got != set(theirs):
            mismatches.append((phone, theirs, got))
    assert mismatches == []
    assert placed > 1000


def test_time_zones_given_the_types_equal_those_it_finds() -> None:
    phones = [*sample(regions=[*ZONE_REGIONS, "GB", "AR"], random_per_region=100), "+441234", "x", None]
    df = with_number_facts(pl.DataFrame({"phone": phones}, schema={"phone": pl.String}))
    found = with_time_zones(df).get_column("zones")
    assert with_time_zones(df, number_type="number_type").get_column("zones").equals(found)
    assert found.n_unique() > 20 and found.null_count() == 3  # prefixes told many numbers' zones apart
    ids = time_zone_ids(df.get_column("phone"), df.get_column("number_type"))
    assert zone_lists().gather(ids).equals(found, check_names=False) and ids.n_unique() == found.n_unique()


def test_the_longest_prefix_ranges_agree_with_a_lookup_by_each_length() -> None:
    """The search over ranges of the first nine digits (and, for shorter numbers, the lookup by each
    length) against phonenumbers' own way: each prefix length in turn, longest first."""
    from phonenumbers.tzdata import TIMEZONE_DATA, TIMEZONE_LONGEST_PREFIX

    ids = {
        names: i
        for i, names in enumerate(numbering_metadata.zones().lists.to_list())
        for names in [tuple(names)]
    }
    rng = random.Random(5)
    prefixes = sorted(TIMEZONE_DATA)
    digits = [p + "".join(rng.choice("0123456789") for _ in range(rng.randrange(0, 8))) for p in prefixes]
    digits += ["".join(rng.choice("0123456789") for _ in range(rng.randrange(4, 12))) for _ in range(3000)]
    expected = []
    for d in digits:
        found = next(
            (TIMEZONE_DATA[d[:n]] for n in range(TIMEZONE_LONGEST_PREFIX, 0, -1) if d[:n] in TIMEZONE_DATA),
            None,
        )
        expected.append(None if found is None else ids[found])
    assert numbering._longest_prefix(pl.Series(digits)).to_list() == expected


def test_time_zones_of_numbers_libphonenumber_cannot_place() -> None:
    gb = set(_country_level_time_zones_for_number(phonenumbers.parse("+447400123456")))
    assert len(gb) >= 2  # the data lists the Crown dependencies' zones under +44
    assert time_zones_for_number(phonenumbers.parse("+4412")) == UNKNOWN_ZONE
    assert zones_of(["+441234", "+4499999999999", "+80012345678", "+9991234567", "447400123456", "+1"]) == [
        None,  # too short for E.164
        gb,  # invalid: the calling code's zones
        set(),  # valid, non-geographic, and the data has no zone for +800
        set(),  # no calling code
        None,  # not E.164
        None,
    ]


def test_lazy_and_expression_forms_agree_with_the_eager_one() -> None:
    phones = [*sample(regions=["GB", "US", "AR", "BR", "JP"]), "x", None]
    df = pl.DataFrame({"msisdn": phones}, schema={"msisdn": pl.String})
    eager = with_number_facts(df, "msisdn")
    lazy = with_number_facts_lazy(df.lazy(), "msisdn").collect()
    assert lazy.equals(eager)
    struct = df.select(number_facts(pl.col("msisdn")).alias("f")).unnest("f")
    assert struct.equals(eager.drop("msisdn"))
    zoned = df.select(time_zones(pl.col("msisdn")).alias("z"))
    assert zoned.get_column("z").equals(with_time_zones(df, "msisdn", out="z").get_column("z"))


def test_empty_frames_and_an_existing_country_column() -> None:
    empty = facts([])
    assert empty.schema == {
        "phone": pl.String,
        "home_country": pl.String,
        "country": pl.String,
        "number_type": pl.String,
        "phone_valid": pl.Boolean,
    }
    assert with_time_zones(pl.DataFrame({"phone": []}, schema={"phone": pl.String})).height == 0
    df = pl.DataFrame({"phone": ["+447400123456"], "country": ["FR"]})
    assert with_number_facts(df).get_column("country").to_list() == ["GB"]


def test_home_country_is_the_calling_codes_main_region_even_for_numbers_it_cannot_place() -> None:
    out = facts(["+447700900123", "+447911123456", "+12125551234", "+80012345678", "nope"])
    assert out.get_column("country").to_list() == [None, "GG", "US", None, None]
    assert out.get_column("home_country").to_list() == ["GB", "GB", "US", None, None]


def test_type_codes_are_libphonenumbers() -> None:
    for code, name in numbering_metadata.TYPE_NAMES.items():
        assert getattr(phonenumbers.PhoneNumberType, name.upper()) == code


def test_region_calling_code() -> None:
    assert (region_calling_code("gb"), region_calling_code("US"), region_calling_code("XX")) == (44, 1, 0)


def test_a_pattern_polars_cannot_compile_is_refused_with_its_region() -> None:
    where = {"007": "XX (+999)", "008": "YY (+998)"}
    with pytest.raises(ValueError, match=r"YY \(\+998\)"):
        numbering_metadata._combined([("007", "007\\+999(?:1)"), ("008", "008\\+998(?:(?<=1)2)")], "$", where)


def test_importing_the_module_loads_no_phonenumbers_data() -> None:
    code = (
        "import sys, smscast.numbering; print(sorted(m for m in sys.modules if m.startswith('phonenumbers')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


@pytest.mark.slow
@pytest.mark.timeout(3600)  # phonenumbers takes 50-250 µs a number on a busy machine
def test_agrees_with_phonenumbers_on_a_million_numbers() -> None:
    check_agreement(campaign_numbers(1_000_000, seed=3).to_list())
