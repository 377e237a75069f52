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
