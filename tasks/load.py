"""Load a campaign's recipients into a Polars DataFrame with canonical columns.

Sources (`spec.source`):

* a local path or file:// URI, or s3://bucket/key: `.csv`, `.parquet`, `.ndjson` / `.jsonl`; a directory or an
  s3:// prefix ending in `/` is read as a Parquet dataset (every `*.parquet` under it, in name order);
* postgresql://user:pass@host:port/db (also postgres://, postgresql+psycopg://) with `spec.query`;
* duckdb:///path/file.db (duckdb://relative.db, duckdb:// or duckdb:///:memory: for an in-memory database)
  with `spec.query`.

Output columns:

* `row_index` Int64: the 0-based position of the record in the input (file order / query result order). For
  CSV, blank lines (every field empty) are not records and are not counted.
* `phone_raw` String: the source's phone exactly as text. CSV is read with every column as String, so
  "+44 7700 900123", "07700900123" and "00447700900123" survive; numeric phones from Parquet, NDJSON or SQL
  become their digits ("447700900123", never "447700900123.0").
* `body`, `recipient_id`, `language`, `media_url`, `send_at` and the template's variables as String where
  present; every other column as it is.

CSV dialects: a header row with no comma but `;`, tabs or `|` sets the separator (spreadsheets in many
locales save "CSV" with `;`); a file whose lines end with CR alone (old Mac exports) is read so. Refused with
a SourceError that names the place, never the content: UTF-16 and non-UTF-8 text, binary content, and a NUL
character anywhere in a column smscast reads (a corrupt export; it would reach a provider's request). A NaN
in a float column (pandas' missing value) is null, never the text "NaN".

`spec.columns` maps our names to the source's (`{"phone": "msisdn"}`). Problems with the source raise
`SourceError` with a message that names the source (never its credentials) and says what to do, quoting
column names with phone-like digit runs masked (a header-less file's "header" is its first recipient); a SQL
source without a query raises `ConfigError`.

PostgreSQL results are fetched with `COPY (query) TO STDOUT (FORMAT csv, HEADER)` in a read-only transaction
and parsed by Polars with every column as String: it is about 6x faster than `pl.read_database` over a
psycopg cursor (0.3 s vs 1.9 s for 200k rows here) and renders numbers the way PostgreSQL prints them.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import polars as pl

from smscast import storage
from smscast.campaign import CampaignSpec
from smscast.errors import ConfigError, SourceError
from smscast.phone import mask

__all__ = ["CANONICAL_TEXT_COLUMNS", "load_recipients", "source_label"]

ROW_INDEX = "row_index"
PHONE = "phone"
PHONE_RAW = "phone_raw"
CANONICAL_TEXT_COLUMNS = ("body", "recipient_id", "language", "media_url", "send_at")
_DIGIT_COLUMNS = (PHONE_RAW, "recipient_id")  # numeric values become their digits, without ".0"

_FORMATS = {".csv": "csv", ".parquet": "parquet", ".ndjson": "ndjson", ".jsonl": "ndjson"}
_SUPPORTED = ".csv, .parquet, .ndjson, .jsonl (or a directory / s3:// prefix of .parquet files)"
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
_PHONE_ALIASES = ("msisdn", "mobile", "mobile_number", "phone_number", "phonenumber", "number", "tel", "cell")
_SNIFF_BYTES = 64 * 1024
_NAME_CHARS = 40  # a column name quoted in a message is cut to this
_NAME_SCAN = 1024  # names longer than this are data, not names: never regex-scanned in full


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
        if kind == "postgres":
            df = _read_postgres(target, spec.query, label)
        else:
            df = _read_duckdb(target, spec.query, label)
    else:
        if spec.query:
            raise ConfigError(
                f"--query applies only to SQL sources (postgresql://, duckdb://), not to {label}; drop it"
            )
        df = _read_file(target, label)
    return _canonicalise(df, spec, label)


def source_label(source: str) -> str:
    """The source as it may appear in messages and logs: a database URI loses its password and parameters."""
    match = _SCHEME.match(source)
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
    match = _SCHEME.match(source)
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


# -- files (local and S3) -----------------------------------------------------------------------------------


def _read_file(uri: str, label: str) -> pl.DataFrame:
    s3 = storage.is_s3(uri)
    if s3:
        try:
            _, key = storage.split_s3(uri)
        except ValueError:
            raise SourceError(
                f"{label}: an S3 source needs a bucket and a key, s3://bucket/path/file.csv"
            ) from None
        is_dataset = key == "" or key.endswith("/")
    else:
        if not Path(uri).exists():
            raise SourceError(f"recipients file not found: {label}; check the path")
        is_dataset = Path(uri).is_dir()
    if is_dataset:
        return _read_parquet_dataset(uri, label)

    name = uri.rsplit("/", 1)[-1].lower()
    ext = Path(name).suffix
    fmt = _FORMATS.get(ext)
    if fmt is None:
        what = f"'{ext}'" if ext else "without an extension"
        raise SourceError(f"{label}: unsupported file type {what}; supported: {_SUPPORTED}")

    nbytes = _size(uri, label)
    if nbytes == 0:
        raise SourceError(f"{label} is empty (0 bytes): no rows to send; check the export that wrote it")
    if fmt == "csv":
        return _read_csv(uri, label)
    if fmt == "ndjson":
        return _read_ndjson(uri, label)
    return _read_parquet(uri, label)


def _size(uri: str, label: str) -> int:
    try:
        return storage.size(uri)
    except FileNotFoundError:
        if storage.is_s3(uri):
            raise SourceError(
                f"recipients object not found: {label}; check the bucket and key (and AWS_ENDPOINT_URL)"
            ) from None
        raise SourceError(f"recipients file not found: {label}; check the path") from None
    except Exception as exc:
        raise _s3_error(exc, label) from None


def _s3_error(exc: Exception, label: str) -> SourceError:
    code = ""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = str(response.get("Error", {}).get("Code", ""))
    if code in ("403", "AccessDenied", "SignatureDoesNotMatch", "InvalidAccessKeyId", "Forbidden"):
        return SourceError(
            f"access to {label} was denied ({code}): check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and the "
            "bucket's permissions"
        )
    if "Could not connect" in str(exc) or type(exc).__name__ in (
        "EndpointConnectionError",
        "ConnectTimeoutError",
    ):
        return SourceError(f"cannot reach the S3 endpoint for {label}: check AWS_ENDPOINT_URL")
    return SourceError(f"cannot read {label}: {_first_line(storage.redact(str(exc)))}")


def _sniff_text(uri: str, label: str, kind: str) -> bytes:
    """Refuse binary content and non-UTF-8 text before Polars decodes it lossily or fails obscurely; return
    the head of the file (up to _SNIFF_BYTES) for the CSV dialect checks."""
    try:
        head = storage.get_range(uri, _SNIFF_BYTES)
    except Exception as exc:
        raise _s3_error(exc, label) from None
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise SourceError(f"{label} is UTF-16 text; save it as UTF-8 {kind}")
    nul = head.find(b"\x00")
    if nul >= 0:
        raise SourceError(_nul_message(head, nul, label, kind))
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # a multi-byte character cut by the sniff window is fine
        if not (
            len(head) == _SNIFF_BYTES
            and exc.start >= len(head) - 3
            and exc.reason == "unexpected end of data"
        ):
            line = head.count(b"\n", 0, exc.start) + 1
            raise SourceError(
                f"{label} is not UTF-8 text (invalid byte at line {line}, byte offset {exc.start}: Latin-1, "
                f"Windows-1252 or mixed encodings?); re-save it as UTF-8 {kind}"
            ) from None
    if len(head) < _SNIFF_BYTES and not head.lstrip(b"\xef\xbb\xbf").strip():
        raise SourceError(f"{label} holds only blank lines: no rows to send; check the export that wrote it")
    return head


def _nul_message(head: bytes, nul: int, label: str, kind: str) -> str:
    """Why a file holds NUL bytes, as far as its head tells: UTF-16 without a byte-order mark, binary
    content, or stray NULs in a text export. Names the place, never the content."""
    even, odd = head[0::2].count(0), head[1::2].count(0)
    half = max(1, len(head) // 2)
    if max(even, odd) >= 0.3 * half and min(even, odd) <= 0.02 * half:
        return f"{label} looks like UTF-16 text without a byte-order mark; save it as UTF-8 {kind}"
    controls = sum(head.count(bytes([c])) for c in range(32) if c not in (9, 10, 13))
    if controls > 0.05 * len(head):
        return f"{label} is binary, not {kind} text; check the file and its extension"
    line = head.count(b"\n", 0, nul) + 1
    return (
        f"{label} holds a NUL byte (line {line}, byte offset {nul}), which a text export never contains: "
        f"the file is corrupt or not {kind} text; remove the NUL bytes or re-export it as UTF-8 {kind}"
    )


def _csv_dialect(head: bytes) -> tuple[str, str]:
    """(separator, end of line) of a CSV file, from its head.

    The separator is a comma unless the header row has no comma outside quotes but has semicolons, tabs or
    pipes: spreadsheets in many locales save "CSV" with `;`, and "text" exports use tabs. Read with a comma,
    such a file is one column whose name is the whole header, so the detection only ever turns a certain
    failure into a correct read. Lines end with LF (CRLF included); a file with CRs and no LF at all (old Mac
    exports) ends its lines with CR.
    """
    text = head.lstrip(b"\xef\xbb\xbf")
    eol = "\r" if b"\r" in text and b"\n" not in text else "\n"
    for line in text.split(eol.encode()):
        if line.strip():
            break
    else:
        return ",", eol
    counts = {",": 0, ";": 0, "\t": 0, "|": 0}
    quoted = False
    for ch in line.decode("utf-8", errors="replace"):
        if ch == '"':
            quoted = not quoted
        elif not quoted and ch in counts:
            counts[ch] += 1
    if counts[","] == 0:
        best = max((";", "\t", "|"), key=lambda c: counts[c])
        if counts[best] > 0:
            return best, eol
    return ",", eol


def _clean_header(names: list[str]) -> list[str]:
    """Strip a UTF-8 BOM and surrounding spaces from header names, unless that would make two names equal."""
    cleaned = [n.lstrip("\ufeff").strip() if i == 0 else n.strip() for i, n in enumerate(names)]
    if len(set(cleaned)) != len(cleaned):
        return [n.lstrip("\ufeff") if i == 0 else n for i, n in enumerate(names)]
    return cleaned


def _read_csv(uri: str, label: str) -> pl.DataFrame:
    head = _sniff_text(uri, label, "CSV")
    if len(head) == _SNIFF_BYTES and b"\n" not in head and b"\r" not in head:
        # Not a header row (and Polars would take seconds to make a column name of it)
        raise SourceError(
            f"{label}: its first line is longer than {_SNIFF_BYTES // 1024} KiB, which no header row is; "
            "a CSV file starts with a header such as phone,body"
        )
    separator, eol = _csv_dialect(head)
    # A CR alone beside LF line ends: old Mac and Unix exports glued together (or a CR inside a quoted field).
    mixed_eol = eol == "\n" and re.search(rb"\r(?!\n)", head) is not None

    def build() -> pl.LazyFrame:
        lf = pl.scan_csv(
            uri,
            separator=separator,
            eol_char=eol,
            infer_schema=False,  # every column String: phones keep their "+", spaces and leading zeros
            storage_options=storage.storage_options(uri),
            glob=False,
        )
        # Not scan_csv(with_column_names=...): polars 2.1 then opens an s3:// source as a local file.
        names = lf.collect_schema().names()
        renames = {old: new for old, new in zip(names, _clean_header(names), strict=True) if old != new}
        if renames:
            lf = lf.rename(renames)
        # a blank line is not a record
        return lf.filter(pl.any_horizontal(pl.all().is_not_null()))

    def hint(message: str) -> str:
        text = _csv_hint(message, separator)
        if mixed_eol:
            text += (
                "; some lines end with CR alone and others with LF: re-save it with one kind of line ending"
            )
        return text

    return _collect(build, label, hint)


_SEPARATOR_NAMES = {",": "commas", ";": "semicolons", "\t": "tabs", "|": "'|'"}


def _csv_hint(message: str, separator: str = ",") -> str:
    """What went wrong, without quoting the file's content (it holds phone numbers)."""
    low = message.lower()
    offset = re.search(r"offset in the file is (\d+) bytes", message)
    where = f" near byte {offset.group(1)}" if offset else ""
    seps = _SEPARATOR_NAMES[separator]
    read_as = "" if separator == "," else f" (read as a file separated by {seps}, as its header is)"
    if "could not parse" in low or "quote" in low:
        return (
            f"malformed CSV{where}{read_as}, probably an unclosed double quote; quote fields that contain "
            f'{seps}, quotes or line breaks, and double any quote inside them ("")'
        )
    if "more fields" in low:
        return f"a row has more fields than the header{where}{read_as}; quote fields that contain {seps}"
    if "utf-8" in low or "utf8" in low:
        return "not UTF-8 text; re-save it as UTF-8"
    return f"not a readable CSV file ({_first_line(message)})"


