"""`smscast dlr serve`: the delivery-report receiver, in the foreground, until SIGTERM or Ctrl+C;
`smscast dlr roll`: roll a stopped receiver's write-ahead log into the inbox; and `smscast dlr compact`: merge
the inbox's older parts into one (smscast/dlr/compact.py).

    smscast dlr serve --port 8766 --results s3://crm/sms-results      # secret from SMSCAST_DLR_SECRET
    smscast dlr roll --results s3://crm/sms-results                   # only if it will not be started again
    smscast dlr compact --results s3://crm/sms-results --min-age 1h   # hourly, beside a running receiver

The lead registers this app in smscast/cli.py (`app.add_typer(dlr_app, name="dlr")`); `python -m smscast.dlr`
runs it on its own (what the launcher, smscast/dlr/launcher.py, starts).
"""

from __future__ import annotations

import gc
import importlib.util
import logging
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer
import uvicorn
from starlette.applications import Starlette

from smscast.dlr.app import create_app
from smscast.dlr.compact import compact_command
from smscast.dlr.wal import LogBusy, LogMismatch, WriteAheadLog, default_directory
from smscast.dlr.writer import DEFAULT_BATCH_MS, DEFAULT_BATCH_ROWS, DEFAULT_ROLL_MS
from smscast.locations import redact
from smscast.results import dlr_inbox
from smscast.servers.asgi import bind_socket
from smscast.servers.asgi import exit_with_parent as exit_with_parent_process
from smscast.servers.asgi import uvicorn_config as asgi_config

__all__ = ["SECRET_ENV", "app", "bind_socket", "roll", "serve", "uvicorn_config", "wal_directory"]


SECRET_ENV = "SMSCAST_DLR_SECRET"

