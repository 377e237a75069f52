"""A provider is declared once (providers/names.py): every name there has an adapter, an emulator, a row of
test facts (tests/provider_facts.py, its contract profile among them) and a README row, and every list of
providers is derived from that one."""

from __future__ import annotations

import re
from pathlib import Path
from typing import get_args

import pytest
from provider_facts import FACTS

from smscast.campaign import CampaignSpec
from smscast.errors import ConfigError
from smscast.providers.base import Provider
from smscast.providers.names import PROVIDER_NAMES, ProviderName, emulator_name
from smscast.providers.registry import provider_class
from smscast.sandbox.app import load_emulator
from smscast.sandbox.emulators import EMULATORS, canonical_provider
from smscast.sandbox.framework import Emulator

ROOT = Path(__file__).resolve().parents[2]


def _readme_providers() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    table = text.split("## Providers", 1)[1].split("\n\n", 2)[1]
    return re.findall(r"^\| `([a-z0-9-]+)`", table, flags=re.MULTILINE)


@pytest.mark.parametrize("name", PROVIDER_NAMES)
def test_each_provider_has_an_adapter_an_emulator_a_contract_profile_and_a_readme_row(name: str) -> None:
    adapter = provider_class(name)
    assert issubclass(adapter, Provider) and adapter.caps.name == name

    emulator = load_emulator(emulator_name(name))
    assert issubclass(emulator, Emulator)
    assert canonical_provider(name) == emulator_name(name)

    assert name in FACTS, f"tests/provider_facts.py has no facts for {name}"

    assert name in _readme_providers(), f"README.md's Providers table has no row for `{name}`"


def test_every_list_of_providers_is_the_one_declaration() -> None:
    assert get_args(ProviderName) == PROVIDER_NAMES
    assert set(EMULATORS) == {emulator_name(n) for n in PROVIDER_NAMES}
    assert sorted(FACTS) == sorted(PROVIDER_NAMES)
    assert sorted(_readme_providers()) == sorted(PROVIDER_NAMES)
    # The campaign's choices (the UI form's) are the same names.
    choices = CampaignSpec.model_json_schema()["properties"]["provider"]["enum"]
    assert choices == list(PROVIDER_NAMES)


def test_an_unknown_provider_is_refused_by_name() -> None:
    with pytest.raises(ConfigError, match="choose one of sandbox"):
        provider_class("smsco")
