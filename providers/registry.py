"""Provider name -> adapter class. Imports are lazy so that one provider's optional needs never break another;
the names and module paths come from providers/names.py."""

from __future__ import annotations

import importlib

from smscast.errors import ConfigError
from smscast.providers.base import Provider
from smscast.providers.names import PROVIDER_NAMES, adapter_module
from smscast.settings import ProviderSettings, resolve_settings


def provider_class(name: str) -> type[Provider]:
    if name not in PROVIDER_NAMES:
        raise ConfigError(f"unknown provider {name!r}; choose one of {', '.join(PROVIDER_NAMES)}")
    try:
        loaded: type[Provider] = importlib.import_module(adapter_module(name)).ADAPTER
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"provider {name!r} is not available: {exc}") from exc
    return loaded


def make_provider(name: str, *, base_url: str | None = None, require_key: bool = True) -> Provider:
    cls = provider_class(name)
    settings: ProviderSettings = resolve_settings(
        name, base_url=base_url, default_base_url=cls.caps.default_base_url, require_key=require_key
    )
    return cls(settings)
