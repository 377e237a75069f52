"""Error messages about a recipients source that never quote its content: column names with phone-like digit
runs masked (a header-less file's "header" is its first recipient), long names cut, one line of a library's
error text at most; where a CSV file goes wrong, by line."""

from __future__ import annotations

import csv
import json
import re
import shlex
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from smscast.errors import SourceError
from smscast.phone import mask
from smscast.sources import NAME_CHARS, NAME_SCAN


def check_duplicates(columns: Iterable[str], label: str) -> None:
    names = list(columns)
    present = set(names)
    for name in names:
        match = re.fullmatch(r"(.+)_duplicated_\d+", name) if len(name) <= NAME_SCAN else None
        if match and match.group(1) in present:
            raise SourceError(
                f"{label} has the column {quote_name(match.group(1))} more than once; make header names unique"
            )


_PHONE_LIKE = re.compile(r"\s*(?:\+|00)?[0-9][0-9\s\-.()/]{5,}[0-9]\s*")
_DIGIT_RUN = re.compile(r"\+?[0-9][0-9\s\-.()/]{5,}[0-9]")  # 7+ digits and separators: maybe a phone


def looks_like_data(name: str) -> bool:
    """A header name that is really a value: a phone number (a header-less file), or a huge field."""
    return len(name) > NAME_SCAN or _PHONE_LIKE.fullmatch(name) is not None


def quote_name(name: str) -> str:
    """A source's column name as messages quote it: digit runs that could be phone numbers masked (a
    header-less file's "header" is its first recipient), long names cut, control characters escaped."""
    name = name[:NAME_SCAN]
    name = _DIGIT_RUN.sub(lambda m: mask(m.group(0)), name)
    if len(name) > NAME_CHARS:
        name = name[: NAME_CHARS - 1] + "…"
    return repr(name)


def quote_names(columns: Iterable[str], limit: int = 25) -> str:
    names = list(columns)
    if not names:
        return "none"
    shown = ", ".join(quote_name(n) for n in names[:limit])
    return shown + (f", … ({len(names)} in all)" if len(names) > limit else "")


def first_line(text: str) -> str:
    for line in text.strip().splitlines():
        if line.strip():
            return line.strip()[:300]
    return "no details"


def name_key(name: str) -> str:
    """A column name as people's spellings of the same name agree on: case, surrounding spaces, and runs of
    spaces, underscores and hyphens between words ("Phone", " PHONE ", "Recipient ID", "recipient-id")."""
    return re.sub(r"[\s_\-]+", "_", name.strip().casefold()).strip("_")


def shell_quoted_mapping(ours: str, theirs: str) -> str:
    """The `--column` option mapping `theirs` to `ours`, quoted for a POSIX shell."""
    return f"--column {shlex.quote(f'{ours}={theirs}')}"


# -- where a CSV file goes wrong ----------------------------------------------------------------------------


@dataclass(frozen=True)
class CsvProblem:
    """The first problem in a CSV file, found by Python's csv module after Polars refused the file (Polars'
    messages give no line, or a misleading byte offset). `line` is 1-based, as an editor shows it: the line
    where the faulty record starts (the header is line 1)."""

    line: int
    kind: str  # "unclosed_quote" | "more_fields" | "not_utf8" | "malformed"
    fields: int = 0
    header: int = 0
    detail: str = ""


class _BadBytes(Exception):
    def __init__(self, line: int) -> None:
        self.line = line


def _text_lines(chunks: Iterable[bytes], eol: bytes) -> Iterator[str]:
    """The file's lines, each with its end, decoded as UTF-8 (`_BadBytes` names the first line that is not)."""
    pending = b""
    number = 0
    for chunk in chunks:
        pending += chunk
        *lines, pending = pending.split(eol)
        for raw in lines:
            number += 1
            yield _decode(raw + eol, number)
    if pending:
        yield _decode(pending, number + 1)


def _decode(raw: bytes, number: int) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _BadBytes(number) from None
    return text.lstrip("\ufeff") if number == 1 else text


