"""Benchmark: recipients as Parquet on SeaweedFS → the whole smscast pipeline → results on SeaweedFS, against a
bare httpx loop that posts the same batches to the same sandbox (no Prefect, no validation, no results).
Beside them, smscast's send engine alone (`send_rows` on rows planned before the clock starts: no Prefect, no
journal, no results), which shows how much of the pipeline's cost is sending and how much the rest.

    python benchmarks/pipeline.py --rows 1000000 --repeats 3

Runs alternate (baseline, pipeline, baseline, …) so that a noisy neighbour hurts both; the figures reported
are medians and their ratio, never a single absolute time. Peak RSS is sampled in this process during each
run (the sandbox and Prefect's temporary API run in their own processes and are not counted).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, cast

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
# A loaded machine can take longer than Prefect's default 20 s to start its temporary API.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "300")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
import orjson
import polars as pl
import psutil
from shared import make_recipients, peak_rss  # benchmarks/shared.py, beside this script

from smscast import storage
from smscast.campaign import CampaignSpec
from smscast.servers.sandbox import SandboxServer
from smscast.servers.seaweedfs import SeaweedS3
from smscast.tasks.send_engine import SHARD_WORKERS

BODY = "Hi {{name}}, your order {{order}} ships today."
KEY = "bench-key"
CONCURRENCY = 8
BATCH = 1000
CONTENDERS = ("baseline", "engine", "pipeline")
LABELS = {
    "baseline": "baseline (bare httpx loop):",
    "engine": "engine (send_rows alone):",
    "pipeline": "pipeline (smscast flow):",
}


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """CPU time (user+system) used so far by each named process and its children, except that "smscast" (this
    process) is counted alone: the sandbox, SeaweedFS and Prefect's API are its children, and have their own
    lines."""
    out: dict[str, float] = {}
    for name, pid in pids.items():
        try:
            proc = psutil.Process(pid)
            procs = [proc] if name == "smscast" else [proc, *proc.children(recursive=True)]
            out[name] = sum(p.cpu_times().user + p.cpu_times().system for p in procs)
        except psutil.NoSuchProcess:
            out[name] = 0.0
    return out


def prefect_server_pid() -> int | None:
    """Prefect's temporary API server (a `prefect server start`/uvicorn child of this process)."""
    for child in psutil.Process().children(recursive=True):
        try:
            if "prefect" in " ".join(child.cmdline()) and "server" in " ".join(child.cmdline()):
                return cast(int, child.pid)  # psutil is unannotated
        except psutil.Error:
            continue
    return None


async def post_all(base_url: str, batches: list[bytes]) -> None:
    sem = asyncio.Semaphore(CONCURRENCY)
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=60) as client:

        async def one(body: bytes) -> None:
            async with sem:
                r = await client.post("/sandbox/v1/messages/batch", content=body, headers=headers)
                r.raise_for_status()

        await asyncio.gather(*(one(b) for b in batches))


def baseline(source: str, base_url: str) -> dict[str, float]:
    """The floor: read the same Parquet, render the same text, post the same batch sizes. Nothing else."""
    start = time.perf_counter()
    df = storage.read_parquet(source).with_columns(
        body=pl.format("Hi {}, your order {} ships today.", "name", "order"),
        ref=pl.format("b-{}", pl.int_range(pl.len()).cast(pl.String)),
    )
    batches = [
        orjson.dumps(
            {"sender": "BENCH", "messages": part.select(to="phone", body="body", ref="ref").to_dicts()}
        )
        for part in df.iter_slices(BATCH)
    ]
    asyncio.run(post_all(base_url, batches))
    return {"total": time.perf_counter() - start}


def bench_spec(source: str, results: str, base_url: str, run: int) -> CampaignSpec:
    return CampaignSpec(
        campaign_id=f"bench-{run}",
        provider="sandbox",
        source=source,
        results=results,
        base_url=base_url,
        body=BODY,
        sender="BENCH",
        rate=100_000,
        concurrency=CONCURRENCY,
    )


def plan_once(source: str, base_url: str, into: Path) -> CampaignSpec:
    """The engine's input, made once and not timed: the source's rows loaded, validated and planned, kept in
    a local file (`into`) so that no other contender's peak memory counts them."""
    from smscast.providers.registry import make_provider
    from smscast.tasks.load import load_recipients
    from smscast.tasks.plan import plan_campaign
    from smscast.tasks.validate import validate_recipients

    # One shard with the campaign's whole concurrency (a campaign splits it over its two shard threads).
    spec = bench_spec(source, "s3://bench/engine", base_url, 0).model_copy(
        update={"concurrency": CONCURRENCY * SHARD_WORKERS}
    )
    provider = make_provider("sandbox", base_url=base_url)
    checked = validate_recipients(load_recipients(spec), spec, provider.caps, provider)
    plan_campaign(checked, spec, provider.caps, provider).rows.write_parquet(into)
    return spec


def engine(spec: CampaignSpec, plan_file: Path) -> dict[str, float]:
    """smscast's send engine alone on the planned rows (read before the clock starts), in one shard."""
    from smscast.providers.registry import make_provider
    from smscast.tasks.send_engine import send_rows

    provider = make_provider("sandbox", base_url=spec.base_url)
    planned = pl.read_parquet(plan_file)
    start = time.perf_counter()
    outcomes, _ = asyncio.run(send_rows(provider, planned, spec))
    total = time.perf_counter() - start
    if outcomes.height != planned.height:
        raise SystemExit(f"the engine returned {outcomes.height} outcomes for {planned.height} rows")
    return {"total": total}


