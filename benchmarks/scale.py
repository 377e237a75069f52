"""Benchmark: load + validate + plan of a large campaign on one small worker, beside a plain-Polars baseline.

    python benchmarks/scale.py --rows 10000000

Writes the recipients as Parquet in a temporary directory, then, in this one process: load → validate → plan
as the campaign flow runs them (the task functions, without Prefect's orchestration), each stage timed and the
peak RSS sampled by a thread over the three; then the same validation checks written as plain Polars
expressions (features, then every rule's expression at once, no Pandera) on the same loaded frame, the floor
that validation is measured against. Targets (issue 14): load + validate + plan ≤ 15 s and peak RSS ≤ 4 GiB
for 10M rows; validation ≤ 1.5x the plain-Polars checks.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import polars as pl
import psutil
from shared import make_recipients, peak_rss  # benchmarks/shared.py, beside this script

from smscast.campaign import CampaignSpec
from smscast.providers.registry import make_provider
from smscast.tasks.load import load_recipients
from smscast.tasks.plan import plan_campaign
from smscast.tasks.validate import features, rules, validate_recipients

BODY = "Hi {{name}}, your order {{order}} ships today."


def plain_validation(loaded: pl.DataFrame, spec: CampaignSpec) -> pl.DataFrame:
    """The same checks as validation, as plain Polars: the same features, every rule's expression evaluated
    once in one pass, the failed codes joined per row. No Pandera, no second evaluation for the reasons."""
    provider = make_provider(spec.provider, base_url="http://127.0.0.1:9", require_key=False)
    enriched = features(loaded, spec, provider.caps)
    rule_list = rules(spec, provider.caps, provider, enriched.columns, loaded.columns)
    codes = [pl.when(~r.valid.fill_null(False)).then(pl.lit(r.code)) for r in rule_list]
    return enriched.with_columns(
        error_code=pl.concat_str(codes, separator=";", ignore_nulls=True).replace("", None)
    )


def stages(spec: CampaignSpec) -> tuple[dict[str, float], pl.DataFrame, int]:
    provider = make_provider(spec.provider, base_url="http://127.0.0.1:9", require_key=False)
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    loaded = load_recipients(spec)
    seconds["load"] = time.perf_counter() - t
    t = time.perf_counter()
    checked = validate_recipients(loaded, spec, provider.caps, provider)
    seconds["validate"] = time.perf_counter() - t
    t = time.perf_counter()
    planned = plan_campaign(checked, spec, provider.caps, provider)
    seconds["plan"] = time.perf_counter() - t
    ready = int(planned.rows.get_column("batch_key").is_not_null().sum())
    return seconds, loaded, ready


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--provider", default="sandbox")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="smscast-scale-") as tmp:
        source = Path(tmp) / "recipients.parquet"
        make_recipients(args.rows).write_parquet(source)
        gc.collect()
        print(f"{args.rows:,} recipients at {source}; {os.cpu_count()} cores", flush=True)
        spec = CampaignSpec(
            campaign_id="scale",
            provider=args.provider,
            source=str(source),
            results=str(Path(tmp) / "results"),
            body=BODY,
            sender="BENCH",
        )
        rss_before = psutil.Process().memory_info().rss
        with peak_rss() as peak:
            seconds, loaded, ready = stages(spec)
            peak_bytes = peak()
        t = time.perf_counter()
        plain = plain_validation(loaded, spec)
        plain_s = time.perf_counter() - t
        del plain, loaded
    total = sum(seconds.values())
    print(f"  ready to send: {ready:,} of {args.rows:,}")
    print("  stages (s): " + " · ".join(f"{k} {v:.2f}" for k, v in seconds.items()) + f" = {total:.2f}")
    print(f"  load + validate + plan: {total:.2f} s (aim ≤ 15 s for 10M)")
    print(
        f"  validation {seconds['validate']:.2f} s vs plain Polars {plain_s:.2f} s: "
        f"{seconds['validate'] / plain_s:.2f}x (aim ≤ 1.5x)"
    )
    print(
        f"  peak RSS load → plan: {peak_bytes / 2**30:.2f} GiB (aim ≤ 4 GiB); "
        f"{rss_before / 2**30:.2f} GiB before loading"
    )


if __name__ == "__main__":
    main()
