"""Helpers shared by the integration tests: recipient files and the results-versus-ledger invariants (one
checker, ledger_problems, for the flow tests and the reliability suite)."""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl

from smscast.sandbox.client import SandboxClient
from smscast.tasks.current import current_results


def write_recipients(
    path: Path, n: int, *, start: int = 0, extra: dict[str, list[str]] | None = None
) -> Path:
    rows = [{"phone": f"+4474009{start + i:05d}", "name": f"N{start + i}"} for i in range(n)]
    for col, values in (extra or {}).items():
        for row, value in zip(rows, values, strict=False):
            row[col] = value
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


_LEDGER_KEYS = {"to": pl.String, "key": pl.String, "message_id": pl.String, "batch": pl.String}


def ledger_frame(client: SandboxClient, provider: str) -> pl.DataFrame:
    """The sandbox's ledger for one emulator, every field of its entries; `to`, `key`, `message_id` and
    `batch` are strings, also in an empty ledger."""
    entries = client.ledger(provider=provider)
    if not entries:
        return pl.DataFrame(schema=_LEDGER_KEYS)
    return pl.DataFrame(entries).with_columns(pl.col(name).cast(kind) for name, kind in _LEDGER_KEYS.items())


def ledger_by_phone(ledger: pl.DataFrame) -> pl.DataFrame:
    """One row per phone the ledger holds: its number of entries `n`, and the first one's message id and batch."""
    return ledger.group_by("to").agg(
        n=pl.len(), message_id=pl.col("message_id").first(), batch=pl.col("batch").first()
    )


def ledger_problems(
    current: pl.DataFrame, ledger: pl.DataFrame, n_input: int, *, unknown_may_be_sent: bool = False
) -> list[str]:
    """What breaks "the results match the ledger" (none: they match). Every input row 0..n_input-1 has exactly
    one current result; the ledger holds each phone at most once; every accepted row is in it exactly once,
    with the message id the results carry, and no two accepted rows share a phone; nothing `invalid`,
    `rejected` or `failed` is in it, nor any phone no row accounts for. `unknown_may_be_sent`: a provider
    without idempotency, whose rows in doubt (`unknown`) may each be in the ledger once too."""
    problems: list[str] = []
    row_index = current["row_index"]
    if (
        current.height != n_input
        or row_index.n_unique() != n_input
        or set(row_index.to_list()) != set(range(n_input))
    ):
        problems.append(f"{current.height} current results for {n_input} input rows")
    per_phone = ledger_by_phone(ledger)
    duplicates = ledger.height - per_phone.height
    if duplicates:
        twice = per_phone.filter(pl.col("n") > 1)["to"].head(5).to_list()
        problems.append(f"{duplicates} duplicate ledger entries (a phone sent twice), e.g. {twice}")
    in_ledger = set(per_phone["to"].to_list())

    accepted = current.filter(pl.col("status") == "accepted")
    if accepted["phone"].n_unique() != accepted.height:
        problems.append(f"{accepted.height - accepted['phone'].n_unique()} accepted rows share a phone")
    joined = accepted.join(per_phone, left_on="phone", right_on="to", how="left")
    not_once = joined.filter(pl.col("n").is_null() | (pl.col("n") != 1))
    if not_once.height:
        problems.append(
            f"{not_once.height} accepted rows not in the ledger exactly once, e.g. "
            f"{not_once['phone'].head(5).to_list()}"
        )
    with_id = joined.filter(pl.col("provider_message_id").is_not_null() & pl.col("message_id").is_not_null())
    wrong_id = with_id.filter(pl.col("provider_message_id") != pl.col("message_id"))
    if wrong_id.height:
        problems.append(f"{wrong_id.height} accepted rows carry another message id than the ledger's")

    for status in ("invalid", "rejected", "failed"):
        sent = current.filter((pl.col("status") == status) & pl.col("phone").is_in(in_ledger))
        if sent.height:
            problems.append(
                f"{sent.height} `{status}` rows are in the ledger, e.g. {sent['phone'].head(3).to_list()}"
            )
    allowed = set(accepted["phone"].to_list())
    if unknown_may_be_sent:
        allowed |= set(current.filter(pl.col("status") == "unknown")["phone"].to_list())
    stray = in_ledger - allowed
    if stray:
        problems.append(f"{len(stray)} ledger phones no accepted row accounts for, e.g. {sorted(stray)[:3]}")
    return problems


