"""What a reconciliation run did (tasks/reconcile.py): counts of what it wrote, and every row it left without a
final word, with the reason, so that nothing stays `unknown` silently.

Reasons (a row's `reason` in `left_rows`; a `:` adds the detail, e.g. `lookup_error:http_503`):

    pending               accepted, no final word yet, within the provider's reporting window
    no_report             unknown, and no report names it; its provider cannot be asked (webhook only)
    no_batch_ref          unknown without a batch reference (the send's answer was lost): nothing to look up
    not_in_batch          the batch's lookup does not list it
    ambiguous_match       its phone is listed more than once in the batch's lookup
    batch_not_found       accepted, yet the provider says it holds no such batch
    state_unreadable      the provider reports a state smscast has no word for
    lookup_error          the lookup failed (5xx, timeout, refusal, credentials): left as it was
    no_delivery_reports   its provider reports delivery neither by lookup nor by webhook
    provider_unknown      the row names a provider this smscast does not know
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from smscast.status import Status

Logger = logging.Logger | logging.LoggerAdapter[logging.Logger]

PENDING = "pending"
NO_REPORT = "no_report"
NO_BATCH_REF = "no_batch_ref"
NO_REPORTS = "no_delivery_reports"
SHOWN_ROWS = 20  # row numbers logged per reason

EXPLAIN: dict[str, str] = {
    PENDING: "no final word yet, within the provider's reporting window",
    NO_REPORT: "no delivery report names it and its provider cannot be asked; `smscast retry` re-sends it "
    "where the provider de-duplicates",
    NO_BATCH_REF: "the send's answer was lost, so there is no batch to look up",
    "not_in_batch": "the batch's lookup does not list it",
    "ambiguous_match": "its phone is listed more than once in the batch's lookup",
    "batch_not_found": "the provider says it holds no such batch, though it accepted it",
    "state_unreadable": "the provider reports a state smscast has no word for",
    "lookup_error": "the lookup failed; left as it was, looked up again next run",
    NO_REPORTS: "its provider reports delivery neither by lookup nor by webhook",
    "provider_unknown": "it names a provider this smscast does not know",
}

LEFT_SCHEMA: dict[str, pl.DataType] = {
    "attempt": pl.Int32(),
    "row_index": pl.Int64(),
    "status": pl.String(),
    "provider": pl.String(),
    "reason": pl.String(),
}
KEYS = ["attempt", "row_index"]


@dataclass
class ReconcileSummary:
    campaign_id: str
    rows: int = 0  # the campaign's current rows (of the provider asked for)
    looked_at: int = 0  # accepted without a final word, or unknown
    batches: int = 0  # batch lookups answered
    lookup_errors: dict[str, int] = field(default_factory=dict)  # code -> batches whose lookup failed
    reports_matched: int = 0  # receiver reports that named a row of this campaign
    facts: dict[str, int] = field(default_factory=dict)  # delivery status -> facts written
    facts_by_source: dict[str, int] = field(default_factory=dict)
    settlements: dict[str, int] = field(default_factory=dict)  # send status -> settlements written
    no_reports: dict[str, int] = field(default_factory=dict)  # provider without delivery reports -> rows
    parts: list[str] = field(default_factory=list)  # the parts written
    left_rows: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=LEFT_SCHEMA))

    @property
    def left(self) -> dict[str, dict[str, int]]:
        """status -> reason -> rows left without a final word."""
        out: dict[str, dict[str, int]] = {}
        for status, reason, n in (
            self.left_rows.group_by("status", "reason").len().sort("status", "reason").iter_rows()
        ):
            out.setdefault(str(status), {})[str(reason)] = int(n)
        return out

    def count_writes(self, facts: pl.DataFrame, settled: pl.DataFrame) -> None:
        self.facts = _counts(facts, "delivery_status")
        self.facts_by_source = _counts(facts, "source")
        self.settlements = _counts(settled, "status")

    def to_dict(self) -> dict[str, Any]:
        return {
            "campaign_id": self.campaign_id,
            "rows": self.rows,
            "looked_at": self.looked_at,
            "batches_looked_up": self.batches,
            "lookup_errors": self.lookup_errors,
            "reports_matched": self.reports_matched,
            "facts": self.facts,
            "facts_by_source": self.facts_by_source,
            "settlements": self.settlements,
            "no_delivery_reports": self.no_reports,
            "left": self.left,
            "parts_written": len(self.parts),
        }

    def render(self) -> str:
        failed = sum(self.lookup_errors.values())
        lines = [
            f"Reconcile · campaign {self.campaign_id} · {self.rows:,} rows · {self.looked_at:,} looked at",
            f"  lookups: {self.batches:,} batches answered, {failed:,} failed{_pairs(self.lookup_errors, ' (', ')')}"
            f" · receiver reports matched: {self.reports_matched:,}",
            f"  facts written: {sum(self.facts.values()):,}{_pairs(self.facts, ' — ')}"
            f"{_pairs(self.facts_by_source, ' (by source: ', ')')}",
            f"  settlements written: {sum(self.settlements.values()):,}{_pairs(self.settlements, ' — ')}",
        ]
        for name, n in sorted(self.no_reports.items()):
            lines.append(f"  {name}: {n:,} rows untouched, the provider reports no delivery")
        left = self.left
        if left:
            lines.append("  left without a final word:")
            for status, reasons in left.items():
                lines += [f"    {status:<9} {reason:<36} {n:>10,}" for reason, n in reasons.items()]
        return "\n".join(lines)

    def notes(self) -> list[str]:
        """One line per group of rows left `unknown` (or whose lookup failed): how many, why, which."""
        rows = self.left_rows.filter(
            (pl.col("status") == Status.UNKNOWN.value) | (pl.col("reason") != PENDING)
        )
        lines = []
        for (status, reason), group in rows.group_by("status", "reason", maintain_order=True):
            shown = ", ".join(str(i) for i in group.get_column("row_index").head(SHOWN_ROWS).to_list())
            more = f" and {group.height - SHOWN_ROWS:,} more" if group.height > SHOWN_ROWS else ""
            why = EXPLAIN.get(str(reason).split(":", 1)[0], str(reason))
            lines.append(
                f"{group.height:,} {status} rows left as they are ({reason}: {why}): row_index {shown}{more}"
            )
        return lines

    def log(self, log: Logger) -> None:
        log.info("%s", self.render())
        for line in self.notes():
            log.warning("campaign %s: %s", self.campaign_id, line)


def left_rows(
    scope: pl.DataFrame, after: pl.DataFrame, finals: pl.DataFrame, reasons: dict[tuple[int, int], str]
) -> pl.DataFrame:
    """The rows looked at that end this run `unknown`, or `accepted` without a final fact, each with the reason
    noted for it (else `pending` for accepted, `no_report` for unknown)."""
    keys = [pl.col("attempt").cast(pl.Int32), pl.col("row_index").cast(pl.Int64)]
    noted = pl.DataFrame(
        [(a, r, why) for (a, r), why in reasons.items()],
        schema={"attempt": pl.Int32, "row_index": pl.Int64, "reason": pl.String},
        orient="row",
    )
    default = (
        pl.when(pl.col("status") == Status.ACCEPTED.value).then(pl.lit(PENDING)).otherwise(pl.lit(NO_REPORT))
    )
    return (
        scope.select(keys)
        .join(after.select(*keys, "status", "provider"), on=KEYS)
        .join(finals.select(KEYS), on=KEYS, how="anti")
        .filter(pl.col("status").is_in([Status.UNKNOWN.value, Status.ACCEPTED.value]))
        .join(noted, on=KEYS, how="left")
        .with_columns(reason=pl.coalesce("reason", default))
        .select(list(LEFT_SCHEMA))
        .sort(KEYS)
    )


def _counts(frame: pl.DataFrame, column: str) -> dict[str, int]:
    return {str(k): int(n) for k, n in frame.group_by(column).len().sort(column).iter_rows()}


def _pairs(counts: dict[str, int], before: str, after: str = "") -> str:
    if not counts:
        return ""
    return before + " · ".join(f"{k} {v:,}" for k, v in counts.items()) + after
