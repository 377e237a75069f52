"""The flows behind the deployments (deployments/prefect.yaml): one thin flow per way a campaign starts.

Each loads the S3 credentials block when the environment has none (smscast.s3_block.use_s3_block), derives what
the way of starting needs (a dated campaign id, a campaign id stable for a file), and runs the campaign,
retry or reconcile flow as a subflow. The campaign settings are the typed CampaignSpec, which the UI renders as a form.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from prefect import flow

from smscast import storage
from smscast.campaign import CampaignSpec
from smscast.flows.campaign import send_campaign
from smscast.flows.reconcile import reconcile, reconcile_recent
from smscast.flows.retry import retry_failed
from smscast.s3_block import use_s3_block

MAX_ID = 64  # CampaignSpec.campaign_id's pattern allows 64 characters


def _with(spec: CampaignSpec, **update: Any) -> CampaignSpec:
    """A validated copy (model_copy would skip the campaign id pattern)."""
    return CampaignSpec.model_validate({**spec.model_dump(), **update})


def dated_campaign_id(prefix: str, day: date) -> str:
    """One campaign id per night: a re-run of the same night resumes it instead of sending again."""
    return f"{prefix[: MAX_ID - 9]}-{day:%Y%m%d}"


def file_campaign_id(prefix: str, uri: str, etag: str) -> str:
    """Stable for one object version: a second trigger for the same file finds the campaign done."""
    digest = hashlib.sha256(f"{uri}#{etag}".encode()).hexdigest()[:12]
    stem = uri.rstrip("/").rsplit("/", 1)[-1].rsplit(".", 1)[0]
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", stem).strip("-.") or "file"
    stem = stem[: max(MAX_ID - len(prefix) - len(digest) - 2, 0)].rstrip("-.")
    return "-".join([prefix, stem, digest] if stem else [prefix, digest])


def object_version(uri: str) -> str:
    """The ETag of an S3 object, or size and mtime of a local file: what tells two versions apart."""
    if storage.is_s3(uri):
        bucket, key = storage.split_s3(uri)
        return str(storage.s3_client().head_object(Bucket=bucket, Key=key)["ETag"]).strip('"')
    stat = storage.to_local_path(uri).stat()
    return f"{stat.st_size}-{stat.st_mtime_ns}"


def _scheduled_day(tz: str) -> date:
    from prefect.runtime import flow_run

    when = flow_run.scheduled_start_time or datetime.now(UTC)
    return when.astimezone(ZoneInfo(tz)).date()


@flow(name="campaign")
def adhoc_campaign(spec: CampaignSpec) -> dict[str, Any]:
    """A campaign started by hand, from the UI form or `prefect deployment run`."""
    use_s3_block()
    return send_campaign(spec)


@flow(name="nightly-campaign")
def nightly_campaign(
    spec: CampaignSpec, run_date: date | None = None, timezone: str = "UTC"
) -> dict[str, Any]:
    """The scheduled campaign: `spec.campaign_id` is a prefix, the night's date (in `timezone`, the schedule's)
    is appended. Give `run_date` to re-run or back-fill a given night."""
    use_s3_block()
    day = run_date or _scheduled_day(timezone)
    return send_campaign(_with(spec, campaign_id=dated_campaign_id(spec.campaign_id, day)))


@flow(name="campaign-from-file")
def campaign_from_file(uri: str, spec: CampaignSpec, etag: str | None = None) -> dict[str, Any]:
    """A campaign for one recipients file that landed in the inbox: `uri` becomes the source, and the
    campaign id is `spec.campaign_id` (a prefix), the file's name and a hash of its URI and ETag."""
    use_s3_block()
    version = etag or object_version(uri)
    return send_campaign(
        _with(spec, source=uri, campaign_id=file_campaign_id(spec.campaign_id, uri, version))
    )


@flow(name="retry-campaign")
def retry_campaign(campaign_id: str, results: str, max_attempts: int = 5) -> dict[str, Any]:
    """Re-send a finished campaign's failed rows (started by its `smscast.campaign.finished` event)."""
    use_s3_block()
    return retry_failed(campaign_id=campaign_id, results=results, max_attempts=max_attempts)


@flow(name="reconcile")
def reconcile_deployed(
    results: str, campaign_id: str | None = None, max_age_hours: float = 48.0
) -> dict[str, Any]:
    """Reconcile one campaign (`campaign_id`: the after-campaign trigger passes the finished one), or every
    campaign under `results` sent within `max_age_hours` (the schedule)."""
    use_s3_block()
    if campaign_id:
        return reconcile(campaign_id=campaign_id, results=results)
    return reconcile_recent(results=results, max_age_hours=max_age_hours)
