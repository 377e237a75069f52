"""What the benchmarks share: the recipients they generate, and the peak resident memory they measure."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import polars as pl
import psutil


def make_recipients(rows: int) -> pl.DataFrame:
    """`rows` recipients with a British mobile phone, a name and an order number. The phones count up from
    +44 7400 000000, valid mobiles throughout the 74 range (+44 7700 has blocks that libphonenumber, and so
    validation, calls invalid)."""
    i = pl.int_range(0, rows)
    return pl.select(
        phone=pl.format("+4474{}", i.cast(pl.String).str.zfill(8)),
        name=pl.format("Name{}", (i % 997).cast(pl.String)),
        order=pl.format("#{}", (i + 100000).cast(pl.String)),
    )


@contextmanager
def peak_rss(every: float = 0.02) -> Iterator[Callable[[], int]]:
    """The highest RSS of this process seen while the block runs (sampled every `every` seconds, and once
    more when asked)."""
    proc = psutil.Process()
    peak = [proc.memory_info().rss]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(every):
            peak[0] = max(peak[0], proc.memory_info().rss)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        yield lambda: max(peak[0], proc.memory_info().rss)
    finally:
        stop.set()
        t.join()
