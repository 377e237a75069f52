"""What the loader's tests (tests/test_load.py, test_load_columns.py, test_load_sources.py) share: a campaign
spec for a source, a file written from text or bytes, and the loader's refusal as text."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
import pytest

from smscast.campaign import CampaignSpec
from smscast.errors import SourceError
from smscast.tasks.load import load_recipients


def spec(source: str, **kw: Any) -> CampaignSpec:
    return CampaignSpec(campaign_id="c1", source=source, results="/tmp/unused", **kw)


def load(source: str, **kw: Any) -> pl.DataFrame:
    """The recipients the loader reads from `source`, with the campaign's fields `kw`."""
    return load_recipients(spec(source, **kw))


def write(path: Path, data: bytes | str) -> str:
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return str(path)


def load_error(source: str, **kw: Any) -> str:
    with pytest.raises(SourceError) as err:
        load_recipients(spec(source, **kw))
    return str(err.value)
