"""The sandbox's ledger: every message an emulator accepted, the idempotency index, and the counters.

Tests and the benchmark use it to prove that nothing was sent twice and nothing was lost, so it has to hold a
million entries in one process cheaply. It is columnar, with no object per entry:

* the batch-level fields (provider, batch id, batch key, accepted_at) live once per batch, and each entry
  keeps a 4-byte batch number (``array('I')``);
* ``to`` is stored as a 64-bit integer when it is ``+`` followed by digits (always so for an E.164 number,
  which has no leading zero), otherwise in a small side list;
* ``key`` is a reference to the string the request carried, shared with the idempotency index;
* bodies are UTF-8 bytes appended to one ``bytearray``, each entry keeping one 64-bit (offset, length) word;
  a repeated body (a campaign without personalisation) is stored once, through a small intern table;
* ``message_id`` is not stored at all: it is derived from the entry's sequence number by the provider's
  formatter (``register``), e.g. ``sbx_<seq>``. Sequence numbers keep growing across ``reset`` so that message
  ids stay unique for the life of the process.
* delivery truth (sandbox/truth.py): each message's final outcome, decided at acceptance, and the moment it is
  reached (the batch's acceptance plus the `dlr_delay_ms` of then). Only the exceptions are stored: an
  outcome other than `delivered`, a moment other than the batch's, in sparse dicts.

Entries of one batch are contiguous: an emulator adds a request's rows without awaiting in between, and the
server runs one event loop, so no lock is needed anywhere here.
"""

from __future__ import annotations

import time
from array import array
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any, Protocol, TypedDict

from smscast.sandbox.counters import Counters
from smscast.sandbox.truth import DELIVERED, PENDING, Outcome

MessageIdFormat = Callable[[int], str]

# A few thousand distinct bodies cover every non-personalised campaign; past that, each body is stored anew.
BODY_INTERN_LIMIT = 4096
_LEN_BITS = 24  # body (offset, length) packed as offset << 24 | length; bodies are far below 16 MB
_LEN_MASK = (1 << _LEN_BITS) - 1
_NO_BODY = _LEN_MASK


class Adder(Protocol):
    """`add(to, body, key=None) -> position` for the rows of one batch (see `Ledger.adder`)."""

    def __call__(self, to: str, body: str | None, key: str | None = None) -> int: ...


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
    delivery_status: str  # the final outcome: delivered | undelivered | expired (smscast/delivery.py)
    delivery_error_code: str | None  # the vendor's code when not delivered
    delivery_at: str  # ISO 8601, UTC: when the outcome is reached (before it, the message is pending)


def _default_message_id(seq: int) -> str:
    return f"msg_{seq}"


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


