"""tasks.load.load_recipients: every source kind, column mapping and malformed input.

S3 sources run against a real SeaweedFS, PostgreSQL against a real server (both started by fixtures)."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pytest

from smscast import storage
from smscast.campaign import CampaignSpec
from smscast.errors import ConfigError, SourceError
from smscast.sources.credentials import split_password
from smscast.tasks.load import load_recipients, source_label

PHONES_TEXT = ["+44 7400 900123", "07400900123", "00447400900123"]


def spec(source: str, **kw: Any) -> CampaignSpec:
    return CampaignSpec(campaign_id="c1", source=source, results="/tmp/unused", **kw)


def write(path: Path, data: bytes | str) -> str:
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return str(path)


def load_error(source: str, **kw: Any) -> str:
    with pytest.raises(SourceError) as err:
        load_recipients(spec(source, **kw))
    return str(err.value)


# -- local CSV ----------------------------------------------------------------------------------------------


def test_csv_keeps_phones_as_text(tmp_path: Path) -> None:
    src = write(
        tmp_path / "r.csv",
        'phone,body,recipient_id,amount\n"+44 7400 900123",hello,007,12.50\n07400900123,hi,8,3\n'
        "00447400900123,yo,9,\n",
    )
    df = load_recipients(spec(src))
    assert df.columns == ["row_index", "phone_raw", "body", "recipient_id", "amount"]
    assert df.schema["row_index"] == pl.Int64
    assert all(df.schema[c] == pl.String for c in df.columns[1:])
    assert df["row_index"].to_list() == [0, 1, 2]
    assert df["phone_raw"].to_list() == PHONES_TEXT
    assert df["recipient_id"].to_list() == ["007", "8", "9"]
    assert df["amount"].to_list() == ["12.50", "3", None]


def test_csv_utf8_bom_is_stripped(tmp_path: Path) -> None:
    src = write(tmp_path / "bom.csv", b"\xef\xbb\xbfphone,body\n+447400900123,hi\n")
    df = load_recipients(spec(src))
    assert df.columns == ["row_index", "phone_raw", "body"]
    assert df.row(0) == (0, "+447400900123", "hi")


def test_csv_crlf_line_endings(tmp_path: Path) -> None:
    src = write(tmp_path / "crlf.csv", b"phone,body\r\n07400900123,first\r\n+447400900124,second\r\n")
    df = load_recipients(spec(src))
    assert df.rows() == [(0, "07400900123", "first"), (1, "+447400900124", "second")]


def test_csv_quoted_fields_with_newlines_commas_and_quotes(tmp_path: Path) -> None:
    src = write(
        tmp_path / "q.csv",
        'phone,body\n"+447400900123","Hello, ""Bob""\nsee you at 5, ok?"\r\n+447400900124,"plain"\n',
    )
    df = load_recipients(spec(src))
    assert df["body"].to_list() == ['Hello, "Bob"\nsee you at 5, ok?', "plain"]
    assert df["row_index"].to_list() == [0, 1]


def test_csv_unicode_and_emoji_bodies(tmp_path: Path) -> None:
    bodies = ["Grüße 😀", "你好，世界", "Привет", "👩‍👩‍👧‍👦 family"]
    lines = "".join(f"+4474009001{i:02d},{b}\n" for i, b in enumerate(bodies))
    df = load_recipients(spec(write(tmp_path / "u.csv", "phone,body\n" + lines)))
    assert df["body"].to_list() == bodies


def test_csv_one_row(tmp_path: Path) -> None:
    df = load_recipients(spec(write(tmp_path / "one.csv", "phone,body\n+447400900123,only\n")))
    assert df.rows() == [(0, "+447400900123", "only")]


def test_csv_header_only_is_refused_unless_an_empty_campaign_is_allowed(tmp_path: Path) -> None:
    src = write(tmp_path / "h.csv", "phone,body,name\n")
    message = load_error(src, body="Hi {{name}}")
    assert "h.csv holds no recipients (0 data rows)" in message and "--allow-empty" in message
    df = load_recipients(spec(src, body="Hi {{name}}", allow_empty=True))
    assert df.height == 0
    assert df.schema == pl.Schema(
        {"row_index": pl.Int64, "phone_raw": pl.String, "body": pl.String, "name": pl.String}
    )


def test_csv_blank_lines_are_not_records(tmp_path: Path) -> None:
    src = write(tmp_path / "b.csv", "phone,body\n\n+447400900123,a\n\n+447400900124,b\n\n")
    df = load_recipients(spec(src))
    assert df.rows() == [(0, "+447400900123", "a"), (1, "+447400900124", "b")]


def test_csv_empty_fields_are_null(tmp_path: Path) -> None:
    df = load_recipients(spec(write(tmp_path / "e.csv", "phone,body\n,hello\n+447400900123,\n")))
    assert df.rows() == [(0, None, "hello"), (1, "+447400900123", None)]


def test_csv_header_names_are_trimmed(tmp_path: Path) -> None:
    df = load_recipients(spec(write(tmp_path / "w.csv", " phone , body\n+447400900123,hi\n")))
    assert df.columns == ["row_index", "phone_raw", "body"]


def test_file_uri(tmp_path: Path) -> None:
    src = write(tmp_path / "f.csv", "phone,body\n+447400900123,hi\n")
    assert load_recipients(spec(f"file://{src}"))["phone_raw"].to_list() == ["+447400900123"]


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
    df = load_recipients(spec(write(tmp_path / "mid.csv", 'phone,body\n+447400900123,say "hi" now\n')))
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


# -- column mapping and required columns --------------------------------------------------------------------


def test_column_mapping(tmp_path: Path) -> None:
    src = write(tmp_path / "m.csv", "msisdn,text,customer,first\n447400900123,Hi Ann,c-1,Ann\n")
    df = load_recipients(
        spec(src, columns={"phone": "msisdn", "body": "text", "recipient_id": "customer", "name": "first"})
    )
    assert df.columns == ["row_index", "phone_raw", "body", "recipient_id", "name"]
    assert df.row(0) == (0, "447400900123", "Hi Ann", "c-1", "Ann")


def test_column_mapping_one_source_column_to_two_names(tmp_path: Path) -> None:
    src = write(tmp_path / "m2.csv", "msisdn,body\n447400900123,x\n")
    df = load_recipients(spec(src, columns={"phone": "msisdn", "recipient_id": "msisdn"}))
    assert df.select("phone_raw", "recipient_id").row(0) == ("447400900123", "447400900123")


def test_column_mapping_to_a_missing_column(tmp_path: Path) -> None:
    message = load_error(write(tmp_path / "m3.csv", "msisdn,body\n1,x\n"), columns={"phone": "mobile"})
    assert "phone=mobile" in message
    assert "'msisdn'" in message


def test_column_mapping_clash(tmp_path: Path) -> None:
    message = load_error(
        write(tmp_path / "m4.csv", "phone,msisdn,body\n1,2,x\n"), columns={"phone": "msisdn"}
    )
    assert "clashes" in message


def test_missing_phone_column_names_columns_and_mapping(tmp_path: Path) -> None:
    message = load_error(write(tmp_path / "np.csv", "msisdn,body\n447400900123,hi\n"))
    assert "no 'phone' column" in message
    assert "'msisdn', 'body'" in message
    assert "--column phone=msisdn" in message


def test_missing_phone_column_without_a_guess(tmp_path: Path) -> None:
    message = load_error(write(tmp_path / "np2.csv", "who,body\n447400900123,hi\n"))
    assert "--column phone=" in message


def test_missing_body_column(tmp_path: Path) -> None:
    src = write(tmp_path / "nb.csv", "phone,name\n+447400900123,Ann\n")
    message = load_error(src)
    assert "no 'body' column" in message
    assert "--body" in message and "--template" in message and "--column body=" in message
    # with a body text or a provider template the column is not needed
    assert load_recipients(spec(src, body="Hi {{name}}"))["name"].to_list() == ["Ann"]
    assert load_recipients(spec(src, template="welcome")).height == 1


def test_missing_template_variables(tmp_path: Path) -> None:
    src = write(tmp_path / "tv.csv", "phone,first\n+447400900123,Ann\n")
    message = load_error(src, body="Hi {{name}}, your code is {{ code }}")
    assert "'name', 'code'" in message
    assert "--column name=" in message
    message = load_error(src, template="otp", template_vars=("otp",))
    assert "'otp'" in message
    df = load_recipients(spec(src, body="Hi {{name}}", columns={"name": "first"}))
    assert df["name"].to_list() == ["Ann"]


def test_query_with_a_file_source_is_a_config_error(tmp_path: Path) -> None:
    src = write(tmp_path / "r.csv", "phone,body\n1,x\n")
    with pytest.raises(ConfigError, match="--query"):
        load_recipients(spec(src, query="select 1"))


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


def test_source_label_hides_database_passwords() -> None:
    assert (
        source_label("postgresql://app:hunter2@db:5432/crm?sslmode=require") == "postgresql://app@db:5432/crm"
    )
    assert source_label("s3://b/k.csv") == "s3://b/k.csv"


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
    df = load_recipients(spec(src))
    assert df["phone_raw"].to_list() == ["447400900123", "447400900124"]
    assert df["recipient_id"].to_list() == ["1", "2"]
    assert df["send_at"].to_list() == ["2030-01-02T09:30:00Z", None]
    assert df.schema["score"] == pl.Float64  # other columns keep their types
    assert df["row_index"].to_list() == [0, 1]


def test_parquet_float_and_decimal_phones_have_no_fraction(tmp_path: Path) -> None:
    src = str(tmp_path / "f.parquet")
    pl.DataFrame({"phone": [447400900123.0, 6591234567.0], "body": ["a", "b"]}).write_parquet(src)
    assert load_recipients(spec(src))["phone_raw"].to_list() == ["447400900123", "6591234567"]
    src2 = str(tmp_path / "d.parquet")
    pl.DataFrame({"phone": pl.Series([447400900123], dtype=pl.Decimal(15, 2)), "body": ["a"]}).write_parquet(
        src2
    )
    assert load_recipients(spec(src2))["phone_raw"].to_list() == ["447400900123"]


def test_parquet_integer_template_variables_become_text(tmp_path: Path) -> None:
    src = str(tmp_path / "v.parquet")
    pl.DataFrame({"phone": ["+447400900123"], "code": [4821], "n": [7]}).write_parquet(src)
    df = load_recipients(spec(src, body="Your code is {{code}}"))
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
    df = load_recipients(spec(src, allow_empty=True))
    assert df.height == 0
    assert df.schema["phone_raw"] == pl.String


def test_parquet_directory_is_a_dataset(tmp_path: Path) -> None:
    d = tmp_path / "parts"
    d.mkdir()
    pl.DataFrame({"phone": [1, 2], "body": ["a", "b"]}).write_parquet(d / "part-0.parquet")
    pl.DataFrame({"phone": [3], "body": ["c"]}).write_parquet(d / "part-1.parquet")
    df = load_recipients(spec(str(d)))
    assert df.rows() == [(0, "1", "a"), (1, "2", "b"), (2, "3", "c")]


def test_empty_directory(tmp_path: Path) -> None:
    assert "no recipients files" in load_error(str(tmp_path))


def test_directory_reads_every_supported_file(tmp_path: Path) -> None:
    # Regression: a folder of a.csv (2 rows) and b.parquet (1 row) sent only the Parquet row.
    d = tmp_path / "in"
    d.mkdir()
    write(d / "a.csv", "phone,body\n+447400900001,x\n+447400900002,y\n")
    pl.DataFrame({"phone": [447400900003.0], "body": ["z"]}).write_parquet(d / "b.parquet")
    write(d / "c.ndjson", '{"phone": "+447400900004", "body": "w"}\n')
    write(d / "_SUCCESS", "")  # a marker, not recipients
    df = load_recipients(spec(str(d)))
    assert df.select("row_index", "phone_raw", "body").rows() == [
        (0, "+447400900001", "x"),
        (1, "+447400900002", "y"),
        (2, "447400900003", "z"),  # a float phone is its digits, as from a lone Parquet file
        (3, "+447400900004", "w"),
    ]


def test_directory_refuses_files_it_cannot_read_by_name(tmp_path: Path) -> None:
    d = tmp_path / "in"
    d.mkdir()
    write(d / "a.csv", "phone,body\n+447400900001,x\n")
    write(d / "b.xlsx", "PK")
    message = load_error(str(d))
    assert "'b.xlsx'" in message and "a.csv" not in message


def test_directory_error_names_the_file(tmp_path: Path) -> None:
    d = tmp_path / "in"
    d.mkdir()
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
    df = load_recipients(spec(src))
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


# -- S3 (real SeaweedFS) ------------------------------------------------------------------------------------


@pytest.mark.integration
def test_s3_csv(s3_bucket: str) -> None:
    uri = f"s3://{s3_bucket}/in/recipients.csv"
    storage.put_bytes(
        uri, b'\xef\xbb\xbfphone,body\r\n"+44 7400 900123","Hi, \xf0\x9f\x98\x80"\r\n07400900123,x\r\n'
    )
    df = load_recipients(spec(uri))
    assert df.rows() == [(0, "+44 7400 900123", "Hi, 😀"), (1, "07400900123", "x")]


@pytest.mark.integration
def test_s3_parquet_with_int_phones(s3_bucket: str) -> None:
    uri = f"s3://{s3_bucket}/in/recipients.parquet"
    storage.write_parquet(pl.DataFrame({"msisdn": [447400900123, 6591234567], "text": ["a", "b"]}), uri)
    df = load_recipients(spec(uri, columns={"phone": "msisdn", "body": "text"}))
    assert df.rows() == [(0, "447400900123", "a"), (1, "6591234567", "b")]


@pytest.mark.integration
def test_s3_ndjson(s3_bucket: str) -> None:
    uri = f"s3://{s3_bucket}/in/r.jsonl"
    storage.put_bytes(uri, b'{"phone": 447400900123, "body": "a"}\n{"phone": 447400900124, "body": "b"}\n')
    assert load_recipients(spec(uri))["phone_raw"].to_list() == ["447400900123", "447400900124"]


@pytest.mark.integration
def test_s3_parquet_prefix(s3_bucket: str) -> None:
    storage.write_parquet(pl.DataFrame({"phone": ["1"], "body": ["a"]}), f"s3://{s3_bucket}/ds/p0.parquet")
    storage.write_parquet(pl.DataFrame({"phone": ["2"], "body": ["b"]}), f"s3://{s3_bucket}/ds/p1.parquet")
    df = load_recipients(spec(f"s3://{s3_bucket}/ds/"))
    assert df.rows() == [(0, "1", "a"), (1, "2", "b")]


@pytest.mark.integration
def test_s3_missing_object_and_malformed(s3_bucket: str) -> None:
    message = load_error(f"s3://{s3_bucket}/nope.csv")
    assert "not found" in message and f"s3://{s3_bucket}/nope.csv" in message
    storage.put_bytes(f"s3://{s3_bucket}/empty.csv", b"")
    assert "no rows" in load_error(f"s3://{s3_bucket}/empty.csv")
    storage.put_bytes(f"s3://{s3_bucket}/trunc.parquet", b"PAR1" + b"\x00" * 50)
    assert "Parquet" in load_error(f"s3://{s3_bucket}/trunc.parquet")
    storage.put_bytes(f"s3://{s3_bucket}/bad.csv", b'phone,body\n1,"open\n')
    message = load_error(f"s3://{s3_bucket}/bad.csv")
    assert "quote" in message and "line 2" in message  # the line is found by reading the object again


@pytest.mark.integration
def test_s3_csv_in_another_encoding(s3_bucket: str) -> None:
    uri = f"s3://{s3_bucket}/latin1.csv"
    storage.put_bytes(uri, "phone,body\n+447400900123,Café olé\n".encode("latin-1"))
    assert "--encoding" in load_error(uri)
    assert load_recipients(spec(uri, encoding="latin-1"))["body"].to_list() == ["Café olé"]


@pytest.mark.integration
def test_s3_wrong_credentials(s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    uri = f"s3://{s3_bucket}/r.csv"
    storage.put_bytes(uri, b"phone,body\n1,x\n")
    wrong = "wrong-secret-value-for-test-42"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong)
    message = load_error(uri)
    assert "denied" in message and "AWS_SECRET_ACCESS_KEY" in message
    assert wrong not in message
    assert os.environ["AWS_ACCESS_KEY_ID"] not in message


# -- PostgreSQL (real server) -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pg_table(postgres: Any) -> None:
    with postgres.connect() as conn:
        conn.execute("DROP TABLE IF EXISTS recipients")
        conn.execute(
            "CREATE TABLE recipients (id int PRIMARY KEY, msisdn bigint, txt text, name text, "
            "score numeric(6,2), phone_f float8, due timestamptz, lang text)"
        )
        conn.execute(
            "INSERT INTO recipients VALUES "
            "(1, 447400900123, 'Hi, \"Ann\"' || chr(10) || 'bye', 'Ann', 12.50, 447400900123, "
            "'2030-01-02 09:30:00+00', 'en'), "
            "(2, 6591234567, 'Grüße 😀', NULL, NULL, 6591234567, NULL, ''), "
            "(3, 447400900125, NULL, 'Cy', 1, NULL, NULL, NULL)"
        )


@pytest.fixture
def pg_recipients(pg_table: None, postgres: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    """The DSN without its password, which comes from PGPASSWORD as a source's password must."""
    monkeypatch.setenv("PGPASSWORD", postgres.password)
    return split_password(str(postgres.dsn))[0]


