"""`smscast watch`: the command that runs the inbox poller (smscast/inbox.py, which says how files become
events, once each), with S3 credentials from a Prefect block when the environment has none."""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Annotated

import typer

from smscast.errors import ConfigError
from smscast.inbox import STATE_NAME, poll_once, watch
from smscast.s3_block import S3_BLOCK, use_s3_block

__all__ = ["register"]


# -- command line -------------------------------------------------------------------------------------------


def register(app: typer.Typer) -> None:
    """Add the `watch` command to the smscast command line."""

    @app.command(name="watch")
    def watch_command(
        inbox: Annotated[str, typer.Argument(help="The inbox: an s3://bucket/prefix/ to watch.")],
        state: Annotated[
            str | None,
            typer.Option(help=f"Cursor location (local path or s3://); default <inbox>/{STATE_NAME}."),
        ] = None,
        interval: Annotated[float, typer.Option(help="Seconds between polls.")] = 10.0,
        skip_existing: Annotated[
            bool,
            typer.Option(
                "--skip-existing", help="On the first start, record what is there without announcing."
            ),
        ] = False,
        once: Annotated[bool, typer.Option("--once", help="Poll once and exit.")] = False,
        s3_block: Annotated[
            str, typer.Option(help="Prefect block with S3 credentials, used when AWS_* are unset.")
        ] = S3_BLOCK,
    ) -> None:
        """Announce recipients files landing in an S3 inbox as Prefect events (one per file, durably)."""
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
        if not inbox.lower().startswith("s3://"):
            typer.secho("error: the inbox must be an s3:// prefix", fg=typer.colors.RED, err=True)
            raise typer.Exit(2)
        use_s3_block(s3_block)
        try:
            if once:
                poll_once(inbox, state, skip_existing=skip_existing)
                return
            stop = threading.Event()
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
            signal.signal(signal.SIGINT, lambda *_: stop.set())
            typer.echo(f"watching {inbox} every {interval:g}s (Ctrl+C to stop)")
            watch(inbox, state, interval=interval, skip_existing=skip_existing, stop=stop)
        except ConfigError as exc:
            typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
            raise typer.Exit(1) from None


def _main() -> None:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    register(app)
    app()


if __name__ == "__main__":  # python -m smscast.watch s3://bucket/inbox/ (same as `smscast watch`)
    _main()
