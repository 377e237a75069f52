"""The preflight's look at a recipients source (smscast/preflight.py): reachable, readable, a known format,
and the columns the campaign needs, without reading the rows.

* files, local or S3: the file (or each file of a folder or prefix, up to MAX_FILES) exists, is not empty,
  has a known extension and is text of the right kind (the loader's own sniffing, in the campaign's
  --encoding); its columns come from the header as Polars reads it (CSV, with the loader's dialect detection),
  the keys of the records in the first 64 KiB (NDJSON) or the schema in the footer (Parquet); a single file
  with no data row is refused as the loader refuses it (unless --allow-empty);
* S3: the bucket answers first, with a client that tries once (smscast/preflight_env.py);
* DuckDB: the database file opens read-only and the query is bound, not run (DuckDB names a relation's
  columns without executing it);
* PostgreSQL: a read-only connection (3 s to connect) runs `SELECT * FROM (query) LIMIT 0` with a 5 s
  statement timeout, which describes the columns without fetching a row; a query that takes longer even to
  describe is reported as connected, its columns unchecked.

The columns are checked by the loader itself (tasks/load.py `_canonicalise` on an empty frame with the
source's columns): the same mapping, spelling, phone, body and template-variable rules and words. It stops at
its first problem, so it runs twice more to find the others: once needing only a phone, once with a phone
supplied. Messages quote column names as the loader does (phone-like digit runs masked), never a row.
"""

from __future__ import annotations

import codecs
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import polars as pl

from smscast import storage
from smscast.campaign import CampaignSpec
from smscast.errors import SourceError
from smscast.preflight import Findings
from smscast.sources import FORMATS, PHONE, ROW_INDEX, SNIFF_BYTES, SUPPORTED
from smscast.sources.files import _clean_header, _csv_dialect, _size, _sniff_text, dataset_files
from smscast.sources.messages import first_line
from smscast.tasks.load import _classify, source_label

__all__ = ["MAX_FILES", "check_source", "column_problems"]

MAX_FILES = 20  # files of a folder or prefix whose headers are read; a long list is the loader's to walk
PG_CONNECT_TIMEOUT = 3  # seconds (libpq's minimum is 2)
PG_DESCRIBE_TIMEOUT_MS = 5000
UTF8 = ("utf-8", "utf-8-sig")  # codec names Polars reads as they are


def check_source(spec: CampaignSpec, found: Findings) -> None:
    source = spec.source.strip()
    label = source_label(source)
    try:
        kind, target = _classify(source)
    except SourceError as exc:
        found.add_error("source", exc, "give a path, s3://bucket/key, postgresql://… or duckdb://…")
        return
    if kind in ("postgres", "duckdb"):
        if not (spec.query and spec.query.strip()):
            found.add(
                "source", f"the SQL source {label} needs a query", "pass --query 'SELECT phone, body FROM …'"
            )
            return
        if kind == "postgres":
            columns = _postgres_columns(target, spec.query, label, found)
        else:
            columns = _duckdb_columns(target, spec.query, label, found)
        if columns is not None:
            frame = pl.DataFrame(schema={name: pl.String for name in _as_polars_names(columns)})
            column_problems(frame, spec, label, found)
        return
    if spec.query:
        found.add("source", f"--query applies only to SQL sources, not to {label}", "drop --query")
    _check_files(target, label, spec, found)


# -- files ------------------------------------------------------------------------------------------------


def _check_files(target: str, label: str, spec: CampaignSpec, found: Findings) -> None:
    if storage.is_s3(target):
        from smscast.preflight_env import bucket_problem, quick_s3

        try:
            bucket, _ = storage.split_s3(target)
        except ValueError:
            found.add("source", f"no bucket in {label}", "use s3://bucket/path/file.csv")
            return
        wrong = bucket_problem(quick_s3(), bucket, f"source {label}")
        if wrong is not None:
            found.problems.append(wrong)
            return
    try:
        files = dataset_files(target, label)
    except SourceError as exc:
        found.add_error("source", exc, "check the folder or prefix")
        return
    single = files is None
    names = [target] if files is None else files
    before = len(found.problems)
    formats: set[str] = set()
    encoding = getattr(spec, "encoding", "utf-8")  # `--encoding`: CSV and NDJSON only
    for uri in names[:MAX_FILES]:
        file_label = label if single else source_label(uri)
        try:
            frame, rows, fmt = read_header(uri, file_label, encoding)
        except SourceError as exc:
            found.add_error("source", exc, f"give a source smscast can read ({SUPPORTED})")
            continue
        formats.add(fmt)
        column_problems(frame, spec, file_label, found)
        # In a folder an empty file is fine (the loader refuses only an empty whole); one file must hold rows.
        if single and rows == 0 and not getattr(spec, "allow_empty", False):
            found.add(
                "source",
                f"{label} holds no recipients (0 data rows)",
                "check the export, or pass --allow-empty if an empty campaign is expected",
            )
    if len(found.problems) == before:
        many = f", the first {MAX_FILES} checked" if len(names) > MAX_FILES else ""
        what = "" if single else f" ({len(names)} files{many})"
        found.checked.append(f"source {label}{what}: {', '.join(sorted(formats))}, with the columns it needs")


