"""`smscast reconcile`: what became of a campaign's messages (tasks/reconcile.py), from the command line.

Registered on the main command line by `register(app)`. It needs no Prefect server: it reads and appends to
the results location and asks the provider, nothing else.
"""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from smscast.errors import SmscastError
from smscast.providers.names import PROVIDER_NAMES

CampaignOpt = Annotated[str, typer.Option("--campaign-id", "-c", help="The campaign.")]
ResultsOpt = Annotated[
    str, typer.Option("--results", "-r", help="Where it was sent: a directory or s3://bucket/prefix.")
]
ProviderOpt = Annotated[
    str | None,
    typer.Option(
        "--provider",
        "-p",
        help=f"Only the rows sent through this provider (one of: {', '.join(PROVIDER_NAMES)}).",
    ),
]
BaseUrlOpt = Annotated[
    str | None,
    typer.Option(
        "--base-url",
        help="The provider's endpoint for lookups (else the campaign's recorded one, else "
        "SMSCAST_<PROVIDER>_BASE_URL).",
    ),
]


def reconcile_command(
    campaign_id: CampaignOpt, results: ResultsOpt, provider: ProviderOpt = None, base_url: BaseUrlOpt = None
) -> None:
    """Look up what became of a campaign's messages: delivery facts from the provider's lookup (textingline,
    Postman) or from the reports the receiver took (webhooks), `unknown` rows settled where the provider
    answers for them, rows past the provider's reporting window expired. Prints what it wrote and every row
    it left as it was, with the reason. Safe to run again: it only writes what changed."""
    from smscast.tasks.reconcile import reconcile_campaign

    if provider is not None and provider not in PROVIDER_NAMES:
        raise typer.BadParameter(f"one of {', '.join(PROVIDER_NAMES)}", param_hint="--provider")
    quiet = logging.getLogger("smscast.reconcile_cli")
    quiet.propagate = False  # the summary is printed below, once
    if not quiet.handlers:
        quiet.addHandler(logging.NullHandler())
    try:
        summary = reconcile_campaign(results, campaign_id, provider=provider, base_url=base_url, logger=quiet)
    except SmscastError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    typer.echo(summary.render())
    for line in summary.notes():
        typer.echo(f"  {line}")


def register(app: typer.Typer) -> None:
    """Add `reconcile` to the smscast command line."""
    app.command(name="reconcile")(reconcile_command)
