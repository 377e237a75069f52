"""`smscast retry` and `smscast release`: send a recorded campaign's rows again, as its next attempt.

`retry` re-sends what may be re-sent (flows/retry.py); `release` sends the rows the contact policy held for
their quiet hours once those are over (flows/release.py). Both read the recorded campaign, not its source,
and both are registered by `register(app)` before smscast/local_server.py's, so that they choose their Prefect
API as `send` does (their names are in its PREFECT_COMMANDS and CHECKED_FIRST).
"""

from __future__ import annotations

from typing import Annotated

import typer

from smscast.errors import SmscastError

CampaignOpt = Annotated[
    str, typer.Option("--campaign-id", "-c", help="The campaign, as it was sent (`smscast send -c`).")
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
        help="A new spend cap for the campaign, in its price list's currency (needs the campaign's --prices): "
        "over_budget rows go if it allows.",
    ),
]


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


def retry(
    campaign_id: CampaignOpt,
    results: ResultsOpt,
    provider: ProviderOpt = None,
    base_url: BaseUrlOpt = None,
    max_attempts: Annotated[int, typer.Option(help="Send no row more than this many times.")] = 5,
    delay: Annotated[float, typer.Option(help="Seconds to wait before re-sending.")] = 0.0,
    include_undelivered: Annotated[
        bool,
        typer.Option(
            help="Also re-send accepted rows whose delivery failed for a reason a re-send can fix (the "
            "provider's list, or --undelivered-code), as new messages with new keys. Run reconcile first."
        ),
    ] = False,
    undelivered_code: Annotated[
        list[str] | None,
        typer.Option(help="With --include-undelivered: a delivery error code to re-send (repeat)."),
    ] = None,
    max_cost: MaxCostOpt = None,
) -> None:
    """Re-send a campaign's failed rows (and unknown ones where the provider's idempotency makes it safe)
    with the same idempotency keys, as the next attempt."""
    from smscast.local_server import announce_prefect_api
    from smscast.preflight import require_retry_ready

    # Before the flow's import (which imports Prefect): the recorded campaign, its provider and results.
    require_retry_ready(campaign_id, results, provider=provider, base_url=base_url)
    if undelivered_code and not include_undelivered:
        _fail("--undelivered-code needs --include-undelivered")
    announce_prefect_api()
    from smscast.flows.retry import retry_failed

    try:
        retry_failed(
            campaign_id=campaign_id,
            results=results,
            provider=provider,
            base_url=base_url,
            max_attempts=max_attempts,
            delay_seconds=delay,
            include_undelivered=include_undelivered,
            undelivered_codes=undelivered_code or None,
            max_cost=max_cost,
        )
    except SmscastError as exc:
        _fail(str(exc))


def release(
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
    from smscast.preflight import require_retry_ready

    require_retry_ready(campaign_id, results, provider=provider, base_url=base_url, command="release")
    announce_prefect_api()
    from smscast.flows.release import release_held

    try:
        release_held(
            campaign_id=campaign_id, results=results, provider=provider, base_url=base_url, max_cost=max_cost
        )
    except SmscastError as exc:
        _fail(str(exc))


def register(app: typer.Typer) -> None:
    """Add `retry` and `release` to the smscast command line."""
    app.command()(retry)
    app.command()(release)
