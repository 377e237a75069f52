"""Provider endpoint and credentials, from options, the environment or a Prefect Secret block.

`SMSCAST_<PROVIDER>_BASE_URL` and `SMSCAST_<PROVIDER>_API_KEY` (provider upper-cased, dashes as underscores);
as a deployment, a Secret block named `smscast-<provider>-api-key` is used when the variable is unset. The base
URL must be a plain http(s) URL: credentials in it (`user:password@`, a query string) are refused, since a URL
is logged by httpx and shown in messages while the key never is.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from smscast.errors import ConfigError


class Secret:
    """A credential that cannot leak by accident: repr/str/format show a mask; `reveal()` is explicit."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> tuple[object, ...]:
        # Pickling (Prefect task parameters, multiprocessing) would copy the secret into storage.
        raise TypeError("Secret values are not picklable; pass the provider name and resolve inside the task")


def env_prefix(provider: str) -> str:
    return "SMSCAST_" + re.sub(r"[^A-Z0-9]", "_", provider.upper())


@dataclass(frozen=True)
class ProviderSettings:
    base_url: str
    api_key: Secret | None


def check_base_url(url: str, provider: str) -> None:
    """Refuse an endpoint that cannot work or that carries a credential, before anything runs.

    A malformed URL would otherwise fail in the middle of sending, as an httpx exception per batch. A URL with
    `user:password@`, a query string or a fragment would carry whatever is in it into httpx's request log
    ("HTTP Request: POST <url>"), exception texts and results: credentials belong in the API key. Messages
    never quote the URL, which may hold exactly such a secret."""
    prefix = env_prefix(provider)
    where = f"pass --base-url or set {prefix}_BASE_URL"
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError for a port that is not a number in range
        httpx.URL(url)
    except (ValueError, httpx.InvalidURL):
        raise ConfigError(
            f"the endpoint for provider {provider!r} is not a valid URL: {where} to e.g. https://api.example.com"
        ) from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"the endpoint for provider {provider!r} must be an http:// or https:// URL with a host "
            f"(e.g. https://api.example.com): {where}"
        )
    if parts.username is not None or parts.password is not None:
        raise ConfigError(
            f"the endpoint for provider {provider!r} carries credentials (user:password@host): remove them "
            f"from the URL and put the key in {prefix}_API_KEY"
        )
    if parts.query or parts.fragment or "?" in url or "#" in url:
        raise ConfigError(
            f"the endpoint for provider {provider!r} has a query string or fragment: give the base URL only "
            f"(scheme, host, port, path); a key goes in {prefix}_API_KEY"
        )
    if any(c.isspace() or not c.isprintable() for c in url):
        raise ConfigError(f"the endpoint for provider {provider!r} contains spaces or control characters")


def secret_block(name: str) -> str | None:
    """A Prefect Secret block's value; quietly absent when there is no API or no block."""
    try:
        from prefect.blocks.system import Secret as SecretBlock

        # `load` is typed as sync-or-async; `_sync=True` makes it sync.
        block: Any = SecretBlock.load(name, _sync=True)  # type: ignore[call-arg]
        value = block.get()
        return str(value) if value else None
    except Exception:
        return None


def resolve_settings(
    provider: str,
    *,
    base_url: str | None = None,
    default_base_url: str | None = None,
    require_key: bool = True,
) -> ProviderSettings:
    prefix = env_prefix(provider)
    url = (base_url or os.environ.get(f"{prefix}_BASE_URL") or default_base_url or "").strip()
    if not url:
        raise ConfigError(f"no endpoint for provider {provider!r}: pass --base-url or set {prefix}_BASE_URL")
    check_base_url(url, provider)
    key = os.environ.get(f"{prefix}_API_KEY")
    if not key and require_key:
        # Only where a key is needed: looking a block up reaches Prefect's API, which from a plain process
        # means starting its temporary server (15-25 s), and a dry run or a check never sends.
        key = secret_block(f"smscast-{provider}-api-key")
    if require_key and not key:
        raise ConfigError(
            f"no credentials for provider {provider!r}: set {prefix}_API_KEY or create the Prefect Secret "
            f"block 'smscast-{provider}-api-key'"
        )
    return ProviderSettings(base_url=url.rstrip("/"), api_key=Secret(key) if key else None)
