"""The providers smscast knows, named once.

Everything else is derived from `ProviderName`: the campaign's choices (smscast/campaign.py, the Prefect UI's
form), the adapter registry (providers/registry.py: module `providers.<name>` exposing `ADAPTER`) and the
sandbox's emulators (sandbox/emulators/__init__.py: module `sandbox.emulators.<emulator>` exposing
`EMULATOR`). tests/providers/test_registry.py checks that each name has an adapter, an emulator, a contract
profile and a README row. This module imports nothing of smscast, so any layer may read it.
"""

from __future__ import annotations

from typing import Literal, get_args

# Adding a provider: its name here, then providers/<name>.py and sandbox/emulators/<name>.py ("-" as "_").
ProviderName = Literal["sandbox", "sent-dm", "robase", "textingline", "postman", "instasent"]
PROVIDER_NAMES: tuple[str, ...] = get_args(ProviderName)

# The sandbox calls the emulator of smscast's own API `generic` (its ledger, knobs and stats use that name).
_EMULATOR_NAMES: dict[str, str] = {"sandbox": "generic"}


def module_name(name: str) -> str:
    """A provider or emulator name as a Python module name."""
    return name.replace("-", "_")


def adapter_module(name: str) -> str:
    return f"smscast.providers.{module_name(name)}"


def emulator_name(name: str) -> str:
    """The sandbox's name for provider `name`'s emulator."""
    return _EMULATOR_NAMES.get(name, name)


def emulator_module(name: str) -> str:
    return f"smscast.sandbox.emulators.{module_name(emulator_name(name))}"
