"""Helpers shared by the integration tests: recipient files and the results-versus-ledger invariants."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import polars as pl

from sandbox.client import SandboxClient
from tasks.current import current_results


def write_recipients(
    path: Path, n: int, *, start: int = 0, extra: dict[str, list[str]] | None = None
) -> Path:
    rows = [{"phone": f"+4477009{start + i:05d}", "name": f"N{start + i}"} for i in range(n)]
    for col, values in (extra or {}).items():
        for row, value in zip(rows, values, strict=False):
            row[col] = value
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def ledger_frame(client: SandboxClient, provider: str) -> pl.DataFrame:
    entries = client.ledger(provider=provider)
    if not entries:
        return pl.DataFrame(schema={"to": pl.String, "key": pl.String, "message_id": pl.String})
    return pl.DataFrame(entries)


def assert_matches_ledger(
    results: str, campaign_id: str, client: SandboxClient, provider: str, n_input: int
) -> pl.DataFrame:
    """Every input row has exactly one current result; every accepted row is in the ledger exactly once;
    the ledger holds nothing else for this campaign. Returns the current results."""
    current = current_results(results, campaign_id)
    assert current.height == n_input, f"{current.height} current results for {n_input} input rows"
    assert current["row_index"].n_unique() == n_input
    ledger = ledger_frame(client, provider)
    accepted = current.filter(pl.col("status") == "accepted")
    assert ledger.height == accepted.height, f"ledger {ledger.height} vs accepted {accepted.height}"
    assert ledger["to"].n_unique() == ledger.height, "a phone was sent twice"
    assert sorted(ledger["to"].to_list()) == sorted(accepted["phone"].to_list())
    return current


@contextmanager
def env(**values: str) -> Iterator[None]:
    import os

    old: dict[str, Any] = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextmanager
def prefect_harness() -> Iterator[None]:
    """Prefect's test harness (a temporary API for the module's flow runs)."""
    import os

    from prefect.testing.utilities import prefect_test_harness

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    with prefect_test_harness(server_startup_timeout=60):
        yield


@contextmanager
def provider_sandbox(provider: str, key: str, **extra_env: str) -> Iterator[Any]:
    """A sandbox serving one provider's emulator that accepts `key`, with SMSCAST_<PROVIDER>_API_KEY (and
    `extra_env`) set for as long as it runs."""
    import pytest

    from sandbox.server import SandboxServer
    from smscast.settings import env_prefix

    with SandboxServer(emulators=[provider], api_keys={provider: key}) as server:
        mp = pytest.MonkeyPatch()
        mp.setenv(f"{env_prefix(provider)}_API_KEY", key)
        for name, value in extra_env.items():
            mp.setenv(name, value)
        try:
            yield server
        finally:
            mp.undo()
