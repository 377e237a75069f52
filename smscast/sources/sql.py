"""Reading recipients from SQL: PostgreSQL (COPY … TO STDOUT, read-only) and DuckDB (read-only), each
returning the query's columns plus `row_index`; problems raise SourceError, never echoing a password."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import polars as pl

from smscast.errors import SourceError
from smscast.sources import ROW_INDEX
from smscast.sources.credentials import postgres_password
from smscast.sources.messages import check_duplicates, first_line

# -- SQL ----------------------------------------------------------------------------------------------------


def read_postgres(dsn: str, query: str, label: str) -> pl.DataFrame:
    import psycopg
    from psycopg import sql

    # COPY (...) takes one statement without its ";" (and what may follow it: "; -- comment")
    text = re.sub(r"(?:;\s*(?:--[^\n]*)?\s*)+$", "", query.strip())
    # the newline keeps a trailing "-- comment" from swallowing the closing parenthesis
    statement = sql.SQL("COPY ({}\n) TO STDOUT (FORMAT csv, HEADER)").format(sql.SQL(text))
    buf = io.BytesIO()
    try:
        password = postgres_password(dsn)
        extra: dict[str, Any] = {"password": password} if password else {}
        with psycopg.connect(dsn, connect_timeout=10, **extra) as conn:
            conn.read_only = True  # the recipients query may read, never write
            with conn.cursor() as cur, cur.copy(statement) as copy:
                for chunk in copy:
                    buf.write(chunk)
    except psycopg.OperationalError as exc:
        raise SourceError(
            f"cannot query PostgreSQL at {label}: {_pg_message(exc)}; check the host, port, user and password"
        ) from None
    except psycopg.Error as exc:
        raise SourceError(f"the query failed on {label}: {_pg_message(exc)}; check --query") from None
    data = buf.getvalue()
    if not data:
        raise SourceError(f"the query on {label} returned no columns; select at least a phone column")
    try:
        df = pl.read_csv(data, infer_schema=False)
    except pl.exceptions.PolarsError as exc:  # pragma: no cover - PostgreSQL writes well-formed CSV
        raise SourceError(
            f"cannot parse the result of the query on {label}: {first_line(str(exc))}"
        ) from None
    check_duplicates(df.columns, label)
    return df.with_row_index(ROW_INDEX)


def _pg_message(exc: Exception) -> str:
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    text = primary or str(exc)
    # psycopg's errors name host and port, never the password; redact anyway in case a DSN is echoed
    text = re.sub(r"://([^:/@\s]+):[^@\s]*@", r"://\1:***@", text)
    return first_line(text)


def _duckdb_target(source: str) -> str:
    rest = source[len("duckdb://") :]
    if rest in ("", "/:memory:", ":memory:"):
        return ":memory:"
    return rest  # duckdb:///abs/path.db -> /abs/path.db, duckdb://rel.db -> rel.db


def read_duckdb(source: str, query: str, label: str) -> pl.DataFrame:
    import duckdb

    path = _duckdb_target(source)
    if path != ":memory:" and not Path(path).is_file():
        raise SourceError(f"DuckDB database file not found: {label}; use duckdb:///absolute/path/file.db")
    try:
        con = duckdb.connect(path, read_only=path != ":memory:")
    except duckdb.Error as exc:
        raise SourceError(f"cannot open the DuckDB database {label}: {first_line(str(exc))}") from None
    try:
        relation = con.sql(query)
        if relation is None:
            raise SourceError(f"the query on {label} returned no result set; use a SELECT")
        result: object = relation.pl()
    except duckdb.Error as exc:
        raise SourceError(f"the query failed on {label}: {first_line(str(exc))}; check --query") from None
    finally:
        con.close()
    if isinstance(result, pl.LazyFrame):  # pragma: no cover - depends on the duckdb version
        result = result.collect()
    if not isinstance(result, pl.DataFrame):  # pragma: no cover
        raise SourceError(f"the query on {label} did not return a table")
    df = result
    check_duplicates(df.columns, label)
    if ROW_INDEX in df.columns:
        raise SourceError(
            f"the query on {label} returns a column '{ROW_INDEX}', which smscast reserves; alias it"
        )
    return df.with_row_index(ROW_INDEX)