def pipeline(source: str, results: str, base_url: str, run: int) -> dict[str, float]:
    from smscast.flows.campaign import send_campaign

    spec = bench_spec(source, results, base_url, run)
    start = time.perf_counter()
    summary = send_campaign(spec)
    total = time.perf_counter() - start
    accepted = summary["by_status"]["accepted"]
    if accepted != summary["rows"]:
        raise SystemExit(f"pipeline accepted {accepted} of {summary['rows']} rows: {summary['by_status']}")
    return {"total": total, **{k: float(v) for k, v in summary["seconds"].items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--only",
        choices=CONTENDERS,
        action="append",
        help="run only this contender (repeatable); the ratios need the baseline among them",
    )
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="smscast-bench-") as tmp, SeaweedS3(Path(tmp) / "s3") as s3:
        os.environ.update(s3.env())
        os.environ["SMSCAST_SANDBOX_API_KEY"] = KEY
        s3.create_bucket("bench")
        source = "s3://bench/inbox/recipients.parquet"
        storage.write_parquet(make_recipients(args.rows), source)
        print(f"{args.rows:,} recipients on SeaweedFS at {source}; {os.cpu_count()} cores", flush=True)
        with SandboxServer(default_key=KEY) as sandbox:
            # Warm-up: starts Prefect's temporary API once, so no run pays for it.
            warm = "s3://bench/inbox/warm.parquet"
            storage.write_parquet(make_recipients(100), warm)
            pipeline(warm, "s3://bench/warm", sandbox.base_url, 999)
            contenders = tuple(args.only or CONTENDERS)
            plan_file = Path(tmp) / "engine-plan.parquet"
            engine_spec = plan_once(source, sandbox.base_url, plan_file) if "engine" in contenders else None
            pids = {
                "smscast": os.getpid(),
                "sandbox": sandbox.process.pid if sandbox.process else 0,
                "seaweedfs": s3.pid or 0,
                "prefect-api": prefect_server_pid() or 0,
            }
            cpu: dict[str, list[dict[str, float]]] = {name: [] for name in contenders}
            runs: dict[str, list[dict[str, float]]] = {name: [] for name in contenders}
            peaks: dict[str, list[int]] = {name: [] for name in contenders}
            for run in range(args.repeats):
                for name in contenders:
                    sandbox.client.reset()
                    cpu_before = cpu_seconds(pids)
                    with peak_rss() as peak:
                        if name == "baseline":
                            figures = baseline(source, sandbox.base_url)
                        elif name == "engine":
                            assert engine_spec is not None
                            figures = engine(engine_spec, plan_file)
                        else:
                            figures = pipeline(source, "s3://bench/results", sandbox.base_url, run)
                    cpu_after = cpu_seconds(pids)
                    cpu[name].append({k: cpu_after[k] - cpu_before[k] for k in pids})
                    ledger = sandbox.client.stats()["entries"]
                    if ledger != args.rows:
                        raise SystemExit(
                            f"{name} run {run}: the sandbox ledger holds {ledger} of {args.rows}"
                        )
                    runs[name].append(figures)
                    peaks[name].append(peak())
                    print(
                        f"  run {run} {name:<8} {args.rows / figures['total']:>10,.0f} recipients/s "
                        f"peak RSS {peak() / 2**20:,.0f} MiB",
                        flush=True,
                    )
    report(args.rows, runs, peaks, cpu)


def report(
    rows: int,
    runs: dict[str, list[dict[str, float]]],
    peaks: dict[str, list[int]],
    cpu: dict[str, list[dict[str, float]]],
) -> None:
    def med(name: str, key: str) -> float:
        return statistics.median(r.get(key, 0.0) for r in runs[name])

    total = {name: med(name, "total") for name in runs}
    own = {name: statistics.median(c["smscast"] for c in cpu[name]) for name in runs}
    print(f"\nmedian of {len(next(iter(runs.values())))} runs, {rows:,} recipients")
    for name in runs:
        print(f"  {LABELS[name]:<28}{rows / total[name]:>10,.0f} recipients/s")
    if "pipeline" in runs:
        if "baseline" in runs:
            print(
                f"  ratio pipeline/baseline:    {total['baseline'] / total['pipeline']:>10.2f}   (aim: 0.60 or better)"
            )
        stages: list[Any] = [k for k in runs["pipeline"][0] if k != "total"]
        print("  pipeline stages (median s): " + " · ".join(f"{k} {med('pipeline', k):.2f}" for k in stages))
        other = total["pipeline"] - sum(med("pipeline", k) for k in stages)
        print(f"  orchestration and the rest: {other:.2f} s")
    for name in runs:
        per = {k: statistics.median(c[k] for c in cpu[name]) for k in cpu[name][0]}
        print(f"  CPU seconds, {name:<8} (median): " + " · ".join(f"{k} {v:.1f}" for k, v in per.items()))
    if own.get("baseline", 0) > 0:
        if "pipeline" in own:
            ratio = own["pipeline"] / own["baseline"]
            print(f"  CPU of this process, pipeline/baseline: {ratio:.2f}   (aim: 1.5 or less)")
        if "engine" in own:
            print(
                f"  CPU of this process, engine alone/baseline: {own['engine'] / own['baseline']:.2f} "
                "(sending, as the baseline does; the pipeline adds validation, planning and its records)"
            )
    aims = {"pipeline": " (aim < 3 at 1M)"}
    print(
        "  peak RSS: " + ", ".join(f"{n} {max(p) / 2**30:.2f} GiB{aims.get(n, '')}" for n, p in peaks.items())
    )


if __name__ == "__main__":
    main()
