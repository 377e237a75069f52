"""Reading recipients files, local or on S3: CSV (dialect and encoding checks first), Parquet, NDJSON, and
Parquet datasets. Each reader returns the file's columns plus `row_index`; problems raise SourceError.

Text in another encoding than UTF-8 (`--encoding latin-1`, `cp1252`, `utf-16`, …) is decoded by Python's codec
into a temporary UTF-8 copy, in 1 MiB chunks, which Polars then reads like any file: Polars itself reads UTF-8
only, and the codec works on whole chunks in C, not per row."""

from __future__ import annotations

import codecs
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import polars as pl

from smscast import storage
from smscast.errors import SourceError
from smscast.sources import FORMATS, ROW_INDEX, SNIFF_BYTES, SUPPORTED
from smscast.sources.messages import csv_hint, first_line, locate_csv_problem, locate_ndjson_problem

CHUNK = 1 << 20
UTF8 = ("utf-8", "utf-8-sig")  # read by Polars as they are (a UTF-8 BOM is stripped from the header)

# -- files (local and S3) -----------------------------------------------------------------------------------


def dataset_files(uri: str, label: str) -> list[str] | None:
    """The recipients files of a directory or an S3 prefix ending in `/`, in name order; None when `uri` is
    a single file. Every supported file is read, whatever its format. Marker files whose names start with `_`
    or `.` (`_SUCCESS`, the watcher's cursor) hold no recipients and are passed over; any other file that
    smscast cannot read is refused by name, so that a folder never loses rows silently."""
    if storage.is_s3(uri):
        try:
            _, key = storage.split_s3(uri)
        except ValueError:
            raise SourceError(
                f"{label}: an S3 source needs a bucket and a key, s3://bucket/path/file.csv"
            ) from None
        if not (key == "" or key.endswith("/")):
            return None
    elif not Path(uri).is_dir():
        return None
    try:
        found = storage.list_files(uri)
    except Exception as exc:
        raise _s3_error(exc, label) from None
    readable = [f for f in found if Path(f.rsplit("/", 1)[-1].lower()).suffix in FORMATS]
    unreadable = [f for f in found if f not in readable and not f.rsplit("/", 1)[-1].startswith(("_", "."))]
    if unreadable:
        names = ", ".join(f"'{f.rsplit('/', 1)[-1]}'" for f in unreadable[:5])
        more = f" and {len(unreadable) - 5} more" if len(unreadable) > 5 else ""
        raise SourceError(
            f"{label} holds file(s) smscast cannot read: {names}{more}; supported: {SUPPORTED}. Move them "
            "out of the folder (or give one file), so that no recipients are left out silently"
        )
    if not readable:
        raise SourceError(f"no recipients files under {label}; supported: {SUPPORTED}")
    return readable


def read_file(uri: str, label: str, encoding: str = "utf-8") -> pl.DataFrame:
    """One recipients file (not a directory: see `dataset_files`). `encoding` applies to CSV and NDJSON."""
    if not storage.is_s3(uri) and not Path(uri).exists():
        raise SourceError(f"recipients file not found: {label}; check the path")
    name = uri.rsplit("/", 1)[-1].lower()
    ext = Path(name).suffix
    fmt = FORMATS.get(ext)
    if fmt is None:
        what = f"'{ext}'" if ext else "without an extension"
        raise SourceError(f"{label}: unsupported file type {what}; supported: {SUPPORTED}")

    nbytes = _size(uri, label)
    if nbytes == 0:
        raise SourceError(f"{label} is empty (0 bytes): no rows to send; check the export that wrote it")
    if fmt == "parquet":
        return _read_parquet(uri, label)
    read = _read_csv if fmt == "csv" else _read_ndjson
    if codecs.lookup(encoding).name in UTF8:
        return read(uri, label)
    with tempfile.TemporaryDirectory(prefix="smscast-") as tmp:
        copy = Path(tmp) / f"source{ext}"
        _transcode(uri, label, encoding, copy)
        return read(str(copy), label)  # collected before the copy is removed


def _chunks(uri: str, label: str) -> Iterator[bytes]:
    """The file's bytes in chunks, without holding it all in memory."""
    try:
        if storage.is_s3(uri):
            bucket, key = storage.split_s3(uri)
            body = storage.s3_client().get_object(Bucket=bucket, Key=key)["Body"]
            yield from body.iter_chunks(CHUNK)
            return
        with Path(uri).open("rb") as fh:
            while chunk := fh.read(CHUNK):
                yield chunk
    except Exception as exc:  # permissions, a vanished file, S3 errors: a SourceError naming the source
        raise _s3_error(exc, label) from None


