"""smscast.encoding: the GSM 03.38 tables, the greedy reference split, and the vectorised segment_frame."""

from __future__ import annotations

import itertools
import math

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smscast.encoding import (
    GSM7_BASIC,
    GSM7_EXTENSION,
    is_gsm7,
    segment_frame,
    split_reference,
)

EURO = "€"
EMOJI = "😀"  # U+1F600, astral: a surrogate pair in UTF-16
ACUTE_A = "á"  # not in GSM 03.38


def frame_row(text: str | None) -> dict[str, object]:
    return segment_frame(pl.Series("body", [text], dtype=pl.String)).row(0, named=True)


def expect(text: str, encoding: str, chars: int, units: int, segments: int) -> None:
    assert frame_row(text) == {"encoding": encoding, "chars": chars, "units": units, "segments": segments}
    ref_encoding, parts = split_reference(text)
    assert (ref_encoding, len(parts)) == (encoding, segments)
    assert "".join(parts) == text


# --- the tables, checked against the Unicode consortium's GSM0338 mapping, code point by code point ---

GSM0338_BASIC_CODEPOINTS = [
    0x40, 0xA3, 0x24, 0xA5, 0xE8, 0xE9, 0xF9, 0xEC, 0xF2, 0xC7, 0x0A, 0xD8, 0xF8, 0x0D, 0xC5, 0xE5,
    0x394, 0x5F, 0x3A6, 0x393, 0x39B, 0x3A9, 0x3A0, 0x3A8, 0x3A3, 0x398, 0x39E, 0xC6, 0xE6, 0xDF, 0xC9,
    0x20, 0x21, 0x22, 0x23, 0xA4, 0x25, 0x26, 0x27, 0x28, 0x29, 0x2A, 0x2B, 0x2C, 0x2D, 0x2E, 0x2F,
    *range(0x30, 0x40),
    0xA1, *range(0x41, 0x5B), 0xC4, 0xD6, 0xD1, 0xDC, 0xA7,
    0xBF, *range(0x61, 0x7B), 0xE4, 0xF6, 0xF1, 0xFC, 0xE0,
]  # fmt: skip
GSM0338_EXTENSION_CODEPOINTS = [0x0C, 0x5E, 0x7B, 0x7D, 0x5C, 0x5B, 0x7E, 0x5D, 0x7C, 0x20AC]


def test_basic_table_is_gsm0338_without_esc() -> None:
    assert len(GSM7_BASIC) == 127  # 128 positions, 0x1B is ESC
    assert [ord(c) for c in GSM7_BASIC] == GSM0338_BASIC_CODEPOINTS
    assert "\x1b" not in GSM7_BASIC
    assert "\x1b" not in GSM7_EXTENSION


def test_extension_table() -> None:
    assert sorted(ord(c) for c in GSM7_EXTENSION) == sorted(GSM0338_EXTENSION_CODEPOINTS)
    assert not set(GSM7_BASIC) & set(GSM7_EXTENSION)


@pytest.mark.parametrize(
    ("char", "gsm"),
    [
        ("Ç", True),
        ("ç", False),  # only the capital is at 0x09
        ("á", False),
        ("É", True),
        ("é", True),
        ("Ê", False),
        ("$", True),
        ("¤", True),
        ("`", False),  # 0x60 is ¿ in GSM, not the backtick
        ("\x1b", False),  # ESC alone is not sendable
        ("\t", False),
        ("\x00", False),
        ("\x1f", False),
        ("\x7f", False),
        ("~", True),
        ("\n", True),
        ("\r", True),
        ("\x0c", True),
        ("Δ", True),
        ("δ", False),
        ("Ä", True),
        ("\u00dc", True),
        ("\u00a7", True),
        ("\u0727", False),  # U+0727, Syriac; a trap: its UTF-8 bytes look like a merged 'Ü§'
        (EURO, True),
        (EMOJI, False),
    ],
)
def test_membership(char: str, gsm: bool) -> None:
    assert is_gsm7(char) is gsm
    assert frame_row(char)["encoding"] == ("GSM-7" if gsm else "UCS-2")


def test_every_table_character_through_the_regex() -> None:
    """Each of the 137 characters, alone and all together, is GSM-7 in the vectorised path (regex
    escaping of ']', '\\', '^', '[', '-' …)."""
    chars = list(GSM7_BASIC + GSM7_EXTENSION)
    frame = segment_frame(pl.Series("body", [*chars, "".join(chars)]))
    assert frame.get_column("encoding").to_list() == ["GSM-7"] * (len(chars) + 1)
    assert frame.get_column("units").to_list() == [
        *([1] * len(GSM7_BASIC)),
        *([2] * len(GSM7_EXTENSION)),
        len(GSM7_BASIC) + 2 * len(GSM7_EXTENSION),
    ]


