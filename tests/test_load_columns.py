"""tasks.load.load_recipients: column mapping, and the columns a campaign needs (phone, body, template
variables). Every source kind: tests/test_load.py and tests/test_load_sources.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from load_support import load, load_error, write

from smscast.errors import ConfigError


def test_column_mapping(tmp_path: Path) -> None:
    src = write(tmp_path / "m.csv", "msisdn,text,customer,first\n447400900123,Hi Ann,c-1,Ann\n")
    df = load(src, columns={"phone": "msisdn", "body": "text", "recipient_id": "customer", "name": "first"})
    assert df.columns == ["row_index", "phone_raw", "body", "recipient_id", "name"]
    assert df.row(0) == (0, "447400900123", "Hi Ann", "c-1", "Ann")


def test_column_mapping_one_source_column_to_two_names(tmp_path: Path) -> None:
    src = write(tmp_path / "m2.csv", "msisdn,body\n447400900123,x\n")
    df = load(src, columns={"phone": "msisdn", "recipient_id": "msisdn"})
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
    assert load(src, body="Hi {{name}}")["name"].to_list() == ["Ann"]
    assert load(src, template="welcome").height == 1


def test_missing_template_variables(tmp_path: Path) -> None:
    src = write(tmp_path / "tv.csv", "phone,first\n+447400900123,Ann\n")
    message = load_error(src, body="Hi {{name}}, your code is {{ code }}")
    assert "'name', 'code'" in message
    assert "--column name=" in message
    message = load_error(src, template="otp", template_vars=("otp",))
    assert "'otp'" in message
    df = load(src, body="Hi {{name}}", columns={"name": "first"})
    assert df["name"].to_list() == ["Ann"]


def test_query_with_a_file_source_is_a_config_error(tmp_path: Path) -> None:
    src = write(tmp_path / "r.csv", "phone,body\n1,x\n")
    with pytest.raises(ConfigError, match="--query"):
        load(src, query="select 1")