def locate_csv_problem(chunks: Iterable[bytes], separator: str, eol: str) -> CsvProblem | None:
    """Scan a CSV file that Polars refused for its first problem: a field whose opening quote never closes, a
    record with more fields than the header, bytes that are not UTF-8, or another malformation. Runs only on
    the error path, at Python's speed (about 50 MB/s)."""
    reader = csv.reader(_text_lines(chunks, eol.encode()), delimiter=separator, strict=True)
    header: int | None = None
    other: CsvProblem | None = None
    limit = csv.field_size_limit(sys.maxsize)  # a 50 MB field is a field, not an error here
    try:
        while True:
            start = reader.line_num + 1
            try:
                row = next(reader)
            except StopIteration:
                return other
            except _BadBytes as bad:
                return CsvProblem(bad.line, "not_utf8")
            except csv.Error as exc:
                if "unexpected end of data" in str(exc):  # still inside a quoted field at the end
                    return CsvProblem(start, "unclosed_quote")
                # The reader starts afresh on the next line: keep looking for a problem Polars would also
                # see, and report this one only if there is none.
                other = other or CsvProblem(start, "malformed", detail=first_line(str(exc)).split(" - ")[0])
                continue
            if not row:  # a blank line
                continue
            if header is None:
                header = len(row)
            elif len(row) > header:
                return CsvProblem(start, "more_fields", len(row), header)
    finally:
        csv.field_size_limit(limit)


def locate_ndjson_problem(chunks: Iterable[bytes]) -> int | None:
    """The first line (1-based) of an NDJSON file that Polars refused which is neither blank nor one JSON
    object; None if every line is. Only on the error path."""
    try:
        for number, line in enumerate(_text_lines(chunks, b"\n"), start=1):
            if line.strip() and not isinstance(_json(line), dict):
                return number
    except _BadBytes as bad:
        return bad.line
    return None


def _json(line: str) -> object:
    try:
        return json.loads(line)
    except ValueError:
        return None


_SEPARATOR_NAMES = {",": "commas", ";": "semicolons", "\t": "tabs", "|": "'|'"}
_USE_ENCODING = "or name its encoding with --encoding (e.g. --encoding cp1252)"


def csv_hint(message: str, separator: str = ",", problem: CsvProblem | None = None) -> str:
    """What went wrong, and where, without quoting the file's content (it holds phone numbers). `message` is
    Polars' error; `problem` what `locate_csv_problem` found, if anything."""
    low = message.lower()
    seps = _SEPARATOR_NAMES[separator]
    read_as = "" if separator == "," else f" (read as a file separated by {seps}, as its header is)"
    kind = problem.kind if problem else ""
    on = f" on line {problem.line}" if problem else ""
    quoting = (
        f'quote fields that contain {seps}, quotes or line breaks, and double any quote inside them ("")'
    )
    if kind == "unclosed_quote" or (not kind and ("could not parse" in low or "quote" in low)):
        opened = f": a quoted field starts{on} and is never closed" if kind else ""
        return f"malformed CSV{read_as}, probably an unclosed double quote{opened}; {quoting}"
    if kind == "more_fields" and problem:
        return (
            f"line {problem.line} has more fields than the header ({problem.fields}, the header "
            f"{problem.header}){read_as}; quote fields that contain {seps}"
        )
    if not kind and "more fields" in low:
        return f"a row has more fields than the header{read_as}; quote fields that contain {seps}"
    if kind == "not_utf8" or (not kind and ("utf-8" in low or "utf8" in low)):
        where = f" (invalid bytes{on}: Latin-1, Windows-1252 or mixed encodings?)"
        return f"not UTF-8 text{where if kind else ''}; re-save it as UTF-8, {_USE_ENCODING}"
    if kind == "malformed" and problem:
        return f"malformed CSV{on}{read_as} ({problem.detail}); {quoting}"
    return f"not a readable CSV file ({first_line(message)})"
