"""Exact SMS encoding and segment counting (GSM 03.38 / 3GPP TS 23.038 and 23.040), vectorised.

A body goes out as GSM-7 when every character is in the GSM 03.38 default alphabet or its extension table,
otherwise as UCS-2 (in practice UTF-16). One message holds 160 septets (GSM-7) or 70 UTF-16 code units
(UCS-2); a longer body is sent as a concatenated message whose parts each hold 153 septets or 67 code
units, because the User Data Header takes 6 octets (7 septets).

Why the exact greedy split matters: providers bill per segment, and most plan or cap campaigns by segment.
An extension character (``€``, ``{``, ``[``, ``|`` …) is sent as ESC plus a septet, and an astral
character (most emoji) as a UTF-16 surrogate pair; neither pair may be split between two parts, so when
one would straddle a part boundary it moves whole to the next part and that part carries one unit less.
Handsets and carriers split that way, so ``ceil(units / 153)`` can undercount: a 306-septet body is two
parts, unless an escape pair sits at septets 153–154, in which case it is three. Counting with the same
greedy rule the network uses is what makes the planned cost match the invoice.

Not modelled: the national language shift tables (Turkish, Spanish, Portuguese, Indian languages), which
some providers use to keep e.g. ``ç`` or ``ş`` in GSM-7, and any character substitution or Unicode
normalisation a provider may apply (a decomposed ``e`` + U+0301 stays two code points and forces UCS-2).
Position 0x09 of the default alphabet is mapped to ``Ç`` (U+00C7) as in the Unicode consortium's
GSM0338 mapping; lowercase ``ç`` is therefore UCS-2 here.

:func:`segment_frame` does no per-row Python: Polars expressions give the encoding and the unit count for
every row, and ``segments = 1 if units <= single else ceil(units / part)``, which is exact for any body
without a 2-unit character. Multipart bodies that do contain one are then counted exactly, all at once:
each body is cut into chunks that end at a 2-unit character (so the work grows with the number of such
characters, not with the number of characters), which places every pair's first unit on one global
number line; then every body advances one part per round, moving the boundary back by one unit where a
pair would straddle it, found with a single ``search_sorted`` over all pair positions. The number of rounds
is the largest segment count, not the number of rows.

:func:`split_reference` is the plain-Python definition the vectorised path is tested against.
"""

from __future__ import annotations

import polars as pl

__all__ = [
    "GSM7_BASIC",
    "GSM7_EXTENSION",
    "GSM7_MULTI_PART",
    "GSM7_SINGLE",
    "UCS2_MULTI_PART",
    "UCS2_SINGLE",
    "is_gsm7",
    "segment_frame",
    "split_reference",
]

GSM7_ENCODING = "GSM-7"
UCS2_ENCODING = "UCS-2"

GSM7_SINGLE = 160
GSM7_MULTI_PART = 153
UCS2_SINGLE = 70
UCS2_MULTI_PART = 67

# The default alphabet in code order 0x00..0x7F, without 0x1B (ESC), which is not a character of its own:
# it only introduces an extension-table character. 127 sendable characters.
GSM7_BASIC: str = (
    "@£$¥èéùìòÇ\nØø\rÅå"  # 0x00-0x0F
    "Δ_ΦΓΛΩΠΨΣΘΞ"  # 0x10-0x1A
    "ÆæßÉ"  # 0x1C-0x1F (0x1B, ESC, left out)
    " !\"#¤%&'()*+,-./"  # 0x20-0x2F (0x24 is ¤, not $)
    "0123456789:;<=>?"  # 0x30-0x3F
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZ"  # 0x40-0x5A
    "\u00c4\u00d6\u00d1\u00dc\u00a7"  # 0x5B-0x5F: Ä Ö Ñ Ü §
    "¿abcdefghijklmnopqrstuvwxyzäöñüà"  # 0x60-0x7F
)

# The extension table reached through ESC: each costs two septets (ESC + code).
GSM7_EXTENSION: str = "\x0c^{}\\[~]|€"  # 0x0A 0x14 0x28 0x29 0x2F 0x3C 0x3D 0x3E 0x40 0x65

_GSM7_BASIC_SET = frozenset(GSM7_BASIC)
_GSM7_EXTENSION_SET = frozenset(GSM7_EXTENSION)
_GSM7_ALL_SET = _GSM7_BASIC_SET | _GSM7_EXTENSION_SET


def _regex_class(chars: str, *, negate: bool = False) -> str:
    """A Rust-regex character class with every member written as ``\\x{HEX}``: no character (``]``,
    ``\\``, ``^``, ``[``, ``-``, ``~``, ``&``) can be read as class syntax."""
    members = "".join(f"\\x{{{ord(c):X}}}" for c in sorted(set(chars)))
    return f"[{'^' if negate else ''}{members}]"