@pytest.mark.integration
def test_postgres_query(pg_recipients: str) -> None:
    df = load_recipients(
        spec(
            pg_recipients,
            query="SELECT msisdn AS phone, txt AS body, name, score, id, due AS send_at\n"
            "FROM recipients ORDER BY id DESC; -- newest first",
        )
    )
    assert df.columns == ["row_index", "phone_raw", "body", "name", "score", "id", "send_at"]
    assert df["row_index"].to_list() == [0, 1, 2]
    assert df["phone_raw"].to_list() == ["447400900125", "6591234567", "447400900123"]
    assert df["body"].to_list() == [None, "Grüße 😀", 'Hi, "Ann"\nbye']
    assert df["name"].to_list() == ["Cy", None, "Ann"]
    assert df["score"].to_list() == ["1.00", None, "12.50"]
    assert df["send_at"].to_list()[2].startswith("2030-01-02 09:30:00")


@pytest.mark.integration
def test_postgres_mapping_and_float_phone(pg_recipients: str) -> None:
    df = load_recipients(
        spec(
            pg_recipients,
            query="SELECT phone_f, txt FROM recipients WHERE phone_f IS NOT NULL ORDER BY id",
            columns={"phone": "phone_f", "body": "txt"},
        )
    )
    assert df["phone_raw"].to_list() == ["447400900123", "6591234567"]


