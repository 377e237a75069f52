"""Validation: phones to E.164, rendered bodies, segments, duplicates, and every reason reported."""

from __future__ import annotations

from typing import Any

import pandera.polars as pa
import polars as pl
import pytest

from smscast.campaign import CampaignSpec
from smscast.phone import FLOAT_MARK, is_e164, looks_like_float, mask, normalise
from smscast.providers.sandbox import SandboxProvider
from smscast.tasks.validate import features, validate_recipients

CAPS = SandboxProvider.caps


def frame(phones: list[str | None], **cols: list[str | None]) -> pl.DataFrame:
    return pl.DataFrame(
        {"row_index": list(range(len(phones))), "phone_raw": phones, **cols},
        schema_overrides={"phone_raw": pl.String, **{k: pl.String for k in cols}},
    )


@pytest.mark.parametrize(
    ("raw", "country", "expected"),
    [
        ("+44 7400 900123", None, "+447400900123"),
        ("+44 (0)7400-900123", None, "+447400900123"),
        ("0044 7400 900123", None, "+447400900123"),
        ("+1 (415) 555-0100", None, "+14155550100"),
        ("07400 900123", "GB", "+447400900123"),
        ("447400900123", "GB", "+447400900123"),
        ("(020) 7946 0018", "GB", "+442079460018"),
        ("9123 4567", "SG", "+6591234567"),
        ("+44.7400.900.123", None, "+447400900123"),
    ],
)
def test_normalise_accepts_what_people_type(raw: str, country: str | None, expected: str) -> None:
    out = pl.select(normalise(pl.lit(raw), country).alias("p")).item()
    assert out == expected
    assert pl.select(is_e164(pl.lit(out))).item()


@pytest.mark.parametrize("raw", ["12345", "+0447400900123", "+44 7400 900123 ext 5", "abc"])
def test_structurally_bad_numbers_fail(raw: str) -> None:
    assert not pl.select(is_e164(normalise(pl.lit(raw), "GB"))).item()


def test_mask_hides_the_middle() -> None:
    assert mask("+447400900123") == "+44********23"
    assert "7400900" not in mask("+447400900123")


def test_reasons_are_specific_and_all_reported() -> None:
    spec = CampaignSpec(campaign_id="c", source="s", results="r", body="Hi {{name}}")
    df = frame(
        ["+447400900001", "07400900002", None, "+447400900001", "+1 555", "+447400900005"],
        name=["Ann", "Bob", "Cy", "Di", None, "Ed"],
    )
    out = validate_recipients(df, spec, CAPS).sort("row_index")
    assert out["status"].to_list() == [None, "invalid", "invalid", "invalid", "invalid", None]
    assert out["error_code"].to_list() == [
        None,
        "phone_needs_country",
        "phone_missing",
        "duplicate_phone",
        "phone_invalid;template_var_missing",
        None,
    ]
    assert "'name'" in out["error_message"][4]
    assert out["body"][0] == "Hi Ann"


def test_default_country_turns_national_numbers_valid() -> None:
    spec = CampaignSpec(campaign_id="c", source="s", results="r", body="x", default_country="GB")
    out = validate_recipients(frame(["07400900002"]), spec, CAPS)
    assert out["status"].to_list() == [None] and out["phone"].to_list() == ["+447400900002"]


def test_duplicate_keeps_first_even_when_typed_differently() -> None:
    spec = CampaignSpec(campaign_id="c", source="s", results="r", body="x")
    out = validate_recipients(frame(["+44 7400 900001", "+447400900001", "0044-7400-900001"]), spec, CAPS)
    assert out.sort("row_index")["error_code"].to_list() == [None, "duplicate_phone", "duplicate_phone"]


def test_body_limits_come_from_the_provider() -> None:
    # The sandbox allows 1600 characters and 10 segments: 10 GSM-7 parts hold 10 * 153 = 1530 septets.
    spec = CampaignSpec(campaign_id="c", source="s", results="r")
    # 67 UCS-2 units per part hold only 33 emoji: a surrogate pair never straddles two parts.
    bodies = ["a" * 1530, "a" * 1531, "a" * 1601, "😀" * 330, "😀" * 331, "", None]
    out = validate_recipients(frame([f"+44740090000{i}" for i in range(7)], body=bodies), spec, CAPS)
    out = out.sort("row_index")
    assert out["segments"].to_list()[:5] == [10, 11, 11, 10, 11]
    assert out["encoding"].to_list()[:5] == ["GSM-7", "GSM-7", "GSM-7", "UCS-2", "UCS-2"]
    assert out["error_code"].to_list() == [
        None,
        "too_many_segments",
        "body_too_long;too_many_segments",
        None,
        "too_many_segments",
        "body_missing",
        "body_missing",
    ]


def test_supplied_recipient_ids_must_be_unique() -> None:
    spec = CampaignSpec(campaign_id="c", source="s", results="r", body="x")
    out = validate_recipients(
        frame(["+447400900001", "+447400900002"], recipient_id=["u1", "u1"]), spec, CAPS
    )
    assert out.sort("row_index")["error_code"].to_list() == [None, "duplicate_recipient_id"]


