"""The plan's manifest: written after every plan file, so its presence means the plan is complete and a
resumed run can send from it without reading the source again (which may have changed since)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from smscast import storage
from tasks.plan import PlannedCampaign, ShardRef


@dataclass(frozen=True)
class Manifest:
    shards: list[ShardRef]
    rows: int
    rows_to_send: int
    batch_size: int


def _uri(work_root: str) -> str:
    return f"{work_root}/plan/manifest.json"


def write_manifest(work_root: str, planned: PlannedCampaign) -> Manifest:
    m = Manifest(
        shards=planned.shards,
        rows=planned.rows.height,
        rows_to_send=sum(s.rows for s in planned.shards),
        batch_size=planned.batch_size,
    )
    storage.put_bytes(_uri(work_root), json.dumps(asdict(m)).encode())
    return m


def read_manifest(work_root: str) -> Manifest | None:
    uri = _uri(work_root)
    if not storage.exists(uri):
        return None
    raw = json.loads(storage.get_bytes(uri))
    return Manifest(
        shards=[ShardRef(**s) for s in raw["shards"]],
        rows=raw["rows"],
        rows_to_send=raw["rows_to_send"],
        batch_size=raw["batch_size"],
    )
