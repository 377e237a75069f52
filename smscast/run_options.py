"""The options of `smscast send` (and `doctor`) that say where shards run and what protects the account: the
runner, the circuit breaker and the fallback provider. Declared once, as `Annotated` types; `run_fields` turns
their values into CampaignSpec fields (smscast/campaign.py validates them)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

PANEL = "Runner, circuit breaker and failover"

RunnerOpt = Annotated[
    str,
    typer.Option(
        help="threads: shards run in this process; dask: as task runs on a Dask cluster (results must be on "
        "storage every worker reaches: s3:// or a shared directory).",
        rich_help_panel=PANEL,
    ),
]
DaskAddressOpt = Annotated[
    str | None, typer.Option(help="tcp://HOST:PORT of an existing Dask scheduler.", rich_help_panel=PANEL)
]
DaskWorkersOpt = Annotated[
    int | None,
    typer.Option(
        help="Without --dask-address: this many local Dask worker processes.", rich_help_panel=PANEL
    ),
]
MaxFailureRateOpt = Annotated[
    float,
    typer.Option(
        help="Pause the campaign when the share of rows the provider failed or refused, over the last "
        "--min-sample rows, exceeds this (rows not sent end failed, circuit_open; re-run to resume).",
        rich_help_panel=PANEL,
    ),
]
MinSampleOpt = Annotated[
    int, typer.Option(help="Rows the circuit breaker's failure share is taken over.", rich_help_panel=PANEL)
]
FallbackOpt = Annotated[
    str | None,
    typer.Option(
        help="A second provider for rows the first provably never accepted (failed after retries, an open "
        "circuit, 429s), in the same run; its endpoint and key come from its own settings.",
        rich_help_panel=PANEL,
    ),
]
FallbackSenderOpt = Annotated[
    str | None, typer.Option(help="The sender for --fallback, where it needs one.", rich_help_panel=PANEL)
]


def run_fields(
    *,
    runner: str,
    dask_address: str | None,
    dask_workers: int | None,
    max_failure_rate: float,
    min_sample: int,
    fallback: str | None,
    fallback_sender: str | None,
) -> dict[str, Any]:
    """The CampaignSpec fields these options set."""
    return dict(
        runner=runner,
        dask_address=dask_address,
        dask_workers=dask_workers,
        max_failure_rate=max_failure_rate,
        min_sample=min_sample,
        fallback=fallback,
        fallback_sender=fallback_sender,
    )