@pytest.mark.integration
def test_postgres_zero_rows(pg_recipients: str) -> None:
    query = "SELECT msisdn AS phone, txt AS body FROM recipients WHERE false"
    assert "the query on" in load_error(pg_recipients, query=query)
    df = load_recipients(spec(pg_recipients, query=query, allow_empty=True))
    assert df.height == 0
    assert df.columns == ["row_index", "phone_raw", "body"]


@pytest.mark.integration
def test_postgres_errors_never_show_the_password(pg_recipients: str, postgres: Any) -> None:
    with pytest.raises(ConfigError, match="needs a query"):
        load_recipients(spec(pg_recipients))
    message = load_error(pg_recipients, query="SELECT * FROM no_such_table")
    assert "no_such_table" in message and "query failed" in message
    assert postgres.password not in message
    message = load_error(pg_recipients, query="INSERT INTO recipients (id) VALUES (99) RETURNING id AS phone")
    assert "read-only" in message
    with pytest.MonkeyPatch.context() as env:
        env.setenv("PGPASSWORD", "not-the-password-123")
        message = load_error(pg_recipients, query="SELECT 1 AS phone")
    assert "password authentication failed" in message
    assert "not-the-password-123" not in message and postgres.password not in message
    message = load_error(pg_recipients, query="SELECT msisdn FROM recipients")
    assert "no 'phone' column" in message and "--column phone=msisdn" in message