# --- GSM-7 boundaries ---


def test_gsm_single_and_multipart_boundaries() -> None:
    expect("a" * 160, "GSM-7", 160, 160, 1)
    expect("a" * 161, "GSM-7", 161, 161, 2)
    expect("a" * 306, "GSM-7", 306, 306, 2)
    expect("a" * 307, "GSM-7", 307, 307, 3)


def test_newline_and_carriage_return_are_basic_form_feed_is_extension() -> None:
    expect("\n" * 160, "GSM-7", 160, 160, 1)
    expect("\r\n" * 80, "GSM-7", 160, 160, 1)
    expect("\x0c" * 80, "GSM-7", 80, 160, 1)
    expect("\x0c" * 81, "GSM-7", 81, 162, 2)


def test_extension_char_fills_single_message_exactly() -> None:
    expect("a" * 158 + EURO, "GSM-7", 159, 160, 1)
    expect("a" * 159 + EURO, "GSM-7", 160, 161, 2)


@pytest.mark.parametrize("ext", [EURO, "{", "\\", "]", "^", "\x0c"])
def test_extension_pair_straddling_septet_153_moves_to_next_part(ext: str) -> None:
    # septets 153-154 (1-based): the pair cannot be split, so part 1 holds 152 septets.
    text = "a" * 152 + ext + "a" * 152  # 306 septets: ceil(306 / 153) == 2, but exactly 3
    assert math.ceil(306 / 153) == 2
    expect(text, "GSM-7", 305, 306, 3)
    _, parts = split_reference(text)
    assert parts == ["a" * 152, ext + "a" * 151, "a"]


def test_extension_pair_ending_at_septet_153_stays() -> None:
    text = "a" * 151 + EURO + "a" * 153  # pair at septets 152-153: fits part 1
    expect(text, "GSM-7", 305, 306, 2)
    assert split_reference(text)[1] == ["a" * 151 + EURO, "a" * 153]


def test_extension_pair_starting_at_septet_154_stays() -> None:
    text = "a" * 153 + EURO + "a" * 151
    expect(text, "GSM-7", 305, 306, 2)
    assert split_reference(text)[1] == ["a" * 153, EURO + "a" * 151]


def test_only_extension_characters() -> None:
    expect("{" * 80, "GSM-7", 80, 160, 1)
    # 81 pairs = 162 septets; 153 is odd, so each part holds only 76 pairs (152 septets)
    expect("{" * 81, "GSM-7", 81, 162, 2)
    expect("€" * 153, "GSM-7", 153, 306, 3)  # ceil(306/153) == 2, but 76 + 76 + 1
    assert [len(p) for p in split_reference("€" * 153)[1]] == [76, 76, 1]


# --- UCS-2 boundaries ---


def test_ucs2_single_and_multipart_boundaries() -> None:
    expect(ACUTE_A * 70, "UCS-2", 70, 70, 1)
    expect(ACUTE_A * 71, "UCS-2", 71, 71, 2)
    expect(ACUTE_A * 134, "UCS-2", 134, 134, 2)
    expect(ACUTE_A * 135, "UCS-2", 135, 135, 3)


def test_one_non_gsm_char_turns_everything_ucs2() -> None:
    # '€' costs 2 in GSM-7 but 1 in UCS-2
    expect("a" * 60 + EURO * 9 + ACUTE_A, "UCS-2", 70, 70, 1)
    expect("a" * 60 + EURO * 9 + "ç", "UCS-2", 70, 70, 1)
    # all-ASCII but not GSM-7 (a tab, a backtick): UCS-2, and '{' is then one unit, not an escape pair
    expect("\t" + "{" * 69, "UCS-2", 70, 70, 1)
    expect("`" + "{" * 133, "UCS-2", 134, 134, 2)


def test_emoji_counts_two_units() -> None:
    expect(EMOJI * 35, "UCS-2", 35, 70, 1)
    expect(EMOJI * 36, "UCS-2", 36, 72, 2)
    expect(EMOJI, "UCS-2", 1, 2, 1)


def test_emoji_straddling_unit_67_moves_to_next_part() -> None:
    text = "x" * 66 + EMOJI + "x" * 66  # code units 67-68: 134 units, ceil == 2 but exactly 3
    expect(text, "UCS-2", 133, 134, 3)
    assert split_reference(text)[1] == ["x" * 66, EMOJI + "x" * 65, "x"]


def test_emoji_ending_at_unit_67_stays() -> None:
    text = "x" * 65 + EMOJI + "x" * 67
    expect(text, "UCS-2", 133, 134, 2)
    assert split_reference(text)[1] == ["x" * 65 + EMOJI, "x" * 67]


