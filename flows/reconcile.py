"""The reconcile flows: what became of a campaign's messages (tasks/reconcile.py), then its delivery report.

`reconcile` does one campaign (`smscast reconcile`, the after-campaign deployment). `reconcile_recent` does every
campaign under a results location that may still hear news (the every-15-minutes deployment), reading the
receiver's inbox once for all of them. Neither takes the campaign lock: they only append facts and settlements,
which a concurrent send or retry never reads back as its own (a settlement names the attempt it settles).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import polars as pl
from prefect import flow, get_run_logger

from smscast import storage
from smscast.delivery import REPORT_SCHEMA, read_all
from smscast.errors import SmscastError
from smscast.providers.registry import provider_class
from smscast.results import CampaignPaths, campaign_ids, dlr_inbox
from smscast.tasks.current import current_view
from smscast.tasks.delivery_report import publish_delivery_report
from smscast.tasks.reconcile import Logger, reconcile_campaign, utc_now

# A campaign stays "recent" this long past its provider's reporting window, so that a scheduled run still
# sees it once the window is over and expires what never got a final word.
EXPIRY_GRACE = timedelta(hours=1)


@flow(name="reconcile-campaign")
def reconcile(
    campaign_id: str, results: str, provider: str | None = None, base_url: str | None = None
) -> dict[str, Any]:
    """Reconcile one campaign and publish its delivery report."""
    logger = get_run_logger()
    summary = reconcile_campaign(results, campaign_id, provider=provider, base_url=base_url, logger=logger)
    _publish(results, campaign_id, logger)
    return summary.to_dict()


@flow(name="reconcile-recent")
def reconcile_recent(results: str, max_age_hours: float = 48.0) -> dict[str, Any]:
    """Reconcile every campaign under `results` sent less than `max_age_hours` ago (or still within its
    provider's reporting window), each on its own: one that fails is logged and the others go on."""
    logger = get_run_logger()
    now = utc_now()
    campaigns = recent_campaigns(results, max_age_hours, now)
    logger.info(
        "reconciling %d campaign(s) under %s: %s", len(campaigns), results, ", ".join(campaigns) or "-"
    )
    inbox = read_all(dlr_inbox(results), REPORT_SCHEMA)
    done: dict[str, dict[str, Any]] = {}
    failed: dict[str, str] = {}
    for campaign_id in campaigns:
        try:
            summary = reconcile_campaign(results, campaign_id, logger=logger, inbox=inbox, clock=lambda: now)
            _publish(results, campaign_id, logger)
        except SmscastError as exc:
            logger.error("campaign %s not reconciled: %s", campaign_id, exc)
            failed[campaign_id] = str(exc)
            continue
        done[campaign_id] = summary.to_dict()
    lines = [f"{'campaign':<40} {'facts':>8} {'settled':>8} {'unknown':>8} {'pending':>8}"]
    for cid, s in done.items():
        left = s["left"]
        lines.append(
            f"{cid:<40} {sum(s['facts'].values()):>8,} {sum(s['settlements'].values()):>8,} "
            f"{sum(left.get('unknown', {}).values()):>8,} {sum(left.get('accepted', {}).values()):>8,}"
        )
    lines += [f"{cid:<40} failed: {why}" for cid, why in failed.items()]
    logger.info("reconciled %d campaign(s), %d failed\n%s", len(done), len(failed), "\n".join(lines))
    return {"results": results, "campaigns": done, "failed": failed}


def recent_campaigns(results: str, max_age_hours: float, now: datetime) -> list[str]:
    """The campaigns under `results` whose newest row sent through a provider that reports delivery is
    younger than `max_age_hours`, or than that provider's reporting window plus EXPIRY_GRACE (a shorter age
    would leave rows pending forever). A campaign of providers that report nothing has nothing to reconcile."""
    age = timedelta(hours=max_age_hours)
    found: list[str] = []
    for campaign_id in campaign_ids(results):
        for provider, newest in _newest_sends(results, campaign_id).iter_rows():
            window = _window(str(provider)) if provider is not None else None
            if window is None or newest is None:
                continue
            if now - newest < max(age, window + EXPIRY_GRACE):
                found.append(campaign_id)
                break
    return found


def _newest_sends(results: str, campaign_id: str) -> pl.DataFrame:
    """(provider, newest submitted_at) over every attempt, reading those two columns only."""
    parts = [p for ps in CampaignPaths(results, campaign_id).result_parts().values() for p in ps]
    frames = [
        pl.scan_parquet(
            p, storage_options=storage.storage_options(p), hive_partitioning=False, glob=False
        ).select(pl.col("provider").cast(pl.String), pl.col("submitted_at"))
        for p in parts
    ]
    if not frames:
        return pl.DataFrame(schema={"provider": pl.String, "submitted_at": pl.Datetime("us", "UTC")})
    return pl.concat(frames).group_by("provider").agg(pl.col("submitted_at").max()).collect()


def _window(provider: str) -> timedelta | None:
    """The provider's reporting window; None when it reports no delivery (or is not known here)."""
    try:
        caps = provider_class(provider).caps
    except SmscastError:
        return None
    return caps.report_window if caps.delivery_reports else None


def _publish(results: str, campaign_id: str, logger: Logger) -> None:
    publish_delivery_report(current_view(results, campaign_id), campaign_id, logger)
