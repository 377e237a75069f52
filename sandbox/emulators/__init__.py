"""The emulator registry: provider name -> module. Each module exposes `EMULATOR`, an `Emulator` subclass
(sandbox/framework.py). Add a provider by adding its module and one line here."""

from __future__ import annotations

EMULATORS: dict[str, str] = {
    "generic": "sandbox.emulators.generic",
    "textingline": "sandbox.emulators.textingline",
    "sent-dm": "sandbox.emulators.sent_dm",
    "robase": "sandbox.emulators.robase",
    "postman": "sandbox.emulators.postman",
    "instasent": "sandbox.emulators.instasent",
}

# Other spellings accepted wherever a provider name is given (admin endpoints, config, CLI): smscast calls
# the generic API's provider `sandbox`.
ALIASES: dict[str, str] = {"sandbox": "generic"}


def canonical_provider(name: str) -> str:
    return ALIASES.get(name, name)