def test_only_emoji() -> None:
    expect(EMOJI * 67, "UCS-2", 67, 134, 3)  # 33 + 33 + 1 per part: 67 is odd
    assert [len(p) for p in split_reference(EMOJI * 67)[1]] == [33, 33, 1]


def test_mixed_pairs() -> None:
    # UCS-2 body: '€' is 1 unit, the emoji 2; only the emoji can straddle
    text = EURO * 66 + EMOJI + EURO * 66
    expect(text, "UCS-2", 133, 134, 3)
    text = EURO * 65 + EMOJI + "é" + EURO * 66
    expect(text, "UCS-2", 133, 134, 2)
    # GSM bodies with a pair at each of the first two boundaries
    head = "a" * 152 + "[" + "a" * 150 + "]"  # parts: 152 septets, then '[' + 150 a = 152 septets
    expect(head + "a" * 10, "GSM-7", 314, 316, 3)
    assert [len(p) for p in split_reference(head + "a" * 10)[1]] == [152, 151, 11]
    assert math.ceil(466 / 153) == 4
    expect(head + "a" * 160, "GSM-7", 464, 466, 4)
    assert math.ceil(459 / 153) == 3
    expect(head + "a" * 153, "GSM-7", 457, 459, 4)  # part 3 is ']' + 151 a; 2 a left over
    # a pair that ends exactly on septet 153 of part 3 stays there
    expect(head + "a" * 149 + "~" + "a", "GSM-7", 455, 458, 4)
    assert [len(p) for p in split_reference(head + "a" * 149 + "~" + "a")[1]] == [152, 151, 151, 1]


# --- empty, null, dtypes, many rows ---


def test_empty_string() -> None:
    expect("", "GSM-7", 0, 0, 0)
    assert split_reference("") == ("GSM-7", [])


def test_null() -> None:
    assert frame_row(None) == {"encoding": None, "chars": None, "units": None, "segments": None}


def test_all_null_series_and_schema() -> None:
    frame = segment_frame(pl.Series("body", [None, None]))
    assert frame.schema == pl.Schema(
        {"encoding": pl.String, "chars": pl.Int32, "units": pl.Int32, "segments": pl.Int32}
    )
    assert frame.height == 2
    assert frame.null_count().row(0) == (2, 2, 2, 2)


def test_empty_series() -> None:
    frame = segment_frame(pl.Series("body", [], dtype=pl.String))
    assert frame.height == 0
    assert frame.columns == ["encoding", "chars", "units", "segments"]


def test_rejects_non_string() -> None:
    with pytest.raises(TypeError):
        segment_frame(pl.Series("body", [1, 2]))


def test_rows_keep_their_order_and_exact_rows_are_scattered_back() -> None:
    bodies: list[str | None] = [
        "a" * 152 + EURO + "a" * 152,  # exact path: 3
        "a" * 306,  # fast path: 2
        None,
        "x" * 66 + EMOJI + "x" * 66,  # exact path: 3
        "",
        "x" * 65 + EMOJI + "x" * 67,  # exact path: 2
        "hi {name}",  # fast: 1
        "€" * 153,  # exact path: 3
    ]
    frame = segment_frame(pl.Series("body", bodies))
    assert frame.get_column("segments").to_list() == [3, 2, None, 3, 0, 2, 1, 3]
    assert frame.get_column("encoding").to_list() == [
        "GSM-7", "GSM-7", None, "UCS-2", "GSM-7", "UCS-2", "GSM-7", "GSM-7",
    ]  # fmt: skip


def test_long_body_many_rounds() -> None:
    # every part is 152 septets: the next '€' would straddle each boundary; 40 rounds in the exact path
    text = "a" * 152 + (EURO + "a" * 150) * 39 + "aa"  # 6082 septets
    assert math.ceil(6082 / 153) == 40
    expect(text, "GSM-7", 152 + 151 * 39 + 2, 6082, 41)
    assert [len(p) for p in split_reference(text)[1]] == [152] + [151] * 38 + [152, 1]


# --- property: segment_frame agrees with the reference; the reference obeys the rules ---

BASIC = st.sampled_from(GSM7_BASIC)
EXTENSION = st.sampled_from(GSM7_EXTENSION)
# The list filtered once, not each draw (a filtered strategy redraws, which made generation most of the cost).
BMP_NON_GSM = st.sampled_from([c for c in "áçêõłżşğ中文한ا\t`\x1bδ€" if not is_gsm7(c)])
ASTRAL = st.sampled_from(["😀", "🎉", "👍", "𝄞", "\U0010ffff", "\U00010000"])