def read_header(uri: str, label: str, encoding: str = "utf-8") -> tuple[pl.DataFrame, int | None, str]:
    """An empty frame with a recipients file's columns (as the loader would name them), whether it has data
    rows (1, 0, or None when the head cannot tell), and its format; SourceError when the loader could not
    read it either."""
    if not storage.is_s3(uri) and not Path(uri).exists():
        raise SourceError(f"recipients file not found: {label}; check the path")
    ext = Path(uri.rsplit("/", 1)[-1].lower()).suffix
    fmt = FORMATS.get(ext)
    if fmt is None:
        what = f"'{ext}'" if ext else "without an extension"
        raise SourceError(
            f"{label}: unsupported file type {what}; save it as CSV, Parquet or NDJSON ({SUPPORTED})"
        )
    if _size(uri, label) == 0:
        raise SourceError(f"{label} is empty (0 bytes), no rows to send; check the export that wrote it")
    if fmt == "parquet":
        return (*_parquet_header(uri, label), "Parquet")
    kind = "CSV" if fmt == "csv" else "NDJSON"
    if codecs.lookup(encoding).name in UTF8:
        head = _sniff_text(uri, label, kind)
    else:
        head = _decoded_head(uri, label, encoding)
    whole = len(head) < SNIFF_BYTES
    if fmt == "ndjson":
        keys = _ndjson_keys(head, whole, label)
        return pl.DataFrame(schema={k: pl.String for k in keys}), (1 if keys else 0) if whole else None, kind
    return (*_csv_header(head, whole, label), kind)


def _decoded_head(uri: str, label: str, encoding: str) -> bytes:
    """The file's head in `encoding`, as UTF-8 (a character cut by the window is left out)."""
    try:
        raw = storage.get_range(uri, SNIFF_BYTES)
    except Exception as exc:
        raise SourceError(f"cannot read {label} ({type(exc).__name__})") from None
    decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
    try:
        text = decoder.decode(raw, final=len(raw) < SNIFF_BYTES)
    except UnicodeDecodeError:
        raise SourceError(
            f"{label} is not {encoding} text; check --encoding (utf-8, latin-1, cp1252, utf-16, …)"
        ) from None
    return text.encode("utf-8")


def _csv_header(head: bytes, whole: bool, label: str) -> tuple[pl.DataFrame, int | None]:
    """The header as the loader's Polars scan names it, read from the head (cut after its last full line)."""
    if not whole and b"\n" not in head and b"\r" not in head:
        raise SourceError(
            f"{label}: its first line is longer than {SNIFF_BYTES // 1024} KiB, which no header row is; "
            "add a header row such as phone,body"
        )
    separator, eol = _csv_dialect(head)
    if not whole:
        head = head[: head.rfind(eol.encode()) + 1]
    try:
        with tempfile.TemporaryDirectory(prefix="smscast-preflight-") as tmp:
            copy = Path(tmp) / "head.csv"
            copy.write_bytes(head)
            lf = pl.scan_csv(copy, separator=separator, eol_char=eol, infer_schema=False)
            names = lf.collect_schema().names()
            rows = lf.filter(pl.any_horizontal(pl.all().is_not_null())).head(1).collect().height
    except (pl.exceptions.PolarsError, OSError, ValueError) as exc:
        raise SourceError(
            f"{label}: not a readable CSV header ({first_line(str(exc))}); check the file"
        ) from None
    return pl.DataFrame(schema={n: pl.String for n in _clean_header(names)}), rows if whole or rows else None


def _ndjson_keys(head: bytes, whole: bool, label: str) -> list[str]:
    """The keys of the records in the head (the loader takes the union of every record's keys)."""
    lines = head.split(b"\n")
    if not whole:
        lines = lines[:-1]  # cut by the sniff window
    keys: dict[str, None] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            raise SourceError(f"{label}: line {number} is not a JSON object; save one JSON object per line")
        keys.update(dict.fromkeys(record))
    return list(keys)


def _parquet_header(uri: str, label: str) -> tuple[pl.DataFrame, int]:
    try:
        scan = pl.scan_parquet(
            uri, storage_options=storage.storage_options(uri), hive_partitioning=False, glob=False
        )
        schema = scan.collect_schema()
        rows = int(scan.select(pl.len()).collect().item())  # from the footer's metadata
    except (pl.exceptions.PolarsError, OSError, ValueError, RuntimeError) as exc:
        raise SourceError(
            f"{label} is not a readable Parquet file ({first_line(storage.redact(str(exc)))}); check the "
            "file and its extension"
        ) from None
    return pl.DataFrame(schema=schema), rows


