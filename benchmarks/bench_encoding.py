"""Time segment_frame on realistic campaign bodies against a plain ``str.len_chars()`` baseline.

    python benchmarks/bench_encoding.py [rows]

Bodies are rendered from a few templates (120-400 characters); 10% carry a '€' or an emoji at a random
place, 3% an accented name (UCS-2). The share of rows that take the exact (pair-aware) path is printed.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from smscast.encoding import segment_frame, split_reference

TEMPLATES = [
    "Hi {name}, your order {code} has shipped and will arrive on {date}. Track it at https://ex.am/t/{code}. "
    "Reply STOP to opt out.",
    "Dear {name}, this is a reminder that your appointment with Dr. Smith is on {date} at 10:30. Please "
    "arrive 15 minutes early and bring your insurance card and a photo ID. To reschedule call 020 7946 0000 "
    "or reply R. Reply STOP to opt out.",
    "{name}, our summer sale starts {date}! Take up to 50% off selected lines in store and online with code "
    "{code}. Free delivery on orders over 40 pounds, returns within 30 days, and members earn double points "
    "all week. Offer ends Sunday at midnight; terms and exclusions apply, see ex.am/terms for details. Reply "
    "STOP to opt out of marketing messages from us.",
    "Hello {name}. Your verification code is {code}. It expires in 10 minutes. Never share this code with "
    "anyone, including our staff; we will never ask for it by phone or email. If you did not request it, "
    "secure your account at https://ex.am/secure right away and contact support. Questions? Visit "
    "ex.am/help any time, day or night, or reply HELP. Reply STOP to opt out of these alerts at any moment.",
]
NAMES = ["Alice", "Bob", "Chen", "Dmitri", "Eve", "Fatima", "Gus", "Hana", "Ivan", "Jo"]
ACCENTED = ["José", "Zoë", "François", "Łukasz", "Ýr"]  # é is GSM; the others force UCS-2
PAIRS = ["€", "€", "{", "😀", "🎉", "👍"]


def make_bodies(n: int, seed: int = 7) -> pl.Series:
    rng = random.Random(seed)
    out: list[str] = []
    for _ in range(n):
        body = rng.choice(TEMPLATES).format(
            name=rng.choice(ACCENTED) if rng.random() < 0.03 else rng.choice(NAMES),
            code=f"{rng.randrange(10**6):06d}",
            date=f"{rng.randrange(1, 29)}/0{rng.randrange(1, 10)}",
        )
        if rng.random() < 0.10:
            at = rng.randrange(len(body))
            body = body[:at] + rng.choice(PAIRS) + body[at:]
        out.append(body)
    return pl.Series("body", out, dtype=pl.String)


def best_of(runs: int, fn: Callable[[], object]) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    started = time.perf_counter()
    bodies = make_bodies(n)
    print(f"generated {n:,} bodies in {time.perf_counter() - started:.1f}s")
    frame = pl.DataFrame({"body": bodies})
    length = pl.col("body").str.len_chars()
    low, mid, high = frame.select(
        length.min().alias("min"), length.median().alias("mid"), length.max().alias("max")
    ).row(0)
    print(f"length in chars: min {low} median {mid} max {high}")

    baseline = best_of(5, lambda: frame.select(pl.col("body").str.len_chars()))
    timed = best_of(5, lambda: segment_frame(bodies))
    result = segment_frame(bodies)
    print(f"baseline str.len_chars(): {baseline * 1000:8.1f} ms")
    print(f"segment_frame:            {timed * 1000:8.1f} ms   ratio {timed / baseline:.1f}x")
    print(result.group_by("encoding", "segments").len().sort("encoding", "segments"))

    sample = bodies.head(20_000).to_list()
    start = time.perf_counter()
    reference = [len(split_reference(b)[1]) for b in sample]
    per_row = (time.perf_counter() - start) / len(sample)
    print(f"pure-Python split_reference: {per_row * 1e6:.1f} us/row (~{per_row * n:.1f}s for {n:,} rows)")
    assert reference == result.get_column("segments").head(len(sample)).to_list()
    print("first 20,000 rows agree with split_reference")


if __name__ == "__main__":
    main()