def char_mix(weights: tuple[int, int, int, int]) -> st.SearchStrategy[str]:
    pools = [BASIC, EXTENSION, BMP_NON_GSM, ASTRAL]
    return st.one_of(*[pool for pool, w in zip(pools, weights, strict=True) for _ in range(w)])


def unit_count(part: str, encoding: str) -> int:
    if encoding == "GSM-7":
        return sum(2 if c in GSM7_EXTENSION else 1 for c in part)
    return len(part.encode("utf-16-le")) // 2


@st.composite
def near_full(draw: st.DrawFn, gsm: bool) -> str:
    """A multipart body of runs of 1-unit characters, each closed by a 2-unit one, padded with 1-unit
    characters to within a unit or two of a whole number of parts: there a pair moved across a boundary
    changes the count, so ``ceil(units / part)`` and the greedy split often disagree (random mixes of
    characters almost never get there)."""
    part = 153 if gsm else 67
    encoding = "GSM-7" if gsm else "UCS-2"
    one_unit = BASIC if gsm else st.one_of(BASIC, BMP_NON_GSM)
    # part - 1 puts the first pair across the first boundary, part - 3 puts the next pair across the next
    runs = draw(
        st.lists(st.sampled_from([part - 1, part - 2, part - 3]) | st.integers(0, part + 2), max_size=8)
    )
    body = "".join(
        draw(st.text(alphabet=one_unit, min_size=r, max_size=r)) + draw(EXTENSION if gsm else ASTRAL)
        for r in runs
    )
    parts = max(2, math.ceil(unit_count(body, encoding) / part)) + draw(st.integers(0, 1))
    missing = parts * part + draw(st.integers(-2, 1)) - unit_count(body, encoding)
    if missing > 0:
        at = draw(st.integers(0, len(body)))
        body = body[:at] + draw(st.text(alphabet=one_unit, min_size=missing, max_size=missing)) + body[at:]
    return body


# random mixes, mostly GSM or mostly UCS-2, plus bodies built so that pairs at part boundaries matter
BODIES = st.one_of(
    st.text(alphabet=char_mix((6, 2, 0, 0)), max_size=480),
    st.text(alphabet=char_mix((12, 2, 0, 0)), min_size=140, max_size=480),
    st.text(alphabet=char_mix((20, 2, 1, 0)), max_size=400),
    st.text(alphabet=char_mix((3, 1, 2, 2)), max_size=300),
    st.text(alphabet=char_mix((0, 0, 1, 1)), min_size=30, max_size=200),
    near_full(gsm=True),
    near_full(gsm=False),
)


def reference_row(text: str) -> tuple[str, int, int, int]:
    encoding, parts = split_reference(text)
    units = sum(
        (2 if c in GSM7_EXTENSION else 1) if encoding == "GSM-7" else (2 if ord(c) > 0xFFFF else 1)
        for c in text
    )
    return encoding, len(text), units, len(parts)


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(st.none(), BODIES), min_size=1, max_size=12))
def test_segment_frame_matches_reference(bodies: list[str | None]) -> None:
    frame = segment_frame(pl.Series("body", bodies, dtype=pl.String))
    got = [tuple(row) for row in frame.iter_rows()]
    want = [(None, None, None, None) if b is None else reference_row(b) for b in bodies]
    assert got == want


@settings(max_examples=300, deadline=None, database=None)
@given(BODIES)
def test_reference_respects_limits_and_never_splits_a_pair(text: str) -> None:
    encoding, parts = split_reference(text)
    assert "".join(parts) == text
    assert encoding == ("GSM-7" if all(c in GSM7_BASIC + GSM7_EXTENSION for c in text) else "UCS-2")
    single, part = (160, 153) if encoding == "GSM-7" else (70, 67)
    total = unit_count(text, encoding)
    assert all(p for p in parts)  # no empty parts
    if total == 0:
        assert parts == []
    elif total <= single:
        assert parts == [text]
    else:
        sizes = [unit_count(p, encoding) for p in parts]
        assert all(s <= part for s in sizes)
        # greedy: a part is cut only when its next character would not fit
        for p, nxt in itertools.pairwise(parts):
            assert unit_count(p, encoding) + unit_count(nxt[0], encoding) > part
        assert len(parts) >= math.ceil(total / part)
    # parts are cut between Python code points, so no surrogate pair or escape pair is ever split;
    # check the UTF-16 view too: no part starts with a low surrogate or ends with a high surrogate
    for p in parts:
        utf16 = p.encode("utf-16-le")
        code_units = [int.from_bytes(utf16[i : i + 2], "little") for i in range(0, len(utf16), 2)]
        if code_units:
            assert not 0xDC00 <= code_units[0] <= 0xDFFF
            assert not 0xD800 <= code_units[-1] <= 0xDBFF