def test_derived_recipient_id_is_stable_from_the_phone() -> None:
    spec = CampaignSpec(campaign_id="c", source="s", results="r", body="x")
    a = validate_recipients(frame(["+44 7400 900001"]), spec, CAPS)
    b = validate_recipients(frame(["0044 7400 900001"]), spec, CAPS)
    assert a["recipient_id"].to_list() == b["recipient_id"].to_list() == ["p447400900001"]


def test_a_media_row_needs_no_body_only_where_the_provider_sends_mms() -> None:
    from smscast.providers.textingline import TextinglineProvider

    spec = CampaignSpec(campaign_id="c", source="s", results="r", sender="+18005559876")
    df = frame(
        ["+447400900001", "+447400900002"], body=[None, None], media_url=["https://cdn.test/a.png", None]
    )
    mms = validate_recipients(df, spec, TextinglineProvider.caps).sort("row_index")
    assert mms["error_code"].to_list() == [None, "body_missing"]
    sms_only = validate_recipients(df, spec, CAPS).sort("row_index")
    assert sms_only["error_code"].to_list() == ["body_missing", "body_missing"]


def test_unrendered_placeholder_in_a_body_column_is_quarantined() -> None:
    # Regression: a body column holding "Hi {{name}}, welcome" (an export whose template was never rendered)
    # went out literally to real people.
    spec = CampaignSpec(campaign_id="c", source="s", results="r")
    df = frame(
        ["+447400900001", "+447400900002", "+447400900003", "+447400900004"],
        body=["Hi {{name}}, welcome", "Hi Ann, welcome", "Code {{ code }}", "a {single} brace"],
    )
    out = validate_recipients(df, spec, CAPS).sort("row_index")
    assert out["status"].to_list() == ["invalid", None, "invalid", None]
    assert out["error_code"].to_list() == ["template_unrendered", None, "template_unrendered", None]
    assert "--allow-braces" in out["error_message"][0]


def test_a_variable_whose_value_is_a_placeholder_is_quarantined_too() -> None:
    spec = CampaignSpec(campaign_id="c", source="s", results="r", body="Hi {{name}}")
    df = frame(["+447400900001", "+447400900002"], name=["{{first_name}}", "Ann"])
    out = validate_recipients(df, spec, CAPS).sort("row_index")
    assert out["error_code"].to_list() == ["template_unrendered", None]
    assert out["body"][1] == "Hi Ann"


def test_allow_braces_sends_them_as_written() -> None:
    spec = CampaignSpec(campaign_id="c", source="s", results="r", allow_braces=True)
    df = frame(["+447400900001"], body=["Use {{braces}} literally"])
    out = validate_recipients(df, spec, CAPS)
    assert out["status"].to_list() == [None]


def test_phones_already_in_e164_skip_normalising_with_the_same_result() -> None:
    # features() normalises only the rows not already "+digits": the mix must come out as normalising all.
    raw = [
        "+447400900001",
        " +44 7400 900002",
        "0044 7400 900003",
        "4.477E+11",
        None,
        "+４４7400900004",
        "abc",
    ]
    raw += ["+447400900005", "447400900006", "+44\u200e7400900007", "'+447400900008"]
    df = frame(raw).with_columns(pl.Series(FLOAT_MARK, [False] * 8 + [True, False, None]))
    spec = CampaignSpec(campaign_id="c", source="s", results="r", body="x", default_country="GB")
    out = features(df, spec, CAPS)
    expected = df.select(
        normalise(pl.col("phone_raw"), "GB").alias("phone"),
        (looks_like_float(pl.col("phone_raw")) | pl.col(FLOAT_MARK).fill_null(False)).alias(FLOAT_MARK),
    )
    assert out.select("phone", FLOAT_MARK).to_dicts() == expected.to_dicts()
    assert out["phone_raw"].to_list() == raw  # normalised beside it, not in place
    assert out[FLOAT_MARK].to_list() == [
        False,
        False,
        False,
        True,
        False,
        False,
        False,
        False,
        True,
        False,
        False,
    ]


def test_pandera_runs_the_checks_and_reports_the_failure_cases(monkeypatch: pytest.MonkeyPatch) -> None:
    reported: list[pl.DataFrame] = []
    validate = pa.DataFrameSchema.validate

    def spy(self: pa.DataFrameSchema, *args: Any, **kwargs: Any) -> Any:
        try:
            return validate(self, *args, **kwargs)
        except pa.errors.SchemaErrors as exc:
            reported.append(exc.failure_cases)
            raise

    monkeypatch.setattr(pa.DataFrameSchema, "validate", spy)
    spec = CampaignSpec(campaign_id="c", source="s", results="r", body="x")
    out = validate_recipients(frame(["+447400900001", "+447400900001", "abc"]), spec, CAPS).sort("row_index")
    assert out["error_code"].to_list() == [None, "duplicate_phone", "phone_not_a_number"]
    (cases,) = reported
    assert cases.select("column", "check", "failure_case", "index").sort("index").rows() == [
        ("phone", "duplicate_phone", "+447400900001", 1),
        ("phone", "phone_not_a_number", "abc", 2),
    ]