def _read_ndjson(uri: str, label: str) -> pl.DataFrame:
    _sniff_text(uri, label, "NDJSON")

    def build() -> pl.LazyFrame:
        return pl.scan_ndjson(uri, storage_options=storage.storage_options(uri), infer_schema_length=None)

    return _collect(build, label, lambda m: f"expected one JSON object per line ({_first_line(m)})")


def _read_parquet(uri: str, label: str) -> pl.DataFrame:
    def build() -> pl.LazyFrame:
        return pl.scan_parquet(
            uri, storage_options=storage.storage_options(uri), hive_partitioning=False, glob=False
        )

    return _collect(
        build,
        label,
        lambda m: f"not a readable Parquet file, truncated or corrupt? ({_first_line(m)})",
    )


def _read_parquet_dataset(uri: str, label: str) -> pl.DataFrame:
    try:
        files = storage.list_files(uri, ".parquet")
    except Exception as exc:
        raise _s3_error(exc, label) from None
    if not files:
        raise SourceError(f"no .parquet files under {label}; give a file ({_SUPPORTED})")
    options = storage.storage_options(uri)

    def build() -> pl.LazyFrame:
        frames = [
            pl.scan_parquet(f, storage_options=options, hive_partitioning=False, glob=False) for f in files
        ]
        return pl.concat(frames, how="diagonal_relaxed")

    return _collect(build, label, lambda m: f"a part is not a readable Parquet file ({_first_line(m)})")


