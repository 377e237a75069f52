"""Reconciliation: what became of a campaign's messages, and the send outcomes only the provider can settle.

The rows looked at are the current ones (tasks/current.py) still `accepted` without a final delivery fact, and
the `unknown` ones. What is done with them follows their provider's capabilities (`delivery_reports`):

* LOOKUP: each batch reference those rows carry is looked up once, under the provider's rate limit (the token
  bucket sending uses for that provider and endpoint), and each recipient in the answer is matched to a row by
  message id, else by our row key where the provider echoes it, else by phone within the batch. A message the
  provider holds gives a delivery fact (source `lookup`) and settles an `unknown` row `accepted`. A recipient
  the provider's job never sent settles the row with its refusal's status (a transient code: `failed`, safe
  to re-send; else `rejected`). A batch the provider says, in its own words, it does not hold settles its
  `unknown` rows `failed`: nothing of it was accepted. A lookup that fails (5xx, timeout, any refusal) leaves
  its rows as they were.
* WEBHOOK: the receiver's reports become facts (source `webhook`, tasks/reports_fold.py); a report about an
  `unknown` row proves the provider holds its message and settles it `accepted`.
* neither: nothing at all; the summary counts those rows.

Then a row still `accepted` without a final word `report_window` after it was sent is `expired` (source
`window`, reported at the window's end), unless its lookup failed in this run. Facts and settlements are
appended, one part each, and only where they change the row's latest word, so a second run writes nothing;
attempt parts are never touched. Every row left without a final word is counted with its reason, in the
summary and in the log.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime

import httpx
import polars as pl

from smscast.delivery import (
    DELIVERY_SCHEMA,
    REPORT_SCHEMA,
    SETTLED_SCHEMA,
    DeliveryStatus,
    FactSource,
    append,
    latest_facts,
    read_all,
)
from smscast.errors import ConfigError
from smscast.providers.base import Capabilities, DeliveryChannel
from smscast.providers.registry import provider_class
from smscast.results import CampaignPaths, dlr_inbox
from smscast.status import Status
from smscast.tasks.current import current_results
from smscast.tasks.manifest import load_spec
from smscast.tasks.reconcile_lookup import Work, look_up_provider
from smscast.tasks.reconcile_summary import NO_REPORTS, ReconcileSummary, left_rows
from smscast.tasks.reports_fold import KEYS, fold_reports, is_final, news
from smscast.transport import tls_context

__all__ = ["ReconcileSummary", "areconcile_campaign", "reconcile_campaign", "utc_now"]

Logger = logging.Logger | logging.LoggerAdapter[logging.Logger]
Clock = Callable[[], datetime]
Key = tuple[int, int]
LOOKUP_TIMEOUT = httpx.Timeout(60.0, connect=10.0)


def utc_now() -> datetime:
    return datetime.now(UTC)


def reconcile_campaign(
    results: str,
    campaign_id: str,
    *,
    provider: str | None = None,
    base_url: str | None = None,
    client: httpx.AsyncClient | None = None,
    clock: Clock = utc_now,
    logger: Logger | None = None,
    inbox: pl.DataFrame | None = None,
) -> ReconcileSummary:
    """`areconcile_campaign` from synchronous code (a flow, the command line)."""
    return asyncio.run(
        areconcile_campaign(
            results,
            campaign_id,
            provider=provider,
            base_url=base_url,
            client=client,
            clock=clock,
            logger=logger,
            inbox=inbox,
        )
    )


async def areconcile_campaign(
    results: str,
    campaign_id: str,
    *,
    provider: str | None = None,
    base_url: str | None = None,
    client: httpx.AsyncClient | None = None,
    clock: Clock = utc_now,
    logger: Logger | None = None,
    inbox: pl.DataFrame | None = None,
) -> ReconcileSummary:
    """Reconcile one campaign (the module docstring). `provider`: only the rows sent through it. `base_url`:
    that provider's endpoint (else the campaign's recorded one, else the environment's). `inbox`: the
    receiver's reports, when the caller has read them already (several campaigns under one results)."""
    log = logger or logging.getLogger(__name__)
    now = clock()
    paths = CampaignPaths(results, campaign_id)
    # Keys in one type: parts written by other versions may have widened them.
    current = current_results(results, campaign_id).with_columns(
        pl.col("attempt").cast(pl.Int32), pl.col("row_index").cast(pl.Int64)
    )
    if provider is not None:
        current = current.filter(pl.col("provider") == provider)
    spec = load_spec(paths)
    existing = read_all(paths.delivery, DELIVERY_SCHEMA)
    finals = _final_keys(existing)
    rows = current.join(finals, on=KEYS, how="left").with_columns(pl.col("_final").fill_null(False))
    unknown, accepted = pl.col("status") == Status.UNKNOWN.value, pl.col("status") == Status.ACCEPTED.value
    scope = rows.filter(unknown | (accepted & ~pl.col("_final")))
    summary = ReconcileSummary(campaign_id, rows=current.height, looked_at=scope.height)
    work = Work(now)
    caps_of: dict[str, Capabilities] = {}
    http = client or httpx.AsyncClient(timeout=LOOKUP_TIMEOUT, verify=tls_context())
    try:
        for name in sorted(rows.get_column("provider").drop_nulls().unique().to_list()):
            part = scope.filter(pl.col("provider") == name)
            try:
                caps_of[name] = caps = provider_class(name).caps
            except ConfigError:
                work.note(part, f"provider_unknown:{name}")
                continue
            if not caps.delivery_reports:
                summary.no_reports[name] = part.height
                work.note(part, NO_REPORTS)
            elif DeliveryChannel.LOOKUP in caps.delivery_reports and not part.is_empty():
                await look_up_provider(name, part, spec, provider, base_url, http, work, summary, log)
    finally:
        if client is None:
            await http.aclose()
    webhook = [n for n, c in caps_of.items() if DeliveryChannel.WEBHOOK in c.delivery_reports]
    if webhook:
        reports = inbox if inbox is not None else read_all(dlr_inbox(results), REPORT_SCHEMA)
        reported, found = fold_reports(rows.filter(pl.col("provider").is_in(webhook)), reports, now)
        summary.reports_matched = reported.height
        work.fact_frames.append(reported)
        work.settled_frames.append(found)

    settled = _settled_news(work.settled_frame(), current)
    after = (
        current.join(settled.select(*KEYS, _s=pl.col("status")), on=KEYS, how="left")
        .with_columns(status=pl.coalesce("_s", "status"))
        .drop("_s")
    )
    facts = news(existing, work.fact_frame())
    expired = _expired(after, pl.concat([existing, facts]), caps_of, work.errored, now)
    facts = pl.concat([facts, news(pl.concat([existing, facts]), expired)])
    for part_uri in (
        append(paths.settled, settled, SETTLED_SCHEMA),
        append(paths.delivery, facts, DELIVERY_SCHEMA),
    ):
        if part_uri:
            summary.parts.append(part_uri)
    summary.count_writes(facts, settled)
    summary.left_rows = left_rows(scope, after, _final_keys(pl.concat([existing, facts])), work.reasons)
    summary.log(log)
    return summary


