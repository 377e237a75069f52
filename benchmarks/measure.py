"""What the benchmarks measure besides time: the peak resident memory of this process while a block runs."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import psutil


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
