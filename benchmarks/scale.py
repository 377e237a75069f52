"""Benchmark: load + validate + plan of a large campaign on one small worker, beside a plain-Polars baseline.

    python benchmarks/scale.py --rows 10000000 [--repeats 3]

Writes the recipients as Parquet in a temporary directory. Each repeat then runs in a fresh process (so that
its memory starts from the same place, not from what the last repeat's allocator kept): load → validate →
plan as the campaign flow runs them (the task functions, without Prefect's orchestration), each stage timed
and its peak RSS sampled; then the same validation checks written as plain Polars expressions (features, then
every rule's expression at once, no Pandera) on the same loaded frame, the floor that validation is measured
against. The figures printed are medians over the repeats, and the highest peak RSS.

Targets (issue 14): load + validate + plan ≤ 15 s and peak RSS ≤ 4 GiB for 10M rows; validation ≤ 1.5x the
plain-Polars checks. Before the repeats, a separate process times the keys' compiled kernel's first use
(smscast/blake2b_kernel.py): the numba compile on a machine's first run, loading the cached code after.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import polars as pl
import psutil
from shared import make_recipients, peak_rss  # benchmarks/shared.py, beside this script

from smscast.campaign import CampaignSpec
from smscast.providers.base import Provider
from smscast.providers.registry import provider_class
from smscast.settings import ProviderSettings
from smscast.tasks.load import load_recipients
from smscast.tasks.plan import plan_campaign
from smscast.tasks.validate import features, rules, validate_recipients

BODY = "Hi {{name}}, your order {{order}} ships today."
GiB = 2**30
STAGES = ("load", "validate", "plan")

KERNEL_FIRST_USE = """
import time
t = time.perf_counter()
import numpy as np
from smscast.blake2b_kernel import hex_digests
hex_digests(b"c", np.zeros(1, np.uint8), np.array([0, 1]), b"sc-")
print(time.perf_counter() - t)
"""


def make_provider(spec: CampaignSpec) -> Provider:
    """The provider without credentials, built directly: `make_provider` would look for an API key in a
    Prefect Secret block, and so start Prefect's temporary server beside the stages being measured."""
    return provider_class(spec.provider)(ProviderSettings(base_url="http://127.0.0.1:9", api_key=None))


def plain_validation(loaded: pl.DataFrame, spec: CampaignSpec) -> pl.DataFrame:
    """The same checks as validation, as plain Polars: the same features, every rule's expression evaluated
    once in one pass, the failed codes joined per row. No Pandera, no second evaluation for the reasons."""
    provider = make_provider(spec)
    enriched = features(loaded, spec, provider.caps)
    rule_list = rules(spec, provider.caps, provider, enriched.columns, loaded.columns)
    codes = [pl.when(~r.valid.fill_null(False)).then(pl.lit(r.code)) for r in rule_list]
    return enriched.with_columns(
        error_code=pl.concat_str(codes, separator=";", ignore_nulls=True).replace("", None)
    )


def one_run(spec: CampaignSpec) -> dict[str, Any]:
    """One repeat, in this (fresh) process: each stage's seconds, peak RSS and RSS after it, then the
    plain-Polars baseline. The loaded frame stays alive through the stages, as it does in the flow."""
    provider = make_provider(spec)
    proc = psutil.Process()
    out: dict[str, Any] = {
        "rss_before": proc.memory_info().rss,
        "seconds": {},
        "cpu": {},
        "peak": {},
        "after": {},
    }

    def staged(name: str, fn: Any, *args: Any) -> Any:
        with peak_rss() as peak:
            t, cpu = time.perf_counter(), time.process_time()
            result = fn(*args)
            out["seconds"][name] = time.perf_counter() - t
            out["cpu"][name] = time.process_time() - cpu
            out["peak"][name] = peak()
        out["after"][name] = proc.memory_info().rss
        return result

    loaded = staged("load", load_recipients, spec)
    checked = staged("validate", validate_recipients, loaded, spec, provider.caps, provider)
    planned = staged("plan", plan_campaign, checked, spec, provider.caps, provider)
    out["ready"] = int(planned.rows.get_column("batch_key").is_not_null().sum())
    del planned, checked
    gc.collect()
    t = time.perf_counter()
    plain_validation(loaded, spec)
    out["plain"] = time.perf_counter() - t
    return out


