"""Phone numbers to E.164, vectorised.

People type numbers with spaces, dashes, dots, parentheses, a `00` international prefix, a `(0)` after the
country code, or as national numbers, and paste them with invisible direction marks and zero-width spaces.
Spreadsheets add their own: Excel's leading apostrophe (`'+447400900123`, "keep this as text"), full-width
digits from CJK input methods (`＋４４７７００…`), and numbers stored as floats (`4.477E+11`), whose digits may
already be lost: those are recognised (`looks_like_float`) so that validation can refuse them by name.
Everything here is Polars expressions: `phonenumbers` costs ~50 µs per number in Python (docs/design.md), so it
is used only to look up a region's calling code and trunk prefix once.
The check is structural (E.164: `+`, a non-zero country digit, 7–15 digits in all), not per-country
numbering-plan validity; the provider is the final judge and its per-row refusals come back as `rejected`.
"""

from __future__ import annotations

from functools import cache

import polars as pl

from smscast.errors import ConfigError

E164_PATTERN = r"^\+[1-9][0-9]{6,14}$"
INVISIBLE = r"\p{Cf}"  # Unicode "format" characters: invisible, direction and joiner controls
# Only digits (any script's: other scripts' digits are a number, just not an E.164 one) and an optional "+",
# once the separators are gone: anything else (letters, "N/A", "#", a lone "+") is not a phone number at all.
NUMBER_PATTERN = r"^\+?\p{Nd}+$"
# A float written out: "4.477e11", "4.47400900123E+11", "4,477E+11" (a comma-decimal locale).
FLOAT_PATTERN = r"^[+-]?[0-9]+(?:[.,][0-9]*)?[eE][+-]?[0-9]{1,3}$"
# Set by tasks/load.py on rows whose phone column was a float column (Parquet, NDJSON, DuckDB): its text is
# plain digits, so only the column's type tells that digits may have been lost.
FLOAT_MARK = "_phone_was_float"

# Full-width forms (U+FF01-FF5E) are ASCII in another width; NFKC folds them to ASCII, and so does this, in one
# vectorised pass (Aho-Corasick), along with the ideographic space. Other scripts' digits are left alone: NFKC
# keeps them too, and they are not E.164.
_WIDE = [chr(c) for c in range(0xFF01, 0xFF5F)] + ["\u3000"]
_NARROW = [chr(c - 0xFEE0) for c in range(0xFF01, 0xFF5F)] + [" "]


@cache
def region_prefixes(region: str) -> tuple[str, str | None, tuple[int, ...]]:
    """(calling code, national trunk prefix, possible national lengths) for an ISO region,
    e.g. GB -> ("44", "0", (7, 9, 10))."""
    from phonenumbers import PhoneMetadata

    meta = PhoneMetadata.metadata_for_region(region.upper())
    if meta is None:
        raise ConfigError(
            f"unknown country {region!r} for --default-country (use an ISO code such as GB, SG, US)"
        )
    lengths = tuple(meta.general_desc.possible_length or ()) if meta.general_desc else ()
    return str(meta.country_code), meta.national_prefix, lengths


def normalise(raw: pl.Expr, default_country: str | None = None) -> pl.Expr:
    """The E.164 candidate for each raw phone; null where the input is null or blank.

    The result is not guaranteed valid: check it with `is_e164`. Keeping the candidate (rather than
    nulling it) lets the results show what we tried, and lets the reason tell "no country code" apart.
    """
    s = _clean(raw)
    # "+44 (0)7400 900123": the (0) is a trunk prefix written for national callers; drop it before the
    # general separator removal turns it into a real digit.
    s = s.str.replace(r"^(\+|00)([1-9][0-9]{0,2})\s*\(0\)", "${1}${2}")
    s = s.str.replace_all(r"[\s\-.()/\u00a0\u2010-\u2015]", "")
    s = s.str.replace(r"^tel:", "").str.replace(r"^00", "+")
    s = pl.when(s.str.len_chars() > 0).then(s).otherwise(None)
    if default_country:
        code, trunk, lengths = region_prefixes(default_country)
        national = s.str.strip_prefix(trunk) if trunk else s
        # "447400900123" with GB: the country code typed without its +. Recognised when the digits start
        # with the code, are too long for a national number, and the rest has a national length.
        n = s.str.len_chars()
        typed_code = s.str.starts_with(code) & ~n.is_in(lengths) & (n - len(code)).is_in(lengths)
        s = (
            pl.when(s.str.starts_with("+"))
            .then(s)
            .when(typed_code)
            .then(pl.lit("+") + s)
            # A national number of a length the region never uses stays as typed, so it fails the E.164
            # check instead of becoming a plausible-looking wrong number.
            .when(national.str.len_chars().is_in(lengths) | (len(lengths) == 0))
            .then(pl.lit("+" + code) + national)
            .otherwise(s)
        )
    return s


def _clean(raw: pl.Expr) -> pl.Expr:
    """Invisible characters gone, full-width forms folded, Excel's "keep as text" apostrophe dropped."""
    # Invisible formatting characters (Unicode Cf: LRM/RLM U+200E/F, the bidi embeddings and overrides
    # U+202A-E and isolates U+2066-9, zero-width space/joiners U+200B-D, word joiner U+2060, BOM U+FEFF, soft
    # hyphen U+00AD) come along when a number is pasted from a web page, a PDF or a right-to-left document.
    # They only steer display: the digits are stored in reading order either way, so dropping them yields the
    # number the person saw. Digits are never dropped; full-width ones become the same ASCII digits.
    s = raw.cast(pl.String).str.replace_all(INVISIBLE, "").str.replace_many(_WIDE, _NARROW).str.strip_chars()
    # Excel shows `'+447400900123` as +447400900123 but some exports write the apostrophe out. One only: a
    # second one was typed by someone, and the number is then refused rather than guessed at.
    return s.str.strip_prefix("'").str.strip_chars()


def looks_like_float(raw: pl.Expr) -> pl.Expr:
    """The raw phone is a float in scientific notation ("4.477E+11"): a spreadsheet kept 15 or fewer
    significant digits and may have dropped the rest; there is no telling which number it was."""
    return _clean(raw).str.contains(FLOAT_PATTERN).fill_null(False)


def is_number(phone: pl.Expr) -> pl.Expr:
    """The normalised candidate is digits with an optional leading "+" (whether or not a valid one)."""
    return phone.str.contains(NUMBER_PATTERN).fill_null(False)


def number_key(phone: pl.Expr) -> pl.Expr:
    """An E.164 number's digits as an unsigned integer (≤ 15 digits fit in 64 bits): set lookups on it are
    several times faster than on the text, which matters for million-number lists. Only for values already
    known to be E.164 (`is_e164`): "+44…" and "44…" get the same key, and text that is not digits gets null."""
    return phone.str.strip_prefix("+").cast(pl.UInt64, strict=False)


def is_e164(phone: pl.Expr) -> pl.Expr:
    return phone.str.contains(E164_PATTERN).fill_null(False)


def mask(phone: str | None) -> str:
    """For logs: keep the country code and last two digits, e.g. +44*******23."""
    if not phone:
        return "<none>"
    if len(phone) <= 6:
        return "*" * len(phone)
    return phone[:3] + "*" * (len(phone) - 5) + phone[-2:]
