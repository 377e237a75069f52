"""Benchmark: the contact-policy step beside validation, on the same recipients, in the same run.

    python benchmarks/policy.py --rows 1000000 --list 1000000 --repeats 5

The issue's target: the policy step over N recipients with an N-number suppression list adds at most 20 % to
validation's time. Runs alternate (validation, policy, validation, …) so that a noisy neighbour hurts both; the
figures are medians and their ratio. The policy runs as the campaign flow runs it (tasks/policy.py
`apply_policy` on the validated frame), with the suppression list as a Parquet file given by `--suppress` (so
its loading and normalising count), a tenth of the recipients on it, and with `--all-rules` also
country rules and quiet hours (the frequency cap reads the results location, which is empty here).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import polars as pl

from smscast.campaign import CampaignSpec
from smscast.providers.registry import make_provider
from smscast.tasks import validate
from smscast.tasks.policy import apply_policy
from smscast.tasks.validate import validate_recipients, with_country

# Mobile number ranges of a few countries, so that country and time-zone lookups see a realistic mix.
PREFIXES = (  # each + 6 digits is a valid mobile number (validation refuses numbers invalid for their country)
    "+447400",
    "+4915123",
    "+33612",
    "+12124",
    "+14154",
    "+6591",
    "+61412",
    "+5511987",
    "+79161",
    "+919810",
)
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def recipients(n: int) -> pl.DataFrame:
    idx = pl.int_range(0, n, eager=True)
    prefix = pl.Series(PREFIXES).gather(idx % len(PREFIXES))
    digits = (idx + 1_000_000).cast(pl.String).str.slice(-6)
    return pl.DataFrame({"row_index": idx.cast(pl.Int64), "phone_raw": prefix + digits}).with_columns(
        name=pl.lit("Ann")
    )


def suppression_list(n: int, recipients: pl.DataFrame) -> pl.DataFrame:
    """`n` numbers, one in ten of them recipients (the rest are numbers the campaign does not have)."""
    hits = recipients.get_column("phone_raw").gather_every(10).head(n)
    rest = pl.int_range(0, n - hits.len(), eager=True).cast(pl.String).str.zfill(9)
    return pl.DataFrame({"phone": pl.concat([hits, "+3932" + rest])})


def timed(fn: object) -> float:
    start = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--list", type=int, default=1_000_000, help="numbers on the suppression list")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--all-rules", action="store_true", help="country rules and quiet hours too")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        raw = recipients(args.rows)
        listed = Path(tmp) / "optouts.parquet"
        suppression_list(args.list, raw).write_parquet(listed)
        extra = (
            {
                "allow_countries": ("GB", "DE", "FR", "US", "SG", "AU", "BR", "IN"),
                "quiet_hours": "21:00-08:00",
            }
            if args.all_rules
            else {}
        )
        spec = CampaignSpec(
            campaign_id="bench-policy",
            source="unused.parquet",
            results=str(Path(tmp) / "results"),
            body="Hi {{name}}",
            suppress=(str(listed),),
            **extra,  # type: ignore[arg-type]
        )
        provider = make_provider("sandbox", base_url="http://127.0.0.1:9", require_key=False)
        validated = validate_recipients(raw, spec, provider.caps, provider)
        out = apply_policy(validated, spec, now=NOW)  # warm-up, and the counts shown below
        v_times: list[float] = []
        p_times: list[float] = []
        bare_times: list[float] = []
        for _ in range(args.repeats):
            v_times.append(timed(lambda: validate_recipients(raw, spec, provider.caps, provider)))
            p_times.append(timed(lambda: apply_policy(validated, spec, now=NOW)))
            # Validation as it was before this issue, without the `country` column (libphonenumber's region,
            # which the policy's country rules and prices read): the stricter baseline.
            validate.with_country = lambda df: df
            bare_times.append(timed(lambda: validate_recipients(raw, spec, provider.caps, provider)))
            validate.with_country = with_country

    v, p, bare = statistics.median(v_times), statistics.median(p_times), statistics.median(bare_times)
    counts = dict(out.group_by("status").len().iter_rows())
    rules = "all" if args.all_rules else "opt-out list"
    print(f"recipients {args.rows:,} · suppression list {args.list:,} · rules: {rules}")
    print(f"  statuses after policy: {counts}")
    print(f"  validation  median {v:.3f}s  ({', '.join(f'{t:.3f}' for t in v_times)})")
    print(f"  policy      median {p:.3f}s  ({', '.join(f'{t:.3f}' for t in p_times)})")
    print(f"  validation without the country column  median {bare:.3f}s")
    print(
        f"  policy / validation = {p / v:.2f}  (target ≤ 0.20); against validation without country {p / bare:.2f}"
    )


if __name__ == "__main__":
    main()
