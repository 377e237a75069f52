"""Benchmark: smscast.numbering (libphonenumber's metadata compiled into Polars) against phonenumbers itself.

    python benchmarks/numbering.py --rows 1000000 --repeats 5 [--sample 20000] [--country GB]

Two mixes of numbers. "all regions" (`campaign_numbers`): nine in ten are example numbers of every type of
every region phonenumbers knows (and the non-geographic codes), one in ten broken variants of them (a digit
dropped or added, a trunk 0 after the code, wrong leading digits) or random digits of plausible length; all
with their last three digits randomised, so that they are mostly distinct. Special types (premium rate, toll
free, ...) are nearly half of it, which no campaign has. "campaign" (`country_numbers`): nine in ten are mobile
numbers of one country (--country), one in ten from the first mix.

Polars runs on one thread (POLARS_MAX_THREADS=1 unless set otherwise), the target being 1,000,000 numbers/s
on one core. Rates are given by wall clock and by CPU time (the process's, so Polars' thread included): on a
busy machine the wall clock counts the time spent waiting for a core, the CPU time does not, and with one
thread the CPU rate is what one core does. Runs alternate (phonenumbers on the first `--sample` numbers, then
smscast on all of them) so that a noisy neighbour hurts both; reported: medians, their ratio, how often the
two agree, and with_time_zones' rates, classifying the numbers itself and given their `number_type`.

tests/test_numbering.py uses `sample`, `reference`, `campaign_numbers` and `country_numbers` from here.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
if __name__ == "__main__":  # before Polars starts its thread pool
    os.environ.setdefault("POLARS_MAX_THREADS", "1")

import polars as pl

from smscast.phone import E164_PATTERN

Facts = tuple[str | None, str | None, bool | None]
_DESCS = (
    "fixed_line",
    "mobile",
    "toll_free",
    "premium_rate",
    "shared_cost",
    "personal_number",
    "voip",
    "pager",
    "uan",
    "voicemail",
)


def entities() -> list[tuple[str, int]]:
    """(region, calling code) for every region phonenumbers knows, then ("001", code) for each
    non-geographic calling code (+800, +882, ...)."""
    import phonenumbers

    out = [(r, phonenumbers.country_code_for_region(r)) for r in sorted(phonenumbers.SUPPORTED_REGIONS)]
    return out + [("001", cc) for cc in sorted(phonenumbers.COUNTRY_CODES_FOR_NON_GEO_REGIONS)]


def _examples(region: str, cc: int) -> tuple[list[str], tuple[int, ...]]:
    from phonenumbers import PhoneMetadata

    meta = PhoneMetadata.metadata_for_region_or_calling_code(cc, region)
    assert meta is not None and meta.general_desc is not None
    found = [getattr(meta, d).example_number for d in _DESCS if getattr(meta, d) is not None]
    return [e for e in found if e], tuple(n for n in meta.general_desc.possible_length if n > 0)


def _digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("0123456789") for _ in range(n))


def _variants(nsn: str, rng: random.Random) -> Iterator[str]:
    yield nsn
    i = rng.randrange(len(nsn))
    yield nsn[:i] + nsn[i + 1 :]  # a digit dropped
    i = rng.randrange(len(nsn) + 1)
    yield nsn[:i] + rng.choice("0123456789") + nsn[i:]  # a digit added
    yield "0" + nsn  # the trunk prefix written after the code: parse() may strip it
    k = min(2, len(nsn))
    lead = "".join(rng.choice([d for d in "0123456789" if d != c]) for c in nsn[:k])
    yield lead + nsn[k:]  # wrong leading digits


def sample(
    seed: int = 12, random_per_region: int = 12, regions: Iterable[str] | None = None, variants: bool = True
) -> list[str]:
    """Distinct E.164 strings: examples of every type for each region (every region phonenumbers knows, or
    `regions`, and the non-geographic codes as "001"), their variants, and random national numbers of the
    region's possible lengths (and one off them) under its calling code."""
    rng = random.Random(seed)
    wanted = None if regions is None else set(regions)
    out: dict[str, None] = {}
    for region, cc in entities():
        if wanted is not None and region not in wanted:
            continue
        examples, lengths = _examples(region, cc)
        for nsn in examples:
            for v in _variants(nsn, rng) if variants else [nsn]:
                out[f"+{cc}{v}"] = None
        for _ in range(random_per_region):
            n = rng.choice(lengths or (8,)) + rng.choice((0, 0, 0, -1, 1))
            out[f"+{cc}{_digits(rng, max(n, 1))}"] = None
    e164 = re.compile(E164_PATTERN)
    return [p for p in out if e164.match(p)]


