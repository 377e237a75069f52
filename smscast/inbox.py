"""The inbox poller behind `smscast watch` (smscast/watch.py): turn recipients files landing under an S3
prefix (an inbox) into Prefect events.

Self-hosted Prefect has no webhooks, so something has to notice new objects and tell the server. This poller
lists the inbox, announces every object it has not announced before as a `smscast.recipients.landed` event,
and records what it announced in a durable cursor (a small JSON object: by default a hidden file in the
inbox itself, or any local path / s3:// URI). A deployment trigger on that event starts one campaign run per
file (deployments/prefect.yaml).

Once per file, even across restarts and crashes — three layers:
1. The cursor is saved only after the server acknowledged the events, so a restart announces nothing that
   was acknowledged. A crash in between re-announces that one poll's objects, nothing else.
2. An event's id is derived from the object's URI and ETag, so a re-announcement carries the same id and
   the server drops it as a duplicate (it remembers event ids for about 30 minutes).
3. The campaign id is derived from the same URI and ETag (flows/deployed.py), and a finished campaign id
   is never sent again.

An object is "the same file" while its ETag is the same; a new upload under the same key with other content
is a new file and is announced again. Objects are atomic in S3 (a multipart upload appears when complete),
so a half-written file is never seen.

Events go through Prefect's events client directly rather than `emit_event`: `emit_event` queues the event
for a background worker that logs and drops it when the server is unreachable, and the cursor must not
record an object whose announcement was lost.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from smscast.errors import ConfigError

if TYPE_CHECKING:
    from prefect.events import Event

# smscast.storage (and with it polars) and Prefect are imported where they are used: the command line
# imports this module whenever it starts, and the other commands should not pay for them.

__all__ = [
    "INBOX_SUFFIXES",
    "STATE_NAME",
    "Cursor",
    "Landed",
    "announce",
    "default_state_uri",
    "landed_event",
    "list_inbox",
    "poll_once",
    "watch",
]

log = logging.getLogger("smscast.watch")

INBOX_SUFFIXES: tuple[str, ...] = (".csv", ".parquet", ".ndjson", ".jsonl")
STATE_NAME = ".smscast-watch.json"  # hidden: our own listings (and list_files) skip it
# Event ids are uuid5 in this namespace of "<uri>#<etag>": the same object version, the same event id.
_EVENT_NAMESPACE = uuid.UUID("6f1d7a52-3b0e-4c8e-9a51-5d1f0c9e2b7a")


# -- the inbox ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Landed:
    """One object version in the inbox."""

    bucket: str
    key: str
    etag: str
    size: int
    last_modified: datetime

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    @property
    def event_id(self) -> uuid.UUID:
        return uuid.uuid5(_EVENT_NAMESPACE, f"{self.uri}#{self.etag}")


def list_inbox(inbox: str, suffixes: Sequence[str] = INBOX_SUFFIXES) -> list[Landed]:
    """The recipients files under an s3:// prefix, oldest first. Hidden files and other suffixes are left out."""
    from smscast import storage

    bucket, key = storage.split_s3(inbox)
    prefix = key if (not key or key.endswith("/")) else key + "/"
    out: list[Landed] = []
    paginator = storage.s3_client().get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            name = obj.get("Key", "")
            base = name.rsplit("/", 1)[-1]
            if not base or base.startswith(".") or not name.lower().endswith(tuple(suffixes)):
                continue
            out.append(
                Landed(
                    bucket=bucket,
                    key=name,
                    etag=str(obj.get("ETag", "")).strip('"'),
                    size=int(obj.get("Size", 0)),
                    last_modified=obj.get("LastModified") or datetime.now(UTC),
                )
            )
    return sorted(out, key=lambda o: (o.last_modified, o.key))


def default_state_uri(inbox: str) -> str:
    return f"{inbox.rstrip('/')}/{STATE_NAME}"


# -- the cursor ---------------------------------------------------------------------------------------------


