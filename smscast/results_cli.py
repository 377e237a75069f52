"""`smscast results` and `smscast report`: a campaign's current view and its delivery report.

Both read the results location only (tasks/current.py current_view) and never Prefect, so they answer in the
time it takes to read the Parquet parts, with or without a Prefect server. Registered on the main command line
by `register(app)`.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Annotated, NoReturn

import polars as pl
import typer

from smscast.delivery import DELIVERY_STATUSES
from smscast.errors import SmscastError
from smscast.status import STATUSES

CampaignOpt = Annotated[str, typer.Option("--campaign-id", "-c", help="The campaign.")]
ResultsOpt = Annotated[
    str, typer.Option("--results", "-r", help="Where it was sent: a directory or s3://bucket/prefix.")
]
OUT_FORMATS = (".parquet", ".csv")
# What the terminal shows of each row; --out writes every column.
SHOWN = (
    "row_index",
    "attempt",
    "phone",
    "status",
    "error_code",
    "delivery_status",
    "delivery_error_code",
    "delivery_reported_at",
)


def _fail(message: str) -> NoReturn:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


def _view(results: str, campaign_id: str) -> pl.DataFrame:
    from smscast.tasks.current import current_view

    try:
        return current_view(results, campaign_id)
    except SmscastError as exc:
        _fail(str(exc))


def status_matrix(view: pl.DataFrame) -> pl.DataFrame:
    """Rows by send status (in the vocabulary's order) x delivery status (`no_report`: no fact)."""
    order = {s: i for i, s in enumerate(STATUSES)}
    return (
        view.group_by("status")
        .agg(
            rows=pl.len(),
            **{s: (pl.col("delivery_status") == s).sum() for s in DELIVERY_STATUSES},
            no_report=pl.col("delivery_status").is_null().sum(),
        )
        .sort(pl.col("status").replace_strict(order, default=len(order), return_dtype=pl.Int32), "status")
    )


def results_command(
    campaign_id: CampaignOpt,
    results: ResultsOpt,
    out: Annotated[
        str | None,
        typer.Option(help="Write the whole view to FILE.parquet or FILE.csv (local path or s3://) instead."),
    ] = None,
    rows: Annotated[int, typer.Option(help="Rows to show on the terminal.")] = 20,
) -> None:
    """Show a campaign's current view: each row's latest send outcome (settlements applied) and its latest
    delivery fact."""
    suffix = PurePosixPath(out).suffix.lower() if out else ""
    if out and suffix not in OUT_FORMATS:
        raise typer.BadParameter(
            f"{out!r}: the file name must end in .parquet or .csv (it decides the format)", param_hint="--out"
        )
    view = _view(results, campaign_id)
    if out:
        from smscast import storage

        if suffix == ".parquet":
            storage.write_parquet(view, out)
        else:
            storage.put_bytes(out, view.write_csv().encode("utf-8"))
        typer.echo(f"wrote {view.height:,} rows ({len(view.columns)} columns) to {out}")
        return
    with pl.Config(
        tbl_rows=-1,
        tbl_cols=-1,
        tbl_width_chars=160,
        tbl_hide_dataframe_shape=True,
        tbl_hide_column_data_types=True,
        fmt_str_lengths=40,
    ):
        typer.echo(f"Campaign {campaign_id} · {view.height:,} rows · send status x delivery status")
        typer.echo(str(status_matrix(view)))
        shown = view.select(c for c in SHOWN if c in view.columns).head(max(rows, 0))
        typer.echo(f"First {shown.height:,} rows (--out FILE.parquet|FILE.csv writes them all):")
        typer.echo(str(shown))


def report_command(
    campaign_id: CampaignOpt,
    results: ResultsOpt,
    html: Annotated[
        str | None, typer.Option(help="Also write the report as a self-contained HTML page to this file.")
    ] = None,
) -> None:
    """Report a campaign's delivery: counts by send and delivery status, delivered share by provider and by
    country calling code, the top error codes, and the time from send to delivery (p50/p95)."""
    from smscast.tasks.delivery_report import delivery_report, render

    report = delivery_report(_view(results, campaign_id), campaign_id)
    typer.echo(render(report))
    if html:
        from smscast import storage
        from smscast.report_html import render_html

        storage.put_bytes(html, render_html(report).encode("utf-8"))
        typer.echo(f"wrote {html}")


def register(app: typer.Typer) -> None:
    """Add `results` and `report` to the smscast command line."""
    app.command(name="results")(results_command)
    app.command(name="report")(report_command)
