"""Error messages about a recipients source that never quote its content: column names with phone-like digit
runs masked (a header-less file's "header" is its first recipient), long names cut, one line of a library's
error text at most."""

from __future__ import annotations

import re
from collections.abc import Iterable

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
