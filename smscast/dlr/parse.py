"""Delivery-report bodies, one parser per route, each turning what a provider posts into `Report` rows
(smscast.delivery.REPORT_SCHEMA) or refusing it with `BadReport`.

The wire shapes are ASSUMED from the vendors' public pages (the documents smscast was built from describe the
DLR webhooks only by reference): the sandbox's emulators post exactly these shapes.

    instasent  {"id", "clientId", "status", "errorCode", "updatedAt"}              one report per POST
    sent-dm    {"field": "message", "sub_type": "message.status_updated",
                "payload": {"message_id", "message_status", "channel", "error_code", "error_message",
                            "updated_at"}}                                          one event per POST
    generic    {"provider"?, "message_id", "client_ref", "status", "error_code", "error_message",
                "reported_at"} or an array of them                                  ours: batches allowed

A provider state maps to a DeliveryStatus through the route's table; a state not in the table is kept as
`provider_status` with a null `delivery_status`, so nothing unknown is ever taken for a final word. A body is
refused (400) only when it can never become valid, since providers retry every other answer.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from smscast.delivery import REPORT_SCHEMA, DeliveryStatus

__all__ = [
    "GENERIC_DEFAULT_PROVIDER",
    "GENERIC_STATES",
    "INSTASENT_STATES",
    "MAX_GENERIC_REPORTS",
    "PARSERS",
    "SENT_DM_STATES",
    "BadReport",
    "Parsed",
    "Report",
    "parse_generic",
    "parse_instasent",
    "parse_sent_dm",
    "report_id",
    "to_micros",
]

D = DeliveryStatus

# Instasent's DLR states (case-insensitive). `sent` only means handed to the carrier: not final. `error` and
# `canceled` are the terminal negatives the send adapter already treats as such (providers/instasent.py).
# `unknown` is deliberately absent: the provider itself does not know.
INSTASENT_STATES: Mapping[str, DeliveryStatus] = {
    "enqueued": D.PENDING,
    "accepted": D.PENDING,
    "buffered": D.PENDING,
    "enroute": D.PENDING,
    "sent": D.PENDING,
    "delivered": D.DELIVERED,
    "failed": D.UNDELIVERED,
    "undelivered": D.UNDELIVERED,
    "rejected": D.UNDELIVERED,
    "error": D.UNDELIVERED,
    "canceled": D.UNDELIVERED,
    "expired": D.EXPIRED,
}

# sent.dm's `message_status` (case-insensitive). `READ` (a WhatsApp read receipt) implies the handset had it.
SENT_DM_STATES: Mapping[str, DeliveryStatus] = {
    "QUEUED": D.PENDING,
    "ACCEPTED": D.PENDING,
    "PROCESSING": D.PENDING,
    "SENT": D.PENDING,
    "DELIVERED": D.DELIVERED,
    "READ": D.DELIVERED,
    "FAILED": D.UNDELIVERED,
    "UNDELIVERED": D.UNDELIVERED,
    "REJECTED": D.UNDELIVERED,
    "EXPIRED": D.EXPIRED,
}

# Ours: the vocabulary itself.
GENERIC_STATES: Mapping[str, DeliveryStatus] = {s.value: s for s in DeliveryStatus}
GENERIC_DEFAULT_PROVIDER = "sandbox"
MAX_GENERIC_REPORTS = 10_000  # per request: a bigger batch is the sender's to split

SENT_DM_STATUS_EVENT = ("message", "message.status_updated")

_MAX_ID = 256  # ids, states and codes longer than this are not ids: refused
_MAX_MESSAGE = 2000  # a provider's error text is kept, cut to this length (never a reason to refuse)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICRO = timedelta(microseconds=1)


class BadReport(ValueError):
    """A body that can never become a valid report; the message says what is wrong (answered with 400)."""


class Report(NamedTuple):
    """One REPORT_SCHEMA row, times as epoch microseconds (UTC), fields in the schema's order."""

    report_id: str
    provider: str
    provider_message_id: str | None
    client_ref: str | None
    delivery_status: str | None
    provider_status: str
    error_code: str | None
    error_message: str | None
    reported_at: int
    received_at: int


assert Report._fields == tuple(REPORT_SCHEMA), "Report must follow REPORT_SCHEMA"


class Parsed(NamedTuple):
    reports: list[Report]
    ignored: int  # events acknowledged but not reports (e.g. sent.dm's inbound messages)


Parser = Callable[[Any, int], Parsed]


def to_micros(at: datetime) -> int:
    """Epoch microseconds of an aware datetime (naive: taken as UTC)."""
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return (at - _EPOCH) // _MICRO


def report_id(provider: str, message_id: str, provider_status: str, reported_at: int | None) -> str:
    """The digest that makes the same report posted twice recognisably one. `reported_at` is the provider's
    own time (None when it gave none), so a retried report hashes the same whenever it arrives."""
    stamp = "" if reported_at is None else str(reported_at)
    key = "\x1f".join((provider, message_id, provider_status, stamp))
    return hashlib.blake2b(key.encode(), digest_size=16).hexdigest()


# ---- field readers ----------------------------------------------------------------------------------------


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadReport(f"{where}: expected a JSON object, got {_kind(value)}")
    return value


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}.get(
        type(value), "a number"
    )


