"""Suppression lists: the numbers a campaign must not message because they opted out (tasks/policy.py applies them).

The lists are the results location's managed opt-out list (smscast/optout.py), which every campaign there
applies without being asked, and the campaign's own `suppress` sources: anything `load_recipients` reads that
has a `phone` column. Their numbers are normalised exactly as recipients are (the campaign's default country
applies), so `+44 7400 900123` on a list holds back `447400900123` in the source. Everything is joins on the
normalised phone: no Python per row.
"""

from __future__ import annotations

import io
import logging
from typing import Any

import polars as pl

from smscast import storage
from smscast.campaign import CampaignSpec
from smscast.phone import is_e164, normalise, number_key
from smscast.results import optout_list
from smscast.sources import PHONE_RAW, SCHEME
from smscast.step_log import step_logger
from smscast.tasks.load import load_recipients, source_label

__all__ = ["MANAGED", "list_phones", "list_spec", "on_lists", "read_optouts", "suppression_lists"]

MANAGED = "managed opt-out list"
_SQL = ("postgresql", "postgres", "duckdb")


def _logger() -> logging.Logger | logging.LoggerAdapter[Any]:
    return step_logger("smscast.suppression")


def read_optouts(results: str) -> tuple[pl.DataFrame, str | None]:
    """The managed opt-out list under `results` (columns phone, added_at) and its version for `storage.put_if`
    (None: there is no list yet, and the frame is empty)."""
    current = storage.get_versioned(optout_list(results))
    if current is None:
        return pl.DataFrame(schema={"phone": pl.String, "added_at": pl.Datetime("us", "UTC")}), None
    return pl.read_parquet(io.BytesIO(current[0])), current[1]


def list_spec(
    source: str, *, query: str | None = None, encoding: str = "utf-8", phone_column: str | None = None
) -> CampaignSpec:
    """A suppression list read as a campaign's recipients would be: the spec the loader (and the preflight's
    look at a source) takes for it. `query` applies to SQL sources only."""
    match = SCHEME.match(source)
    sql = match is not None and match.group(1).lower().split("+")[0] in _SQL
    return CampaignSpec(
        campaign_id="suppression-list",
        source=source,
        results=".",  # never written: the loader only reads `source`
        query=query if sql else None,
        body="-",  # so that the loader does not ask for one: a list has only phones
        encoding=encoding,
        columns={"phone": phone_column} if phone_column else {},
        allow_empty=True,  # an empty opt-out list is a normal list, not a broken export
    )


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
    numbers = _numbers(source, default_country, query, encoding, phone_column)
    return numbers.unique(maintain_order=True).to_frame("phone")


def _numbers(
    source: str, default_country: str | None, query: str | None, encoding: str, phone_column: str | None
) -> pl.Series:
    """The list's E.164 numbers, as text."""
    raw = load_recipients(list_spec(source, query=query, encoding=encoding, phone_column=phone_column))
    phone = pl.col(PHONE_RAW)
    # Lists exported from a system are mostly E.164 already, and normalising is most of the cost of reading
    # a big list: only the entries that are not are normalised (normalise leaves an E.164 value as it is).
    numbers = raw.select(pl.when(is_e164(phone)).then(phone).alias("phone")).to_series()
    if numbers.null_count():
        fixed = raw.select(normalise(phone, default_country).alias("phone"))
        numbers = fixed.select(pl.when(is_e164(pl.col("phone"))).then(pl.col("phone"))).to_series()
        if numbers.null_count():
            _logger().warning(
                "suppression list %s: %d of %d entries are not phone numbers and are ignored",
                source_label(source),
                numbers.null_count(),
                raw.height,
            )
    return numbers.drop_nulls().cast(pl.String)


def suppression_lists(spec: CampaignSpec) -> list[tuple[str, pl.Series]]:
    """Each list the campaign applies, named, with its numbers as `number_key`s (not deduplicated: they are
    only looked up): the managed opt-out list when it has numbers, then the `suppress` sources."""
    managed, _ = read_optouts(spec.results)
    lists = [(MANAGED, managed.get_column("phone").cast(pl.String))] if managed.height else []
    lists += [
        (source_label(src), _numbers(src, spec.default_country, spec.suppress_query, spec.encoding, None))
        for src in spec.suppress
    ]
    return [
        (name, numbers.to_frame("n").select(number_key(pl.col("n"))).to_series()) for name, numbers in lists
    ]


def on_lists(phone: pl.Expr, lists: list[tuple[str, pl.Series]]) -> pl.Expr:
    """The name(s) of the lists (`suppression_lists`) an E.164 `phone` is on (`; `-joined), null when it is on
    none. One hash lookup per list and row: no join or group-by over the lists, which may be far longer than
    the campaign."""
    key = number_key(phone)
    names = [pl.when(key.is_in(keys.implode())).then(pl.lit(name)) for name, keys in lists]
    if len(names) == 1:
        return names[0]
    joined = pl.concat_str(names, separator="; ", ignore_nulls=True)
    return pl.when(joined.str.len_chars() > 0).then(joined)
