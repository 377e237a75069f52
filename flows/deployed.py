"""The flows behind the deployments (deployments/prefect.yaml): one thin flow per way a campaign starts.

Each loads the S3 credentials block when the environment has none (smscast.s3_block.use_s3_block), derives what
the way of starting needs (a dated campaign id, a campaign id stable for a file), and runs the campaign,
retry, release or reconcile flow as a subflow. A campaign's run is named for it from the start and ends in the state
its outcome calls for (flows/campaign.py: `campaign_run_name`, `finish`: "Dry run", "Completed with
failures", …). The campaign settings are a CampaignForm (smscast/form.py): CampaignSpec's settings in groups,
which the UI renders as a form, and which are a dry run unless told otherwise.
"""

from __future__ import annotations

import hashlib
import re
import time
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from prefect import flow

from smscast import storage
from smscast.campaign import CampaignSpec
from smscast.flows.campaign import FINAL_STATE_RESULT, campaign_run_name, finish, send_campaign
from smscast.flows.reconcile import reconcile, reconcile_recent
from smscast.flows.release import release_held, release_run_name
from smscast.flows.retry import retry_failed
from smscast.form import CampaignForm
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


@flow(name="campaign", flow_run_name=campaign_run_name, persist_result=FINAL_STATE_RESULT)
def adhoc_campaign(campaign: CampaignForm) -> dict[str, Any]:
    """A campaign started by hand, from the UI form or `prefect deployment run`.

    Args:
        campaign: The campaign to send: a dry run unless "Dry run" is turned off ("dry_run": false).
    """
    use_s3_block()
    return finish(send_campaign(campaign.to_spec()))


@flow(name="nightly-campaign", flow_run_name=campaign_run_name, persist_result=FINAL_STATE_RESULT)
def nightly_campaign(
    campaign: CampaignForm, run_date: date | None = None, timezone: str = "UTC"
) -> dict[str, Any]:
    """The scheduled campaign: its campaign id is a prefix, the night's date (in `timezone`, the schedule's)
    is appended. Give `run_date` to re-run or back-fill a given night.

    Args:
        campaign: The nightly campaign; its campaign id gets the night's date appended (nightly-20250131).
        run_date: The night to send, to re-run or back-fill one; empty: the night the run was scheduled for.
        timezone: The zone the night's date is taken in (the schedule's).
    """
    use_s3_block()
    spec = campaign.to_spec()
    day = run_date or _scheduled_day(timezone)
    return finish(send_campaign(_with(spec, campaign_id=dated_campaign_id(spec.campaign_id, day))))


@flow(name="campaign-from-file", flow_run_name=campaign_run_name, persist_result=FINAL_STATE_RESULT)
def campaign_from_file(uri: str, campaign: CampaignForm, etag: str | None = None) -> dict[str, Any]:
    """A campaign for one recipients file that landed in the inbox: `uri` becomes the source, and the
    campaign id is the campaign's (a prefix), the file's name and a hash of its URI and ETag.

    Args:
        uri: The file that landed (the trigger passes it).
        campaign: The campaign settings; its source is replaced by `uri`, its campaign id is a prefix.
        etag: The file's version (the trigger passes it); empty: read from the object.
    """
    use_s3_block()
    spec = campaign.to_spec()
    version = etag or object_version(uri)
    return finish(
        send_campaign(_with(spec, source=uri, campaign_id=file_campaign_id(spec.campaign_id, uri, version)))
    )


@flow(name="retry-campaign")
def retry_campaign(campaign_id: str, results: str, max_attempts: int = 5) -> dict[str, Any]:
    """Re-send a finished campaign's failed rows (started by its `smscast.campaign.finished` event)."""
    use_s3_block()
    return retry_failed(campaign_id=campaign_id, results=results, max_attempts=max_attempts)


# A scheduled release started early waits at most this long for its time (longer: a run started by hand).
EARLY_START_WAIT = 300.0


@flow(name="release-campaign", flow_run_name=release_run_name)
def release_campaign(
    campaign_id: str, results: str, provider: str | None = None, max_cost: float | None = None
) -> dict[str, Any]:
    """Send a campaign's held rows (quiet hours) whose window is open; the others stay held, and a release is
    scheduled for them. The campaign schedules these runs itself when it holds rows (flows/release.py).

    Args:
        campaign_id: The campaign whose held rows to send.
        results: Where it was sent.
        provider: Another provider than the campaign's (empty: the campaign's).
        max_cost: The spend cap for this attempt (empty: the campaign's); it needs the campaign's price list.
    """
    use_s3_block()
    _wait_for_scheduled_time()
    return release_held(campaign_id=campaign_id, results=results, provider=provider, max_cost=max_cost)


def _wait_for_scheduled_time() -> None:
    """Prefect lets a scheduled run start up to half a second before its time (it rounds the wait to whole
    seconds), and a worker's clock may lag the server's: the rows it is for would not be due yet."""
    from prefect.runtime import flow_run

    when = flow_run.scheduled_start_time
    if when is not None:
        early = (when - datetime.now(UTC)).total_seconds()
        if 0 < early <= EARLY_START_WAIT:
            time.sleep(early)


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