def _collect(build: Callable[[], pl.LazyFrame], label: str, hint: Callable[[str], str]) -> pl.DataFrame:
    """Build the scan, number its records and collect it, turning reader errors into SourceError."""
    try:
        lf = build()
        if ROW_INDEX in lf.collect_schema().names():
            raise SourceError(f"{label} has a column named '{ROW_INDEX}', which smscast reserves; rename it")
        return lf.with_row_index(ROW_INDEX).collect()
    except SourceError:
        raise
    except pl.exceptions.NoDataError:
        raise SourceError(f"{label} has no data: no rows to send") from None
    except (pl.exceptions.PolarsError, OSError, ValueError, RuntimeError) as exc:
        message = storage.redact(str(exc))
        if "empty reader" in message:
            raise SourceError(f"{label} has no data: no rows to send") from None
        if isinstance(exc, FileNotFoundError):
            raise SourceError(f"recipients file not found: {label}") from None
        if isinstance(exc, PermissionError):
            raise SourceError(f"access to {label} was denied: check permissions / AWS credentials") from None
        raise SourceError(f"{label}: {hint(message)}") from None


# -- SQL ----------------------------------------------------------------------------------------------------


def _read_postgres(dsn: str, query: str, label: str) -> pl.DataFrame:
    import psycopg
    from psycopg import sql

    # COPY (...) takes one statement without its ";" (and what may follow it: "; -- comment")
    text = re.sub(r"(?:;\s*(?:--[^\n]*)?\s*)+$", "", query.strip())
    # the newline keeps a trailing "-- comment" from swallowing the closing parenthesis
    statement = sql.SQL("COPY ({}\n) TO STDOUT (FORMAT csv, HEADER)").format(sql.SQL(text))
    buf = io.BytesIO()
    try:
        with psycopg.connect(dsn, connect_timeout=10) as conn:
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
            f"cannot parse the result of the query on {label}: {_first_line(str(exc))}"
        ) from None
    _check_duplicates(df.columns, label)
    return df.with_row_index(ROW_INDEX)


