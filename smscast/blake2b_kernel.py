"""BLAKE2b with a 12-byte digest, for millions of messages in one call, giving exactly hashlib's digests.

Row and batch keys (tasks/plan.py) are `hashlib.blake2b(message, digest_size=12)`, hex-encoded. Hashed one
Python call per row, ten million rows take 3-5 s of one core holding the GIL (hashlib releases it only for
long messages), and their ten million bytes objects and digests about 1 GB. This kernel hashes every message
in one numba-compiled loop over Arrow's flat buffers, with no Python object per row: 0.2-0.3 µs of CPU a
row (one BLAKE2b compression, as fast as hashlib's C code, is most of it), on every core, since it
releases the GIL and the rows are split between threads.

Import this module only for large inputs: numba costs about half a second to import and load the compiled
code, and the first call on a machine compiles the kernel (5-10 s; `cache=True` keeps the machine code on
disk, so later processes load it). tasks/plan.py falls back to hashlib below its row threshold and when
numba is not installed; tests/test_blake2b_kernel.py checks both agree on every message length from 0 to
300 bytes.

The algorithm is RFC 7693's, unkeyed, with the digest length in the parameter block: a different digest size
is a different function, not a truncation of BLAKE2b-512. A message is hashed as the concatenation
`prefix + item[0] + sep + item[1] + sep + ...`, streamed through a 128-byte block, so neither the row keys'
(campaign, 0x1F, recipient id) nor a batch's joined row keys are ever materialised as one byte string.
"""

from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import numpy.typing as npt
from numba import njit

if sys.byteorder != "little":
    # The kernel reads each 128-byte block as little-endian words in place (BLAKE2b's byte order).
    raise ImportError("smscast.blake2b_kernel needs a little-endian machine; hashlib is used instead")

DIGEST_SIZE = 12
Buffer = Any  # an ndarray, or anything with the buffer protocol (Arrow's buffers, bytes)
HEX_WIDTH = 2 * DIGEST_SIZE

_IV = np.array(
    [
        0x6A09E667F3BCC908,
        0xBB67AE8584CAA73B,
        0x3C6EF372FE94F82B,
        0xA54FF53A5F1D36F1,
        0x510E527FADE682D1,
        0x9B05688C2B3E6C1F,
        0x1F83D9ABFB41BD6B,
        0x5BE0CD19137E2179,
    ],
    dtype=np.uint64,
)
# Parameter block word 0: digest length, key length 0, fanout 1, depth 1 (sequential mode).
_PARAM0 = np.uint64(0x01010000 | DIGEST_SIZE)
# RFC 7693's message schedule: round r takes the words in the order of row r (rounds 10 and 11 repeat 0 and 1).
_SIGMA = np.array(
    [
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
        [14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3],
        [11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4],
        [7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8],
        [9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13],
        [2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9],
        [12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11],
        [13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10],
        [6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5],
        [10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0],
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
        [14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3],
    ],
    dtype=np.uint8,
)
_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8).copy()
# Every shift count typed as uint64: numba would promote uint64 with a plain int to float64.
_R32, _R24, _R16, _R63 = np.uint64(32), np.uint64(24), np.uint64(16), np.uint64(63)
_L32, _L40, _L48, _L1 = np.uint64(32), np.uint64(40), np.uint64(48), np.uint64(1)
_BYTE = np.uint64(0xFF)
_ALL_ONES = np.uint64(0xFFFFFFFFFFFFFFFF)


@njit(cache=True, inline="always")
def _g(a: Any, b: Any, c: Any, d: Any, x: Any, y: Any) -> tuple[Any, Any, Any, Any]:
    a = a + b + x
    d = d ^ a
    d = (d >> _R32) | (d << _L32)
    c = c + d
    b = b ^ c
    b = (b >> _R24) | (b << _L40)
    a = a + b + y
    d = d ^ a
    d = (d >> _R16) | (d << _L48)
    c = c + d
    b = b ^ c
    b = (b >> _R63) | (b << _L1)
    return a, b, c, d


@njit(cache=True)
def _compress(h: Any, m: Any, counter: int, last: bool) -> None:
    # The working vector is 16 scalars, not an array, so that LLVM keeps it in registers. (Writing the 12
    # rounds out with their permutations is 20 % faster, but numba then compiles for 20 s of CPU, not 5.)
    v0, v1, v2, v3, v4, v5, v6, v7 = h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]
    v8, v9, v10, v11 = _IV[0], _IV[1], _IV[2], _IV[3]
    # Byte counts stay far below 2**64, so the counter's high word (v13's mask) is always zero.
    v12 = _IV[4] ^ np.uint64(counter)
    v13 = _IV[5]
    v14 = _IV[6] ^ _ALL_ONES if last else _IV[6]
    v15 = _IV[7]
    for r in range(12):
        v0, v4, v8, v12 = _g(v0, v4, v8, v12, m[_SIGMA[r, 0]], m[_SIGMA[r, 1]])
        v1, v5, v9, v13 = _g(v1, v5, v9, v13, m[_SIGMA[r, 2]], m[_SIGMA[r, 3]])
        v2, v6, v10, v14 = _g(v2, v6, v10, v14, m[_SIGMA[r, 4]], m[_SIGMA[r, 5]])
        v3, v7, v11, v15 = _g(v3, v7, v11, v15, m[_SIGMA[r, 6]], m[_SIGMA[r, 7]])
        v0, v5, v10, v15 = _g(v0, v5, v10, v15, m[_SIGMA[r, 8]], m[_SIGMA[r, 9]])
        v1, v6, v11, v12 = _g(v1, v6, v11, v12, m[_SIGMA[r, 10]], m[_SIGMA[r, 11]])
        v2, v7, v8, v13 = _g(v2, v7, v8, v13, m[_SIGMA[r, 12]], m[_SIGMA[r, 13]])
        v3, v4, v9, v14 = _g(v3, v4, v9, v14, m[_SIGMA[r, 14]], m[_SIGMA[r, 15]])
    h[0] ^= v0 ^ v8
    h[1] ^= v1 ^ v9
    h[2] ^= v2 ^ v10
    h[3] ^= v3 ^ v11
    h[4] ^= v4 ^ v12
    h[5] ^= v5 ^ v13
    h[6] ^= v6 ^ v14
    h[7] ^= v7 ^ v15


