"""Prefect events smscast emits, so that deployments can react (the retry deployment triggers on a finished
campaign that still has failures). Self-hosted Prefect has no webhooks; events go through the API."""

from __future__ import annotations

import logging
from typing import Any

CAMPAIGN_FINISHED = "smscast.campaign.finished"
RECIPIENTS_LANDED = "smscast.recipients.landed"


def campaign_resource(campaign_id: str) -> dict[str, str]:
    return {"prefect.resource.id": f"smscast.campaign.{campaign_id}", "prefect.resource.name": campaign_id}


def emit_campaign_finished(
    summary: dict[str, Any],
    results: str,
    logger: logging.Logger | logging.LoggerAdapter[logging.Logger],
) -> None:
    """Counts, the results location and whether failures remain (the summary's `needs_retry`); never
    recipient data."""
    try:
        from prefect.events import emit_event

        emit_event(
            CAMPAIGN_FINISHED,
            resource={
                **campaign_resource(summary["campaign_id"]),
                "smscast.provider": str(summary.get("provider", "")),
                "smscast.needs-retry": "true" if summary["needs_retry"] else "false",
            },
            payload={
                "campaign_id": summary["campaign_id"],
                "attempt": summary.get("attempt"),
                "provider": summary.get("provider"),
                "results": results,
                "by_status": summary.get("by_status", {}),
                "segments_accepted": summary.get("segments_accepted"),
            },
        )
    except Exception:  # an event is a courtesy to automations; a campaign never fails for want of one
        logger.warning("could not emit %s", CAMPAIGN_FINISHED, exc_info=True)