_NOT_GSM7_RE = _regex_class(GSM7_BASIC + GSM7_EXTENSION, negate=True)
_EXTENSION_RE = _regex_class(GSM7_EXTENSION)
_NOT_EXTENSION_RE = _regex_class(GSM7_EXTENSION, negate=True)
_ASTRAL_RE = r"[\x{10000}-\x{10FFFF}]"
_NOT_ASTRAL_RE = r"[^\x{10000}-\x{10FFFF}]"
# A run of 1-unit characters closed by one 2-unit character: every 2-unit character ends exactly one match.
_GSM7_CHUNK_RE = f"{_NOT_EXTENSION_RE}*{_EXTENSION_RE}"
_UCS2_CHUNK_RE = f"{_NOT_ASTRAL_RE}*{_ASTRAL_RE}"

# Speed only (the results do not depend on it): most bodies are ASCII, and for them the question is
# narrower. The 31 ASCII characters outside GSM-7 (controls other than LF, FF, CR; '`'; DEL) are searched
# as classes of at most 8 bytes, which the regex engine turns into a literal prefilter (about 10x faster
# here than one class of all 31, or than the negated class, which must walk every byte).
_ASCII_NOT_GSM7 = "".join(chr(i) for i in range(128) if chr(i) not in _GSM7_ALL_SET)
_ASCII_NOT_GSM7_RES = [_regex_class(_ASCII_NOT_GSM7[i : i + 8]) for i in range(0, len(_ASCII_NOT_GSM7), 8)]
_ASCII_EXTENSION_RE = _regex_class("".join(c for c in GSM7_EXTENSION if c.isascii()))


def is_gsm7(text: str) -> bool:
    """Whether ``text`` can be sent in the GSM 7-bit alphabet (basic table plus extension table)."""
    return all(c in _GSM7_ALL_SET for c in text)


def _limits(encoding: str) -> tuple[int, int]:
    return (GSM7_SINGLE, GSM7_MULTI_PART) if encoding == GSM7_ENCODING else (UCS2_SINGLE, UCS2_MULTI_PART)


def _unit_width(char: str, encoding: str) -> int:
    if encoding == GSM7_ENCODING:
        return 2 if char in _GSM7_EXTENSION_SET else 1
    return 2 if ord(char) > 0xFFFF else 1


def split_reference(text: str) -> tuple[str, list[str]]:
    """Pure-Python reference: the encoding and the segment texts, by the exact greedy split.

    Each part is filled with as many characters as fit; a 2-unit character (GSM-7 escape pair, UTF-16
    surrogate pair) that does not fit whole starts the next part. The empty string has no segments, so
    ``len(segments)`` is always the billed segment count and ``"".join(segments) == text``.
    """
    encoding = GSM7_ENCODING if is_gsm7(text) else UCS2_ENCODING
    single, part = _limits(encoding)
    widths = [_unit_width(c, encoding) for c in text]
    if not text:
        return encoding, []
    if sum(widths) <= single:
        return encoding, [text]
    segments: list[str] = []
    start = 0
    used = 0
    for i, width in enumerate(widths):
        if used + width > part:
            segments.append(text[start:i])
            start, used = i, 0
        used += width
    segments.append(text[start:])
    return encoding, segments


