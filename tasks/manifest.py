"""What a campaign records about itself beside its results: each attempt's plan manifest (written last by
tasks/persist.py `save_plan`, so its presence means the plan is complete) and the campaign's parameters."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from smscast import storage
from smscast.campaign import CampaignSpec
from smscast.errors import ConfigError
from smscast.results import AttemptPaths, CampaignPaths
from smscast.sources.credentials import split_password
from smscast.tasks.plan import PlannedCampaign, ShardRef


@dataclass(frozen=True)
class Manifest:
    shards: list[ShardRef]
    rows: int
    rows_to_send: int
    batch_size: int


def write_manifest(paths: AttemptPaths, planned: PlannedCampaign) -> Manifest:
    """Only after every plan file (tasks/persist.py `save_plan` is the one caller)."""
    m = Manifest(
        shards=planned.shards,
        rows=planned.rows.height,
        rows_to_send=sum(s.rows for s in planned.shards),
        batch_size=planned.batch_size,
    )
    storage.put_bytes(paths.manifest, json.dumps(asdict(m)).encode())
    return m


def read_manifest(paths: AttemptPaths) -> Manifest | None:
    if not storage.exists(paths.manifest):
        return None
    raw = json.loads(storage.get_bytes(paths.manifest))
    return Manifest(
        shards=[ShardRef(**s) for s in raw["shards"]],
        rows=raw["rows"],
        rows_to_send=raw["rows_to_send"],
        batch_size=raw["batch_size"],
    )


def unfinished_attempt(campaign: CampaignPaths) -> int | None:
    """The highest attempt that was planned but never completed (a manifest, no `_SUCCESS`), if any: an
    interrupted run to resume before anything new is planned."""
    planned = campaign.planned_attempts()
    if planned and not storage.exists(campaign.attempt(planned[-1]).done):
        return planned[-1]
    return None  # nothing planned, or the latest planned attempt is complete


def save_spec(spec: CampaignSpec) -> None:
    """The campaign's parameters (never credentials: the spec refuses them), for the retry flow and for
    checking that a re-run is the same campaign."""
    storage.put_bytes(CampaignPaths.of(spec).spec, spec.model_dump_json().encode())


def load_spec(campaign: CampaignPaths) -> CampaignSpec | None:
    if not storage.exists(campaign.spec):
        return None
    raw = json.loads(storage.get_bytes(campaign.spec))
    # A spec recorded before source passwords were refused may still hold one: read it without it.
    raw["source"] = split_password(raw["source"])[0]
    return CampaignSpec.model_validate(raw)


def check_same_campaign(spec: CampaignSpec) -> None:
    """Refuse a run whose content differs from the campaign recorded under its id: resuming it would send
    the recorded plan, not what this run asks for, and reporting it would claim the new content was sent."""
    recorded = load_spec(CampaignPaths.of(spec))
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
