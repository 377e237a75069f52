"""The logger a pipeline step writes to: its Prefect run's, so that its lines show with the run in the UI, or a
plain one when it runs outside a run (`smscast check`, tests, benchmarks); and the timing of a step (`stage`)."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def step_logger(name: str) -> logging.Logger | logging.LoggerAdapter[Any]:
    """The run's logger, else `logging.getLogger(name)`."""
    if "prefect" not in sys.modules:  # no run without Prefect, and importing it costs a second or two
        return logging.getLogger(name)
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(name)


@contextmanager
def stage(seconds: dict[str, float], name: str) -> Iterator[None]:
    """Time a pipeline stage into `seconds` (shown in the summary and used by the benchmark)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - start