# ---- what is written ------------------------------------------------------------------------------------


def _final_keys(facts: pl.DataFrame) -> pl.DataFrame:
    last = latest_facts(facts)
    return last.filter(is_final(last)).select(
        pl.col("attempt").cast(pl.Int32), pl.col("row_index").cast(pl.Int64), _final=pl.lit(True)
    )


def _settled_news(settled: pl.DataFrame, current: pl.DataFrame) -> pl.DataFrame:
    """One settlement per row (the first decided), where it changes the row's current send status."""
    was = current.select(pl.col("attempt").cast(pl.Int32), pl.col("row_index").cast(pl.Int64), _was="status")
    return (
        settled.unique(KEYS, keep="first", maintain_order=True)
        .join(was, on=KEYS, how="inner")
        .filter(pl.col("status") != pl.col("_was"))
        .drop("_was")
    )


def _expired(
    after: pl.DataFrame,
    facts: pl.DataFrame,
    caps_of: dict[str, Capabilities],
    errored: set[Key],
    now: datetime,
) -> pl.DataFrame:
    """`expired` facts for accepted rows still without a final word past their provider's window."""
    windows = {
        n: int(c.report_window.total_seconds())
        for n, c in caps_of.items()
        if c.delivery_reports and c.report_window
    }
    if not windows:
        return pl.DataFrame(schema=DELIVERY_SCHEMA)
    skip = pl.DataFrame(list(errored), schema={"attempt": pl.Int32, "row_index": pl.Int64}, orient="row")
    ends = pl.col("submitted_at") + pl.duration(
        seconds=pl.col("provider").replace_strict(windows, default=None)
    )
    due = (
        after.filter(
            (pl.col("status") == Status.ACCEPTED.value)
            & pl.col("provider").is_in(list(windows))
            & pl.col("submitted_at").is_not_null()
        )
        .with_columns(pl.col("attempt").cast(pl.Int32), pl.col("row_index").cast(pl.Int64), _ends=ends)
        .filter(pl.col("_ends") <= now)
        .join(_final_keys(facts), on=KEYS, how="anti")
        .join(skip, on=KEYS, how="anti")
    )
    hours = pl.col("provider").replace_strict(windows, default=0) / 3600
    return due.select(
        "campaign_id",
        *KEYS,
        "recipient_id",
        "provider",
        "provider_message_id",
        "provider_batch_ref",
        delivery_status=pl.lit(DeliveryStatus.EXPIRED.value),
        error_code=pl.lit(None, pl.String),
        error_message=pl.format("no final report within {} h of sending", hours.round(1)),
        reported_at="_ends",
        source=pl.lit(FactSource.WINDOW.value),
    )
