"""The preflight's checks of a campaign's source (smscast/preflight.py): files missing, unreadable or of another
kind, columns the campaign needs, SQL and S3 sources, and agreement with the loader. The preflight's other
checks: tests/test_preflight.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
import pytest
from test_preflight import clean_env, csv_file, lines, preflight_of, ready  # noqa: F401 (clean_env: autouse)

from smscast.campaign import CampaignSpec
from smscast.preflight import preflight, run_preflight


def test_missing_unknown_and_unreadable_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    [missing] = preflight_of(tmp_path, monkeypatch, source=str(tmp_path / "nope.csv"))
    assert missing.what.startswith("recipients file not found") and missing.fix == "check the path"
    (tmp_path / "r.xlsx").write_bytes(b"PK\x03\x04")
    [unknown] = preflight_of(tmp_path, monkeypatch, source=str(tmp_path / "r.xlsx"))
    assert "unsupported file type '.xlsx'" in unknown.what and unknown.fix.startswith("save it as CSV")
    (tmp_path / "u16.csv").write_bytes("phone,name\n+447400900123,Ann\n".encode("utf-16"))
    [utf16] = preflight_of(tmp_path, monkeypatch, source=str(tmp_path / "u16.csv"))
    assert "UTF-16" in utf16.what and "UTF-8" in utf16.fix
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    [parquet] = preflight_of(tmp_path, monkeypatch, source=str(tmp_path / "bad.parquet"))
    assert "not a readable Parquet file" in parquet.what


def test_a_file_without_read_permission(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    if os.geteuid() == 0:
        pytest.skip("root reads every file")
    path = Path(csv_file(tmp_path / "locked.csv"))
    path.chmod(0)
    [problem] = preflight_of(tmp_path, monkeypatch, source=str(path))
    assert "cannot read" in problem.what and "Permission denied" in problem.what


def test_missing_phone_column_suggests_the_mapping(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = csv_file(tmp_path / "m.csv", "msisdn;name", ("+447400900123;Ann",))  # a `;` CSV: the dialect
    [problem] = preflight_of(tmp_path, monkeypatch, source=source)
    assert problem.what.endswith("has no 'phone' column (its columns: 'msisdn', 'name')")
    assert problem.fix == "rename it, or map yours with --column phone=msisdn"  # the loader's own words
    assert preflight_of(tmp_path, monkeypatch, source=source, columns={"phone": "msisdn"}) == []
    [wrong] = preflight_of(tmp_path, monkeypatch, source=source, columns={"phone": "mobile"})
    assert "the column mapping phone=mobile names a column" in wrong.what


def test_a_headerless_file_is_named_without_its_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = csv_file(tmp_path / "h.csv", "+447400900123,Ann", ())
    problems = preflight_of(tmp_path, monkeypatch, source=source)
    assert "looks like data" in problems[0].what and "add a header row" in problems[0].fix
    assert "+447400900123" not in lines(problems)
    assert problems[-1].what.endswith("holds no recipients (0 data rows)")


def test_missing_template_variables_and_body(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    [problem] = preflight_of(tmp_path, monkeypatch, body="Hi {{first_name}}, {{code}}")
    assert "lacks the column(s) 'first_name', 'code'" in problem.what
    assert problem.fix == "add them or map yours with --column first_name=<your column>"
    [no_body] = preflight_of(tmp_path, monkeypatch, body=None)
    assert "has no 'body' column" in no_body.what and "--body" in no_body.fix


def test_ndjson_parquet_and_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "r.ndjson").write_text(
        '{"phone": "+447400900123"}\n{"phone": "+447400900124", "name": "B"}\n'
    )
    assert preflight_of(tmp_path, monkeypatch, source=str(tmp_path / "r.ndjson")) == []
    pl.DataFrame({"phone": ["+447400900123"]}).write_parquet(tmp_path / "r.parquet")
    [problem] = preflight_of(tmp_path, monkeypatch, source=str(tmp_path / "r.parquet"))
    assert "lacks the column(s) 'name'" in problem.what
    folder = tmp_path / "in"
    folder.mkdir()
    csv_file(folder / "a.csv")
    csv_file(folder / "b.csv", "tel,name")
    [problem] = preflight_of(tmp_path, monkeypatch, source=str(folder))
    assert problem.what.startswith(f"{folder / 'b.csv'} has no 'phone' column")


def test_sql_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import duckdb

    db = tmp_path / "w.db"
    with duckdb.connect(str(db)) as con:
        con.execute("CREATE TABLE people AS SELECT '+447400900123' AS msisdn, 'Ann' AS name")
    sql = {"source": f"duckdb://{db}", "columns": {"phone": "msisdn"}}
    assert preflight_of(tmp_path, monkeypatch, **sql, query="SELECT * FROM people") == []
    [no_query] = preflight_of(tmp_path, monkeypatch, **sql)
    assert "needs a query" in no_query.what and no_query.fix.startswith("pass --query")
    [bad] = preflight_of(tmp_path, monkeypatch, **sql, query="SELECT * FROM nobody")
    assert bad.what.startswith("the query failed on duckdb://") and bad.fix == "check --query"
    [closed] = preflight_of(
        tmp_path, monkeypatch, source="postgresql://u@127.0.0.1:1/db", query="SELECT 1 AS phone"
    )
    assert closed.what.startswith("cannot connect to PostgreSQL at postgresql://u@127.0.0.1:1/db")


@pytest.mark.integration
def test_postgres_query_is_described_not_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, postgres: Any
) -> None:
    from smscast.sources.credentials import take_password_for_this_process

    source = take_password_for_this_process(postgres.dsn)  # the password goes to PGPASSWORD, as `send` does
    # A row would divide by zero (not a constant: the planner cannot fold it); LIMIT 0 evaluates no row.
    query = "SELECT '+447400900123' AS phone, 1 / (n - n) AS boom FROM generate_series(1, 3) AS n;"
    found = run_preflight(ready(tmp_path, monkeypatch, source=source, query=query))
    assert [p.what for p in found.problems] == [
        f"{source} lacks the column(s) 'name' that the message template uses (its columns: 'phone', 'boom')"
    ]


@pytest.mark.parametrize(
    ("header", "rows", "fields"),
    [
        ("phone,name", ("+447400900123,Ann",), {}),
        ("msisdn,name", ("+447400900123,Ann",), {}),
        ("msisdn,name", ("+447400900123,Ann",), {"columns": {"phone": "msisdn"}}),
        ("msisdn,name", ("+447400900123,Ann",), {"columns": {"phone": "mobile"}}),
        ("Phone, Name ", ("+447400900123,Ann",), {}),
        ("phone,phone,name", ("+447400900123,+447400900124,Ann",), {}),
        ("row_index,phone,name", ("1,+447400900123,Ann",), {}),
        ("phone,phone_raw,name", ("+447400900123,x,Ann",), {}),
        ("phone,name", (), {}),
        ("+447400900123,Ann", ("+447400900124,Bob",), {}),
        ("phone,name", ("+447400900123,Ann",), {"body": "Hi {{first}}"}),
        ("phone,name", ("+447400900123,Ann",), {"body": None}),
    ],
)
def test_the_preflight_agrees_with_the_loader(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    header: str,
    rows: tuple[str, ...],
    fields: dict[str, Any],
) -> None:
    """Whatever the loader's column rules are today, the preflight refuses a source exactly when it does."""
    from smscast.errors import SmscastError
    from smscast.tasks.load import load_recipients

    spec = ready(tmp_path, monkeypatch, source=csv_file(tmp_path / "s.csv", header, rows), **fields)
    try:
        load_recipients(spec)
        loads = True
    except SmscastError:
        loads = False
    source_problems = [p for p in preflight(spec) if p.check == "source"]
    assert (source_problems == []) == loads, lines(source_problems)


