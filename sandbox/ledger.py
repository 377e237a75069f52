"""The sandbox's ledger: every message an emulator accepted, the idempotency index, and the counters.

Tests and the benchmark use it to prove that nothing was sent twice and nothing was lost, so it has to hold a
million entries in one process cheaply. It is columnar, with no object per entry:

* the batch-level fields (provider, batch id, batch key, accepted_at) live once per batch, and each entry keeps
  a 4-byte batch number (``array('I')``);
* ``to`` is stored as a 64-bit integer when it is ``+`` followed by digits (always so for an E.164 number,
  which has no leading zero), otherwise in a small side list;
* ``key`` and ``body`` are references to the strings the request carried; the key string is shared with the
  idempotency index, and repeated bodies (a campaign without personalisation) are shared through a bounded
  intern table;
* ``message_id`` is not stored at all: it is derived from the entry's sequence number by the provider's
  formatter (``register``), e.g. ``sbx_<seq>``. Sequence numbers keep growing across ``reset`` so that message
  ids stay unique for the life of the process.

Entries of one batch are contiguous: an emulator adds a request's rows without awaiting in between, and the
server runs one event loop, so no lock is needed anywhere here.
"""

from __future__ import annotations

import time
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypedDict

MessageIdFormat = Callable[[int], str]

# A few thousand distinct bodies cover every non-personalised campaign; past that, bodies are stored as given.
BODY_INTERN_LIMIT = 65_536


class LedgerEntry(TypedDict):
    seq: int
    provider: str
    batch: str
    batch_key: str | None
    key: str | None
    to: str
    body: str | None
    message_id: str
    accepted_at: str  # ISO 8601, UTC


@dataclass
class Counters:
    """Per-provider counters (messages accepted are the ledger's own count). `requests` is keyed by HTTP status as a string, plus the pseudo statuses
    ``drop_before``, ``drop_after`` (connection closed with no response) and ``timeout`` (response held back)."""

    requests: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0  # rows answered from the idempotency index, no new entry
    rejected: int = 0  # rows refused one by one (permanent and transient)
    rejected_codes: dict[str, int] = field(default_factory=dict)

    def request(self, status: int | str) -> None:
        k = str(status)
        self.requests[k] = self.requests.get(k, 0) + 1

    def reject(self, code: str, n: int = 1) -> None:
        self.rejected += n
        self.rejected_codes[code] = self.rejected_codes.get(code, 0) + n

    def as_dict(self, accepted: int) -> dict[str, Any]:
        return {
            "requests": dict(self.requests),
            "accepted": accepted,
            "duplicates": self.duplicates,
            "rejected": self.rejected,
            "rejected_codes": dict(self.rejected_codes),
        }


def _default_message_id(seq: int) -> str:
    return f"msg_{seq}"


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


