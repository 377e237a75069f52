"""Phones and files as people have them (issue 11, item 5): Excel's apostrophe, floats, full-width digits,
text that is no number, headers in another case, CSV errors by line, other encodings, empty sources, and a
--batch-size over the provider's maximum."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pytest
from pydantic import ValidationError

from smscast.campaign import CampaignSpec
from smscast.errors import SourceError
from smscast.phone import is_e164, normalise
from smscast.providers.sandbox import SandboxProvider
from smscast.settings import ProviderSettings
from smscast.tasks.load import load_recipients
from smscast.tasks.plan import plan_campaign
from smscast.tasks.validate import MESSAGES, validate_recipients

PROVIDER = SandboxProvider(ProviderSettings(base_url="http://x", api_key=None))


def spec(source: str | Path, **kw: Any) -> CampaignSpec:
    return CampaignSpec(campaign_id="c1", source=str(source), results="/tmp/unused", **kw)


def write(path: Path, data: bytes | str) -> Path:
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def load_error(source: str | Path, **kw: Any) -> str:
    with pytest.raises(SourceError) as err:
        load_recipients(spec(source, **kw))
    return str(err.value)


def checked(source: Path, **kw: Any) -> pl.DataFrame:
    s = spec(source, **kw)
    return validate_recipients(load_recipients(s), s, PROVIDER.caps, PROVIDER).sort("row_index")


def codes(source: Path, **kw: Any) -> list[str | None]:
    return checked(source, **kw)["error_code"].to_list()


# -- phones -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "country", "expected"),
    [
        ("'+447400900124", None, "+447400900124"),  # Excel's "keep this as text"
        ("'07400 900124", "GB", "+447400900124"),
        (" '+44 7400 900124 ", None, "+447400900124"),
        ("＋４４７４００９００１２４", None, "+447400900124"),  # full-width, from a CJK input method
        ("＋４４　７４００－９００１２４", None, "+447400900124"),  # ideographic space, full-width hyphen
        ("（０７４００）９００１２４", "GB", "+447400900124"),
        ("＇＋４４７４００９００１２４", None, "+447400900124"),  # a full-width apostrophe too
    ],
)
def test_apostrophe_and_full_width_forms_are_what_people_meant(
    raw: str, country: str | None, expected: str
) -> None:
    out = pl.select(normalise(pl.lit(raw), country).alias("p")).item()
    assert out == expected
    assert pl.select(is_e164(pl.lit(out))).item()


def test_only_one_apostrophe_is_dropped() -> None:
    assert not pl.select(is_e164(normalise(pl.lit("''+447400900124")))).item()


def test_a_csv_of_spreadsheet_phones(tmp_path: Path) -> None:
    src = write(
        tmp_path / "people.csv",
        "phone,body\n'+447400900124,a\n＋４４７４００９００１２５,b\nnot-a-number,c\n07400900126,d\n"
        "4.47400900130E+11,e\n+1 555,f\n+٤٤٧٤٠٠٩٠٠١٢٧,g\n,h\n",
    )
    out = checked(src)
    assert out["phone"].to_list()[:2] == ["+447400900124", "+447400900125"]
    assert out["error_code"].to_list() == [
        None,
        None,
        "phone_not_a_number",
        "phone_needs_country",  # digits without a country code, and no --default-country
        "phone_float",
        "phone_invalid",
        "phone_invalid",  # other scripts' digits are a number, not an E.164 one
        "phone_missing",
    ]
    assert "stored as a floating-point number: digits may be lost" in out["error_message"][4]
    assert out["error_message"][2] == MESSAGES["phone_not_a_number"]


@pytest.mark.parametrize(
    "text", ["4.477e11", "4.47400900130E+11", "4,477E+11", "4477E11", "＋４.４７７Ｅ＋１１", "'4.477E+11"]
)
def test_scientific_notation_in_a_csv_is_phone_float_with_or_without_a_country(
    tmp_path: Path, text: str
) -> None:
    src = write(tmp_path / "sci.csv", f'phone,body\n"{text}",hi\n')
    assert codes(src) == ["phone_float"]
    assert codes(src, default_country="GB") == ["phone_float"]


def test_a_float_phone_column_in_parquet_is_refused_even_when_its_digits_look_right(tmp_path: Path) -> None:
    src = tmp_path / "f.parquet"
    pl.DataFrame(
        {"phone": [4.47400900130e11, 447400900123.0, float("nan"), None], "body": ["a", "b", "c", "d"]}
    ).write_parquet(src)
    out = checked(src, default_country="GB")
    assert out["error_code"].to_list() == ["phone_float", "phone_float", "phone_missing", "phone_missing"]
    assert "_phone_was_float" not in out.columns  # validation's own marker does not reach the results
    assert out["recipient_id"].to_list()[:2] == ["row-0", "row-1"]  # not derived from a doubtful number


def test_float_phones_in_ndjson_and_float32(tmp_path: Path) -> None:
    src = write(
        tmp_path / "f.ndjson", '{"phone": 4.4740090013e11, "body": "a"}\n{"phone": 4.5e11, "body": "b"}\n'
    )
    assert codes(src) == ["phone_float", "phone_float"]
    p32 = tmp_path / "f32.parquet"
    pl.DataFrame({"phone": pl.Series([4.4740090013e11], dtype=pl.Float32), "body": ["a"]}).write_parquet(p32)
    assert codes(p32, default_country="GB") == ["phone_float"]


def test_integer_and_decimal_phone_columns_are_exact_and_pass(tmp_path: Path) -> None:
    src = tmp_path / "i.parquet"
    pl.DataFrame({"phone": [447400900123], "body": ["a"]}).write_parquet(src)
    assert codes(src, default_country="GB") == [None]
    dec = tmp_path / "d.parquet"
    pl.DataFrame({"phone": pl.Series([447400900124], dtype=pl.Decimal(15, 0)), "body": ["a"]}).write_parquet(
        dec
    )
    assert codes(dec, default_country="GB") == [None]


def test_a_float_row_never_keeps_a_later_good_row_as_its_duplicate(tmp_path: Path) -> None:
    first = tmp_path / "a.parquet"
    pl.DataFrame({"phone": [447400900123.0], "body": ["a"]}).write_parquet(first)
    write(tmp_path / "b.csv", "phone,body\n+447400900123,b\n")
    assert codes(tmp_path, default_country="GB") == ["phone_float", None]


def test_a_column_named_like_the_float_marker_is_refused(tmp_path: Path) -> None:
    src = write(tmp_path / "m.csv", "phone,body,_phone_was_float\n+447400900123,hi,true\n")
    assert "reserves" in load_error(src)


# -- headers ------------------------------------------------------------------------------------------------


def test_canonical_names_in_another_case_or_spacing_are_matched(tmp_path: Path) -> None:
    src = write(
        tmp_path / "h.csv",
        " PHONE ,Body,Recipient ID,First  Name,media-url,Other\n+447400900123,hi,r1,Ann,http://x,o\n",
    )
    df = load_recipients(spec(src, body="Hi {{first_name}}"))
    assert df.columns == [
        "row_index",
        "phone_raw",
        "body",
        "recipient_id",
        "first_name",
        "media_url",
        "Other",
    ]
    assert df.row(0) == (0, "+447400900123", "hi", "r1", "Ann", "http://x", "o")


def test_a_parquet_phone_column_named_phone_in_capitals(tmp_path: Path) -> None:
    src = tmp_path / "p.parquet"
    pl.DataFrame({"Phone": ["+447400900123"], "BODY": ["hi"]}).write_parquet(src)
    assert load_recipients(spec(src)).columns == ["row_index", "phone_raw", "body"]


def test_the_exact_name_wins_over_another_spelling(tmp_path: Path) -> None:
    src = write(tmp_path / "e.csv", "Phone,phone,body\n+447400900001,+447400900002,hi\n")
    df = load_recipients(spec(src))
    assert df["phone_raw"].to_list() == ["+447400900002"]
    assert df["Phone"].to_list() == ["+447400900001"]


def test_another_name_needs_a_mapping_quoted_for_the_shell(tmp_path: Path) -> None:
    src = write(tmp_path / "m.csv", "Mobile Number,body\n+447400900123,hi\n")
    message = load_error(src)
    assert "--column 'phone=Mobile Number'" in message
    assert "phone_number" not in message
    other = write(tmp_path / "o.csv", "phone_no,body\n+447400900123,hi\n")
    assert "--column phone=phone_no" in load_error(other)  # nothing to quote
    # the mapping itself may spell the source's name in another case
    df = load_recipients(spec(src, columns={"phone": "mobile number"}))
    assert df["phone_raw"].to_list() == ["+447400900123"]


def test_two_spellings_of_one_name_are_ambiguous(tmp_path: Path) -> None:
    src = write(tmp_path / "two.csv", "Phone,PHONE,body\n+447400900001,+447400900002,hi\n")
    message = load_error(src)
    assert "several columns that could be 'phone'" in message
    assert "--column phone=Phone or --column phone=PHONE" in message


# -- CSV errors by line -------------------------------------------------------------------------------------


def lines(n: int, start: int = 0) -> str:
    return "".join(f"+4474009{i:05d},hello\n" for i in range(start, start + n))


def test_an_unclosed_quote_is_reported_on_its_line(tmp_path: Path) -> None:
    src = write(tmp_path / "q.csv", "phone,body\n" + lines(3) + '+447400900099,"oops\n' + lines(2, 10))
    message = load_error(src)
    assert "line 5" in message and "never closed" in message
    assert "byte" not in message
    assert "oops" not in message and "7400900099" not in message


def test_line_numbers_count_blank_lines_and_lines_inside_quoted_fields(tmp_path: Path) -> None:
    body = 'phone,body\n\n+447400900001,"two\nlines"\n\n+447400900002,a,b\n'
    message = load_error(write(tmp_path / "ml.csv", body))
    assert "line 6 has more fields than the header (3, the header 2)" in message


def test_more_fields_than_the_header_names_the_line(tmp_path: Path) -> None:
    src = write(tmp_path / "r.csv", "phone,body\n" + lines(3) + "+447400900123,hello, world\n" + lines(2, 10))
    message = load_error(src)
    assert "line 5 has more fields than the header" in message


def test_semicolon_files_and_cr_only_files_are_counted_by_their_own_lines(tmp_path: Path) -> None:
    semi = write(tmp_path / "s.csv", "phone;body\n+447400900001;a\n+447400900002;Hi; Ann\n")
    message = load_error(semi)
    assert "line 3 has more fields" in message and "semicolons" in message
    cr = write(tmp_path / "cr.csv", 'phone,body\r+447400900001,a\r+447400900002,"b\r')
    assert "line 3" in load_error(cr)


def test_a_problem_far_into_the_file(tmp_path: Path) -> None:
    rows = lines(5000)  # past the 64 KiB that the dialect sniff reads
    src = write(
        tmp_path / "far.csv", ("phone,body\n" + rows).encode() + "+447400999999,café\n".encode("latin-1")
    )
    message = load_error(src)
    assert "not UTF-8" in message and "line 5002" in message and "--encoding" in message


def test_mixed_line_ends_name_the_line_and_the_cause(tmp_path: Path) -> None:
    message = load_error(write(tmp_path / "m.csv", "phone,body\n+447400900001,a\r+447400900002,b\n"))
    assert "line 2" in message and "one kind of line ending" in message


# -- encodings ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("encoding", "text"),
    [
        ("latin-1", "Café olé"),
        ("cp1252", "“Hi” – Ann €"),
        ("utf-16", "Grüße 😀 你好"),
        ("utf-16-le", "Grüße"),
    ],
)
def test_a_file_in_another_encoding_is_read_with_encoding(tmp_path: Path, encoding: str, text: str) -> None:
    src = write(
        tmp_path / "e.csv", f"phone,body\r\n+447400900123,{text}\r\n+447400900124,x\r\n".encode(encoding)
    )
    if encoding != "utf-16-le":  # without a byte-order mark, UTF-16 needs naming first
        message = load_error(src)
        assert "--encoding" in message
    df = load_recipients(spec(src, encoding=encoding))
    assert df.rows() == [(0, "+447400900123", text), (1, "+447400900124", "x")]


def test_ndjson_in_another_encoding(tmp_path: Path) -> None:
    src = write(tmp_path / "e.ndjson", '{"phone": "+447400900123", "body": "Grüße"}\n'.encode("utf-16"))
    assert load_recipients(spec(src, encoding="utf-16"))["body"].to_list() == ["Grüße"]


def test_bytes_the_named_encoding_cannot_decode_name_the_line(tmp_path: Path) -> None:
    src = write(
        tmp_path / "bad.csv", b"phone,body\n+447400900123,ok\n+447400900124,x\x81y\n"
    )  # 0x81: no cp1252
    message = load_error(src, encoding="cp1252")
    assert "not cp1252 text" in message and "line 3" in message


def test_the_encoding_name_is_checked_and_normalised() -> None:
    assert spec("s.csv", encoding="Latin1").encoding == spec("s.csv", encoding="latin-1").encoding
    assert spec("s.csv").encoding == "utf-8"
    with pytest.raises(ValidationError, match="unknown encoding"):
        spec("s.csv", encoding="klingon")
    with pytest.raises(ValidationError, match="not a text encoding"):
        spec("s.csv", encoding="base64")


# -- empty sources ------------------------------------------------------------------------------------------


def test_empty_sources_of_every_kind_are_refused_unless_allowed(tmp_path: Path) -> None:
    header = write(tmp_path / "h.csv", "phone,body\n")
    nd = tmp_path / "z.parquet"
    pl.DataFrame(
        {"phone": pl.Series([], dtype=pl.String), "body": pl.Series([], dtype=pl.String)}
    ).write_parquet(nd)
    db = tmp_path / "w.db"
    duckdb.connect(str(db)).close()
    query = "SELECT '+447400900123' AS phone, 'x' AS body WHERE false"
    for source, kw in ((header, {}), (nd, {}), (f"duckdb://{db}", {"query": query})):
        message = load_error(source, **kw)
        assert "no recipients (0 data rows)" in message and "--allow-empty" in message
        assert load_recipients(spec(source, allow_empty=True, **kw)).height == 0
    assert "the query on" in load_error(f"duckdb://{db}", query=query)


def test_a_folder_is_empty_only_when_all_its_files_are(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    write(folder / "a.csv", "phone,body\n")
    assert "in holds no recipients" in load_error(folder)
    write(folder / "b.csv", "phone,body\n+447400900123,hi\n")
    assert load_recipients(spec(folder)).height == 1


# -- --batch-size over the provider's maximum ---------------------------------------------------------------


def plan_log(caplog: pytest.LogCaptureFixture, **kw: Any) -> list[str]:
    s = CampaignSpec(campaign_id="c", source="s", results="r", body="hi", **kw)
    df = pl.DataFrame({"row_index": [0, 1], "phone_raw": ["+447400900001", "+447400900002"]})
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="smscast.plan"):
        planned = plan_campaign(
            validate_recipients(df, s, PROVIDER.caps, PROVIDER), s, PROVIDER.caps, PROVIDER
        )
    assert planned.batch_size == min(kw.get("batch_size") or 1000, 1000)
    return [r.getMessage() for r in caplog.records if r.name == "smscast.plan"]


def test_a_capped_batch_size_is_reported(caplog: pytest.LogCaptureFixture) -> None:
    (warning,) = plan_log(caplog, batch_size=100_000)
    assert (
        warning == "--batch-size 100000 is more than sandbox's maximum of 1000 rows per request: using 1000"
    )
    assert plan_log(caplog, batch_size=1000) == []
    assert plan_log(caplog, batch_size=10) == []
    assert plan_log(caplog) == []


def test_a_broken_ndjson_line_is_named(tmp_path: Path) -> None:
    src = write(tmp_path / "b.ndjson", '{"phone": "+447400900123", "body": "a"}\n\n{"phone": \n')
    assert "(line 3 is not)" in load_error(src)