@pytest.mark.parametrize(
    "uri",
    [
        "postgresql://reader:SECRET-pw-77@db.example.com:5432/crm",
        "postgres://reader:SECRET-pw-77@db.example.com/crm",
        "postgresql://db.example.com/crm?user=reader&password=SECRET-pw-77",
        "s3://AKIAX:SECRET-pw-77@bucket/r.csv",
    ],
)
def test_a_source_carrying_a_password_is_refused_without_quoting_it(uri: str) -> None:
    # Regression: the password went into spec.json and the Prefect flow run's parameters.
    with pytest.raises(ValueError) as info:
        spec(uri, query="SELECT 1")
    assert "password" in str(info.value) and "SECRET-pw-77" not in str(info.value)


def test_split_password_keeps_the_rest_of_the_uri() -> None:
    assert split_password("postgresql://reader:pw@db:5432/crm?sslmode=require") == (
        "postgresql://reader@db:5432/crm?sslmode=require",
        "pw",
    )
    assert split_password("postgresql://db/crm?user=u&password=pw") == ("postgresql://db/crm?user=u", "pw")
    assert split_password("postgresql://reader@db/crm") == ("postgresql://reader@db/crm", None)
    assert split_password("/tmp/a:b@c.csv") == ("/tmp/a:b@c.csv", None)


