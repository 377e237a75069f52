"""What tests/test_failover.py (the units) and tests/test_failover_flows.py (end to end) share: the providers'
keys, set for every test by the autouse fixture `keys` (import it into the test module), and a campaign spec
with the fields every failover test leaves alone filled in."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import env

from smscast.campaign import CampaignSpec

KEY = "failover-key"
TL_KEY = "tl-fo-id:tl-fo-secret"  # textingline's key is key_id:secret
TL_SENDER = "+18005559876"
LONG_BODY = "Hello " + "x" * 694  # 700 characters: within the sandbox's 1600, over textingline's 640


@pytest.fixture(autouse=True)
def keys() -> Iterator[None]:
    # Set even for the unit tests: a provider without its key in the environment is looked up as a Prefect
    # Secret block, which would start a Prefect API.
    names = ("SANDBOX", "INSTASENT", "TEXTINGLINE", "SENT_DM")
    values = {f"SMSCAST_{n}_API_KEY": TL_KEY if n == "TEXTINGLINE" else KEY for n in names}
    with env(**values):
        yield


def spec_of(results: Path | str, **kw: Any) -> CampaignSpec:
    fields: dict[str, Any] = {"campaign_id": "fo", "source": "s", "results": str(results), "sender": "ACME"}
    return CampaignSpec(**(fields | kw))