def _as_polars_names(names: list[str]) -> list[str]:
    """Names as Polars gives duplicates when it reads a table (`a`, `a_duplicated_0`), which the loader's
    duplicate check recognises."""
    seen: dict[str, int] = {}
    out: list[str] = []
    for name in names:
        count = seen.get(name, 0)
        seen[name] = count + 1
        out.append(name if count == 0 else f"{name}_duplicated_{count - 1}")
    return out


# -- SQL ----------------------------------------------------------------------------------------------------


def _duckdb_columns(source: str, query: str, label: str, found: Findings) -> list[str] | None:
    import duckdb

    from smscast.sources.sql import _duckdb_target

    path = _duckdb_target(source)
    if path != ":memory:" and not Path(path).is_file():
        found.add("source", f"DuckDB database file not found: {label}", "use duckdb:///absolute/path/file.db")
        return None
    try:
        con = duckdb.connect(path, read_only=path != ":memory:")
    except duckdb.Error as exc:
        found.add(
            "source", f"cannot open the DuckDB database {label} ({first_line(str(exc))})", "check the file"
        )
        return None
    try:
        relation = con.sql(query)  # bound, not run: a relation knows its columns before it is executed
        if relation is None:
            found.add("source", f"the query on {label} returns no rows", "use a SELECT")
            return None
        columns = list(relation.columns)
    except duckdb.Error as exc:
        found.add("source", f"the query failed on {label}: {first_line(str(exc))}", "check --query")
        return None
    finally:
        con.close()
    found.checked.append(f"source {label}: the query binds (not run) and its columns suit the campaign")
    return columns


def _postgres_columns(dsn: str, query: str, label: str, found: Findings) -> list[str] | None:
    import psycopg
    from psycopg import sql

    from smscast.sources.credentials import POSTGRES_SECRET_BLOCK, split_password
    from smscast.sources.sql import _pg_message

    text = re.sub(r"(?:;\s*(?:--[^\n]*)?\s*)+$", "", query.strip())  # as the loader's COPY takes it
    statement = sql.SQL("SELECT * FROM ({}\n) AS smscast_preflight LIMIT 0").format(sql.SQL(text))
    password = None
    if split_password(dsn)[1] is None and not os.environ.get("PGPASSWORD"):
        from smscast.preflight_env import secret_block_value

        password = secret_block_value(POSTGRES_SECRET_BLOCK)
    extra: dict[str, Any] = {"password": password} if password else {}
    try:
        with psycopg.connect(dsn, connect_timeout=PG_CONNECT_TIMEOUT, **extra) as conn:
            conn.read_only = True
            with conn.cursor() as cur:
                cur.execute(f"SET LOCAL statement_timeout = {PG_DESCRIBE_TIMEOUT_MS}")
                try:
                    cur.execute(statement)
                except psycopg.errors.QueryCanceled:
                    found.checked.append(
                        f"source {label}: connected; the query's columns were not checked (it did not "
                        f"describe within {PG_DESCRIBE_TIMEOUT_MS // 1000} s)"
                    )
                    return None
                columns = [d.name for d in cur.description or ()]
    except psycopg.OperationalError as exc:
        found.add(
            "source",
            f"cannot connect to PostgreSQL at {label}: {_pg_message(exc)}",
            "check the host, port, user and password (PGPASSWORD or ~/.pgpass)",
        )
        return None
    except psycopg.Error as exc:
        found.add("source", f"the query failed on {label}: {_pg_message(exc)}", "check --query")
        return None
    found.checked.append(f"source {label}: connected read-only; the query's columns described (LIMIT 0)")
    return columns


# -- columns ------------------------------------------------------------------------------------------------


def column_problems(frame: pl.DataFrame, spec: CampaignSpec, label: str, found: Findings) -> None:
    """The loader's column rules on an empty frame with the source's columns, every problem reported."""
    from smscast.tasks.load import _canonicalise

    if ROW_INDEX in frame.columns:
        found.add("source", f"{label} has a column named '{ROW_INDEX}', which smscast reserves", "rename it")
        return
    frame = frame.with_row_index(ROW_INDEX)

    def refusal(variant: CampaignSpec, columns: pl.DataFrame) -> str | None:
        try:
            _canonicalise(columns, variant, label)
        except SourceError as exc:
            return str(exc)
        return None

    whole = refusal(spec, frame)
    if whole is None:
        return
    # The loader stops at its first problem. Needing only a phone (a body of its own, no variables), it
    # finds the phone's; with a phone supplied (and the phone's mapping dropped), the content's.
    phone_only = refusal(spec.model_copy(update={"body": "x", "template": None, "template_vars": ()}), frame)
    with_phone = frame if PHONE in frame.columns else frame.with_columns(pl.lit(None, pl.String).alias(PHONE))
    mapping = {ours: theirs for ours, theirs in spec.columns.items() if ours.strip() != PHONE}
    content = refusal(spec.model_copy(update={"columns": mapping}), with_phone)
    for message in dict.fromkeys(m for m in (phone_only, content, whole) if m is not None):
        found.add_error("source", SourceError(message), "correct the source's header or the --column mapping")
