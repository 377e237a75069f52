"""`smscast release`: send a campaign's held rows (quiet hours) whose window is open now (flows/release.py).

Registered on the main command line by `register(app)`, before smscast/local_server.py `register` so that it
chooses its Prefect API as `send` and `retry` do (its name must be in PREFECT_COMMANDS and CHECKED_FIRST).
"""

from __future__ import annotations

from typing import Annotated

import typer

from smscast.errors import SmscastError

CampaignOpt = Annotated[
    str, typer.Option("--campaign-id", "-c", help="The campaign whose held rows to send (`smscast send -c`).")
]
ResultsOpt = Annotated[
    str,
    typer.Option("--results", "-r", help="Where it was sent: the results directory or s3://bucket/prefix."),
]
ProviderOpt = Annotated[
    str | None, typer.Option("--provider", "-p", help="Override the campaign's provider.")
]
BaseUrlOpt = Annotated[
    str | None, typer.Option("--base-url", help="Provider endpoint (else SMSCAST_<PROVIDER>_BASE_URL).")
]
MaxCostOpt = Annotated[
    float | None,
    typer.Option(
        "--max-cost",
        help="The spend cap for this attempt, in the price list's currency (else the campaign's); it needs the "
        "campaign's --prices.",
    ),
]


def release_command(
    campaign_id: CampaignOpt,
    results: ResultsOpt,
    provider: ProviderOpt = None,
    base_url: BaseUrlOpt = None,
    max_cost: MaxCostOpt = None,
) -> None:
    """Send a campaign's held rows (held by --quiet-hours) whose quiet hours are over, with the same
    idempotency keys, as its next attempt; rows still inside their quiet hours stay held. Safe to run at any
    time and beside another release: each row is released once."""
    from smscast.local_server import announce_prefect_api
    from smscast.preflight import Problem, report_problems, retry_spec, run_preflight

    # Before the flow's import (which imports Prefect): the recorded campaign, its provider and results.
    spec = retry_spec(campaign_id, results, provider=provider, base_url=base_url)
    problems = (
        [spec]
        if isinstance(spec, Problem)
        else run_preflight(spec, check_source=False, same_campaign=False).problems
    )
    if problems:
        report_problems(problems, "release")
    announce_prefect_api()
    from smscast.flows.release import release_held

    try:
        release_held(
            campaign_id=campaign_id, results=results, provider=provider, base_url=base_url, max_cost=max_cost
        )
    except SmscastError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None


def register(app: typer.Typer) -> None:
    """Add `release` to the smscast command line."""
    app.command(name="release")(release_command)
