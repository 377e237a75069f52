"""The plan's manifest: written after every plan file, so its presence means the plan is complete and a
resumed run can send from it without reading the source again (which may have changed since)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from smscast import storage
from smscast.campaign import CampaignSpec
from smscast.errors import ConfigError
from smscast.sources.credentials import split_password
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


def _spec_uri(results: str, campaign_id: str) -> str:
    return f"{results.rstrip('/')}/_work/campaign={campaign_id}/spec.json"


def save_spec(spec: CampaignSpec) -> None:
    """The campaign's parameters (never credentials: the spec refuses them), for the retry flow and for
    checking that a re-run is the same campaign."""
    storage.put_bytes(_spec_uri(spec.results, spec.campaign_id), spec.model_dump_json().encode())


def load_spec(results: str, campaign_id: str) -> CampaignSpec | None:
    uri = _spec_uri(results, campaign_id)
    if not storage.exists(uri):
        return None
    raw = json.loads(storage.get_bytes(uri))
    # A spec recorded before source passwords were refused may still hold one: read it without it.
    raw["source"] = split_password(raw["source"])[0]
    return CampaignSpec.model_validate(raw)


def check_same_campaign(spec: CampaignSpec) -> None:
    """Refuse a run whose content differs from the campaign recorded under its id: resuming it would send
    the recorded plan, not what this run asks for, and reporting it would claim the new content was sent."""
    recorded = load_spec(spec.results, spec.campaign_id)
    if recorded is None:
        return
    differ = spec.content_differences(recorded)
    if differ:
        raise ConfigError(
            f"campaign {spec.campaign_id!r} was already started under {spec.results} with other settings: "
            f"{', '.join(differ)} differ from the recorded campaign. Give the new campaign its own id (e.g. "
            f"--campaign-id {spec.campaign_id}-2); to resume or report {spec.campaign_id!r}, repeat its "
            "original options"
        )
