"""Prefect events smscast emits, so that deployments can react (the retry deployment triggers on a finished
campaign that still has failures; a paused campaign says why, for an alert or an automation that resumes it).
Self-hosted Prefect has no webhooks; events go through the API."""

from __future__ import annotations

import logging
from typing import Any

CAMPAIGN_FINISHED = "smscast.campaign.finished"
CAMPAIGN_PAUSED = "smscast.campaign.paused"
RECIPIENTS_LANDED = "smscast.recipients.landed"


def campaign_resource(campaign_id: str) -> dict[str, str]:
    return {"prefect.resource.id": f"smscast.campaign.{campaign_id}", "prefect.resource.name": campaign_id}


Logger = logging.Logger | logging.LoggerAdapter[logging.Logger]


def emit_campaign_finished(
    summary: dict[str, Any],
    results: str,
    logger: Logger,
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


def emit_campaign_paused(
    summary: dict[str, Any],
    results: str,
    logger: Logger,
) -> None:
    """A campaign's circuit breaker opened (smscast/breaker.py): its cause (`outage`: the provider failing;
    `content`: the provider refusing), the failure share that tripped it, and the counts so far. The attempt
    is unfinished: running the campaign again resumes it. Never recipient data."""
    paused = summary.get("paused") or {}
    cause = str(paused.get("cause", ""))
    try:
        from prefect.events import emit_event

        emit_event(
            CAMPAIGN_PAUSED,
            resource={
                **campaign_resource(summary["campaign_id"]),
                "smscast.provider": str(summary.get("provider", "")),
                "smscast.cause": cause,
            },
            payload={
                "campaign_id": summary["campaign_id"],
                "attempt": summary.get("attempt"),
                "provider": summary.get("provider"),
                "results": results,
                "cause": cause,
                "reason": paused.get("reason"),
                "failure_share": paused.get("failure_share"),
                "window": paused.get("window"),
                "by_status": summary.get("by_status", {}),
            },
        )
    except Exception:  # as above: an event never fails a campaign
        logger.warning("could not emit %s", CAMPAIGN_PAUSED, exc_info=True)
