"""The contact-policy options of `smscast send` (and `smscast doctor`, which is the same command), declared once.

Typer reads options from the command's signature, so each is an `Annotated` type here and a parameter there;
`policy_fields` turns their values into CampaignSpec fields (smscast/campaign.py validates them).
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

PANEL = "Contact policy"

SuppressOpt = Annotated[
    list[str],
    typer.Option(
        "--suppress",
        help="A source with a phone column (path, s3://, postgresql://, duckdb://) whose numbers are not "
        "messaged: their rows end suppressed (opted_out). Repeat for several.",
        rich_help_panel=PANEL,
    ),
]
SuppressQueryOpt = Annotated[
    str | None,
    typer.Option(
        help="SQL for the --suppress sources that are postgresql:// or duckdb://.", rich_help_panel=PANEL
    ),
]
MaxPerRecipientOpt = Annotated[
    int | None,
    typer.Option(
        help="At most N messages accepted to one number within --per-window, counting every campaign under "
        "the same --results (running ones too); rows over it end suppressed (frequency_cap).",
        rich_help_panel=PANEL,
    ),
]
PerWindowOpt = Annotated[
    str | None,
    typer.Option(help="The window of --max-per-recipient: 90m, 24h, 7d, 2w.", rich_help_panel=PANEL),
]
QuietHoursOpt = Annotated[
    str | None,
    typer.Option(
        help="HH:MM-HH:MM in the recipient's local time (e.g. 21:00-08:00): rows inside it end held "
        "(quiet_hours) until it ends; `smscast release` (or the release deployment) sends them. The zone is "
        "a `timezone` column's (IANA name) or the number's.",
        rich_help_panel=PANEL,
    ),
]
AllowCountriesOpt = Annotated[
    str | None,
    typer.Option(
        help="Only these countries (ISO codes, comma-separated: GB,IE); other numbers end suppressed "
        "(country_blocked).",
        rich_help_panel=PANEL,
    ),
]
BlockCountriesOpt = Annotated[
    str | None,
    typer.Option(help="Never these countries (ISO codes, comma-separated).", rich_help_panel=PANEL),
]
PricesOpt = Annotated[
    str | None,
    typer.Option(
        help="Price list, CSV or Parquet (provider, country or calling_code, price_per_segment, currency): the "
        "dry run and the summary show the estimated cost.",
        rich_help_panel=PANEL,
    ),
]
MaxCostOpt = Annotated[
    float | None,
    typer.Option(
        help="Spend cap (needs --prices): a campaign estimated above it does not start, and one that would "
        "pass it stops: the rows not sent end failed (over_budget), and a retry with a higher cap sends them.",
        rich_help_panel=PANEL,
    ),
]


def _codes(text: str | None) -> tuple[str, ...]:
    return tuple(c.strip() for c in (text or "").split(",") if c.strip())


def policy_fields(
    *,
    suppress: list[str],
    suppress_query: str | None,
    max_per_recipient: int | None,
    per_window: str | None,
    quiet_hours: str | None,
    allow_countries: str | None,
    block_countries: str | None,
    prices: str | None,
    max_cost: float | None,
) -> dict[str, Any]:
    """The CampaignSpec fields these options set."""
    return dict(
        suppress=tuple(suppress),
        suppress_query=suppress_query,
        max_per_recipient=max_per_recipient,
        per_window=per_window,
        quiet_hours=quiet_hours,
        allow_countries=_codes(allow_countries),
        block_countries=_codes(block_countries),
        prices=prices,
        max_cost=max_cost,
    )