def assert_matches_ledger(
    results: str, campaign_id: str, client: SandboxClient, provider: str, n_input: int
) -> pl.DataFrame:
    """The campaign's current results match the sandbox's ledger (ledger_problems): in particular the ledger
    holds exactly the accepted rows' phones, once each. Returns the current results."""
    current = current_results(results, campaign_id)
    problems = ledger_problems(current, ledger_frame(client, provider), n_input)
    assert not problems, problems
    return current


def sandbox_clock(base_url: str, *, freeze: bool | None = None, advance: float = 0.0) -> dict[str, Any]:
    """Freeze (or restart) a sandbox's clock and move it on; answers its state. A test that asserts what the
    rate limiter does freezes the clock first, so that the requests all happen "at once" however long a
    loaded machine takes over them, and refills happen only when the test advances it. `reset` restarts it.
    """
    from smscast.sandbox.client import SandboxClient

    with SandboxClient(base_url) as client:
        return client.clock(freeze=freeze, advance=advance)


@contextmanager
def fast_retries() -> Iterator[None]:
    """The send engine's default retry policy with near-zero backoff, for as long as it lasts: a request that
    fails transiently (5xx, a dropped connection) is retried as many times as always, without the seconds of
    exponential backoff between tries, which prove nothing a test asserts and add up over a module. (Throttling
    is unaffected: a 429 pauses for the Retry-After the provider gives, whatever the policy.)"""
    import dataclasses

    import pytest

    from smscast.tasks import send_engine
    from smscast.tasks.send_batch import RetryPolicy

    @dataclasses.dataclass(frozen=True)
    class FastRetryPolicy(RetryPolicy):
        backoff_base: float = 0.001
        backoff_cap: float = 0.01

    with pytest.MonkeyPatch.context() as mp:
        # send_engine looks its RetryPolicy up when a shard starts, so that replacing it changes the default.
        mp.setattr(send_engine, "RetryPolicy", FastRetryPolicy)
        yield


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
def flow_sandbox(key: str) -> Iterator[Any]:
    """What a module whose tests run campaign flows against the sandbox needs: Prefect's test harness, and a
    sandbox whose emulators accept `key`, with SMSCAST_SANDBOX_API_KEY set for as long as it runs."""
    from smscast.servers.sandbox import SandboxServer

    with prefect_harness(), SandboxServer(default_key=key) as server:
        os.environ["SMSCAST_SANDBOX_API_KEY"] = key
        try:
            yield server
        finally:
            os.environ.pop("SMSCAST_SANDBOX_API_KEY", None)


@contextmanager
def provider_sandbox(provider: str, key: str, **extra_env: str) -> Iterator[Any]:
    """A sandbox serving one provider's emulator that accepts `key`, with SMSCAST_<PROVIDER>_API_KEY (and
    `extra_env`) set for as long as it runs."""
    import pytest

    from smscast.servers.sandbox import SandboxServer
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


def quiet_hours_around(now: datetime, hours: int = 2) -> str:
    """Quiet hours from `hours` before `now` to `hours` after it (UTC wall clock): a row in UTC is quiet at
    `now`, one at UTC+6 (`Etc/GMT-6`) is not. Hours wide, so the real time a test runs at never matters."""
    return f"{now - timedelta(hours=hours):%H:%M}-{now + timedelta(hours=hours):%H:%M}"
