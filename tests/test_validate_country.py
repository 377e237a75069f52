"""Validity per country (libphonenumber's metadata, smscast/numbering.py): numbers with no such range in their
country are `phone_invalid_for_country`, and with --require-mobile, valid numbers of a type that cannot
receive SMS are `phone_not_mobile`. One phone reason per row; duplicates only among fully valid phones."""

from __future__ import annotations

from collections.abc import Sequence

import phonenumbers
import polars as pl
import pytest

from smscast.campaign import CampaignSpec
from smscast.providers.sandbox import SandboxProvider
from smscast.tasks.validate import MESSAGES, SMS_NUMBER_TYPES, validate_recipients

CAPS = SandboxProvider.caps
PHONE_CODES = {
    "phone_missing",
    "phone_float",
    "phone_not_a_number",
    "phone_needs_country",
    "phone_invalid",
    "phone_invalid_for_country",
    "phone_not_mobile",
}


def check(
    phones: Sequence[str | None], *, require_mobile: bool = False, country: str | None = None
) -> pl.DataFrame:
    spec = CampaignSpec(
        campaign_id="c",
        source="s",
        results="r",
        body="hello",
        require_mobile=require_mobile,
        default_country=country,
    )
    df = pl.DataFrame(
        {"row_index": list(range(len(phones))), "phone_raw": list(phones)},
        schema_overrides={"phone_raw": pl.String},
    )
    return validate_recipients(df, spec, CAPS).sort("row_index")


def test_a_landline_is_refused_only_when_mobiles_are_required() -> None:
    london = "+442079460000"
    required = check([london], require_mobile=True)
    assert required["status"].to_list() == ["invalid"]
    assert required["error_code"].to_list() == ["phone_not_mobile"]
    assert "fixed line" in required["error_message"][0]
    assert required["number_type"].to_list() == ["fixed_line"]
    plain = check([london])
    assert plain["status"].to_list() == [None] and plain["error_code"].to_list() == [None]


@pytest.mark.parametrize(
    "phone",
    [
        "+447700900123",  # a range reserved for drama: no such number
        "+44740090012",  # a British mobile a digit short
        "+4474009001234",  # and a digit long
    ],
)
def test_a_number_with_no_such_range_in_its_country_is_invalid_for_it(phone: str) -> None:
    out = check([phone])
    assert out["status"].to_list() == ["invalid"]
    assert out["error_code"].to_list() == ["phone_invalid_for_country"]
    assert "GB" in out["error_message"][0]
    assert out["country"].to_list() == ["GB"] and out["number_type"].to_list() == ["unknown"]


def test_a_us_number_libphonenumber_cannot_call_mobile_or_landline_passes_require_mobile() -> None:
    out = check(["+12025550123"], require_mobile=True)
    assert out["number_type"].to_list() == ["fixed_line_or_mobile"]
    assert out["status"].to_list() == [None]


def test_require_mobile_refuses_exactly_the_types_that_cannot_receive_sms() -> None:
    # Each region's example number of every type, as libphonenumber types it.
    examples: dict[str, str] = {}
    for region in ("GB", "US", "DE", "FR"):
        for kind in range(11):
            ex = phonenumbers.example_number_for_type(region, kind)
            if ex is not None:
                e164 = phonenumbers.format_number(ex, phonenumbers.PhoneNumberFormat.E164)
                examples[e164] = _type_name(phonenumbers.number_type(ex))
    assert set(examples.values()) >= {
        "fixed_line",
        "mobile",
        "toll_free",
        "premium_rate",
        "voicemail",
        "pager",
    }
    phones = sorted(examples)
    out = check(phones, require_mobile=True)
    assert out["number_type"].to_list() == [examples[p] for p in phones]
    refused = ["phone_not_mobile" if examples[p] not in SMS_NUMBER_TYPES else None for p in phones]
    assert out["error_code"].to_list() == refused
    assert check(phones)["error_code"].to_list() == [None] * len(phones)


def _type_name(kind: int) -> str:
    names = {v: k.lower() for k, v in vars(phonenumbers.PhoneNumberType).items() if k.isupper()}
    return names[kind]


def test_only_fully_valid_phones_count_as_duplicates() -> None:
    out = check(
        [
            "+447700900123",
            "+447700900123",
            "+442079460000",
            "+442079460000",
            "+447400900123",
            "+447400900123",
        ],
        require_mobile=True,
    )
    assert out["error_code"].to_list() == [
        "phone_invalid_for_country",
        "phone_invalid_for_country",
        "phone_not_mobile",
        "phone_not_mobile",
        None,
        "duplicate_phone",
    ]


def test_one_phone_reason_per_row() -> None:
    phones = [
        "call me",  # not a number: not also invalid for its country
        None,
        "4.477E+11",
        "07400 900123",  # no country code, none given
        "+44 12",  # too short for E.164
        "+447700900123",
        "+442079460000",
        "+999123456789",  # no such calling code
        "+447400900123",
    ]
    out = check(phones, require_mobile=True)
    assert out["error_code"].to_list() == [
        "phone_not_a_number",
        "phone_missing",
        "phone_float",
        "phone_needs_country",
        "phone_invalid",
        "phone_invalid_for_country",
        "phone_not_mobile",
        "phone_invalid_for_country",
        None,
    ]
    for codes in out["error_code"].drop_nulls().to_list():
        assert len(set(codes.split(";")) & PHONE_CODES) == 1
    # A calling code no country has: the message says so rather than naming one.
    assert out["error_message"][7] == MESSAGES["phone_invalid_for_country"]


def test_national_numbers_are_judged_in_the_default_country() -> None:
    out = check(["07400 900123", "07700 900123", "020 7946 0000"], country="GB", require_mobile=True)
    assert out["phone"].to_list() == ["+447400900123", "+447700900123", "+442079460000"]
    assert out["error_code"].to_list() == [None, "phone_invalid_for_country", "phone_not_mobile"]


def test_every_country_code_has_a_message() -> None:
    assert "phone_invalid_for_country" in MESSAGES and "phone_not_mobile" in MESSAGES