def _pg_message(exc: Exception) -> str:
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    text = primary or str(exc)
    # psycopg's errors name host and port, never the password; redact anyway in case a DSN is echoed
    text = re.sub(r"://([^:/@\s]+):[^@\s]*@", r"://\1:***@", text)
    return _first_line(text)


def _duckdb_target(source: str) -> str:
    rest = source[len("duckdb://") :]
    if rest in ("", "/:memory:", ":memory:"):
        return ":memory:"
    return rest  # duckdb:///abs/path.db -> /abs/path.db, duckdb://rel.db -> rel.db


def _read_duckdb(source: str, query: str, label: str) -> pl.DataFrame:
    import duckdb

    path = _duckdb_target(source)
    if path != ":memory:" and not Path(path).is_file():
        raise SourceError(f"DuckDB database file not found: {label}; use duckdb:///absolute/path/file.db")
    try:
        con = duckdb.connect(path, read_only=path != ":memory:")
    except duckdb.Error as exc:
        raise SourceError(f"cannot open the DuckDB database {label}: {_first_line(str(exc))}") from None
    try:
        relation = con.sql(query)
        if relation is None:
            raise SourceError(f"the query on {label} returned no result set; use a SELECT")
        result: object = relation.pl()
    except duckdb.Error as exc:
        raise SourceError(f"the query failed on {label}: {_first_line(str(exc))}; check --query") from None
    finally:
        con.close()
    if isinstance(result, pl.LazyFrame):  # pragma: no cover - depends on the duckdb version
        result = result.collect()
    if not isinstance(result, pl.DataFrame):  # pragma: no cover
        raise SourceError(f"the query on {label} did not return a table")
    df = result
    _check_duplicates(df.columns, label)
    if ROW_INDEX in df.columns:
        raise SourceError(
            f"the query on {label} returns a column '{ROW_INDEX}', which smscast reserves; alias it"
        )
    return df.with_row_index(ROW_INDEX)


