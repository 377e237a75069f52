"""Provider name -> module. Imports are lazy so that one provider's optional needs never break another."""

from __future__ import annotations

import importlib

from providers.base import Provider
from smscast.errors import ConfigError
from smscast.settings import ProviderSettings, resolve_settings

_PROVIDERS: dict[str, str] = {
    "sandbox": "providers.sandbox:SandboxProvider",
    "sent-dm": "providers.sent_dm:SentDmProvider",
    "robase": "providers.robase:RobaseProvider",
    "textingline": "providers.textingline:TextinglineProvider",
    "postman": "providers.postman:PostmanProvider",
    "instasent": "providers.instasent:InstasentProvider",
}


def provider_class(name: str) -> type[Provider]:
    try:
        target = _PROVIDERS[name]
    except KeyError:
        raise ConfigError(f"unknown provider {name!r}; choose one of {', '.join(_PROVIDERS)}") from None
    module, cls = target.split(":")
    try:
        loaded: type[Provider] = getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"provider {name!r} is not available: {exc}") from exc
    return loaded


def make_provider(name: str, *, base_url: str | None = None, require_key: bool = True) -> Provider:
    cls = provider_class(name)
    settings: ProviderSettings = resolve_settings(
        name, base_url=base_url, default_base_url=cls.caps.default_base_url, require_key=require_key
    )
    return cls(settings)


def names() -> list[str]:
    return list(_PROVIDERS)