@pytest.mark.skipif("encoding" not in CampaignSpec.model_fields, reason="--encoding is not in this tree")
def test_the_campaigns_encoding_and_an_empty_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    latin = tmp_path / "latin.csv"
    latin.write_bytes("phone,name\n+447400900123,Zoë\n".encode("latin-1"))
    [refused] = preflight_of(tmp_path, monkeypatch, source=str(latin))
    assert "is not UTF-8 text" in refused.what
    assert preflight_of(tmp_path, monkeypatch, source=str(latin), encoding="latin-1") == []
    header_only = csv_file(tmp_path / "empty.csv", rows=())
    [empty] = preflight_of(tmp_path, monkeypatch, source=header_only)
    assert empty.what.endswith("holds no recipients (0 data rows)") and "--allow-empty" in empty.fix
    assert preflight_of(tmp_path, monkeypatch, source=header_only, allow_empty=True) == []


@pytest.mark.integration
def test_s3_buckets_missing_and_present(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, s3_bucket: str
) -> None:
    from smscast import storage

    storage.put_bytes(f"s3://{s3_bucket}/in/r.csv", b"phone,name\n+447400900123,Ann\n")
    spec = ready(tmp_path, monkeypatch, source=f"s3://{s3_bucket}/in/r.csv", results=f"s3://{s3_bucket}/out")
    assert preflight(spec) == []
    assert storage.list_files(f"s3://{s3_bucket}/out") == []  # the probe object is gone
    [no_key] = preflight(spec.model_copy(update={"source": f"s3://{s3_bucket}/in/none.csv"}))
    assert no_key.what.startswith("recipients object not found")
    gone = spec.model_copy(
        update={"source": "s3://no-such-bucket-pf/r.csv", "results": "s3://no-such-bucket-pf/o"}
    )
    assert [p.what for p in preflight(gone)] == [
        "the S3 bucket 'no-such-bucket-pf' does not exist (source s3://no-such-bucket-pf/r.csv)",
        "the S3 bucket 'no-such-bucket-pf' does not exist (results s3://no-such-bucket-pf/o)",
    ]