@pytest.mark.integration
def test_postgres_scheme_variants(pg_recipients: str) -> None:
    for scheme in ("postgres://", "postgresql+psycopg://"):
        source = scheme + pg_recipients.split("://", 1)[1]
        df = load_recipients(
            spec(source, query="SELECT msisdn AS phone, 'x' AS body FROM recipients ORDER BY id")
        )
        assert df.height == 3


# -- DuckDB -------------------------------------------------------------------------------------------------


@pytest.fixture
def duck_file(tmp_path: Path) -> str:
    path = tmp_path / "crm.duckdb"
    con = duckdb.connect(str(path))
    con.execute(
        "CREATE TABLE people AS SELECT * FROM (VALUES "
        "(1, 447400900123::BIGINT, 'Hi 😀', 'Ann', TIMESTAMP '2030-01-02 09:30:00'), "
        "(2, 6591234567::BIGINT, 'Yo', NULL, NULL)) t(id, msisdn, body, name, send_at)"
    )
    con.close()
    return str(path)


def test_duckdb_query(duck_file: str) -> None:
    df = load_recipients(
        spec(
            f"duckdb://{duck_file}",
            query="SELECT msisdn, body, name, send_at, id FROM people ORDER BY id",
            columns={"phone": "msisdn"},
            body="Hi {{name}}",
        )
    )
    assert df.columns == ["row_index", "phone_raw", "body", "name", "send_at", "id"]
    assert df["phone_raw"].to_list() == ["447400900123", "6591234567"]
    assert df["body"].to_list() == ["Hi 😀", "Yo"]
    assert df["name"].to_list() == ["Ann", None]
    assert df["send_at"].to_list() == ["2030-01-02T09:30:00", None]
    assert df.schema["id"] == pl.Int32