class Ledger:
    def __init__(
        self, body_intern_limit: int = BODY_INTERN_LIMIT, clock: Callable[[], float] = time.time
    ) -> None:
        self._clock = clock  # wall time for accepted_at (the sandbox's Clock, which tests can freeze)
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
        self._b_due: list[float] = []  # when the batch's messages reach their final outcome
        self._b_start: list[int] = []
        self._b_lookup: dict[tuple[str, str], int] = {}
        # entry columns
        self._e_batch = array("I")
        self._e_to = array("q")
        self._to_other: list[str] = []
        self._e_key: list[str | None] = []
        self._e_body = array("Q")  # offset << 24 | length into _blob; _NO_BODY for None
        self._blob = bytearray()
        self._bodies: dict[str, int] = {}  # intern table: body -> packed (offset, length)
        self._outcomes: dict[int, Outcome] = {}  # position -> final outcome, when not DELIVERED
        self._dues: dict[int, float] = {}  # position -> when its outcome is reached, when not the batch's
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
        self,
        provider: str,
        batch: str,
        batch_key: str | None = None,
        accepted_at: float | None = None,
        delay: float = 0.0,
    ) -> int:
        """Start a batch (one provider request) and return its number for `add`. Its messages reach their
        final outcome `delay` seconds after `accepted_at`."""
        n = len(self._b_batch)
        at = self._clock() if accepted_at is None else accepted_at
        self._b_provider.append(provider)
        self._b_batch.append(batch)
        self._b_key.append(batch_key)
        self._b_at.append(at)
        self._b_due.append(at + delay)
        self._b_start.append(len(self._e_key))
        self._b_lookup[(provider, batch)] = n
        return n

    def adder(self, batch_no: int, index: dict[str, int] | None = None) -> Adder:
        """A fast `add(to, body, key) -> position` for the rows of one batch (`open_batch`), indexing keys in
        `index` (from `index()`). Use it in an emulator's per-row loop; the caller checks the index first, and
        must not await between `open_batch` and its last add (entries of a batch are contiguous)."""
        e_batch, e_to, e_key, e_body = (
            self._e_batch.append,
            self._e_to.append,
            self._e_key,
            self._e_body.append,
        )
        key_append = e_key.append
        to_other, blob, bodies, limit = self._to_other, self._blob, self._bodies, self._body_intern_limit
        blob_extend, bodies_get = blob.extend, bodies.get

        def add(to: str, body: str | None, key: str | None = None) -> int:
            pos = len(e_key)
            e_batch(batch_no)
            digits = to[1:]
            if (
                to[:1] == "+"
                and digits.isdigit()
                and digits.isascii()
                and digits[:1] != "0"
                and len(digits) < 19
            ):
                e_to(int(digits))
            else:
                to_other.append(to)
                e_to(-len(to_other))
            if body is None:
                e_body(_NO_BODY)
            else:
                packed = bodies_get(body)
                if packed is None:
                    data = body.encode()
                    if len(data) >= _LEN_MASK:
                        raise ValueError("a message body of 16 MB or more")
                    packed = len(blob) << _LEN_BITS | len(data)
                    blob_extend(data)
                    if len(bodies) < limit:
                        bodies[body] = packed
                e_body(packed)
            key_append(key)
            if key is not None and index is not None:
                index[key] = pos
            return pos

        return add

    def add(
        self,
        batch_no: int,
        to: str,
        body: str | None,
        key: str | None = None,
        index: dict[str, int] | None = None,
    ) -> int:
        """Record one accepted message; return its position. With `key` and `index`, the key is indexed so
        that a repeat finds this entry. The caller checks the index first (see `index`). For many rows, use
        `adder`."""
        return self.adder(batch_no, index)(to, body, key)

    def set_outcome(self, pos: int, outcome: Outcome, due: float | None = None) -> None:
        """Record the final outcome of the message at `pos` (and, with `due`, when it is reached)."""
        if outcome.status == DELIVERED.status:
            self._outcomes.pop(pos, None)
        else:
            self._outcomes[pos] = outcome
        if due is not None:
            self._dues[pos] = due

    def outcome(self, pos: int) -> Outcome:
        return self._outcomes.get(pos, DELIVERED)

    def due(self, pos: int) -> float:
        due = self._dues.get(pos)
        return self._b_due[self._e_batch[pos]] if due is None else due

    def state(self, pos: int, now: float) -> Outcome:
        """What the message is at `now`: pending until its outcome is reached, then the outcome."""
        return PENDING if now < self.due(pos) else self.outcome(pos)

    def positions(self, batch_no: int) -> range:
        """Positions of the entries of the batch `open_batch` numbered `batch_no`."""
        return range(self._b_start[batch_no], self._next_start(batch_no))

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
        return sum(len(self.positions(b)) for b, p in enumerate(self._b_provider) if p == provider)

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
        return self._body(self._e_body[pos])

    def _body(self, packed: int) -> str | None:
        if packed == _NO_BODY:
            return None
        off = packed >> _LEN_BITS
        return self._blob[off : off + (packed & _LEN_MASK)].decode()

    def batch_of(self, pos: int) -> tuple[str, str, str | None, float]:
        """(provider, batch, batch_key, accepted_at) of the entry at `pos`."""
        b = self._e_batch[pos]
        return self._b_provider[b], self._b_batch[b], self._b_key[b], self._b_at[b]

    def _snapshot(self, provider: str | None, batch: str | None) -> Iterator[tuple[int, int, int]]:
        """(batch number, start, stop) of the matching batches that exist now. Lists are bound locally, so a
        reader streaming the ledger while requests add to it (or reset it) sees a consistent prefix."""
        b_provider, b_batch, b_start = self._b_provider, self._b_batch, self._b_start
        nb, ne = len(b_batch), len(self._e_key)
        if batch is not None and provider is not None:
            found = self._b_lookup.get((provider, batch))
            candidates: Iterator[int] | range = iter(() if found is None or found >= nb else (found,))
        else:
            candidates = range(nb)
        for b in candidates:
            if provider is not None and b_provider[b] != provider:
                continue
            if batch is not None and b_batch[b] != batch:
                continue
            yield b, b_start[b], b_start[b + 1] if b + 1 < nb else ne

    def iter_entries(
        self, provider: str | None = None, batch: str | None = None, offset: int = 0, limit: int | None = None
    ) -> Iterator[LedgerEntry]:
        """Entries in acceptance order, optionally of one provider and/or batch (offset/limit count
        matches)."""
        skip = max(0, offset)
        left = limit if limit is not None else -1
        b_provider, b_batch, b_key, b_at = self._b_provider, self._b_batch, self._b_key, self._b_at
        to_other, e_to, e_key, e_body = self._to_other, self._e_to, self._e_key, self._e_body
        blob, base = self._blob, self._seq_base
        outcomes, dues, b_due = self._outcomes, self._dues, self._b_due
        for b, start, stop in self._snapshot(provider, batch):
            size = stop - start
            if skip >= size:
                skip -= size
                continue
            start += skip
            skip = 0
            prov, name, bkey, at, due = b_provider[b], b_batch[b], b_key[b], _iso(b_at[b]), _iso(b_due[b])
            fmt = self._formats.get(prov, _default_message_id)
            for pos in range(start, stop):
                if left == 0:
                    return
                left -= 1
                v = e_to[pos]
                seq = base + pos + 1
                packed = e_body[pos]
                if packed == _NO_BODY:
                    body = None
                else:
                    off = packed >> _LEN_BITS
                    body = blob[off : off + (packed & _LEN_MASK)].decode()
                outcome = outcomes.get(pos, DELIVERED)
                yield {
                    "seq": seq,
                    "provider": prov,
                    "batch": name,
                    "batch_key": bkey,
                    "key": e_key[pos],
                    "to": f"+{v}" if v >= 0 else to_other[-v - 1],
                    "body": body,
                    "message_id": fmt(seq),
                    "accepted_at": at,
                    "delivery_status": outcome.status,
                    "delivery_error_code": outcome.error_code,
                    "delivery_at": due if (own := dues.get(pos)) is None else _iso(own),
                }

    def columns(self, provider: str | None = None, batch: str | None = None) -> dict[str, list[Any]]:
        """The ledger as columns (for Parquet): accepted_at and delivery_at as epoch seconds (float)."""
        cols: dict[str, list[Any]] = {k: [] for k in LedgerEntry.__annotations__}
        to_other, e_to, base = self._to_other, self._e_to, self._seq_base
        for b, start, stop in self._snapshot(provider, batch):
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
            cols["body"].extend(map(self._body, self._e_body[start:stop]))
            cols["to"].extend(f"+{v}" if v >= 0 else to_other[-v - 1] for v in e_to[start:stop])
            cols["message_id"].extend(map(fmt, seqs))
            outcomes = list(map(self.outcome, range(start, stop)))
            cols["delivery_status"].extend(o.status for o in outcomes)
            cols["delivery_error_code"].extend(o.error_code for o in outcomes)
            cols["delivery_at"].extend(map(self.due, range(start, stop)))
        return cols

    def stats(self) -> dict[str, Any]:
        return {
            "entries": len(self._e_key),
            "batches": len(self._b_batch),
            "indexed_keys": sum(len(i) for i in self._index.values()),
            "providers": {name: c.as_dict(self.count(name)) for name, c in self._counters.items()},
        }