@dataclass
class Cursor:
    """What was announced: key -> ETag, for the objects present at the last poll. Saved as JSON."""

    uri: str
    inbox: str
    announced: dict[str, str] = field(default_factory=dict)
    exists: bool = False

    @classmethod
    def load(cls, uri: str, inbox: str) -> Cursor:
        from smscast import storage

        try:
            data = json.loads(storage.get_bytes(uri))
        except FileNotFoundError:
            return cls(uri=uri, inbox=inbox)
        if data.get("inbox") != inbox:
            raise ConfigError(f"the watch state {uri} belongs to inbox {data.get('inbox')!r}, not {inbox!r}")
        return cls(uri=uri, inbox=inbox, announced=dict(data.get("announced", {})), exists=True)

    def save(self) -> None:
        from smscast import storage

        doc = {"version": 1, "inbox": self.inbox, "announced": dict(sorted(self.announced.items()))}
        storage.put_bytes(self.uri, json.dumps(doc, indent=1).encode())
        self.exists = True


# -- events -------------------------------------------------------------------------------------------------


def landed_event(obj: Landed) -> Event:
    """The `smscast.recipients.landed` event for one object version."""
    from prefect.events import Event

    from smscast.events import RECIPIENTS_LANDED

    return Event.model_validate(
        {
            "id": obj.event_id,
            "event": RECIPIENTS_LANDED,
            # When it was announced, not when it landed: trigger windows count from here, and a file found
            # after a day's outage should not look a day old to the triggers service.
            "occurred": datetime.now(UTC),
            "resource": {
                "prefect.resource.id": f"smscast.recipients.{obj.uri}",
                "prefect.resource.name": obj.key.rsplit("/", 1)[-1],
                "smscast.uri": obj.uri,
                "smscast.etag": obj.etag,
            },
            "payload": {
                "uri": obj.uri,
                "bucket": obj.bucket,
                "key": obj.key,
                "etag": obj.etag,
                "size": obj.size,
                "last_modified": obj.last_modified.isoformat(),
            },
        }
    )


def announce(objects: Sequence[Landed]) -> None:
    """Send one event per object and return once the server has them; raise if it could not be reached."""
    from prefect.events import get_events_client
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        # Without it Prefect would start a throwaway in-process server and the events would go nowhere.
        raise ConfigError("smscast watch needs PREFECT_API_URL: the Prefect server to announce files to")

    async def _send() -> None:
        # checkpoint_every=1: the client pings after each event and waits for the pong, so that leaving this
        # block means the server's socket has taken every event (a connection lost on the way is re-opened
        # and the unconfirmed events re-sent; one that stays lost raises, and nothing is recorded).
        async with get_events_client(reconnection_attempts=3, checkpoint_every=1) as client:
            for obj in objects:
                await client.emit(landed_event(obj))

    asyncio.run(_send())


def poll_once(
    inbox: str,
    state: str | None = None,
    *,
    skip_existing: bool = False,
    send: Callable[[Sequence[Landed]], None] = announce,
) -> list[Landed]:
    """List the inbox, announce what is new, save the cursor. Returns the objects announced."""
    cursor = Cursor.load(state or default_state_uri(inbox), inbox)
    objects = list_inbox(inbox)
    current = {o.key: o.etag for o in objects}
    if not cursor.exists and skip_existing:
        cursor.announced = current
        cursor.save()
        log.info("watch: first start; %d existing objects recorded without announcing", len(objects))
        return []
    new = [o for o in objects if cursor.announced.get(o.key) != o.etag]
    if new:
        send(new)
        for obj in new:
            log.info("watch: announced %s (etag %s, %d bytes)", obj.uri, obj.etag, obj.size)
    # Keys that left the inbox are forgotten: the cursor stays the size of the listing.
    if current != cursor.announced or not cursor.exists:
        cursor.announced = current
        cursor.save()
    return new


def watch(
    inbox: str,
    state: str | None = None,
    *,
    interval: float = 10.0,
    skip_existing: bool = False,
    stop: threading.Event | None = None,
) -> None:
    """Poll until `stop` is set. A failed poll (S3 or the Prefect server unreachable) is logged and retried
    at the next interval; nothing is recorded for it."""
    from smscast.locations import redact

    stop = stop or threading.Event()
    first = True
    while not stop.is_set():
        try:
            poll_once(inbox, state, skip_existing=skip_existing and first)
            first = False
        except ConfigError:
            raise
        except Exception as exc:  # keep watching: the next poll retries everything not recorded
            log.warning("watch: poll of %s failed: %s", inbox, redact(str(exc)))
        stop.wait(interval)