def reference(phone: str | None) -> Facts:
    """(country, number_type, phone_valid) as smscast.numbering promises them, from phonenumbers per number."""
    import phonenumbers

    if phone is None or not re.match(E164_PATTERN, phone):
        return None, None, None
    try:
        n = phonenumbers.parse(phone, None)
    except phonenumbers.NumberParseException:
        return None, "unknown", False
    region = phonenumbers.region_code_for_number(n)
    kind = phonenumbers.number_type(n)
    name = _TYPE_NAMES[kind]
    return (None if region in (None, "ZZ", "001") else region), name, phonenumbers.is_valid_number(n)


def _type_names() -> dict[int, str]:
    import phonenumbers

    return {v: k.lower() for k, v in vars(phonenumbers.PhoneNumberType).items() if k.isupper()}


_TYPE_NAMES = _type_names()


def phonenumbers_only(phones: list[str]) -> None:
    """The baseline: what a per-row Python check costs (parse, region, type, validity), nothing else."""
    import phonenumbers

    for phone in phones:
        try:
            n = phonenumbers.parse(phone, None)
        except phonenumbers.NumberParseException:
            continue
        phonenumbers.region_code_for_number(n), phonenumbers.number_type(n), phonenumbers.is_valid_number(n)


def spread(base: list[str], rows: int, seed: int = 7) -> pl.Series:
    """`rows` numbers drawn from `base`, each with its last three digits replaced at random."""
    rng = random.Random(seed)
    picks = pl.Series("phone", base).gather(pl.Series([rng.randrange(len(base)) for _ in range(rows)]))
    tails = pl.Series([f"{rng.randrange(1000):03d}" for _ in range(rows)])
    return (picks.str.slice(0, picks.str.len_bytes() - 3) + tails).alias("phone")


