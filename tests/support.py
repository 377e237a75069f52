"""Helpers shared by the integration tests: recipient files and the results-versus-ledger invariants."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
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


def sandbox_clock(base_url: str, *, freeze: bool | None = None, advance: float = 0.0) -> dict[str, Any]:
    """Freeze (or restart) a sandbox's clock and move it on; answers its state. A test that asserts what the
    rate limiter does freezes the clock first, so that the requests all happen "at once" however long a
    loaded machine takes over them, and refills happen only when the test advances it. `reset` restarts it.
    """
    from sandbox.client import SandboxClient

    with SandboxClient(base_url) as client:
        return client.clock(freeze=freeze, advance=advance)


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


_HARNESS: ExitStack | None = None


@contextmanager
def prefect_harness() -> Iterator[None]:
    """Prefect's test harness (a temporary API with its own SQLite database) for the caller's flow runs.

    Started by the first module that asks and shared by every later one in this test process (each start
    costs 15-25 s, more on a busy machine); tests/conftest.py stops it at the end of the session. The flow
    runs of several modules then share one database: a test must look up its own runs (by id, by campaign),
    never count all of them."""
    global _HARNESS
    if _HARNESS is None:
        from prefect.testing.utilities import prefect_test_harness

        stack = ExitStack()
        # The timeout is generous for a machine whose cores are busy with another worker; a server that
        # dies while starting fails at once all the same.
        stack.enter_context(prefect_test_harness(server_startup_timeout=300))
        _HARNESS = stack
    yield


def stop_prefect_harness() -> None:
    global _HARNESS
    if _HARNESS is not None:
        stack, _HARNESS = _HARNESS, None
        stack.close()


@contextmanager
def provider_sandbox(provider: str, key: str, **extra_env: str) -> Iterator[Any]:
    """A sandbox serving one provider's emulator that accepts `key`, with SMSCAST_<PROVIDER>_API_KEY (and
    `extra_env`) set for as long as it runs."""
    import pytest

    from servers.sandbox import SandboxServer
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
