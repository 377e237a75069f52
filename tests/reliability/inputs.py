"""The input files of the soak campaigns: numbered recipients, then rows whose phone is unusable."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from provider_facts import ProviderFacts

INVALID_PHONES = ("12", "not-a-number")  # appended to every input: must end `invalid`, never sent


def phone(i: int) -> str:
    return f"+4474009{i:05d}"


def write_input(
    path: Path, facts: ProviderFacts, n_valid: int, *, markers: Sequence[int] = ()
) -> tuple[Path, int]:
    """n_valid recipients, then the invalid ones. `markers`: rows whose text carries textingline's compliance
    marker (the whole request is refused for it). Returns (path, number of input rows)."""
    if n_valid > 99_999:
        raise ValueError("phones are +4474009 and five digits")
    marked = set(markers)
    rows: list[dict[str, str]] = []
    for i in range(n_valid + len(INVALID_PHONES)):
        p = phone(i) if i < n_valid else INVALID_PHONES[i - n_valid]
        row = {"phone": p, "name": ("SHAFT-TEST " if i in marked else "") + f"N{i}"}
        if facts.soak.columns is not None:
            row.update(facts.soak.columns(i))
        rows.append(row)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path, len(rows)