app = typer.Typer(
    name="dlr",
    help="Delivery reports: the webhook receiver providers post their DLRs to.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _group() -> None:
    """Delivery reports: the webhook receiver providers post their DLRs to."""


class _Server(uvicorn.Server):
    """uvicorn, plus: on SIGTERM/SIGINT the writer stops waiting for batches to fill, so the requests in flight
    are answered before uvicorn's graceful shutdown gives up on them."""

    def __init__(self, config: uvicorn.Config, asgi: Starlette) -> None:
        super().__init__(config)
        self.asgi = asgi

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        loop = getattr(self.asgi.state, "loop", None)
        if loop is not None:  # a signal handler: hand the call to the loop, never touch its objects here
            loop.call_soon_threadsafe(self.asgi.state.receiver.writer.drain)
        super().handle_exit(sig, frame)


def uvicorn_config(asgi: Starlette, log_level: str) -> uvicorn.Config:
    """How the receiver runs under uvicorn (the benchmark's baseline app runs the same way). uvloop and
    httptools (dependencies) about double what one process serves over asyncio's loop and h11; each is used
    when importable, as uvicorn's "auto" would, but said here so that the choice does not hang on a default."""
    config = asgi_config(asgi, log_level=log_level, lifespan="on", graceful_seconds=10)
    config.loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    config.http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    return config


def wal_directory(results: str, wal_dir: Path | None, no_wal: bool) -> Path | None:
    """The log's folder: --wal-dir, else the default for this inbox; None with --no-wal."""
    if no_wal:
        return None
    return wal_dir if wal_dir is not None else default_directory(dlr_inbox(results))


def serve(
    results: str,
    secret: str,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    batch_ms: float = DEFAULT_BATCH_MS,
    wal_dir: Path | None = None,
    roll_ms: float = DEFAULT_ROLL_MS,
    log_level: str = "info",
    summary_interval: float = 60.0,
    port_file: Path | None = None,
    exit_with_parent: int | None = None,
) -> None:
    """Serve the receiver until SIGTERM/SIGINT, then write what it holds, roll its log and stop. Blocks.
    `wal_dir` None: no log, a part per batch."""
    _logging(log_level)
    asgi = create_app(
        results,
        secret,
        batch_rows=batch_rows,
        batch_ms=batch_ms,
        summary_interval=summary_interval,
        wal_dir=wal_dir,
        roll_ms=roll_ms,
    )
    asgi.state.receiver.writer.prepare()  # takes the log and rolls what a previous run left, before binding
    sock = bind_socket(host, port)
    actual = sock.getsockname()[1]
    server = _Server(uvicorn_config(asgi, log_level), asgi)
    if port_file is not None:
        tmp = Path(f"{port_file}.tmp")
        tmp.write_text(str(actual))
        tmp.replace(port_file)
    if exit_with_parent is not None:
        exit_with_parent_process(exit_with_parent, "dlr")
    shown = f"[{host}]" if ":" in host else host
    through = "a part per batch" if wal_dir is None else f"log {wal_dir}, rolled every {roll_ms:g} ms"
    print(
        f"smscast dlr: listening on http://{shown}:{actual}/dlr/{{instasent,sent-dm,generic}}; "
        f"recording reports under {redact(dlr_inbox(results))} "
        f"(batches of up to {batch_rows} reports or {batch_ms:g} ms; {through})",
        flush=True,
    )
    # The cyclic garbage collector took a quarter of the receiver's CPU under load (py-spy): every request in
    # flight holds a chain of coroutines that survives young collections and so is rescanned by each older
    # one. What exists now (imported modules) lives as long as the process and is moved out of its sight, and
    # collections come ~70x less often; the little cyclic garbage a request leaves waits a little longer.
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()


def _logging(log_level: str) -> None:
    level = getattr(logging, log_level.upper())
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("smscast.dlr").setLevel(level)


def roll(results: str, wal_dir: Path | None = None) -> tuple[int, int]:
    """Roll a log no receiver is using into the inbox. Returns (parts, reports). LogBusy if a receiver has it
    (it rolls its own log)."""
    inbox = dlr_inbox(results)
    wal = WriteAheadLog(wal_dir or default_directory(inbox), inbox)
    if not wal.directory.is_dir():
        return 0, 0
    wal.open()
    try:
        result = wal.roll()
    finally:
        wal.close()
    return result.parts, result.reports


_RESULTS = Annotated[
    str, typer.Option("--results", "-r", help="Results location (a directory or s3://bucket/prefix).")
]
_WAL_DIR = Annotated[
    Path | None,
    typer.Option(
        "--wal-dir",
        help="The write-ahead log's folder, on a local disk that outlives the process (default: "
        "<results>/_dlr/.wal for local results; $SMSCAST_HOME/dlr-wal/<bucket-prefix-digest> for S3).",
        show_default=False,
    ),
]


@app.command("serve")
def serve_command(
    port: Annotated[int, typer.Option("--port", help="Port to listen on (0: a free one, printed).")],
    results: _RESULTS,
    host: Annotated[str, typer.Option("--host", help="Address to bind.")] = "127.0.0.1",
    secret: Annotated[
        str | None,
        typer.Option(
            "--secret",
            envvar=SECRET_ENV,
            show_envvar=True,
            show_default=False,
            help="The shared secret providers send as ?token= or X-Smscast-Token. Prefer the variable: "
            "a command line is visible to every user of the machine.",
        ),
    ] = None,
    batch_rows: Annotated[
        int, typer.Option("--batch-rows", min=1, help="Write a batch once it holds this many reports.")
    ] = DEFAULT_BATCH_ROWS,
    batch_ms: Annotated[
        float,
        typer.Option(
            "--batch-ms",
            min=0,
            help="... or this many ms after its first report (sooner when no other request is arriving).",
        ),
    ] = DEFAULT_BATCH_MS,
    wal_dir: _WAL_DIR = None,
    no_wal: Annotated[
        bool,
        typer.Option(
            "--no-wal",
            help="No log: write each batch as its own part (readable in the inbox when answered; slower).",
        ),
    ] = False,
    roll_ms: Annotated[
        float,
        typer.Option("--roll-ms", min=1, help="Roll the log into a part in the inbox this often."),
    ] = DEFAULT_ROLL_MS,
    log_level: Annotated[
        str, typer.Option("--log-level", help="debug: one line per batch written and per roll.")
    ] = "info",
    summary_interval: Annotated[float, typer.Option("--summary-interval", hidden=True)] = 60.0,
    port_file: Annotated[Path | None, typer.Option("--port-file", hidden=True)] = None,
    exit_with_parent: Annotated[int | None, typer.Option("--exit-with-parent", hidden=True)] = None,
) -> None:
    """Receive delivery reports and record them under <results>/_dlr/ (Parquet), answering 2xx only once they
    are on disk: in a write-ahead log (fdatasynced), rolled into the inbox every --roll-ms and at start and
    stop. `smscast reconcile` folds them into the campaigns."""
    if not secret:
        typer.secho(
            f"error: refusing to start without a shared secret: set {SECRET_ENV} (or pass --secret)",
            fg=typer.colors.RED,
            err=True,
        )
        raise typer.Exit(2)
    if log_level.upper() not in ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"):
        raise typer.BadParameter("one of debug, info, warning, error, critical", param_hint="--log-level")
    try:
        serve(
            results,
            secret,
            host=host,
            port=port,
            batch_rows=batch_rows,
            batch_ms=batch_ms,
            wal_dir=wal_directory(results, wal_dir, no_wal),
            roll_ms=roll_ms,
            log_level=log_level.lower(),
            summary_interval=summary_interval,
            port_file=port_file,
            exit_with_parent=exit_with_parent,
        )
    except (LogBusy, LogMismatch) as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None


@app.command("roll")
def roll_command(results: _RESULTS, wal_dir: _WAL_DIR = None) -> None:
    """Roll what a stopped receiver's write-ahead log holds into <results>/_dlr/. A receiver rolls its own log
    at start, every --roll-ms and at stop: this is for a receiver that will not be started again."""
    _logging("info")
    try:
        parts, reports = roll(results, wal_dir)
    except (LogBusy, LogMismatch) as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    print(f"smscast dlr: rolled {reports} reports into {parts} parts under {redact(dlr_inbox(results))}")


app.command("compact")(compact_command)
