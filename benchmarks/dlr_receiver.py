"""Benchmark: the delivery-report receiver (`smscast dlr serve`) under concurrent webhook traffic.

    python benchmarks/dlr_receiver.py [--seconds 5] [--repeats 3] [--clients 2] [--tasks N]
        [--client-kinds httpx,raw] [--routes instasent,generic] [--generic-batch 100] [--modes log,parts]

Starts the receiver in a subprocess (results on the local disk, every acknowledged report fsynced) in each of
`--modes`: `log`, its default (each batch appended to its write-ahead log, rolled into the inbox every second),
and `parts` (`--no-wal`: each batch written as its own Parquet part); and, in the same run, a baseline: a
trivial Starlette app under the same uvicorn settings that reads each body and answers 200 without recording
anything, i.e. the HTTP stack alone. `--clients` client processes, each with `--tasks`
concurrent asyncio tasks on keep-alive connections, post for `--seconds`:
  instasent   one report per request (POST /dlr/instasent), as Instasent posts them
  generic     `--generic-batch` reports per request (POST /dlr/generic)
Two kinds of client: httpx (AsyncClient; 8 tasks each by default) and raw, a minimal HTTP/1.1 client on
asyncio streams (32 tasks each) whose own cost is small enough that the server, not the client, is measured.
Runs alternate receivers and baseline; each figure is the median of `--repeats`. It prints reports/s,
requests/s, the server process's CPU per request, each receiver's ratio to the baseline, and checks, once each
receiver has stopped (and so rolled its log), that its inbox holds every acknowledged report.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import multiprocessing as mp
import os
import queue
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
import orjson

from smscast import delivery
from smscast.dlr.launcher import DlrServer
from smscast.results import dlr_inbox
from smscast.servers.process import ServerProcess

TARGET = 5000.0  # reports/s from one receiver process (issue 10)


# ---- the baseline: the HTTP stack alone ---------------------------------------------------------------------


def serve_baseline(port_file: str) -> None:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from smscast.dlr.cli import bind_socket, uvicorn_config

    async def take(request: Request) -> Response:
        await request.body()
        return Response(b'{"recorded":1,"ignored":0}', 200, media_type="application/json")

    app = Starlette(
        routes=[
            Route("/dlr/instasent", take, methods=["POST"]),
            Route("/dlr/generic", take, methods=["POST"]),
        ]
    )
    import uvicorn

    sock = bind_socket("127.0.0.1", 0)
    Path(f"{port_file}.tmp").write_text(str(sock.getsockname()[1]))
    Path(f"{port_file}.tmp").replace(port_file)
    uvicorn.Server(uvicorn_config(app, "warning")).run(sockets=[sock])


class Baseline(ServerProcess):
    name = "baseline"

    def __init__(self, workdir: Path) -> None:
        super().__init__(60.0)
        self.workdir = workdir
        self.port: int | None = None
        self.secret = "baseline"

    @property
    def log_path(self) -> Path:
        return self.workdir / "baseline.log"

    def _start(self, deadline: float) -> None:
        port_file = self.workdir / "baseline.port"
        port_file.unlink(missing_ok=True)
        self._port_file = port_file
        self._launch_until_ready(
            lambda: self._spawn(
                [sys.executable, __file__, "--baseline-server", str(port_file)], cwd=self.workdir
            ),
            deadline,
        )

    def _probe(self) -> str | None:
        if self.port is None:
            if not self._port_file.exists():
                return "no port yet"
            self.port = int(self._port_file.read_text())
        try:
            httpx.post(f"{self.url('instasent')}", content=b"{}", timeout=2.0)
            return None
        except httpx.TransportError:
            return "not answering"

    def url(self, route: str) -> str:
        return f"http://127.0.0.1:{self.port}/dlr/{route}"


# ---- the clients --------------------------------------------------------------------------------------------


def _instasent(prefix: str, n: int) -> bytes:
    return orjson.dumps(
        {"id": f"{prefix}-{n}", "clientId": f"k-{prefix}-{n}", "status": "delivered", "errorCode": None,
         "updatedAt": "2026-11-22T10:00:00Z"}
    )  # fmt: skip


def _generic(prefix: str, n: int, size: int) -> bytes:
    return orjson.dumps(
        [{"provider": "sandbox", "message_id": f"{prefix}-{n}-{i}", "status": "delivered",
          "reported_at": "2026-11-22T10:00:00Z"} for i in range(size)]
    )  # fmt: skip


async def _drive(
    url: str, token: str, route: str, tasks: int, size: int, start_at: float, stop_at: float
) -> tuple[int, int, int]:
    prefix = uuid.uuid4().hex[:8]
    headers = {"x-smscast-token": token, "content-type": "application/json"}
    limits = httpx.Limits(max_connections=tasks, max_keepalive_connections=tasks)
    ok = reports = errors = 0
    counter = 0
    async with httpx.AsyncClient(limits=limits, timeout=30.0, headers=headers) as client:

        async def worker() -> None:
            nonlocal ok, reports, errors, counter
            while time.time() < start_at:  # warm the connection, then start together
                await asyncio.sleep(0.01)
            while time.time() < stop_at:
                counter += 1
                body = (
                    _instasent(prefix, counter) if route == "instasent" else _generic(prefix, counter, size)
                )
                try:
                    answer = await client.post(url, content=body)
                except httpx.HTTPError:
                    errors += 1
                    continue
                if answer.status_code == 200:
                    ok += 1
                    reports += 1 if route == "instasent" else size
                else:
                    errors += 1

        await asyncio.gather(*(worker() for _ in range(tasks)))
    return ok, reports, errors


async def _drive_raw(
    url: str, token: str, route: str, tasks: int, size: int, start_at: float, stop_at: float
) -> tuple[int, int, int]:
    """The same traffic from a minimal HTTP/1.1 keep-alive client on asyncio streams: a few µs of CPU per
    request where httpx spends hundreds, so the server, not the client, is what is measured."""
    parts = httpx.URL(url)
    prefix = uuid.uuid4().hex[:8]
    ok = reports = errors = 0
    counter = 0

    async def worker() -> None:
        nonlocal ok, reports, errors, counter
        reader, writer = await asyncio.open_connection(parts.host, parts.port)
        while time.time() < start_at:
            await asyncio.sleep(0.01)
        while time.time() < stop_at:
            counter += 1
            body = _instasent(prefix, counter) if route == "instasent" else _generic(prefix, counter, size)
            head = (
                f"POST {parts.raw_path.decode()} HTTP/1.1\r\nHost: {parts.host}\r\nX-Smscast-Token: {token}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            )
            writer.write(head.encode() + body)
            status_head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in status_head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            if status_head[9:12] == b"200":
                ok += 1
                reports += 1 if route == "instasent" else size
            else:
                errors += 1
        writer.close()

    await asyncio.gather(*(worker() for _ in range(tasks)))
    return ok, reports, errors


def _client_main(client: str, args: tuple[str, str, str, int, int, float, float], out: mp.Queue) -> None:  # type: ignore[type-arg]
    out.put(asyncio.run((_drive_raw if client == "raw" else _drive)(*args)))


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Run:
    reports_s: float
    requests_s: float
    cpu_us_per_request: float
    errors: int
    reports: int


def run_once(
    url: str, token: str, route: str, pid: int, client: str, tasks: int, opts: argparse.Namespace
) -> Run:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    start_at = time.time() + 2.0  # the clients' start-up (spawn, import) is not measured
    stop_at = start_at + opts.seconds
    drive = (url, token, route, tasks, opts.generic_batch, start_at, stop_at)
    procs = [ctx.Process(target=_client_main, args=(client, drive, out)) for _ in range(opts.clients)]
    for proc in procs:
        proc.start()
    while time.time() < start_at:
        time.sleep(0.005)
    cpu0 = _cpu_seconds(pid)
    results: list[tuple[int, int, int]] = []
    while len(results) < len(procs):
        try:
            results.append(out.get(timeout=1.0))
        except queue.Empty:
            if time.time() > stop_at + 120 or any(p.exitcode not in (None, 0) for p in procs):
                raise RuntimeError("a client process failed") from None
    cpu1 = _cpu_seconds(pid)
    for proc in procs:
        proc.join()
    ok = sum(r[0] for r in results)
    reports = sum(r[1] for r in results)
    errors = sum(r[2] for r in results)
    return Run(reports / opts.seconds, ok / opts.seconds, (cpu1 - cpu0) / max(ok, 1) * 1e6, errors, reports)


DEFAULT_TASKS = {"httpx": 8, "raw": 32}  # httpx's async pool slows down as connections are added


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--clients", type=int, default=2, help="client processes")
    parser.add_argument("--tasks", type=int, default=None, help="concurrent requests per client process")
    parser.add_argument("--generic-batch", type=int, default=100, help="reports per generic request")
    parser.add_argument("--batch-rows", type=int, default=None, help="the receiver's --batch-rows")
    parser.add_argument("--batch-ms", type=float, default=None, help="the receiver's --batch-ms")
    parser.add_argument("--routes", default="instasent,generic")
    parser.add_argument(
        "--modes", default="log,parts", help="log (the default receiver) and/or parts (--no-wal)"
    )
    parser.add_argument(
        "--client-kinds",
        default="httpx,raw",
        help="httpx, and/or raw: a minimal keep-alive client (server-bound)",
    )
    parser.add_argument("--baseline-server", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.baseline_server:
        serve_baseline(opts.baseline_server)
        return 0

    routes = [r for r in opts.routes.split(",") if r]
    kinds = [k for k in opts.client_kinds.split(",") if k]
    modes = [m for m in opts.modes.split(",") if m]
    runs: dict[tuple[str, str, str], list[Run]] = {}
    acked = dict.fromkeys(modes, 0)
    recorded: dict[str, int] = {}
    parts: dict[str, object] = {}
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="smscast-dlr-bench-")))
        receivers = {
            mode: DlrServer(
                str(work / mode / "results"),
                batch_rows=opts.batch_rows,
                batch_ms=opts.batch_ms,
                wal=mode == "log",
                log_level="warning",
                workdir=work / mode,
            )
            for mode in modes
        }
        for receiver in receivers.values():
            stack.enter_context(receiver)
        baseline = stack.enter_context(Baseline(work))
        assert baseline.pid is not None
        servers = [(f"receiver:{mode}", r.url, r.secret, r.pid or 0) for mode, r in receivers.items()]
        servers.append(("baseline", baseline.url, baseline.secret, baseline.pid))
        for kind in kinds:
            tasks = opts.tasks or DEFAULT_TASKS[kind]
            for repeat in range(opts.repeats):  # alternating, so a busy moment hits all alike
                for route in routes:
                    for name, url, token, pid in servers:
                        run = run_once(url(route), token, route, pid, kind, tasks, opts)
                        runs.setdefault((kind, route, name), []).append(run)
                        if name.startswith("receiver:"):
                            acked[name.partition(":")[2]] += run.reports
                        print(
                            f"  {kind} [{repeat + 1}/{opts.repeats}] {route:9s} {name:15s} "
                            f"{run.reports_s:9,.0f} reports/s {run.requests_s:7,.0f} requests/s "
                            f"{run.cpu_us_per_request:6.0f} µs server CPU/request"
                            + (f"  errors {run.errors}" if run.errors else ""),
                            flush=True,
                        )
        for mode, receiver in receivers.items():
            parts[mode] = receiver.health().get("parts")
            receiver.stop()  # a graceful stop rolls the log: the inbox is then complete
            recorded[mode] = delivery.read_all(dlr_inbox(receiver.results), delivery.REPORT_SCHEMA).height

    stack_name = ", ".join(
        name for name in ("uvloop", "httptools") if importlib.util.find_spec(name) is not None
    )
    print(
        f"\ndlr receiver vs the bare HTTP stack ({stack_name or 'asyncio, h11'}): {opts.clients} client "
        f"processes, {opts.seconds:g} s per run, median of {opts.repeats}; generic requests of "
        f"{opts.generic_batch} reports; receiver --batch-rows {opts.batch_rows or 'default'} --batch-ms "
        f"{opts.batch_ms or 'default'}"
    )
    print(
        f"{'client':14s} {'route':10s} {'server':15s} {'reports/s':>10s} {'requests/s':>11s} "
        f"{'CPU µs/req':>11s} {'ratio':>6s}"
    )
    best = 0.0
    for kind in kinds:
        label = f"{kind} x{opts.tasks or DEFAULT_TASKS[kind]}"
        for route in routes:
            base = statistics.median(r.reports_s for r in runs[(kind, route, "baseline")])
            for name, *_ in sorted(servers, key=lambda s: s[0] != "baseline"):
                rs = runs[(kind, route, name)]
                rep = statistics.median(r.reports_s for r in rs)
                req = statistics.median(r.requests_s for r in rs)
                cpu = statistics.median(r.cpu_us_per_request for r in rs)
                ratio = f"{rep / base:.2f}" if name != "baseline" else ""
                best = max(best, rep) if name != "baseline" else best
                print(
                    f"{label:14s} {route:10s} {name:15s} {rep:10,.0f} {req:11,.0f} {cpu:11,.0f} {ratio:>6s}"
                )
    complete = all(recorded[mode] >= acked[mode] for mode in modes)
    for mode in modes:
        print(
            f"inbox ({mode}): {recorded[mode]:,} reports in {parts[mode]} parts; {acked[mode]:,} acknowledged "
            f"({'all recorded' if recorded[mode] >= acked[mode] else 'MISSING REPORTS'})"
        )
    print(
        f"target {TARGET:,.0f} reports/s from one process: {'met' if best >= TARGET else 'NOT met'} (best route)"
    )
    return 0 if complete else 1


if __name__ == "__main__":
    sys.exit(main())
