"""tasks.load.load_recipients from S3 (a real SeaweedFS), PostgreSQL (a real server) and DuckDB, and a
source's credentials. Local files: tests/test_load.py."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pytest
from load_support import load, load_error, spec, write

from smscast import storage
from smscast.errors import ConfigError
from smscast.sources.credentials import split_password
from smscast.tasks.load import source_label

# -- S3 (real SeaweedFS) ------------------------------------------------------------------------------------


@pytest.mark.integration
def test_s3_csv(s3_bucket: str) -> None:
    uri = f"s3://{s3_bucket}/in/recipients.csv"
    storage.put_bytes(
        uri, b'\xef\xbb\xbfphone,body\r\n"+44 7400 900123","Hi, \xf0\x9f\x98\x80"\r\n07400900123,x\r\n'
    )
    df = load(uri)
    assert df.rows() == [(0, "+44 7400 900123", "Hi, 😀"), (1, "07400900123", "x")]


@pytest.mark.integration
def test_s3_parquet_with_int_phones(s3_bucket: str) -> None:
    uri = f"s3://{s3_bucket}/in/recipients.parquet"
    storage.write_parquet(pl.DataFrame({"msisdn": [447400900123, 6591234567], "text": ["a", "b"]}), uri)
    df = load(uri, columns={"phone": "msisdn", "body": "text"})
    assert df.rows() == [(0, "447400900123", "a"), (1, "6591234567", "b")]


@pytest.mark.integration
def test_s3_ndjson(s3_bucket: str) -> None:
    uri = f"s3://{s3_bucket}/in/r.jsonl"
    storage.put_bytes(uri, b'{"phone": 447400900123, "body": "a"}\n{"phone": 447400900124, "body": "b"}\n')
    assert load(uri)["phone_raw"].to_list() == ["447400900123", "447400900124"]


@pytest.mark.integration
def test_s3_parquet_prefix(s3_bucket: str) -> None:
    storage.write_parquet(pl.DataFrame({"phone": ["1"], "body": ["a"]}), f"s3://{s3_bucket}/ds/p0.parquet")
    storage.write_parquet(pl.DataFrame({"phone": ["2"], "body": ["b"]}), f"s3://{s3_bucket}/ds/p1.parquet")
    df = load(f"s3://{s3_bucket}/ds/")
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
    assert load(uri, encoding="latin-1")["body"].to_list() == ["Café olé"]


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
    df = load(
        pg_recipients,
        query="SELECT msisdn AS phone, txt AS body, name, score, id, due AS send_at\n"
        "FROM recipients ORDER BY id DESC; -- newest first",
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
    df = load(
        pg_recipients,
        query="SELECT phone_f, txt FROM recipients WHERE phone_f IS NOT NULL ORDER BY id",
        columns={"phone": "phone_f", "body": "txt"},
    )
    assert df["phone_raw"].to_list() == ["447400900123", "6591234567"]


@pytest.mark.integration
def test_postgres_zero_rows(pg_recipients: str) -> None:
    query = "SELECT msisdn AS phone, txt AS body FROM recipients WHERE false"
    assert "the query on" in load_error(pg_recipients, query=query)
    df = load(pg_recipients, query=query, allow_empty=True)
    assert df.height == 0
    assert df.columns == ["row_index", "phone_raw", "body"]


@pytest.mark.integration
def test_postgres_errors_never_show_the_password(pg_recipients: str, postgres: Any) -> None:
    with pytest.raises(ConfigError, match="needs a query"):
        load(pg_recipients)
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


def test_source_label_hides_database_passwords() -> None:
    assert (
        source_label("postgresql://app:hunter2@db:5432/crm?sslmode=require") == "postgresql://app@db:5432/crm"
    )
    assert source_label("s3://b/k.csv") == "s3://b/k.csv"


@pytest.mark.integration
def test_postgres_scheme_variants(pg_recipients: str) -> None:
    for scheme in ("postgres://", "postgresql+psycopg://"):
        source = scheme + pg_recipients.split("://", 1)[1]
        df = load(source, query="SELECT msisdn AS phone, 'x' AS body FROM recipients ORDER BY id")
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
    df = load(
        f"duckdb://{duck_file}",
        query="SELECT msisdn, body, name, send_at, id FROM people ORDER BY id",
        columns={"phone": "msisdn"},
        body="Hi {{name}}",
    )
    assert df.columns == ["row_index", "phone_raw", "body", "name", "send_at", "id"]
    assert df["phone_raw"].to_list() == ["447400900123", "6591234567"]
    assert df["body"].to_list() == ["Hi 😀", "Yo"]
    assert df["name"].to_list() == ["Ann", None]
    assert df["send_at"].to_list() == ["2030-01-02T09:30:00", None]
    assert df.schema["id"] == pl.Int32


def test_duckdb_in_memory() -> None:
    df = load(
        "duckdb://",
        query="SELECT '+447400900123' AS phone, 'hello' AS body UNION ALL SELECT '07400900123', 'x'",
    )
    assert df["phone_raw"].to_list() == ["+447400900123", "07400900123"]


def test_duckdb_errors(duck_file: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs a query"):
        load(f"duckdb://{duck_file}")
    assert "not found" in load_error(f"duckdb://{tmp_path}/missing.db", query="SELECT 1")
    message = load_error(f"duckdb://{duck_file}", query="SELECT * FROM nope")
    assert "query failed" in message and "nope" in message
    message = load_error(f"duckdb://{duck_file}", query="CREATE TABLE x (a INT)")
    assert "read-only" in message or "no result set" in message
    garbage = write(tmp_path / "garbage.db", b"not a duckdb file" * 100)
    assert "cannot open the DuckDB database" in load_error(f"duckdb://{garbage}", query="SELECT 1")


@pytest.mark.timeout(60)
def test_s3_endpoint_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # discard port: nothing listens
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-a-real-secret-777")
    message = load_error("s3://bucket/r.csv")
    assert "cannot reach the S3 endpoint" in message
    assert "not-a-real-secret-777" not in message