def segment_frame(body: pl.Series) -> pl.DataFrame:
    """Encoding, size and exact segment count of every body, without per-row Python.

    Returns one row per element of ``body``, in order, with columns:

    * ``encoding`` (String): ``"GSM-7"`` or ``"UCS-2"``;
    * ``chars`` (Int32): Unicode code points, what people and most providers call characters;
    * ``units`` (Int32): septets for GSM-7 (an extension character counts 2), UTF-16 code units for
      UCS-2 (an astral character such as most emoji counts 2);
    * ``segments`` (Int32): the exact number of SMS parts; 0 for the empty string.

    All four are null where ``body`` is null.
    """
    if body.dtype == pl.Null:
        body = body.cast(pl.String)
    if body.dtype != pl.String:
        raise TypeError(f"segment_frame needs a String series, got {body.dtype}")

    gsm = pl.col("_gsm")
    frame = (
        _classify(body)
        .lazy()
        .with_columns(
            _single=pl.when(gsm).then(GSM7_SINGLE).otherwise(UCS2_SINGLE).cast(pl.Int32),
            _part=pl.when(gsm).then(GSM7_MULTI_PART).otherwise(UCS2_MULTI_PART).cast(pl.Int32),
            units=pl.col("chars") + pl.col("_pairs"),
        )
        .with_columns(
            encoding=pl.when(gsm)
            .then(pl.lit(GSM7_ENCODING))
            .when(gsm.not_())
            .then(pl.lit(UCS2_ENCODING))
            .otherwise(pl.lit(None, dtype=pl.String)),
            segments=pl.when(pl.col("units") == 0)
            .then(0)
            .when(pl.col("units") <= pl.col("_single"))
            .then(1)
            # integer ceil division: (u + p - 1) // p
            .otherwise((pl.col("units") + pl.col("_part") - 1) // pl.col("_part"))
            .cast(pl.Int32),
            # the plain formula may undercount only for multipart bodies holding a 2-unit character
            _exact=(pl.col("units") > pl.col("_single")) & (pl.col("_pairs") > 0),
        )
        .collect()
    )

    exact_rows = frame.select(pl.arg_where(pl.col("_exact"))).to_series()
    if exact_rows.len() > 0:
        exact = _greedy_segments(frame.filter(pl.col("_exact")).select("body", "_gsm", "units", "_part"))
        frame = frame.with_columns(frame.get_column("segments").clone().scatter(exact_rows, exact))
    return frame.select("encoding", "chars", "units", "segments")


def _classify(body: pl.Series) -> pl.DataFrame:
    """Columns body, chars (Int32), _gsm (Boolean) and _pairs (Int32: the number of 2-unit characters
    under the row's own encoding; '€' is 2 septets in GSM-7 but 1 code unit in UCS-2); nulls stay null.

    ASCII bodies (as many bytes as characters) can hold neither an astral character nor '€', so they only
    need the two cheap ASCII scans; the full-alphabet regexes run on the non-ASCII bodies alone.
    """
    text = pl.col("body")
    frame = (
        pl.DataFrame({"body": body})
        .lazy()
        .with_columns(chars=text.str.len_chars().cast(pl.Int32))
        .with_columns(
            _ascii=text.str.len_bytes() == pl.col("chars"),
            _ascii_gsm=pl.any_horizontal(text.str.contains(r) for r in _ASCII_NOT_GSM7_RES).not_(),
            _ascii_ext=text.str.count_matches(_ASCII_EXTENSION_RE).cast(pl.Int32),
        )
        .collect()
    )
    rows = frame.select(pl.arg_where(pl.col("_ascii").not_())).to_series()
    other = (
        frame.lazy()
        .select(text.gather(rows))
        .with_columns(_gsm=text.str.contains(_NOT_GSM7_RE).not_())
        .select(
            "_gsm",
            _pairs=pl.when(pl.col("_gsm"))
            .then(text.str.count_matches(_EXTENSION_RE))
            .otherwise(text.str.count_matches(_ASTRAL_RE))
            .cast(pl.Int32),
        )
        .collect()
    )
    ascii_gsm = frame.get_column("_ascii_gsm")
    # an ASCII body that is not GSM-7 (a tab, a backtick) is UCS-2 with no 2-unit character
    pairs = frame.get_column("_ascii_ext") * ascii_gsm.cast(pl.Int32)
    # Series.scatter writes in place: scatter into copies, never into frame's own columns
    return frame.select("body", "chars").with_columns(
        _gsm=ascii_gsm.clone().scatter(rows, other.get_column("_gsm")),
        _pairs=pairs.scatter(rows, other.get_column("_pairs")),
    )


def _greedy_segments(rows: pl.DataFrame) -> pl.Series:
    """Exact greedy segment counts for multipart bodies holding 2-unit characters.

    ``rows`` has columns body, _gsm, units, _part; every body is non-empty and has a 2-unit character.
    Bodies are laid end to end on one number line of units. Each 2-unit character is located by cutting
    the body into chunks that end with one (a chunk of n code points spans n + 1 units), so only the
    first unit of every pair is materialised. Then every body advances one part per round: a part that
    starts at ``a`` ends at ``a + part``, or one unit earlier when a pair begins at ``a + part - 1``.
    """
    units = rows.get_column("units").cast(pl.Int64)
    row_end = units.cum_sum()
    row_start = row_end - units

    # each encoding's bodies with their own chunk pattern; each half is in row order, so one sort merges them
    with_start = rows.select("body", "_gsm", _row_start=row_start)
    pair_starts = (
        pl.concat(
            [
                with_start.lazy()
                .filter(pl.col("_gsm") if encoding == GSM7_ENCODING else pl.col("_gsm").not_())
                .select(
                    "_row_start",
                    # unit offset, within its body, of each 2-unit character's first unit
                    _offset=pl.col("body")
                    .str.extract_all(_GSM7_CHUNK_RE if encoding == GSM7_ENCODING else _UCS2_CHUNK_RE)
                    .list.eval((pl.element().str.len_chars().cast(pl.Int64) + 1).cum_sum() - 2),
                )
                .explode("_offset")
                .select(pl.col("_row_start") + pl.col("_offset"))
                for encoding in (GSM7_ENCODING, UCS2_ENCODING)
            ]
        )
        .collect()
        .to_series()
        .sort()
    )
    last_pair = pair_starts.len() - 1

    part = rows.get_column("_part").cast(pl.Int64)
    position = row_start
    segments = pl.zeros(rows.height, dtype=pl.Int32, eager=True)
    while True:
        active = position < row_end
        if not active.any():
            break
        segments = segments + active.cast(pl.Int32)
        boundary = position + part
        # a pair beginning on the last unit of this part would have its second unit outside: move it on
        index = (
            pair_starts.search_sorted(boundary - 1, side="left").cast(pl.Int64).clip(upper_bound=last_pair)
        )
        end = boundary - (pair_starts.gather(index) == boundary - 1).cast(pl.Int64)
        # clamp to the body's end; finished bodies stay there (their boundary - 1 >= row_end)
        position = end.zip_with(end < row_end, row_end)
    return segments