@njit(cache=True, inline="always")
def _absorb(h: Any, m: Any, block: Any, fill: int, counter: int, src: Any, start: int, end: int) -> Any:
    """Append src[start:end] to the message; a full block is compressed only once more bytes arrive, since
    the last block (even a full one) must be compressed with the final flag."""
    for i in range(start, end):
        if fill == 128:
            counter += 128
            _compress(h, m, counter, False)
            fill = 0
        block[fill] = src[i]
        fill += 1
    return fill, counter


@njit(cache=True, nogil=True)
def _hex_digests(
    prefix: Any, data: Any, offsets: Any, bounds: Any, sep: Any, lead: Any, out: Any, lo: int, hi: int
) -> None:
    width = lead.shape[0] + HEX_WIDTH
    h = np.empty(8, dtype=np.uint64)
    m = np.empty(16, dtype=np.uint64)
    block = m.view(np.uint8)  # the message block, read as 16 little-endian words without a copy
    for g in range(lo, hi):
        for i in range(8):
            h[i] = _IV[i]
        h[0] ^= _PARAM0
        fill, counter = _absorb(h, m, block, 0, 0, prefix, 0, prefix.shape[0])
        first, last = (bounds[g], bounds[g + 1]) if bounds.shape[0] else (g, g + 1)
        for item in range(first, last):
            if item > first:
                fill, counter = _absorb(h, m, block, fill, counter, sep, 0, sep.shape[0])
            fill, counter = _absorb(h, m, block, fill, counter, data, offsets[item], offsets[item + 1])
        counter += fill
        for j in range(fill, (fill + 7) // 8 * 8):
            block[j] = 0
        for w in range((fill + 7) // 8, 16):
            m[w] = 0
        _compress(h, m, counter, True)
        pos = g * width
        for j in range(lead.shape[0]):
            out[pos + j] = lead[j]
        pos += lead.shape[0]
        for k in range(DIGEST_SIZE):
            byte = (h[k // 8] >> np.uint64(8 * (k % 8))) & _BYTE
            out[pos + 2 * k] = _HEX[byte >> np.uint64(4)]
            out[pos + 2 * k + 1] = _HEX[byte & np.uint64(15)]


def hex_digests(
    prefix: bytes,
    data: Buffer,
    offsets: Buffer,
    lead: bytes,
    bounds: Buffer | None = None,
    sep: bytes = b"\x1f",
    threads: int | None = None,
) -> npt.NDArray[np.uint8]:
    """`lead` + hex(BLAKE2b-12(prefix + sep.join(items))) for each group of items, as one flat buffer of
    fixed-width ASCII texts (len(lead) + 24 bytes each).

    Item i is data[offsets[i]:offsets[i + 1]] (Arrow's binary layout: bytes, and int64 offsets). Group g is
    items bounds[g] to bounds[g + 1] - 1 (int64; an empty group hashes the prefix alone); without bounds,
    each item is a group of its own (row keys). Arrays, or any buffer (Arrow's), are read without a copy.

    The groups are split between `threads` threads (default: the cores this process may use); the kernel
    releases the GIL, and each thread writes its own part of the output.
    """
    data_, offsets_ = _read_only(data, np.uint8), _read_only(offsets, np.int64)
    bounds_ = _read_only(np.zeros(0, np.int64) if bounds is None else bounds, np.int64)
    text, sep_, lead_ = _read_only(prefix), _read_only(sep), _read_only(lead)
    n = len(bounds_) - 1 if bounds is not None else len(offsets_) - 1
    items = int(bounds_[-1] - bounds_[0]) if bounds is not None and n > 0 else max(n, 0)
    out = np.empty(max(n, 0) * (len(lead) + HEX_WIDTH), dtype=np.uint8)

    def run(lo: int, hi: int) -> None:
        _hex_digests(text, data_, offsets_, bounds_, sep_, lead_, out, lo, hi)

    parts = max(1, min(threads or _usable_cores(), items // _MIN_PER_THREAD))
    cuts = [n * i // parts for i in range(parts + 1)]
    if parts == 1:
        run(0, n)
    else:
        with ThreadPoolExecutor(parts) as pool:
            list(pool.map(run, cuts[:-1], cuts[1:]))
    return out


_MIN_PER_THREAD = 50_000  # fewer items than this are not worth a thread


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _read_only(a: Buffer, dtype: type[np.generic] = np.uint8) -> npt.NDArray[Any]:
    """A contiguous, read-only array: numba compiles (and caches) one machine-code version per argument
    type, and Arrow's buffers are read-only, so every argument is made so and one version serves all."""
    array = a if isinstance(a, np.ndarray) else np.frombuffer(a, dtype=dtype)
    view = np.ascontiguousarray(array, dtype=dtype).view()
    view.flags.writeable = False
    return view
