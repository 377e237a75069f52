"""The CSV file Postman's batch send takes: its columns, its cells and its size budget (providers/postman.py
sends it; the facts are in that module's docstring)."""

from __future__ import annotations

import csv
import io
import re

import polars as pl
import polars.selectors as cs

from smscast.campaign import CampaignSpec
from smscast.providers.base import Batch

LANGUAGES: tuple[str, ...] = ("english", "chinese", "malay", "tamil")
RESERVED_COLUMNS = ("recipient", "language")
HEADER_NAME = re.compile(r"[a-z0-9_]+")  # "lowercase letters, numbers, and _ only"

# "Max file size 40 MB": 40,000,000 bytes is the stricter of the two readings (the emulator uses 40 MiB).
MAX_FILE_BYTES = 40_000_000
MAX_ROWS = 1000
HEADER_RESERVE = 64 * 1024  # the header row: `check_spec` keeps it far below this
# A full file can never exceed the limit: MAX_ROWS x MAX_ROW_BYTES + the header = 1000 x 39,934 + 65,536
# = 39,999,536 bytes. `row_too_large` quarantines any row whose encoded size could exceed MAX_ROW_BYTES.
MAX_ROW_BYTES = (MAX_FILE_BYTES - HEADER_RESERVE) // MAX_ROWS
# A row's encoded size, bounded above: per parameter cell its UTF-8 bytes, one more per doubled quote, and
# CELL_OVERHEAD (two enclosing quotes, the separator, the formula-guard apostrophe); recipient (≤ 15 digits)
# and language (≤ 7 letters) with their separators take ≤ FIXED_CELLS_BYTES; then CRLF.
CELL_OVERHEAD = 4
FIXED_CELLS_BYTES = 30

# Spreadsheet formula injection: a cell starting with one of these is a formula to Excel, LibreOffice and
# Sheets (OWASP "CSV Injection"). Postman's staff and users open batch CSVs and message logs in spreadsheets,
# and the document itself talks of preparing the file in Excel, so we prefix such a cell with an apostrophe,
# the convention spreadsheets read as "text" and hide. The apostrophe does reach the SMS text: that is the
# price of never shipping a live formula, and it only touches cells that begin with = + - @ TAB or CR.
# `recipient` (digits) and `language` (a fixed word) can never start with one.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def body_mode(spec: CampaignSpec) -> bool:
    """Whether the campaign's template is the single `{{body}}` variable filled with our rendered text
    (--body or a body column): so when no template parameters are named."""
    return not spec.template_vars


def csv_columns(spec: CampaignSpec) -> list[str]:
    """ "recipient and language as the first two columns, followed by columns for each template parameter"."""
    params = ["body"] if body_mode(spec) else list(dict.fromkeys(spec.template_vars))
    return [*RESERVED_COLUMNS, *params]


def neutralise(cell: str) -> str:
    return "'" + cell if cell.startswith(FORMULA_PREFIXES) else cell


def language_expr(spec: CampaignSpec) -> pl.Expr:
    """The row's language, lower-cased, falling back to `spec.language`; works whether or not the source has a
    `language` column (the selector then selects nothing and the fallback fills every row)."""
    default = (spec.language or "").strip().lower() or None
    fallback = pl.repeat(pl.lit(default, pl.String), pl.len())
    column = cs.by_name("language", require_all=False).cast(pl.String).str.strip_chars().str.to_lowercase()
    return pl.coalesce(column, fallback)


def csv_bytes(batch: Batch) -> bytes:
    spec = batch.spec
    columns = csv_columns(spec)
    params = columns[2:]
    frame = batch.rows.select(
        recipient=pl.col("phone").str.strip_prefix("+"),
        language=language_expr(spec),
        **{p: pl.col(p).cast(pl.String).fill_null("") for p in params},
    )
    buf = io.StringIO()
    # RFC 4180 quoting: a cell with a comma, a quote or a line break is quoted and its quotes doubled; a
    # line break stays a real line break inside the quotes ("Use keyboard line breaks directly within the
    # CSV cell (not \n)").
    writer = csv.writer(buf, lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL)
    writer.writerow(columns)
    for recipient, language, *cells in frame.iter_rows():
        writer.writerow([recipient, language, *(neutralise(c) for c in cells)])
    return buf.getvalue().encode("utf-8")
