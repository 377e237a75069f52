"""Contact policy, between validation and planning: rows that must not be messaged in this campaign.

A valid row whose phone is on a suppression list ends `suppressed` with the reason `opted_out` and a message
naming the list(s) it is on; it is never planned, sent or re-sent (smscast/status.py). Rows validation already
refused stay `invalid`: their phone may not even be a number, and one reason is enough.

The lists are the results location's managed opt-out list (smscast/optout.py), which every campaign there
applies without being asked, and the campaign's own `suppress` sources: anything `load_recipients` reads that
has a `phone` column. Their numbers are normalised exactly as recipients are (the campaign's default country
applies), so `+44 7700 900123` on a list holds back `447700900123` in the source. Everything is joins on the
normalised phone: no Python per row.
"""

from __future__ import annotations

import io
import logging
from typing import Any

import polars as pl

from smscast import storage
from smscast.campaign import CampaignSpec
from smscast.phone import is_e164, normalise
from smscast.results import optout_list
from smscast.sources import PHONE_RAW, SCHEME
from smscast.status import Status
from smscast.tasks.load import load_recipients, source_label

__all__ = ["MANAGED", "OPTED_OUT", "apply_policy", "list_phones", "read_optouts", "suppression_set"]

OPTED_OUT = "opted_out"
MANAGED = "managed opt-out list"
_SQL = ("postgresql", "postgres", "duckdb")
_LIST = "_list"


def _logger() -> logging.Logger | logging.LoggerAdapter[Any]:
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("smscast.policy")


def read_optouts(results: str) -> tuple[pl.DataFrame, str | None]:
    """The managed opt-out list under `results` (columns phone, added_at) and its version for `storage.put_if`
    (None: there is no list yet, and the frame is empty)."""
    current = storage.get_versioned(optout_list(results))
    if current is None:
        return pl.DataFrame(schema={"phone": pl.String, "added_at": pl.Datetime("us", "UTC")}), None
    return pl.read_parquet(io.BytesIO(current[0])), current[1]


def list_phones(
    source: str,
    *,
    default_country: str | None,
    query: str | None = None,
    encoding: str = "utf-8",
    phone_column: str | None = None,
) -> pl.DataFrame:
    """The E.164 numbers of one suppression source (column `phone`, unique), read as a campaign's recipients
    are (`load_recipients`: its formats, column spellings, encodings) and normalised as they are. `query`
    applies to SQL sources only. Entries that are not numbers cannot match a valid recipient: passed over."""
    match = SCHEME.match(source)
    sql = match is not None and match.group(1).lower().split("+")[0] in _SQL
    reader = CampaignSpec(
        campaign_id="suppression-list",
        source=source,
        results=".",  # never written: the loader only reads `source`
        query=query if sql else None,
        body="-",  # so that the loader does not ask for one: a list has only phones
        encoding=encoding,
        columns={"phone": phone_column} if phone_column else {},
        allow_empty=True,  # an empty opt-out list is a normal list, not a broken export
    )
    raw = load_recipients(reader)
    phones = raw.select(phone=normalise(pl.col(PHONE_RAW), default_country))
    usable = phones.filter(is_e164(pl.col("phone")))
    if usable.height < phones.height:
        _logger().warning(
            "suppression list %s: %d of %d entries are not phone numbers and are ignored",
            source_label(source),
            phones.height - usable.height,
            phones.height,
        )
    return usable.unique(maintain_order=True)


def suppression_set(spec: CampaignSpec) -> pl.DataFrame:
    """Every suppressed number once, with the list(s) it is on: columns `phone`, `_list` (`; `-joined)."""
    managed, _ = read_optouts(spec.results)
    frames = [managed.select(pl.col("phone").cast(pl.String), pl.lit(MANAGED).alias(_LIST))]
    frames += [
        list_phones(
            src, default_country=spec.default_country, query=spec.suppress_query, encoding=spec.encoding
        ).with_columns(pl.lit(source_label(src)).alias(_LIST))
        for src in spec.suppress
    ]
    return (
        pl.concat(frames, how="vertical_relaxed")
        .unique(maintain_order=True)
        .group_by("phone", maintain_order=True)
        .agg(pl.col(_LIST).str.join("; "))
    )


def apply_policy(validated: pl.DataFrame, spec: CampaignSpec) -> pl.DataFrame:
    """`validated` with its valid rows whose phone is suppressed marked `suppressed` / `opted_out`."""
    banned = suppression_set(spec)
    if banned.height == 0:
        return validated
    marked = validated.join(banned, on="phone", how="left", maintain_order="left")
    hit = pl.col("status").is_null() & pl.col(_LIST).is_not_null()
    out = marked.with_columns(
        status=pl.when(hit).then(pl.lit(Status.SUPPRESSED.value)).otherwise(pl.col("status")),
        error_code=pl.when(hit).then(pl.lit(OPTED_OUT)).otherwise(pl.col("error_code")),
        error_message=pl.when(hit)
        .then(pl.format("opted out (list: {})", pl.col(_LIST)))
        .otherwise(pl.col("error_message")),
    ).drop(_LIST)
    n = out.filter(pl.col("status") == Status.SUPPRESSED.value).height
    if n:
        _logger().info("contact policy: %d rows suppressed (opted out)", n)
    return out
