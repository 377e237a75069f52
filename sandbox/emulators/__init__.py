"""The emulator registry: emulator name -> module, one per provider of providers/names.py. Each module
exposes `EMULATOR`, an `Emulator` subclass (sandbox/framework.py)."""

from __future__ import annotations

from smscast.providers.names import PROVIDER_NAMES, emulator_module, emulator_name

EMULATORS: dict[str, str] = {emulator_name(p): emulator_module(p) for p in PROVIDER_NAMES}

# Other spellings accepted wherever a provider name is given (admin endpoints, config, CLI): smscast's name
# for a provider whose emulator is named otherwise (`sandbox` -> `generic`).
ALIASES: dict[str, str] = {p: emulator_name(p) for p in PROVIDER_NAMES if emulator_name(p) != p}


def canonical_provider(name: str) -> str:
    return ALIASES.get(name, name)