# -- canonical columns --------------------------------------------------------------------------------------


def _canonicalise(df: pl.DataFrame, spec: CampaignSpec, label: str) -> pl.DataFrame:
    df = df.with_columns(pl.col(ROW_INDEX).cast(pl.Int64))
    _check_duplicates(df.columns, label)
    df = _apply_mapping(df, spec.columns, label)
    _require_columns(df, spec, label)
    if PHONE_RAW in df.columns:
        raise SourceError(f"{label} has both 'phone' and 'phone_raw' columns; drop or rename 'phone_raw'")
    df = df.rename({PHONE: PHONE_RAW})

    text_columns = [PHONE_RAW, *CANONICAL_TEXT_COLUMNS, *spec.required_vars()]
    exprs = [
        _as_text(name, df.schema[name], label) for name in dict.fromkeys(text_columns) if name in df.columns
    ]
    try:
        df = df.with_columns(exprs)
    except pl.exceptions.PolarsError as exc:
        raise SourceError(f"{label}: cannot read a column as text ({_first_line(str(exc))})") from None
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


def _check_duplicates(columns: Iterable[str], label: str) -> None:
    names = list(columns)
    present = set(names)
    for name in names:
        match = re.fullmatch(r"(.+)_duplicated_\d+", name) if len(name) <= _NAME_SCAN else None
        if match and match.group(1) in present:
            raise SourceError(
                f"{label} has the column {_shown(match.group(1))} more than once; make header names unique"
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
    for ours, theirs in pairs.items():
        if theirs not in columns:
            raise SourceError(
                f"the column mapping {ours}={theirs} names a column that {label} does not have; "
                f"its columns are: {_names(columns)}"
            )
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


def _require_columns(df: pl.DataFrame, spec: CampaignSpec, label: str) -> None:
    columns = df.columns
    data_columns = [c for c in columns if c != ROW_INDEX]
    if PHONE not in columns:
        guess = next(
            (c for c in data_columns if c.lower() == PHONE or c.lower().replace(" ", "_") in _PHONE_ALIASES),
            None,
        )
        if any(_looks_like_data(c) for c in data_columns):
            raise SourceError(
                f"{label} has no 'phone' column: its first line ({_names(data_columns)}) looks like data, "
                "not a header; add a header row such as phone,body"
            )
        example = f"--column phone={guess}" if guess else "--column phone=<your column>"
        raise SourceError(
            f"{label} has no 'phone' column (its columns: {_names(data_columns)}); "
            f"rename it, or map yours with {example}"
        )
    if spec.body is None and spec.template is None and "body" not in columns:
        raise SourceError(
            f"{label} has no 'body' column and the campaign has no --body or --template "
            f"(its columns: {_names(data_columns)}); add a body column, map one with "
            "--column body=<your column>, or pass --body TEXT / --template ID"
        )
    missing = [v for v in spec.required_vars() if v not in columns]
    if missing:
        what = ", ".join(f"'{m}'" for m in missing)
        raise SourceError(
            f"{label} lacks the column(s) {what} that the message template uses "
            f"(its columns: {_names(data_columns)}); add them or map yours with "
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


_PHONE_LIKE = re.compile(r"\s*(?:\+|00)?[0-9][0-9\s\-.()/]{5,}[0-9]\s*")
_DIGIT_RUN = re.compile(r"\+?[0-9][0-9\s\-.()/]{5,}[0-9]")  # 7+ digits and separators: maybe a phone


def _looks_like_data(name: str) -> bool:
    """A header name that is really a value: a phone number (a header-less file), or a huge field."""
    return len(name) > _NAME_SCAN or _PHONE_LIKE.fullmatch(name) is not None


def _shown(name: str) -> str:
    """A source's column name as messages quote it: digit runs that could be phone numbers masked (a
    header-less file's "header" is its first recipient), long names cut, control characters escaped."""
    name = name[:_NAME_SCAN]
    name = _DIGIT_RUN.sub(lambda m: mask(m.group(0)), name)
    if len(name) > _NAME_CHARS:
        name = name[: _NAME_CHARS - 1] + "…"
    return repr(name)


def _names(columns: Iterable[str], limit: int = 25) -> str:
    names = list(columns)
    if not names:
        return "none"
    shown = ", ".join(_shown(n) for n in names[:limit])
    return shown + (f", … ({len(names)} in all)" if len(names) > limit else "")


def _first_line(text: str) -> str:
    for line in text.strip().splitlines():
        if line.strip():
            return line.strip()[:300]
    return "no details"