def test_duckdb_in_memory() -> None:
    df = load_recipients(
        spec(
            "duckdb://",
            query="SELECT '+447400900123' AS phone, 'hello' AS body UNION ALL SELECT '07400900123', 'x'",
        )
    )
    assert df["phone_raw"].to_list() == ["+447400900123", "07400900123"]


def test_duckdb_errors(duck_file: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs a query"):
        load_recipients(spec(f"duckdb://{duck_file}"))
    assert "not found" in load_error(f"duckdb://{tmp_path}/missing.db", query="SELECT 1")
    message = load_error(f"duckdb://{duck_file}", query="SELECT * FROM nope")
    assert "query failed" in message and "nope" in message
    message = load_error(f"duckdb://{duck_file}", query="CREATE TABLE x (a INT)")
    assert "read-only" in message or "no result set" in message
    garbage = write(tmp_path / "garbage.db", b"not a duckdb file" * 100)
    assert "cannot open the DuckDB database" in load_error(f"duckdb://{garbage}", query="SELECT 1")


def test_missing_path_without_extension(tmp_path: Path) -> None:
    assert "not found" in load_error(str(tmp_path / "no-such-dir"))


@pytest.mark.timeout(60)
def test_s3_endpoint_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # discard port: nothing listens
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-a-real-secret-777")
    message = load_error("s3://bucket/r.csv")
    assert "cannot reach the S3 endpoint" in message
    assert "not-a-real-secret-777" not in message
