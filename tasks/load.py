"""Load a campaign's recipients into a Polars DataFrame with canonical columns. This module picks the reader
for the source and makes the canonical columns; the readers live in smscast/sources/ (files.py, sql.py).

Sources (`spec.source`):

* a local path or file:// URI, or s3://bucket/key: `.csv`, `.parquet`, `.ndjson` / `.jsonl`; a directory or an
  s3:// prefix ending in `/` is every such file under it, in name order (any other file is refused by name);
* postgresql://user:pass@host:port/db (also postgres://, postgresql+psycopg://) with `spec.query`;
* duckdb:///path/file.db (duckdb://relative.db, duckdb:// or duckdb:///:memory: for an in-memory database)
  with `spec.query`.

Output columns:

* `row_index` Int64: the 0-based position of the record in the input (file order / query result order). For
  CSV, blank lines (every field empty) are not records and are not counted.
* `phone_raw` String: the source's phone exactly as text. CSV is read with every column as String, so
  "+44 7700 900123", "07700900123" and "00447700900123" survive; numeric phones from Parquet, NDJSON or SQL
  become their digits ("447700900123", never "447700900123.0").
* `_phone_was_float` Boolean (smscast.phone.FLOAT_MARK), only when the phone column was a float column: true
  on its non-null rows. Validation refuses them as `phone_float` (digits may have been lost before smscast
  saw them) and drops the column.
* `body`, `recipient_id`, `language`, `media_url`, `send_at` and the template's variables as String where
  present; every other column as it is.

CSV dialects: a header row with no comma but `;`, tabs or `|` sets the separator (spreadsheets in many
locales save "CSV" with `;`); a file whose lines end with CR alone (old Mac exports) is read so. Refused with
a SourceError that names the place, never the content: UTF-16 and non-UTF-8 text, binary content, and a NUL
character anywhere in a column smscast reads (a corrupt export; it would reach a provider's request). A NaN
in a float column (pandas' missing value) is null, never the text "NaN".

`spec.columns` maps our names to the source's (`{"phone": "msisdn"}`). A canonical name (phone, body,
recipient_id, language, media_url, send_at, the template's variables) the source lacks is matched to a
column spelled the same but for case, spaces, underscores and hyphens ("Phone", " PHONE ", "Recipient ID");
a different name ("Mobile Number") needs the mapping, which the error message spells out. CSV and NDJSON are
decoded with `spec.encoding`. A source with no rows is refused unless `spec.allow_empty`.

Problems with the source raise `SourceError` with a message that names the source (never its credentials)
and says what to do, quoting column names with phone-like digit runs masked (a header-less file's "header"
is its first recipient); a CSV or NDJSON parse error names the line. A SQL source without a query raises
`ConfigError`.

PostgreSQL results are fetched with `COPY (query) TO STDOUT (FORMAT csv, HEADER)` in a read-only transaction
and parsed by Polars with every column as String: it is about 6x faster than `pl.read_database` over a
psycopg cursor (0.3 s vs 1.9 s for 200k rows here) and renders numbers the way PostgreSQL prints them.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import polars as pl

from smscast import storage
from smscast.campaign import CampaignSpec
from smscast.errors import ConfigError, SourceError
from smscast.phone import FLOAT_MARK
from smscast.sources import PHONE, PHONE_RAW, ROW_INDEX, SCHEME
from smscast.sources.files import dataset_files, read_file
from smscast.sources.messages import (
    check_duplicates,
    first_line,
    looks_like_data,
    name_key,
    quote_names,
    shell_quoted_mapping,
)
from smscast.sources.sql import read_duckdb, read_postgres

__all__ = ["CANONICAL_TEXT_COLUMNS", "load_recipients", "source_label"]

CANONICAL_TEXT_COLUMNS = ("body", "recipient_id", "language", "media_url", "send_at")
_DIGIT_COLUMNS = (PHONE_RAW, "recipient_id")  # numeric values become their digits, without ".0"
# Column names that are probably the phone, to suggest the mapping (compared as `name_key` spells them).
_PHONE_ALIASES = (
    *("msisdn", "mobile", "mobile_number", "mobile_no", "mobile_phone", "phone_number", "phone_no"),
    *("phonenumber", "number", "tel", "telephone", "cell", "cell_phone", "cellphone", "contact_number"),
)


# -- entry point --------------------------------------------------------------------------------------------


def load_recipients(spec: CampaignSpec) -> pl.DataFrame:
    source = spec.source.strip()
    kind, target = _classify(source)
    label = source_label(source)
    if kind in ("postgres", "duckdb"):
        if not (spec.query and spec.query.strip()):
            raise ConfigError(
                f"the SQL source {label} needs a query: pass --query 'SELECT phone, body FROM recipients'"
            )
        df = (
            read_postgres(target, spec.query, label)
            if kind == "postgres"
            else read_duckdb(target, spec.query, label)
        )
    else:
        if spec.query:
            raise ConfigError(
                f"--query applies only to SQL sources (postgresql://, duckdb://), not to {label}; drop it"
            )
        files = dataset_files(target, label)
        if files is not None:
            return _refuse_empty(_read_folder(files, spec, label), spec, f"{label} holds")
        df = read_file(target, label, spec.encoding)
    what = f"the query on {label} returned" if kind in ("postgres", "duckdb") else f"{label} holds"
    return _refuse_empty(_canonicalise(df, spec, label), spec, what)


def _refuse_empty(df: pl.DataFrame, spec: CampaignSpec, what: str) -> pl.DataFrame:
    """A source with no rows is most often a broken export (a header and nothing else): an error, not a
    campaign that completes having sent nothing. Unless the campaign says an empty one is expected.

    The frame is returned in one chunk per column. A reader gives one chunk per Parquet row group or CSV
    batch, while the columns the next steps add are one chunk each; Polars' select and drop on a frame
    whose columns are chunked differently copy every column into one chunk, so a validated frame of ten
    million rows would be copied whole (about 2 GiB) at some later step, the copy and the original alive at
    once. Done here, on the loaded columns alone, it copies those (about 0.3 GiB for ten million) and the
    columns the next steps add line up with them.
    """
    if df.height == 0 and not spec.allow_empty:
        raise SourceError(
            f"{what} no recipients (0 data rows): no rows to send; check the export or query, or pass "
            "--allow-empty if an empty campaign is expected"
        )
    return df.rechunk()


def _read_folder(files: list[str], spec: CampaignSpec, label: str) -> pl.DataFrame:
    """Every file of a folder, each read and made canonical on its own (so that a message names the file, and
    a phone stored as a number in one Parquet part and as text in a CSV both end up as the same text), then
    stacked in name order with `row_index` counted across the folder."""
    frames: list[pl.DataFrame] = []
    offset = 0
    for uri in files:
        part = _canonicalise(read_file(uri, source_label(uri), spec.encoding), spec, source_label(uri))
        frames.append(part.with_columns(pl.col(ROW_INDEX) + offset))
        offset += part.height
    try:
        return pl.concat(frames, how="diagonal_relaxed")
    except pl.exceptions.PolarsError as exc:
        raise SourceError(
            f"the files under {label} do not stack into one table ({first_line(str(exc))}); give their "
            "shared columns the same kind of values"
        ) from None


def source_label(source: str) -> str:
    """The source as it may appear in messages and logs: a database URI loses its password and parameters."""
    match = SCHEME.match(source)
    if not match or match.group(1).lower().split("+")[0] not in ("postgresql", "postgres"):
        return source
    try:
        parts = urlsplit(source)
        host = parts.hostname or ""
        netloc = f"{parts.username}@{host}" if parts.username else host
        if parts.port:
            netloc += f":{parts.port}"
    except ValueError:
        return f"{match.group(1)}://…"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _classify(source: str) -> tuple[str, str]:
    """("postgres" | "duckdb" | "file", the target to open)."""
    if not source:
        raise SourceError(
            "no recipients source given: pass a path, s3://bucket/key, postgresql://… or duckdb://…"
        )
    match = SCHEME.match(source)
    if not match:
        return "file", source
    scheme = match.group(1).lower()
    base = scheme.split("+")[0]
    if base in ("postgresql", "postgres"):
        return "postgres", "postgresql://" + source[match.end() :]
    if scheme == "duckdb":
        return "duckdb", source
    if scheme == "s3":
        return "file", source
    if scheme == "file":
        try:
            return "file", str(storage.to_local_path(source))
        except ValueError as exc:
            raise SourceError(f"{source}: {exc}; use file:///absolute/path or a plain path") from None
    raise SourceError(
        f"unsupported source scheme '{scheme}://' in {source_label(source)}: use a local path, file://, "
        "s3://bucket/key, postgresql://user:password@host:port/db or duckdb:///path/file.db"
    )


# -- canonical columns --------------------------------------------------------------------------------------


def _canonicalise(df: pl.DataFrame, spec: CampaignSpec, label: str) -> pl.DataFrame:
    df = df.with_columns(pl.col(ROW_INDEX).cast(pl.Int64))
    check_duplicates(df.columns, label)
    if FLOAT_MARK in df.columns:
        raise SourceError(f"{label} has a column named '{FLOAT_MARK}', which smscast reserves; rename it")
    df = _apply_mapping(df, spec.columns, label)
    df = _match_spelling(df, (PHONE, *CANONICAL_TEXT_COLUMNS, *spec.required_vars()), label)
    _require_columns(df, spec, label)
    if PHONE_RAW in df.columns:
        raise SourceError(f"{label} has both 'phone' and 'phone_raw' columns; drop or rename 'phone_raw'")
    df = df.rename({PHONE: PHONE_RAW})
    dtype = df.schema[PHONE_RAW]
    if dtype.is_float():
        # The digits of a float column are exact as stored, but the export that stored them may already have
        # rounded (4.477E+11): mark the rows so validation refuses them by name (tasks/validate.py).
        raw = pl.col(PHONE_RAW)
        df = df.with_columns((raw.is_not_null() & raw.is_not_nan()).alias(FLOAT_MARK))

    text_columns = [PHONE_RAW, *CANONICAL_TEXT_COLUMNS, *spec.required_vars()]
    exprs = [
        _as_text(name, df.schema[name], label) for name in dict.fromkeys(text_columns) if name in df.columns
    ]
    try:
        df = df.with_columns(exprs)
    except pl.exceptions.PolarsError as exc:
        raise SourceError(f"{label}: cannot read a column as text ({first_line(str(exc))})") from None
    _refuse_nul(df, [c for c in dict.fromkeys(text_columns) if c in df.columns], label)
    rest = [c for c in df.columns if c not in (ROW_INDEX, PHONE_RAW)]
    return df.select(ROW_INDEX, PHONE_RAW, *rest)


def _refuse_nul(df: pl.DataFrame, columns: list[str], label: str) -> None:
    """A NUL character in a column smscast reads (phone, body, template variables…) is a corrupt export;
    it would reach a provider's request. The sniff catches NULs in a text file's head; this catches them
    anywhere, in every kind of source. Names the column and the row, never the value."""
    hits = df.select(
        [pl.col(c).str.contains("\x00", literal=True).fill_null(False).alias(c) for c in columns]
    )
    for name in columns:
        rows = df.get_column(ROW_INDEX).filter(hits.get_column(name))
        if rows.len():
            more = f" and {rows.len() - 1} more row(s)" if rows.len() > 1 else ""
            shown = "phone" if name == PHONE_RAW else name
            raise SourceError(
                f"{label}: the column '{shown}' holds a NUL character (row_index {rows[0]}{more}), which "
                "a text export never contains: the source is corrupt; remove the NUL characters and load "
                "it again"
            )


def _apply_mapping(df: pl.DataFrame, mapping: dict[str, str], label: str) -> pl.DataFrame:
    pairs = {
        ours.strip(): theirs.strip() for ours, theirs in mapping.items() if ours.strip() and theirs.strip()
    }
    pairs = {ours: theirs for ours, theirs in pairs.items() if ours != theirs}
    if not pairs:
        return df
    columns = df.columns
    if ROW_INDEX in pairs:
        raise SourceError(f"'{ROW_INDEX}' cannot be mapped: smscast numbers the rows itself")
    for ours, theirs in list(pairs.items()):
        if theirs not in columns:
            same = [c for c in columns if name_key(c) == name_key(theirs)]
            if len(same) != 1:
                raise SourceError(
                    f"the column mapping {ours}={theirs} names a column that {label} does not have; "
                    f"its columns are: {quote_names(columns)}"
                )
            pairs[ours] = same[0]  # "mobile number" for "Mobile Number": the same name, typed differently
    sources = set(pairs.values())
    for ours, theirs in pairs.items():
        if ours in columns and ours not in sources:
            raise SourceError(
                f"the column mapping {ours}={theirs} clashes with the column '{ours}' that {label} "
                f"already has; map only one of them, or drop '{ours}' from the source"
            )
    targets: dict[str, list[str]] = {}
    for ours, theirs in pairs.items():
        targets.setdefault(theirs, []).append(ours)
    exprs: list[pl.Expr] = []
    for col in columns:
        if col in targets:
            exprs.extend(pl.col(col).alias(ours) for ours in targets[col])
        elif col not in pairs:
            exprs.append(pl.col(col))
    return df.select(exprs)


def _match_spelling(df: pl.DataFrame, names: tuple[str, ...], label: str) -> pl.DataFrame:
    """Rename the column spelled like a canonical name but for case and spacing ("Phone", "Recipient ID") to
    that name, for each canonical name the source lacks."""
    renames: dict[str, str] = {}
    for name in dict.fromkeys(names):
        if name in df.columns:
            continue
        same = [
            c for c in df.columns if c != ROW_INDEX and c not in renames and name_key(c) == name_key(name)
        ]
        if len(same) > 1:
            options = " or ".join(shell_quoted_mapping(name, c) for c in same[:3])
            raise SourceError(
                f"{label} has several columns that could be '{name}' ({quote_names(same)}); choose one "
                f"with {options}"
            )
        if same:
            renames[same[0]] = name
    return df.rename(renames) if renames else df


def _require_columns(df: pl.DataFrame, spec: CampaignSpec, label: str) -> None:
    columns = df.columns
    data_columns = [c for c in columns if c != ROW_INDEX]
    if PHONE not in columns:
        guess = next(
            (c for c in data_columns if name_key(c) in _PHONE_ALIASES),
            None,
        )
        if any(looks_like_data(c) for c in data_columns):
            raise SourceError(
                f"{label} has no 'phone' column: its first line ({quote_names(data_columns)}) looks like data, "
                "not a header; add a header row such as phone,body"
            )
        example = shell_quoted_mapping(PHONE, guess) if guess else "--column phone=<your column>"
        raise SourceError(
            f"{label} has no 'phone' column (its columns: {quote_names(data_columns)}); "
            f"rename it, or map yours with {example}"
        )
    if spec.body is None and spec.template is None and "body" not in columns:
        raise SourceError(
            f"{label} has no 'body' column and the campaign has no --body or --template "
            f"(its columns: {quote_names(data_columns)}); add a body column, map one with "
            "--column body=<your column>, or pass --body TEXT / --template ID"
        )
    missing = [v for v in spec.required_vars() if v not in columns]
    if missing:
        what = ", ".join(f"'{m}'" for m in missing)
        raise SourceError(
            f"{label} lacks the column(s) {what} that the message template uses "
            f"(its columns: {quote_names(data_columns)}); add them or map yours with "
            f"--column {missing[0]}=<your column>"
        )


def _as_text(name: str, dtype: pl.DataType, label: str) -> pl.Expr:
    col = pl.col(name)
    if dtype == pl.String:
        return col
    if dtype.is_numeric():
        if dtype.is_float():
            # NaN is how pandas writes a missing number: no value, never the text "NaN" (as a phone or a body)
            col = pl.when(col.is_nan()).then(None).otherwise(col).alias(name)
        text = col.cast(pl.String)
        if name in _DIGIT_COLUMNS and not dtype.is_integer():
            text = text.str.replace(r"\.0+$", "")  # 447700900123.0 -> 447700900123
        return text
    if isinstance(dtype, pl.Datetime):
        if dtype.time_zone is not None:
            return (
                col.dt.convert_time_zone("UTC")
                .dt.strftime("%Y-%m-%dT%H:%M:%S%.fZ")
                .str.replace(r"\.0+Z$", "Z")
            )
        return col.dt.strftime("%Y-%m-%dT%H:%M:%S%.f").str.replace(r"\.0+$", "")
    if isinstance(dtype, pl.Date):
        return col.dt.strftime("%Y-%m-%d")
    if isinstance(dtype, (pl.List, pl.Array, pl.Struct, pl.Object, pl.Binary)):
        shown = PHONE if name == PHONE_RAW else name
        raise SourceError(f"{label}: the column '{shown}' holds {dtype} values where text is expected")
    return col.cast(pl.String)