def campaign_numbers(rows: int, seed: int = 7) -> pl.Series:
    """Numbers as a campaign's look: nine in ten drawn from the example numbers of every region and type,
    one in ten from the whole sample (broken variants and random digits)."""
    examples = sample(seed, random_per_region=0, variants=False)
    good = spread(examples, rows - rows // 10, seed)
    mixed = pl.concat([good, spread(sample(seed), rows // 10, seed + 1)])
    return mixed.sample(fraction=1.0, shuffle=True, seed=seed)


def country_numbers(rows: int, region: str = "GB", seed: int = 7) -> pl.Series:
    """Numbers as a campaign in one country has them: nine in ten mobile numbers of `region` (its example
    mobile number with the last six digits at random), one in ten from `campaign_numbers`."""
    import phonenumbers

    example = phonenumbers.example_number_for_type(region, phonenumbers.PhoneNumberType.MOBILE)
    assert example is not None, f"no example mobile number for {region}"
    mobile = phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.E164)
    rng = random.Random(seed)
    local = rows - rows // 10
    ours = pl.Series("phone", [f"{mobile[:-6]}{rng.randrange(10**6):06d}" for _ in range(local)])
    return pl.concat([ours, campaign_numbers(rows // 10, seed)]).sample(fraction=1.0, shuffle=True, seed=seed)


def agreement(phones: list[str], ours: pl.DataFrame) -> tuple[float, float, list[str]]:
    """(valid agreement, type agreement among the numbers phonenumbers finds valid, the disagreements)."""
    same_valid = same_type = valid = 0
    bad: list[str] = []
    for phone, row in zip(phones, ours.iter_rows(named=True), strict=True):
        country, kind, ok = reference(phone)
        got = (row["country"], row["number_type"], row["phone_valid"])
        same_valid += ok == got[2]
        if ok:
            valid += 1
            same_type += kind == got[1]
        if got != (country, kind, ok):
            bad.append(f"{phone}: phonenumbers {(country, kind, ok)} smscast {got}")
    return same_valid / max(len(phones), 1), same_type / max(valid, 1), bad


class Timer:
    """Wall-clock and CPU seconds of the runs of one thing."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def run(self, fn: Callable[[], object]) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        self.cpu.append(time.process_time() - cpu)
        self.wall.append(time.perf_counter() - wall)

    def rates(self, n: int) -> tuple[float, float]:
        return n / statistics.median(self.wall), n / statistics.median(self.cpu)


def measure(name: str, phones: pl.Series, sample_size: int, repeats: int) -> None:
    from smscast.numbering import with_number_facts, with_time_zones

    df = pl.DataFrame([phones])
    some = phones.head(sample_size).to_list()
    theirs, facts, zoned, typed = Timer(), Timer(), Timer(), Timer()
    out = with_number_facts(df)
    for _ in range(repeats):
        theirs.run(lambda: phonenumbers_only(some))
        facts.run(lambda: with_number_facts(df))
        zoned.run(lambda: with_time_zones(df))
        typed.run(lambda: with_time_zones(out, number_type="number_type"))
    print(f"\n{name}: {len(phones):,} numbers, median of {repeats} runs      wall numbers/s    CPU numbers/s")
    rows = [
        (f"phonenumbers (parse, region, type, valid; {len(some):,})", theirs.rates(len(some))),
        ("smscast.numbering.with_number_facts", facts.rates(len(phones))),
        ("with_time_zones (classifies the numbers)", zoned.rates(len(phones))),
        ("with_time_zones(number_type=...)", typed.rates(len(phones))),
    ]
    for label, (wall, cpu) in rows:
        print(f"  {label:<52} {wall:>14,.0f} {cpu:>16,.0f}")
    ratio = rows[1][1][1] / rows[0][1][1]
    print(f"  smscast/phonenumbers (CPU): {ratio:,.0f}x   target: 1,000,000/s on one core (CPU, one thread)")
    valid_rate, type_rate, bad = agreement(some, out.head(sample_size))
    print(f"  agreement on {len(some):,}: valid {valid_rate:.4%} · type of valid ones {type_rate:.4%}")
    print(f"  valid share: {out.get_column('phone_valid').sum() / len(out):.1%}")
    for line in bad[:10]:
        print(f"    {line}")


def main() -> None:
    from smscast.numbering import with_number_facts

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--sample", type=int, default=20_000, help="numbers phonenumbers classifies per run")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--country", default="GB", help="the campaign mix's country")
    args = ap.parse_args()

    mixes = {
        "all regions": campaign_numbers(args.rows),
        f"campaign ({args.country} mobiles 90%)": country_numbers(args.rows, args.country),
    }
    print(f"{len(entities())} regions ({len(sample()):,} numbers in the test sample)")
    print(f"Polars threads: {os.environ.get('POLARS_MAX_THREADS', 'all')}; {os.cpu_count()} cores")
    start = time.perf_counter()
    with_number_facts(pl.DataFrame({"phone": ["+447400123456"]}))
    print(f"first call (loads and compiles libphonenumber's metadata): {time.perf_counter() - start:.2f} s")
    for name, phones in mixes.items():
        measure(name, phones, args.sample, args.repeats)


if __name__ == "__main__":
    main()
