"""The data a provider module declares and exchanges with the pipeline: its capabilities, the batch it is
given, the outcome per row it answers, the rules it adds to validation and the statuses its lookup reads.
providers/base.py re-exports all of it."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import NamedTuple, overload

import polars as pl

from smscast.campaign import CampaignSpec
from smscast.delivery import DeliveryStatus
from smscast.status import Status


class Idempotency(StrEnum):
    HEADER = "header"  # one key per request, in a header: a re-send is safe only with the same batch
    ROW = "row"  # a key per row in the body
    BATCH_AND_ROW = "batch_and_row"  # a key for the request and one per row
    CLIENT_ID = "client_id"  # the provider de-duplicates on our per-row reference
    NONE = "none"  # nothing: a re-send after an unknown outcome can duplicate


class Rejection(StrEnum):
    """How the provider refuses a bad row, which decides how the engine isolates it when a refusal of the whole
    request is caused by a row (tasks/send_batch.py, `ShardSender._isolate`). Which refusals a split can
    avoid is the module's knowledge (the refusal's code or details, `BatchRejectedError.retryable_split`)."""

    # Bad rows are refused one by one and the rest go through. When such a provider refuses a whole request
    # for a row anyway (sent.dm's malformed `to[3]`), it names the row: the engine rejects the named rows and
    # sends the others in one request. Bisection is the fallback when the refusal names none.
    PER_ROW = "per_row"
    # One bad row fails the whole request and the answer does not say which: the engine bisects to isolate it.
    WHOLE_BATCH = "whole_batch"


class OutcomeTiming(StrEnum):
    SYNC = "sync"  # per-recipient result (and usually a message id) in the response
    ASYNC = "async"  # a job/batch reference now, per-recipient status from `lookup_status` later


class DeliveryChannel(StrEnum):
    """How a provider tells what became of a message it accepted (tasks/reconcile.py reads it)."""

    LOOKUP = "lookup"  # we ask, per batch reference: `Provider.lookup_status`
    WEBHOOK = "webhook"  # it posts reports to our receiver (smscast dlr serve), folded in from the inbox


class Content(StrEnum):
    BODY = "body"  # we send the text
    TEMPLATE = "template"  # the provider renders a template it holds
    EITHER = "either"


@dataclass(frozen=True)
class Capabilities:
    """A provider's limits and behaviour, declared as data (dlt-style) and read by validate, plan, send and the
    provider base. Limits that depend on settings come from `Provider.capabilities`."""

    name: str
    max_rows: int
    min_rows: int = 1
    max_body_chars: int | None = None  # characters, as the provider counts them
    max_segments: int | None = None
    max_request_bytes: int | None = None  # a request over it is never sent: split instead
    rate_per_second: float = 10.0  # documented request rate
    burst: int = 1
    concurrency: int = 4
    idempotency: Idempotency = Idempotency.NONE
    rejection: Rejection = Rejection.PER_ROW
    outcome: OutcomeTiming = OutcomeTiming.SYNC
    content: Content = Content.BODY
    template_body: bool = False  # the provider template can carry our rendered text as one {{body}} parameter
    supports_media: bool = False  # a `media_url` row is an MMS and needs no body
    sender_required: bool = False
    sender_pattern: str | None = None  # full-match regex for the sender id
    request_timeout: float = 30.0
    default_base_url: str | None = None
    # How the provider reports delivery (none: reconciliation leaves its rows as sent), and how long after
    # sending a final word may still come: a row still without one after `report_window` is `expired`.
    delivery_reports: frozenset[DeliveryChannel] = frozenset()
    report_window: timedelta | None = None
    # Delivery error codes that a later re-send can fix (the handset was off or out of reach), for
    # `smscast retry --include-undelivered`. No vendor document lists its delivery codes: every entry is
    # ASSUMED, and `--undelivered-code` names others.
    resend_fixes: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if self.delivery_reports and (self.report_window is None or self.report_window <= timedelta(0)):
            raise ValueError(f"{self.name}: a provider that reports delivery declares its report_window")

    def sends_body(self, spec: CampaignSpec) -> bool:
        """Whether rows carry our text (rendered from --body or a body column) rather than only template
        variables: then body presence, length and segments are checked."""
        if spec.template is None:
            return True
        return self.template_body and not spec.template_vars

    @property
    def resend_safe(self) -> bool:
        """Whether re-sending a batch whose outcome is unknown cannot create a second message."""
        return self.idempotency is not Idempotency.NONE

    def bisects(self, rows: int) -> bool:
        """Whether a batch of `rows` that the provider refused as a whole, for a cause a split can remove (a
        row that refuses its whole request, a request too large), is worth sending in halves: each half must
        still be a request the provider takes (`min_rows`), else it is refused for its size alone."""
        return rows >= max(2, 2 * self.min_rows)


@dataclass(frozen=True)
class Batch:
    """One provider request's worth of rows. `rows` has at least row_index, recipient_id, phone, body,
    idempotency_key, plus the template variables and the optional language, media_url and send_at."""

    campaign_id: str
    batch_id: str
    batch_key: str  # idempotency key for the request as a whole
    rows: pl.DataFrame
    spec: CampaignSpec

    def __len__(self) -> int:
        return self.rows.height

    def subset(self, positions: Sequence[int], suffix: str) -> Batch:
        """A part of this batch (bisection). Its key is derived so the provider never confuses the two."""
        # "-": the one separator every vendor's key alphabet allows (sent.dm: [A-Za-z0-9_-]).
        return Batch(
            campaign_id=self.campaign_id,
            batch_id=f"{self.batch_id}-{suffix}",
            batch_key=f"{self.batch_key}-{suffix}",
            rows=self.rows[list(positions)],
            spec=self.spec,
        )


class RowOutcome(NamedTuple):
    # A NamedTuple, not a dataclass: cheap to make where a module reads an answer row by row, and it
    # transposes to columns (`Outcomes.of`) with zip(*outcomes) in C.
    status: Status
    error_code: str | None = None
    error_message: str | None = None
    provider_message_id: str | None = None
    provider_batch_ref: str | None = None


class Outcomes(Sequence[RowOutcome]):
    """A request's outcomes, one per row of its batch, held as columns: how the send engine carries them from
    the answer to the results. It reads as a sequence of RowOutcome (each built on access), so code that looks
    at rows one at a time works on it unchanged; the engine reads its columns.

    Why columns: a tuple per recipient, kept until its shard was written, made a million long-lived objects for
    a million rows, which the cyclic garbage collector walked on every full collection, and the results frame
    was then built from them row by row. Columns of strings (which the collector does not track) are appended
    to the frame's columns whole, and a uniform answer's repeated columns are one list multiplication. With
    the sandbox's answers read this way and requests built by Polars (issue 14), the engine's own CPU per row
    went from about 8 to about 3 µs (`send_rows` against httpx.MockTransport)."""

    __slots__ = ("error_code", "error_message", "provider_batch_ref", "provider_message_id", "status")

    def __init__(
        self,
        status: list[Status],
        error_code: list[str | None],
        error_message: list[str | None],
        provider_message_id: list[str | None],
        provider_batch_ref: list[str | None],
    ) -> None:
        n = len(status)
        if not all(len(c) == n for c in (error_code, error_message, provider_message_id, provider_batch_ref)):
            raise ValueError("Outcomes: columns of different lengths")
        self.status = status
        self.error_code = error_code
        self.error_message = error_message
        self.provider_message_id = provider_message_id
        self.provider_batch_ref = provider_batch_ref

    @classmethod
    def of(cls, outcomes: Sequence[RowOutcome]) -> Outcomes:
        """`outcomes` as columns (itself when it is already)."""
        if isinstance(outcomes, Outcomes):
            return outcomes
        if not outcomes:
            return cls([], [], [], [], [])
        status, code, message, message_id, batch_ref = map(list, zip(*outcomes, strict=True))
        return cls(status, code, message, message_id, batch_ref)

    @classmethod
    def same(cls, n: int, outcome: RowOutcome) -> Outcomes:
        """`n` rows with one outcome (a whole request refused, failed or given up)."""
        status, code, message, message_id, batch_ref = outcome
        return cls([status] * n, [code] * n, [message] * n, [message_id] * n, [batch_ref] * n)

    @classmethod
    def accepted(cls, message_ids: list[str | None], batch_ref: str | None) -> Outcomes:
        """Every row accepted, with its message id (the common answer, read without a tuple per row)."""
        n = len(message_ids)
        return cls([Status.ACCEPTED] * n, [None] * n, [None] * n, message_ids, [batch_ref] * n)

    def __len__(self) -> int:
        return len(self.status)

    @overload
    def __getitem__(self, i: int) -> RowOutcome: ...

    @overload
    def __getitem__(self, i: slice) -> Outcomes: ...

    def __getitem__(self, i: int | slice) -> RowOutcome | Outcomes:
        if isinstance(i, slice):
            return Outcomes(
                self.status[i],
                self.error_code[i],
                self.error_message[i],
                self.provider_message_id[i],
                self.provider_batch_ref[i],
            )
        return RowOutcome(
            self.status[i],
            self.error_code[i],
            self.error_message[i],
            self.provider_message_id[i],
            self.provider_batch_ref[i],
        )

    def __iter__(self) -> Iterator[RowOutcome]:
        return map(RowOutcome, *self.columns)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Outcomes):
            return self.columns == other.columns
        if isinstance(other, Sequence) and not isinstance(other, str | bytes):
            return len(other) == len(self) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable columns, like a list

    def __repr__(self) -> str:
        return f"Outcomes({list(self)!r})"

    @property
    def columns(
        self,
    ) -> tuple[list[Status], list[str | None], list[str | None], list[str | None], list[str | None]]:
        return (
            self.status,
            self.error_code,
            self.error_message,
            self.provider_message_id,
            self.provider_batch_ref,
        )

    def counts(self) -> dict[str, int]:
        """Rows per status (counted in C)."""
        return {str(s): n for s, n in Counter(self.status).items()}

    def uniform(self) -> RowOutcome | None:
        """The status and code every row shares (without message, ids), or None when they differ: one
        outcome then stands for all of them where only those two count (the circuit breaker)."""
        status, code = self.status, self.error_code
        if not status or status.count(status[0]) != len(status) or code.count(code[0]) != len(code):
            return None
        return RowOutcome(status[0], code[0])


@dataclass(frozen=True)
class RowRule:
    """A rule every row must pass, vectorised: `valid` is a Polars expression that is true for rows that pass
    (null counts as failing). Validation's own rules and each provider's (`Provider.row_rules`) are both
    of this type. Columns available: phone, body, chars, encoding, segments, language, media_url, send_at and
    the template variables."""

    code: str
    message: str
    valid: pl.Expr
    # Input columns the rule needs: a provider's rule is skipped if one is absent. The first is the column
    # the failure is reported against (phone when none is named).
    columns: tuple[str, ...] = ()

    @property
    def column(self) -> str:
        return self.columns[0] if self.columns else "phone"


@dataclass(frozen=True, slots=True)
class StatusLookup:
    """One recipient of a batch, as the provider's lookup reports it (tasks/reconcile.py).

    Two words on it, from the adapter's two tables: `status`, the send status its state implies (STATES; or,
    when `refused`, the refusal code's status through REFUSALS), and `delivery_status`, what became of the
    message (DELIVERY_STATES). `refused`: the provider's job never sent this recipient (textingline failing
    a recipient of a queued job): a send outcome, never a delivery. `delivery_status` is None when there is
    no message to speak of (refused, or not made yet) or its state is not in the table."""

    phone: str
    status: Status
    provider_status: str
    provider_message_id: str | None = None
    error_code: str | None = None
    delivery_status: DeliveryStatus | None = None
    reported_at: datetime | None = None  # when the provider says the state was reached, where it says so
    error_message: str | None = None
    client_ref: str | None = None  # our row key, where the provider echoes it
    refused: bool = False