def _transcode(uri: str, label: str, encoding: str, target: Path) -> None:
    decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
    lines = 0
    try:
        with target.open("w", encoding="utf-8", newline="") as out:
            for chunk in _chunks(uri, label):
                text = decoder.decode(chunk)
                lines += text.count("\n")
                out.write(text)
            out.write(decoder.decode(b"", final=True))
    except UnicodeDecodeError as exc:
        before = exc.object[: exc.start].decode(encoding, errors="replace").count("\n")
        raise SourceError(
            f"{label} is not {encoding} text (invalid bytes on line {lines + before + 1}); check --encoding "
            "(utf-8, latin-1, cp1252, utf-16, …)"
        ) from None


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
    return SourceError(f"cannot read {label}: {first_line(storage.redact(str(exc)))}")


def _sniff_text(uri: str, label: str, kind: str) -> bytes:
    """Refuse binary content and non-UTF-8 text before Polars decodes it lossily or fails obscurely; return
    the head of the file (up to SNIFF_BYTES) for the CSV dialect checks."""
    try:
        head = storage.get_range(uri, SNIFF_BYTES)
    except Exception as exc:
        raise _s3_error(exc, label) from None
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise SourceError(f"{label} is UTF-16 text; save it as UTF-8 {kind}, or pass --encoding utf-16")
    nul = head.find(b"\x00")
    if nul >= 0:
        raise SourceError(_nul_message(head, nul, label, kind))
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # a multi-byte character cut by the sniff window is fine
        if not (
            len(head) == SNIFF_BYTES and exc.start >= len(head) - 3 and exc.reason == "unexpected end of data"
        ):
            line = head.count(b"\n", 0, exc.start) + 1
            raise SourceError(
                f"{label} is not UTF-8 text (invalid byte at line {line}, byte offset {exc.start}: Latin-1, "
                f"Windows-1252 or mixed encodings?); re-save it as UTF-8 {kind}, or name its encoding with "
                "--encoding (e.g. --encoding cp1252)"
            ) from None
    if len(head) < SNIFF_BYTES and not head.lstrip(b"\xef\xbb\xbf").strip():
        raise SourceError(f"{label} holds only blank lines: no rows to send; check the export that wrote it")
    return head


def _nul_message(head: bytes, nul: int, label: str, kind: str) -> str:
    """Why a file holds NUL bytes, as far as its head tells: UTF-16 without a byte-order mark, binary
    content, or stray NULs in a text export. Names the place, never the content."""
    even, odd = head[0::2].count(0), head[1::2].count(0)
    half = max(1, len(head) // 2)
    if max(even, odd) >= 0.3 * half and min(even, odd) <= 0.02 * half:
        return (
            f"{label} looks like UTF-16 text without a byte-order mark; save it as UTF-8 {kind}, or pass "
            "--encoding utf-16-le (or utf-16-be)"
        )
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
    if len(head) == SNIFF_BYTES and b"\n" not in head and b"\r" not in head:
        # Not a header row (and Polars would take seconds to make a column name of it)
        raise SourceError(
            f"{label}: its first line is longer than {SNIFF_BYTES // 1024} KiB, which no header row is; "
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
        # Polars' messages name no line (or a byte offset that misleads): on this error path only, Python's
        # csv module reads the file again to find the line.
        try:
            problem = locate_csv_problem(_chunks(uri, label), separator, eol)
        except SourceError:  # unreadable now: say what Polars said, without the line
            problem = None
        text = csv_hint(message, separator, problem)
        if mixed_eol:
            text += (
                "; some lines end with CR alone and others with LF: re-save it with one kind of line ending"
            )
        return text

    return _collect(build, label, hint)


def _read_ndjson(uri: str, label: str) -> pl.DataFrame:
    _sniff_text(uri, label, "NDJSON")

    def build() -> pl.LazyFrame:
        return pl.scan_ndjson(uri, storage_options=storage.storage_options(uri), infer_schema_length=None)

    def hint(message: str) -> str:
        try:  # as for CSV: find the line on the error path only
            line = locate_ndjson_problem(_chunks(uri, label))
        except SourceError:
            line = None
        where = f" (line {line} is not)" if line else ""
        return f"expected one JSON object per line{where} ({first_line(message)})"

    return _collect(build, label, hint)


def _read_parquet(uri: str, label: str) -> pl.DataFrame:
    def build() -> pl.LazyFrame:
        return pl.scan_parquet(
            uri, storage_options=storage.storage_options(uri), hive_partitioning=False, glob=False
        )

    return _collect(
        build,
        label,
        lambda m: f"not a readable Parquet file, truncated or corrupt? ({first_line(m)})",
    )


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
