"""tasks.load.load_recipients on local files: CSV, Parquet and NDJSON, folders of them, and malformed input.

Column mapping and required columns: tests/test_load_columns.py; S3, PostgreSQL and DuckDB sources:
tests/test_load_sources.py."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl
import pytest
from load_support import load, load_error, write

PHONES_TEXT = ["+44 7400 900123", "07400900123", "00447400900123"]


def folder(tmp_path: Path, name: str = "in") -> Path:
    path = tmp_path / name
    path.mkdir()
    return path


# -- local CSV ----------------------------------------------------------------------------------------------


def test_csv_keeps_phones_as_text(tmp_path: Path) -> None:
    src = write(
        tmp_path / "r.csv",
        'phone,body,recipient_id,amount\n"+44 7400 900123",hello,007,12.50\n07400900123,hi,8,3\n'
        "00447400900123,yo,9,\n",
    )
    df = load(src)
    assert df.columns == ["row_index", "phone_raw", "body", "recipient_id", "amount"]
    assert df.schema["row_index"] == pl.Int64
    assert all(df.schema[c] == pl.String for c in df.columns[1:])
    assert df["row_index"].to_list() == [0, 1, 2]
    assert df["phone_raw"].to_list() == PHONES_TEXT
    assert df["recipient_id"].to_list() == ["007", "8", "9"]
    assert df["amount"].to_list() == ["12.50", "3", None]


def test_csv_utf8_bom_is_stripped(tmp_path: Path) -> None:
    src = write(tmp_path / "bom.csv", b"\xef\xbb\xbfphone,body\n+447400900123,hi\n")
    df = load(src)
    assert df.columns == ["row_index", "phone_raw", "body"]
    assert df.row(0) == (0, "+447400900123", "hi")


def test_csv_crlf_line_endings(tmp_path: Path) -> None:
    src = write(tmp_path / "crlf.csv", b"phone,body\r\n07400900123,first\r\n+447400900124,second\r\n")
    df = load(src)
    assert df.rows() == [(0, "07400900123", "first"), (1, "+447400900124", "second")]


def test_csv_quoted_fields_with_newlines_commas_and_quotes(tmp_path: Path) -> None:
    src = write(
        tmp_path / "q.csv",
        'phone,body\n"+447400900123","Hello, ""Bob""\nsee you at 5, ok?"\r\n+447400900124,"plain"\n',
    )
    df = load(src)
    assert df["body"].to_list() == ['Hello, "Bob"\nsee you at 5, ok?', "plain"]
    assert df["row_index"].to_list() == [0, 1]


def test_csv_unicode_and_emoji_bodies(tmp_path: Path) -> None:
    bodies = ["Grüße 😀", "你好，世界", "Привет", "👩‍👩‍👧‍👦 family"]
    lines = "".join(f"+4474009001{i:02d},{b}\n" for i, b in enumerate(bodies))
    df = load(write(tmp_path / "u.csv", "phone,body\n" + lines))
    assert df["body"].to_list() == bodies


def test_csv_one_row(tmp_path: Path) -> None:
    df = load(write(tmp_path / "one.csv", "phone,body\n+447400900123,only\n"))
    assert df.rows() == [(0, "+447400900123", "only")]


def test_csv_header_only_is_refused_unless_an_empty_campaign_is_allowed(tmp_path: Path) -> None:
    src = write(tmp_path / "h.csv", "phone,body,name\n")
    message = load_error(src, body="Hi {{name}}")
    assert "h.csv holds no recipients (0 data rows)" in message and "--allow-empty" in message
    df = load(src, body="Hi {{name}}", allow_empty=True)
    assert df.height == 0
    assert df.schema == pl.Schema(
        {"row_index": pl.Int64, "phone_raw": pl.String, "body": pl.String, "name": pl.String}
    )


def test_csv_blank_lines_are_not_records(tmp_path: Path) -> None:
    src = write(tmp_path / "b.csv", "phone,body\n\n+447400900123,a\n\n+447400900124,b\n\n")
    df = load(src)
    assert df.rows() == [(0, "+447400900123", "a"), (1, "+447400900124", "b")]


def test_csv_empty_fields_are_null(tmp_path: Path) -> None:
    df = load(write(tmp_path / "e.csv", "phone,body\n,hello\n+447400900123,\n"))
    assert df.rows() == [(0, None, "hello"), (1, "+447400900123", None)]


def test_csv_header_names_are_trimmed(tmp_path: Path) -> None:
    df = load(write(tmp_path / "w.csv", " phone , body\n+447400900123,hi\n"))
    assert df.columns == ["row_index", "phone_raw", "body"]


def test_file_uri(tmp_path: Path) -> None:
    src = write(tmp_path / "f.csv", "phone,body\n+447400900123,hi\n")
    assert load(f"file://{src}")["phone_raw"].to_list() == ["+447400900123"]


def test_empty_csv_file_has_no_rows(tmp_path: Path) -> None:
    message = load_error(write(tmp_path / "empty.csv", b""))
    assert "no rows" in message
    assert "empty.csv" in message
    assert "no rows" in load_error(write(tmp_path / "blank.csv", b"\r\n\n  \n"))


@pytest.mark.timeout(30)
def test_csv_unterminated_quote_is_a_clear_error(tmp_path: Path) -> None:
    src = write(
        tmp_path / "bad.csv", 'phone,body\n+447400900123,"oops\n+447400900124,fine\n+447400900125,x\n'
    )
    message = load_error(src)
    assert "bad.csv" in message
    assert "quote" in message
    assert "oops" not in message  # the file's content (phone numbers, bodies) is not echoed


@pytest.mark.timeout(30)
def test_csv_unterminated_quote_on_the_last_line(tmp_path: Path) -> None:
    message = load_error(write(tmp_path / "bad2.csv", 'phone,body\n+447400900123,"never closed\n'))
    assert "quote" in message


def test_csv_stray_quote_inside_a_field_is_read(tmp_path: Path) -> None:
    df = load(write(tmp_path / "mid.csv", 'phone,body\n+447400900123,say "hi" now\n'))
    assert df["body"].to_list() == ['say "hi" now']


def test_csv_row_with_extra_fields(tmp_path: Path) -> None:
    message = load_error(write(tmp_path / "ragged.csv", "phone,body\n+447400900123,hello, world\n"))
    assert "more fields than the header" in message


def test_csv_binary_garbage(tmp_path: Path) -> None:
    message = load_error(write(tmp_path / "garbage.csv", bytes(range(256)) * 8))
    assert "binary" in message
    assert "garbage.csv" in message


def test_csv_not_utf8(tmp_path: Path) -> None:
    message = load_error(write(tmp_path / "latin1.csv", "phone,body\n+447400900123,café\n".encode("latin-1")))
    assert "UTF-8" in message


def test_csv_utf16(tmp_path: Path) -> None:
    message = load_error(write(tmp_path / "u16.csv", "phone,body\n+447400900123,hi\n".encode("utf-16")))
    assert "UTF-16" in message


def test_csv_duplicate_header(tmp_path: Path) -> None:
    message = load_error(write(tmp_path / "dup.csv", "phone,body,phone\n1,2,3\n"))
    assert "'phone' more than once" in message


def test_csv_reserved_row_index_column(tmp_path: Path) -> None:
    message = load_error(write(tmp_path / "ri.csv", "row_index,phone,body\n5,1,x\n"))
    assert "row_index" in message


# -- paths and URIs -----------------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    message = load_error(str(tmp_path / "nope.csv"))
    assert "not found" in message
    assert "nope.csv" in message


@pytest.mark.parametrize("name", ["r.txt", "r.xlsx", "r"])
def test_unsupported_extension(tmp_path: Path, name: str) -> None:
    message = load_error(write(tmp_path / name, "phone,body\n1,x\n"))
    assert "unsupported file type" in message
    assert ".csv, .parquet, .ndjson" in message


@pytest.mark.parametrize("source", ["http://example.com/r.csv", "gs://bucket/r.csv", "mysql://u@h/db"])
def test_unsupported_scheme(source: str) -> None:
    message = load_error(source)
    assert "unsupported source scheme" in message
    assert "s3://" in message and "postgresql://" in message


# -- local Parquet ------------------------------------------------------------------------------------------


def test_parquet_numeric_phones_become_digits(tmp_path: Path) -> None:
    src = str(tmp_path / "r.parquet")
    pl.DataFrame(
        {
            "phone": [447400900123, 447400900124],
            "body": ["a", "b"],
            "recipient_id": [1, 2],
            "score": [1.5, 2.0],
            "send_at": [dt.datetime(2030, 1, 2, 9, 30, tzinfo=dt.UTC), None],
        }
    ).write_parquet(src)
    df = load(src)
    assert df["phone_raw"].to_list() == ["447400900123", "447400900124"]
    assert df["recipient_id"].to_list() == ["1", "2"]
    assert df["send_at"].to_list() == ["2030-01-02T09:30:00Z", None]
    assert df.schema["score"] == pl.Float64  # other columns keep their types
    assert df["row_index"].to_list() == [0, 1]


def test_parquet_float_and_decimal_phones_have_no_fraction(tmp_path: Path) -> None:
    src = str(tmp_path / "f.parquet")
    pl.DataFrame({"phone": [447400900123.0, 6591234567.0], "body": ["a", "b"]}).write_parquet(src)
    assert load(src)["phone_raw"].to_list() == ["447400900123", "6591234567"]
    src2 = str(tmp_path / "d.parquet")
    pl.DataFrame({"phone": pl.Series([447400900123], dtype=pl.Decimal(15, 2)), "body": ["a"]}).write_parquet(
        src2
    )
    assert load(src2)["phone_raw"].to_list() == ["447400900123"]


def test_parquet_integer_template_variables_become_text(tmp_path: Path) -> None:
    src = str(tmp_path / "v.parquet")
    pl.DataFrame({"phone": ["+447400900123"], "code": [4821], "n": [7]}).write_parquet(src)
    df = load(src, body="Your code is {{code}}")
    assert df["code"].to_list() == ["4821"]
    assert df.schema["n"] == pl.Int64


def test_parquet_truncated(tmp_path: Path) -> None:
    good = tmp_path / "good.parquet"
    pl.DataFrame({"phone": ["+447400900123"] * 100, "body": ["x"] * 100}).write_parquet(good)
    data = good.read_bytes()
    message = load_error(write(tmp_path / "trunc.parquet", data[: len(data) // 2]))
    assert "trunc.parquet" in message
    assert "Parquet" in message and "truncated" in message


def test_parquet_empty_file(tmp_path: Path) -> None:
    assert "no rows" in load_error(write(tmp_path / "e.parquet", b""))


def test_parquet_zero_rows_needs_allow_empty(tmp_path: Path) -> None:
    src = str(tmp_path / "z.parquet")
    pl.DataFrame(
        {"phone": pl.Series([], dtype=pl.Int64), "body": pl.Series([], dtype=pl.String)}
    ).write_parquet(src)
    assert "no recipients (0 data rows)" in load_error(src)
    df = load(src, allow_empty=True)
    assert df.height == 0
    assert df.schema["phone_raw"] == pl.String


def test_parquet_directory_is_a_dataset(tmp_path: Path) -> None:
    d = folder(tmp_path, "parts")
    pl.DataFrame({"phone": [1, 2], "body": ["a", "b"]}).write_parquet(d / "part-0.parquet")
    pl.DataFrame({"phone": [3], "body": ["c"]}).write_parquet(d / "part-1.parquet")
    df = load(str(d))
    assert df.rows() == [(0, "1", "a"), (1, "2", "b"), (2, "3", "c")]


def test_empty_directory(tmp_path: Path) -> None:
    assert "no recipients files" in load_error(str(tmp_path))


def test_directory_reads_every_supported_file(tmp_path: Path) -> None:
    # Regression: a folder of a.csv (2 rows) and b.parquet (1 row) sent only the Parquet row.
    d = folder(tmp_path)
    write(d / "a.csv", "phone,body\n+447400900001,x\n+447400900002,y\n")
    pl.DataFrame({"phone": [447400900003.0], "body": ["z"]}).write_parquet(d / "b.parquet")
    write(d / "c.ndjson", '{"phone": "+447400900004", "body": "w"}\n')
    write(d / "_SUCCESS", "")  # a marker, not recipients
    df = load(str(d))
    assert df.select("row_index", "phone_raw", "body").rows() == [
        (0, "+447400900001", "x"),
        (1, "+447400900002", "y"),
        (2, "447400900003", "z"),  # a float phone is its digits, as from a lone Parquet file
        (3, "+447400900004", "w"),
    ]


def test_directory_refuses_files_it_cannot_read_by_name(tmp_path: Path) -> None:
    d = folder(tmp_path)
    write(d / "a.csv", "phone,body\n+447400900001,x\n")
    write(d / "b.xlsx", "PK")
    message = load_error(str(d))
    assert "'b.xlsx'" in message and "a.csv" not in message


def test_directory_error_names_the_file(tmp_path: Path) -> None:
    d = folder(tmp_path)
    write(d / "a.csv", "phone,body\n+447400900001,x\n")
    write(d / "b.csv", "msisdn,body\n+447400900001,x\n")
    assert "b.csv has no 'phone' column" in load_error(str(d))


# -- local NDJSON -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ext", [".ndjson", ".jsonl"])
def test_ndjson(tmp_path: Path, ext: str) -> None:
    src = write(
        tmp_path / f"r{ext}",
        '{"phone": 447400900123, "body": "hi 😀", "language": "en"}\n\n'
        '{"phone": "+447400900124", "body": "yo", "extra": {"a": 1}}\r\n',
    )
    df = load(src)
    assert df["phone_raw"].to_list() == ["447400900123", "+447400900124"]
    assert df["body"].to_list() == ["hi 😀", "yo"]
    assert df["language"].to_list() == ["en", None]
    assert df["row_index"].to_list() == [0, 1]


def test_ndjson_invalid_line(tmp_path: Path) -> None:
    message = load_error(write(tmp_path / "bad.ndjson", '{"phone": 1, "body": "x"}\n{"phone": \n'))
    assert "one JSON object per line" in message


def test_ndjson_empty(tmp_path: Path) -> None:
    assert "no rows" in load_error(write(tmp_path / "e.ndjson", b""))
    assert "no rows" in load_error(write(tmp_path / "blank.ndjson", b"\n\n"))


def test_missing_path_without_extension(tmp_path: Path) -> None:
    assert "not found" in load_error(str(tmp_path / "no-such-dir"))