class Ledger:
    def __init__(self, body_intern_limit: int = BODY_INTERN_LIMIT) -> None:
        self._formats: dict[str, MessageIdFormat] = {}
        self._body_intern_limit = body_intern_limit
        self._seq_base = 0  # entries dropped by earlier resets; seq = base + position + 1
        self._clear()

    def _clear(self) -> None:
        # batch table
        self._b_provider: list[str] = []
        self._b_batch: list[str] = []
        self._b_key: list[str | None] = []
        self._b_at: list[float] = []
        self._b_start: list[int] = []
        self._b_lookup: dict[tuple[str, str], int] = {}
        # entry columns
        self._e_batch = array("I")
        self._e_to = array("q")
        self._to_other: list[str] = []
        self._e_key: list[str | None] = []
        self._e_body: list[str | None] = []
        self._bodies: dict[str, str] = {}
        # idempotency index: (provider, scope) -> key -> position
        self._index: dict[tuple[str, str], dict[str, int]] = {}
        self._counters: dict[str, Counters] = {p: Counters() for p in self._formats}

    def reset(self) -> None:
        """Forget every entry, index and counter. Sequence numbers (hence message ids) keep counting."""
        self._seq_base += len(self._e_key)
        self._clear()

    # ---- set-up -----------------------------------------------------------------------------------------

    def register(self, provider: str, message_id: MessageIdFormat | None = None) -> None:
        """Declare a provider and how its message ids are spelled from a sequence number."""
        self._formats[provider] = message_id or _default_message_id
        self.counters(provider)

    @property
    def providers(self) -> list[str]:
        return list(self._formats)

    def counters(self, provider: str) -> Counters:
        c = self._counters.get(provider)
        if c is None:
            c = self._counters[provider] = Counters()
        return c

    # ---- the hot path -----------------------------------------------------------------------------------

    def index(self, provider: str, scope: str = "") -> dict[str, int]:
        """The idempotency index of one provider (and scope, e.g. an account or a campaign): key -> position.
        Emulators look keys up in it directly; `add(..., index=...)` records new ones."""
        k = (provider, scope)
        idx = self._index.get(k)
        if idx is None:
            idx = self._index[k] = {}
        return idx

    def lookup(self, provider: str, key: str, scope: str = "") -> int | None:
        idx = self._index.get((provider, scope))
        return None if idx is None else idx.get(key)

    def open_batch(
        self, provider: str, batch: str, batch_key: str | None = None, accepted_at: float | None = None
    ) -> int:
        """Start a batch (one provider request) and return its number for `add`."""
        n = len(self._b_batch)
        self._b_provider.append(provider)
        self._b_batch.append(batch)
        self._b_key.append(batch_key)
        self._b_at.append(time.time() if accepted_at is None else accepted_at)
        self._b_start.append(len(self._e_key))
        self._b_lookup[(provider, batch)] = n
        return n

    def add(
        self, batch_no: int, to: str, body: str | None, key: str | None = None, index: dict[str, int] | None = None
    ) -> int:
        """Record one accepted message; return its position. With `key` and `index`, the key is indexed so
        that a repeat finds this entry. The caller checks the index first (see `index`)."""
        pos = len(self._e_key)
        self._e_batch.append(batch_no)
        if len(to) > 1 and to[0] == "+" and to[1] != "0" and len(to) <= 19 and to.isascii() and to[1:].isdigit():
            self._e_to.append(int(to[1:]))
        else:
            self._to_other.append(to)
            self._e_to.append(-len(self._to_other))
        if body is not None:
            shared = self._bodies.get(body)
            if shared is not None:
                body = shared
            elif len(self._bodies) < self._body_intern_limit:
                self._bodies[body] = body
        self._e_body.append(body)
        self._e_key.append(key)
        if key is not None and index is not None:
            index[key] = pos
        return pos

    def seq(self, pos: int) -> int:
        return self._seq_base + pos + 1

    def message_id(self, pos: int) -> str:
        provider = self._b_provider[self._e_batch[pos]]
        return self._formats.get(provider, _default_message_id)(self._seq_base + pos + 1)

    def message_id_format(self, provider: str) -> MessageIdFormat:
        return self._formats.get(provider, _default_message_id)

    # ---- reading ----------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._e_key)

    def count(self, provider: str | None = None) -> int:
        if provider is None:
            return len(self._e_key)
        return sum(
            self._next_start(b) - self._b_start[b]
            for b in range(len(self._b_batch))
            if self._b_provider[b] == provider
        )

    def _next_start(self, b: int) -> int:
        return self._b_start[b + 1] if b + 1 < len(self._b_start) else len(self._e_key)

    def batch_positions(self, provider: str, batch: str) -> range:
        """Positions of the entries a batch created (empty when it created none)."""
        b = self._b_lookup.get((provider, batch))
        if b is None:
            return range(0)
        return range(self._b_start[b], self._next_start(b))

    def to(self, pos: int) -> str:
        v = self._e_to[pos]
        return f"+{v}" if v >= 0 else self._to_other[-v - 1]

    def key(self, pos: int) -> str | None:
        return self._e_key[pos]

    def body(self, pos: int) -> str | None:
        return self._e_body[pos]

    def batch_of(self, pos: int) -> tuple[str, str, str | None, float]:
        """(provider, batch, batch_key, accepted_at) of the entry at `pos`."""
        b = self._e_batch[pos]
        return self._b_provider[b], self._b_batch[b], self._b_key[b], self._b_at[b]

    def entry(self, pos: int) -> LedgerEntry:
        provider, batch, batch_key, at = self.batch_of(pos)
        return {
            "seq": self._seq_base + pos + 1,
            "provider": provider,
            "batch": batch,
            "batch_key": batch_key,
            "key": self._e_key[pos],
            "to": self.to(pos),
            "body": self._e_body[pos],
            "message_id": self.message_id(pos),
            "accepted_at": _iso(at),
        }

    def _batches(self, provider: str | None, batch: str | None) -> Iterator[int]:
        if batch is not None:
            if provider is not None:
                b = self._b_lookup.get((provider, batch))
                if b is not None:
                    yield b
                return
            yield from (b for b, name in enumerate(self._b_batch) if name == batch)
            return
        for b, p in enumerate(self._b_provider):
            if provider is None or p == provider:
                yield b

    def iter_entries(
        self, provider: str | None = None, batch: str | None = None, offset: int = 0, limit: int | None = None
    ) -> Iterator[LedgerEntry]:
        """Entries in acceptance order, optionally of one provider and/or batch; offset/limit count matches."""
        skip = max(0, offset)
        left = limit if limit is not None else -1
        to_other, e_to, e_key, e_body, base = self._to_other, self._e_to, self._e_key, self._e_body, self._seq_base
        for b in self._batches(provider, batch):
            start, stop = self._b_start[b], self._next_start(b)
            size = stop - start
            if skip >= size:
                skip -= size
                continue
            start += skip
            skip = 0
            prov, name, bkey, at = self._b_provider[b], self._b_batch[b], self._b_key[b], _iso(self._b_at[b])
            fmt = self._formats.get(prov, _default_message_id)
            for pos in range(start, stop):
                if left == 0:
                    return
                left -= 1
                v = e_to[pos]
                seq = base + pos + 1
                yield {
                    "seq": seq,
                    "provider": prov,
                    "batch": name,
                    "batch_key": bkey,
                    "key": e_key[pos],
                    "to": f"+{v}" if v >= 0 else to_other[-v - 1],
                    "body": e_body[pos],
                    "message_id": fmt(seq),
                    "accepted_at": at,
                }

    def columns(self, provider: str | None = None, batch: str | None = None) -> dict[str, list[Any]]:
        """The ledger as columns (for Parquet): accepted_at as epoch seconds (float)."""
        cols: dict[str, list[Any]] = {
            k: []
            for k in ("seq", "provider", "batch", "batch_key", "key", "to", "body", "message_id", "accepted_at")
        }
        to_other, e_to, base = self._to_other, self._e_to, self._seq_base
        for b in self._batches(provider, batch):
            start, stop = self._b_start[b], self._next_start(b)
            n = stop - start
            if not n:
                continue
            fmt = self._formats.get(self._b_provider[b], _default_message_id)
            seqs = range(base + start + 1, base + stop + 1)
            cols["seq"].extend(seqs)
            cols["provider"].extend([self._b_provider[b]] * n)
            cols["batch"].extend([self._b_batch[b]] * n)
            cols["batch_key"].extend([self._b_key[b]] * n)
            cols["accepted_at"].extend([self._b_at[b]] * n)
            cols["key"].extend(self._e_key[start:stop])
            cols["body"].extend(self._e_body[start:stop])
            cols["to"].extend(f"+{v}" if v >= 0 else to_other[-v - 1] for v in e_to[start:stop])
            cols["message_id"].extend(map(fmt, seqs))
        return cols

    def stats(self) -> dict[str, Any]:
        return {
            "entries": len(self._e_key),
            "batches": len(self._b_batch),
            "indexed_keys": sum(len(i) for i in self._index.values()),
            "providers": {name: c.as_dict(self.count(name)) for name, c in self._counters.items()},
        }
