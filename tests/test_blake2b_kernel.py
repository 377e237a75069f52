"""The compiled BLAKE2b-12 kernel gives exactly hashlib's digests: every message length around and across the
128-byte blocks, any bytes (non-ASCII, NUL, 0xFF), prefixes of every size that matters, runs of items joined
with the separator, and the same output whether one thread or several share the work."""

from __future__ import annotations

import hashlib
import itertools
import random

import polars as pl
import pytest

pytest.importorskip("numba")  # numpy comes with it

import numpy as np

from smscast.blake2b_kernel import hex_digests


def _reference(prefix: bytes, items: list[bytes], lead: bytes = b"sc-") -> bytes:
    return lead + hashlib.blake2b(prefix + b"\x1f".join(items), digest_size=12).hexdigest().encode()


def _flat(items: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    data = np.frombuffer(b"".join(items), dtype=np.uint8)
    offsets = np.zeros(len(items) + 1, dtype=np.int64)
    np.cumsum([len(m) for m in items], out=offsets[1:])
    return data, offsets


def _split(flat: np.ndarray, width: int) -> list[bytes]:
    raw = flat.tobytes()
    return [raw[i : i + width] for i in range(0, len(raw), width)]


@pytest.mark.parametrize("prefix", [b"", b"camp\x1f", bytes(range(127)), bytes(128), "ü€𝄞".encode() * 20])
def test_every_length_from_0_to_300_bytes(prefix: bytes) -> None:
    rng = random.Random(len(prefix))
    messages = [rng.randbytes(length) for length in range(301)]
    messages += ["ünïcødé ✓ 𝄞".encode() * k for k in range(1, 20)] + [b"\x00" * 129, b"\xff" * 256]
    data, offsets = _flat(messages)
    out = hex_digests(prefix, data, offsets, b"sc-")
    assert _split(out, 27) == [_reference(prefix, [m]) for m in messages]


def test_runs_are_joined_with_the_separator() -> None:
    rng = random.Random(7)
    items = [rng.randbytes(rng.randrange(0, 60)) for _ in range(500)]
    sizes = [0, 1, 2, 5, 17, 40, 1, 0, 100, 334]  # empty runs too: they hash the prefix alone
    bounds = np.zeros(len(sizes) + 1, dtype=np.int64)
    np.cumsum(sizes, out=bounds[1:])
    data, offsets = _flat(items)
    scope = b"camp\x1fsandbox\x1f"
    out = hex_digests(scope, data, offsets, b"scb-", bounds)
    expected = [_reference(scope, items[lo:hi], b"scb-") for lo, hi in itertools.pairwise(bounds)]
    assert _split(out, 28) == expected


def test_threads_split_the_work_without_changing_it() -> None:
    n = 120_000  # enough for the work to be split
    ids = pl.select(pl.format("+4474009{}", pl.int_range(n).cast(pl.String).str.zfill(5))).to_series()
    arr = ids.to_arrow()
    _, offset_buffer, data = arr.buffers()
    offsets = np.frombuffer(offset_buffer, dtype=np.int64)[: n + 1]
    one = hex_digests(b"c\x1f", data, offsets, b"sc-", threads=1)
    three = hex_digests(b"c\x1f", data, offsets, b"sc-", threads=3)
    assert (
        one.tobytes() == hex_digests(b"c\x1f", data, offsets, b"sc-", np.arange(n + 1), threads=2).tobytes()
    )
    assert one.tobytes() == three.tobytes()
    picks = [0, 1, 39_999, 40_000, 79_999, 80_000, n - 1]
    assert [_split(one, 27)[i] for i in picks] == [_reference(b"c\x1f", [ids[i].encode()]) for i in picks]


def test_no_groups_give_an_empty_buffer() -> None:
    nothing = np.zeros(0, np.uint8)
    assert hex_digests(b"c", nothing, np.zeros(1, np.int64), b"sc-").size == 0
    assert hex_digests(b"c", nothing, np.zeros(1, np.int64), b"sc-", np.zeros(1, np.int64)).size == 0