def kernel_first_use() -> str:
    done = subprocess.run(
        [sys.executable, "-c", KERNEL_FIRST_USE],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parent.parent,
    )
    if done.returncode != 0:
        return (
            "not available (" + (done.stderr.strip().splitlines() or ["?"])[-1] + "): keys hashed by hashlib"
        )
    return (
        f"{float(done.stdout.strip()):.2f} s in a new process (import numba, then compile or load the cache)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--provider", default="sandbox")
    ap.add_argument("--repeats", type=int, default=1)
    # A repeat's own process: the campaign as JSON, and the file its figures go to.
    ap.add_argument("--one-run", nargs=2, metavar=("SPEC_JSON", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one_run:
        measured = one_run(CampaignSpec.model_validate_json(args.one_run[0]))
        Path(args.one_run[1]).write_text(json.dumps(measured))
        return
    with tempfile.TemporaryDirectory(prefix="smscast-scale-") as tmp:
        source = Path(tmp) / "recipients.parquet"
        make_recipients(args.rows).write_parquet(source)
        print(f"{args.rows:,} recipients at {source}; {os.cpu_count()} cores", flush=True)
        spec = CampaignSpec(
            campaign_id="scale",
            provider=args.provider,
            source=str(source),
            results=str(Path(tmp) / "results"),
            body=BODY,
            sender="BENCH",
        )
        print(f"  key kernel's first use: {kernel_first_use()}", flush=True)
        runs = []
        for i in range(args.repeats):
            figures, log = Path(tmp) / f"run{i}.json", Path(tmp) / f"run{i}.log"
            with log.open("w") as out:  # a file, not a pipe: nothing a repeat leaves behind can hold us up
                cmd = [sys.executable, __file__, "--one-run", spec.model_dump_json(), str(figures)]
                code = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT).returncode
            if code != 0:
                sys.exit(f"repeat {i + 1} failed:\n{log.read_text()[-3000:]}")
            runs.append(json.loads(figures.read_text()))
            total = sum(runs[-1]["seconds"].values())
            print(f"  repeat {i + 1}: load + validate + plan {total:.2f} s", flush=True)
    report(args.rows, runs)


def report(rows: int, runs: list[dict[str, Any]]) -> None:
    def med(values: list[float]) -> float:
        return statistics.median(values)

    seconds = {s: med([r["seconds"][s] for r in runs]) for s in STAGES}
    total = med([sum(r["seconds"].values()) for r in runs])
    ratio = med([r["seconds"]["validate"] / r["plain"] for r in runs])
    peak = max(max(r["peak"].values()) for r in runs)
    n = f"median of {len(runs)}" if len(runs) > 1 else "one run"
    print(f"  ready to send: {runs[0]['ready']:,} of {rows:,}")
    print(f"  stages (s, {n}): " + " · ".join(f"{k} {v:.2f}" for k, v in seconds.items()))
    print(f"  load + validate + plan: {total:.2f} s (aim ≤ 15 s for 10M)")
    cpu = {s: med([r["cpu"][s] for r in runs]) for s in STAGES}
    print(
        "  CPU seconds of this process (all its threads): "
        + " · ".join(f"{k} {v:.2f}" for k, v in cpu.items())
        + f"; {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} (other jobs slow the wall time)"
    )
    print(
        f"  validation {seconds['validate']:.2f} s vs plain Polars {med([r['plain'] for r in runs]):.2f} s: "
        f"{ratio:.2f}x (aim ≤ 1.5x)"
    )
    print(
        "  peak RSS per stage (GiB): "
        + " · ".join(f"{s} {max(r['peak'][s] for r in runs) / GiB:.2f}" for s in STAGES)
        + "; after each: "
        + " · ".join(f"{s} {max(r['after'][s] for r in runs) / GiB:.2f}" for s in STAGES)
    )
    print(
        f"  peak RSS load → plan: {peak / GiB:.2f} GiB (aim ≤ 4 GiB); "
        f"{max(r['rss_before'] for r in runs) / GiB:.2f} GiB before loading"
    )


if __name__ == "__main__":
    main()