def _ident(obj: Mapping[str, Any], key: str, where: str, *, required: bool) -> str | None:
    """An id, state or code: a non-empty string (a number is taken as its text)."""
    value = obj.get(key)
    if value is None or value == "":
        if required:
            raise BadReport(f"{where}: `{key}` is required")
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise BadReport(f"{where}: `{key}` must be a string, got {_kind(value)}")
    text = str(value)
    if len(text) > _MAX_ID:
        raise BadReport(f"{where}: `{key}` is longer than {_MAX_ID} characters")
    return text


def _message(obj: Mapping[str, Any], key: str, where: str) -> str | None:
    value = obj.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise BadReport(f"{where}: `{key}` must be a string, got {_kind(value)}")
    return value[:_MAX_MESSAGE]


def _time(obj: Mapping[str, Any], key: str, where: str) -> int | None:
    """An ISO-8601 time as epoch microseconds; None when absent. A time without an offset is UTC."""
    value = obj.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise BadReport(f"{where}: `{key}` must be an ISO-8601 string, got {_kind(value)}")
    try:
        return to_micros(datetime.fromisoformat(value))
    except ValueError:
        raise BadReport(f"{where}: `{key}` is not an ISO-8601 time: {value[:64]!r}") from None


def _report(
    *,
    provider: str,
    message_id: str | None,
    client_ref: str | None,
    state: str,
    table: Mapping[str, DeliveryStatus],
    lookup: str,
    error_code: str | None,
    error_message: str | None,
    reported_at: int | None,
    received_at: int,
) -> Report:
    status = table.get(lookup)
    # A report with only our key still identifies its message: the key stands in for the provider's id.
    identity = message_id if message_id is not None else f"ref:{client_ref}"
    return Report(
        report_id=report_id(provider, identity, state, reported_at),
        provider=provider,
        provider_message_id=message_id,
        client_ref=client_ref,
        delivery_status=None if status is None else status.value,
        provider_status=state,
        error_code=error_code,
        error_message=error_message,
        reported_at=received_at if reported_at is None else reported_at,
        received_at=received_at,
    )


# ---- the routes -------------------------------------------------------------------------------------------


def parse_instasent(body: Any, received_at: int) -> Parsed:
    where = "instasent report"
    obj = _object(body, where)
    state = _ident(obj, "status", where, required=True)
    assert state is not None
    report = _report(
        provider="instasent",
        message_id=_ident(obj, "id", where, required=True),
        client_ref=_ident(obj, "clientId", where, required=False),
        state=state,
        table=INSTASENT_STATES,
        lookup=state.lower(),
        error_code=_ident(obj, "errorCode", where, required=False),
        error_message=None,
        reported_at=_time(obj, "updatedAt", where),
        received_at=received_at,
    )
    return Parsed([report], 0)


def parse_sent_dm(body: Any, received_at: int) -> Parsed:
    where = "sent.dm event"
    obj = _object(body, where)
    field, sub_type = obj.get("field"), obj.get("sub_type")
    if not isinstance(field, str) or not field:
        raise BadReport(f"{where}: `field` is required (a string)")
    if (field, sub_type) != SENT_DM_STATUS_EVENT:
        return Parsed([], 1)  # inbound messages and other events: acknowledged, not ours to record
    where = "sent.dm message.status_updated"
    payload = _object(obj.get("payload"), f"{where}: `payload`")
    state = _ident(payload, "message_status", where, required=True)
    assert state is not None
    report = _report(
        provider="sent-dm",
        message_id=_ident(payload, "message_id", where, required=True),
        client_ref=None,
        state=state,
        table=SENT_DM_STATES,
        lookup=state.upper(),
        error_code=_ident(payload, "error_code", where, required=False),
        error_message=_message(payload, "error_message", where),
        reported_at=_time(payload, "updated_at", where),
        received_at=received_at,
    )
    return Parsed([report], 0)


def parse_generic(body: Any, received_at: int) -> Parsed:
    items = body if isinstance(body, list) else [body]
    if len(items) > MAX_GENERIC_REPORTS:
        raise BadReport(f"{len(items)} reports in one request; at most {MAX_GENERIC_REPORTS}")
    reports: list[Report] = []
    for index, item in enumerate(items):
        where = f"report [{index}]" if isinstance(body, list) else "report"
        obj = _object(item, where)
        provider = _ident(obj, "provider", where, required=False) or GENERIC_DEFAULT_PROVIDER
        message_id = _ident(obj, "message_id", where, required=False)
        client_ref = _ident(obj, "client_ref", where, required=False)
        if message_id is None and client_ref is None:
            raise BadReport(f"{where}: `message_id` or `client_ref` is required")
        state = _ident(obj, "status", where, required=True)
        assert state is not None
        reports.append(
            _report(
                provider=provider,
                message_id=message_id,
                client_ref=client_ref,
                state=state,
                table=GENERIC_STATES,
                lookup=state.lower(),
                error_code=_ident(obj, "error_code", where, required=False),
                error_message=_message(obj, "error_message", where),
                reported_at=_time(obj, "reported_at", where),
                received_at=received_at,
            )
        )
    return Parsed(reports, 0)


# Route name (the path under /dlr/) -> its parser.
PARSERS: Mapping[str, Parser] = {
    "instasent": parse_instasent,
    "sent-dm": parse_sent_dm,
    "generic": parse_generic,
}
