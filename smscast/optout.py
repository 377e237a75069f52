"""`smscast optout add | remove | import | list`: the managed opt-out list of a results location.

The list is one Parquet object, `<results>/_policy/optout.parquet` (smscast/results.py `optout_list`): a
`phone` column in E.164 and the `added_at` time of each entry. Every campaign sent under that results location
holds back the numbers on it (tasks/policy.py), without any option. Numbers are normalised as recipients are
(`--default-country` for national spellings), so any spelling of a number finds the same entry.

Two commands may change the list at once (an import job and someone adding a number by hand): each reads the
list with its version and writes it back only if it is still at that version (storage.put_if, a conditional
write on S3 too), reading and applying its change again when another writer came first. No change is lost.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, NoReturn

import polars as pl
import typer
from pydantic import ValidationError

from smscast import storage
from smscast.errors import SmscastError
from smscast.phone import is_e164, normalise
from smscast.results import optout_list
from smscast.sources.credentials import take_password_for_this_process
from smscast.tasks.load import source_label
from smscast.tasks.suppression import list_phones, read_optouts

__all__ = ["add_phones", "change_list", "import_phones", "optout_app", "register", "remove_phones"]

# Each failed conditional write means another writer's change landed: with a handful of writers this ends in
# a few rounds; the bound only stops a storage that never honours the condition from looping for ever.
MAX_ROUNDS = 100

Clock = Callable[[], datetime]


def _now() -> datetime:
    return datetime.now(UTC)


def change_list(results: str, change: Callable[[pl.DataFrame], pl.DataFrame]) -> pl.DataFrame:
    """Apply `change` to the list under `results` and write it back, again from a fresh read whenever
    another writer changed the list in between. Returns the list as written."""
    uri = optout_list(results)
    for attempt in range(MAX_ROUNDS):
        current, version = read_optouts(results)
        updated = change(current).select(
            pl.col("phone").cast(pl.String), pl.col("added_at").cast(pl.Datetime("us", "UTC"))
        )
        if storage.put_if(uri, storage.parquet_bytes(updated), version) is not None:
            return updated
        # Someone else wrote first: a short random pause keeps several writers from colliding in lockstep.
        time.sleep(random.uniform(0, 0.01 * (attempt + 1)))
    raise SmscastError(f"the opt-out list {storage.redact(uri)} kept changing under us; try again")


def normalised(phones: list[str], default_country: str | None) -> list[str]:
    """The E.164 form of each phone as typed; refuses the lot, naming them, if any is not a number."""
    frame = pl.DataFrame({"raw": phones}, schema={"raw": pl.String}).with_columns(
        phone=normalise(pl.col("raw"), default_country)
    )
    bad = frame.filter(~is_e164(pl.col("phone")))["raw"].to_list()
    if bad:
        hint = "" if default_country else " (a national number needs --default-country)"
        raise SmscastError(
            f"not a phone number in E.164 after normalisation: {', '.join(map(repr, bad))}{hint}"
        )
    return list(dict.fromkeys(frame["phone"].to_list()))


class _Adding:
    """A change putting `numbers` on the list; an entry already there keeps its own `added_at`. `added`: how
    many the last application added (the one written, since a write that lost is applied again)."""

    def __init__(self, numbers: list[str], clock: Clock) -> None:
        self.numbers, self.clock, self.added = numbers, clock, 0

    def __call__(self, current: pl.DataFrame) -> pl.DataFrame:
        fresh = pl.DataFrame({"phone": self.numbers}, schema={"phone": pl.String}).join(
            current.select("phone"), on="phone", how="anti"
        )
        self.added = fresh.height
        stamp = pl.lit(self.clock(), pl.Datetime("us", "UTC"))
        return pl.concat([current, fresh.with_columns(added_at=stamp)], how="vertical_relaxed")


def add_phones(
    results: str, phones: list[str], default_country: str | None = None, clock: Clock = _now
) -> int:
    """Put `phones` on the list; the number newly added (those already on it are left as they are)."""
    adding = _Adding(normalised(phones, default_country), clock)
    change_list(results, adding)
    return adding.added


def remove_phones(results: str, phones: list[str], default_country: str | None = None) -> int:
    """Take `phones` off the list; the number that were on it."""
    numbers = normalised(phones, default_country)
    removed = 0

    def drop(current: pl.DataFrame) -> pl.DataFrame:
        nonlocal removed
        kept = current.filter(~pl.col("phone").is_in(numbers))
        removed = current.height - kept.height
        return kept

    change_list(results, drop)
    return removed


def import_phones(
    results: str,
    source: str,
    *,
    default_country: str | None = None,
    query: str | None = None,
    encoding: str = "utf-8",
    phone_column: str | None = None,
    clock: Clock = _now,
) -> tuple[int, int]:
    """Put every number of `source` on the list: (numbers read, newly added)."""
    numbers = list_phones(
        source, default_country=default_country, query=query, encoding=encoding, phone_column=phone_column
    )["phone"].to_list()
    adding = _Adding(numbers, clock)
    change_list(results, adding)
    return len(numbers), adding.added


# -- command line ---------------------------------------------------------------------------------------------

optout_app = typer.Typer(
    help="The managed opt-out list of a results location: every campaign sent there holds its numbers back "
    "(status suppressed, reason opted_out).",
    no_args_is_help=True,
)

ResultsOpt = Annotated[
    str, typer.Option("--results", "-r", help="The results location: a directory or s3://bucket/prefix.")
]
CountryOpt = Annotated[
    str | None, typer.Option("--default-country", help="ISO region for national numbers, e.g. GB.")
]
PhonesArg = Annotated[list[str], typer.Argument(help="Phone numbers, in any usual spelling.")]


def _fail(message: str) -> NoReturn:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


@optout_app.command("add")
def add_command(phones: PhonesArg, results: ResultsOpt, default_country: CountryOpt = None) -> None:
    """Put numbers on the opt-out list."""
    try:
        added = add_phones(results, phones, default_country)
    except SmscastError as exc:
        _fail(str(exc))
    typer.echo(f"added {added} number(s) to the opt-out list of {storage.redact(results)}")


@optout_app.command("remove")
def remove_command(phones: PhonesArg, results: ResultsOpt, default_country: CountryOpt = None) -> None:
    """Take numbers off the opt-out list."""
    try:
        removed = remove_phones(results, phones, default_country)
    except SmscastError as exc:
        _fail(str(exc))
    typer.echo(f"removed {removed} number(s) from the opt-out list of {storage.redact(results)}")


@optout_app.command("import")
def import_command(
    source: Annotated[
        str, typer.Argument(help="A source with a phone column: path, s3://, postgresql://, duckdb://.")
    ],
    results: ResultsOpt,
    default_country: CountryOpt = None,
    query: Annotated[str | None, typer.Option(help="SQL for postgresql:// and duckdb:// sources.")] = None,
    phone_column: Annotated[
        str | None, typer.Option(help="The source's column holding the phone, if not named phone.")
    ] = None,
    encoding: Annotated[str, typer.Option(help="Text encoding of CSV/NDJSON sources.")] = "utf-8",
) -> None:
    """Put every number of a source on the opt-out list."""
    try:
        read, added = import_phones(
            results,
            take_password_for_this_process(source),
            default_country=default_country,
            query=query,
            encoding=encoding,
            phone_column=phone_column,
        )
    except ValidationError as exc:
        _fail("; ".join(str(e["msg"]) for e in exc.errors()))
    except (SmscastError, ValueError) as exc:
        _fail(str(exc))
    typer.echo(
        f"read {read} number(s) from {source_label(source)}; added {added} to the opt-out list of "
        f"{storage.redact(results)}"
    )


@optout_app.command("list")
def list_command(results: ResultsOpt) -> None:
    """Print the opt-out list: one number and the time it was added per line."""
    try:
        current, _ = read_optouts(results)
    except SmscastError as exc:
        _fail(str(exc))
    for phone, added_at in current.sort("added_at", "phone").iter_rows():
        typer.echo(f"{phone}\t{added_at.isoformat() if added_at else ''}")
    typer.echo(f"{current.height} number(s) on the opt-out list", err=True)


def register(app: typer.Typer) -> None:
    """Add `smscast optout …` to the main command line."""
    app.add_typer(optout_app, name="optout")
