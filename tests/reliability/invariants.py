"""The invariants every soak campaign must end with, checked against the sandbox's ledger."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import polars as pl
from reliability.soak import Campaign, Soak
from support import ledger_by_phone, ledger_frame, ledger_problems

from smscast import storage
from smscast.tasks.current import current_results


@dataclass
class Verdict:
    provider: str
    campaign: str
    rows: int
    statuses: dict[str, int]
    ledger_entries: int
    duplicates: int  # ledger entries - distinct phones
    losses: int  # valid rows neither accepted nor rightly refused (nor, for Postman, unknown)
    unknown: int
    unknown_in_ledger: int
    recognised_resends: int  # the sandbox's own `duplicates` counter: re-sends answered from its keys
    problems: list[str]

    def summary(self) -> str:
        return (
            f"{self.provider}/{self.campaign}: rows {self.rows} {self.statuses} ledger {self.ledger_entries} "
            f"duplicates {self.duplicates} losses {self.losses} unknown {self.unknown} "
            f"(in ledger {self.unknown_in_ledger}) re-sends recognised {self.recognised_resends}"
        )


def check_campaign(
    soak: Soak,
    c: Campaign,
    *,
    reject_suffixes: Sequence[str] = (),
    transient_suffixes: Sequence[str] = (),
    expect_complete: bool = True,
) -> Verdict:
    """The results match the ledger (support.ledger_problems: every input row has exactly one current
    result; the ledger holds each phone at most once; every accepted row is in it exactly once, with the
    message id the results carry; nothing refused, failed or invalid is in it); every attempt is complete
    unless `expect_complete` is off; with idempotency every valid row ends accepted unless the provider refused
    it for good; without (Postman) the rows in doubt are `unknown`, each in the ledger at most once."""
    facts = soak.facts
    problems: list[str] = []
    current = current_results(soak.results, c.cid)
    if expect_complete:
        for attempt in sorted({int(a) for a in current["attempt"].unique().to_list()}):
            if not storage.exists(soak.attempt(c, attempt).done):
                problems.append(f"attempt {attempt} has no _SUCCESS")
    ledger = ledger_frame(soak.client, soak.emu)
    problems += ledger_problems(current, ledger, c.n_input, unknown_may_be_sent=not soak.resend_safe)
    per_phone = ledger_by_phone(ledger)
    duplicates = ledger.height - per_phone.height
    statuses = {str(s): int(n) for s, n in current.group_by("status").len().iter_rows()}
    in_ledger = set(per_phone["to"].to_list())
    if facts.template is not None and not soak.resend_safe:  # Postman: the reference names the batch
        accepted = current.filter(pl.col("status") == "accepted")
        refs = accepted.join(per_phone, left_on="phone", right_on="to").filter(pl.col("batch").is_not_null())
        wrong_ref = refs.filter(
            pl.col("provider_batch_ref") != pl.lit(f"{facts.template}/") + pl.col("batch")
        )
        if wrong_ref.height:
            problems.append(f"{wrong_ref.height} accepted rows name another batch than the ledger's")
    unknown = current.filter(pl.col("status") == "unknown")

    # Expected outcomes per row.
    valid = current.filter(pl.col("row_index") < c.n_valid)
    invalid_rows = current.filter(pl.col("row_index") >= c.n_valid)
    if set(invalid_rows["status"].to_list()) - {"invalid"}:
        problems.append(f"rows with unusable phones ended {invalid_rows['status'].to_list()}")
    must_reject = pl.lit(False)
    if facts.soak.per_row_reject and reject_suffixes:
        must_reject = pl.col("phone").str.ends_with(reject_suffixes[0])
        for s in reject_suffixes[1:]:
            must_reject = must_reject | pl.col("phone").str.ends_with(s)
    if c.markers:
        must_reject = must_reject | pl.col("row_index").is_in(list(c.markers))
    valid = valid.with_columns(_must_reject=must_reject)
    # Without idempotency a refused row may sit in a batch whose answer was lost: `unknown` is right then.
    refused_ok = ["rejected"] if soak.resend_safe else ["rejected", "unknown"]
    wrongly_accepted = valid.filter(pl.col("_must_reject") & ~pl.col("status").is_in(refused_ok))
    if wrongly_accepted.height:
        problems.append(
            f"{wrongly_accepted.height} rows the provider refuses ended "
            f"{wrongly_accepted['status'].unique().to_list()}"
        )
    rightly_refused = pl.col("_must_reject")
    if facts.soak.marker_rejects and c.markers:
        # A whole-batch refusal cannot be narrowed below 2 x the provider's minimum: the marker row's last
        # sub-batch is refused with it, saying so.
        marker_batches = valid.filter(pl.col("_must_reject"))["batch_id"].to_list()
        rightly_refused = rightly_refused | (
            pl.col("batch_id").is_in(marker_batches) & (pl.col("status") == "rejected")
        )
    ok_statuses = ["accepted"] if soak.resend_safe else ["accepted", "unknown"]
    lost = valid.filter(~pl.col("status").is_in(ok_statuses) & ~rightly_refused)
    if lost.height:
        problems.append(
            f"{lost.height} valid rows lost: {lost.group_by('status', 'error_code').len().rows()}"
        )
    if facts.soak.transient_at_send and transient_suffixes:
        # Refused for now at send time: they must have gone through `smscast retry` (attempt 2 or later).
        transient = valid.filter(
            pl.col("phone").str.ends_with(transient_suffixes[0]) & ~pl.col("_must_reject")
        )
        first_attempt = transient.filter(pl.col("attempt") < 2)
        if transient.is_empty() or first_attempt.height:
            problems.append(
                f"transient rows: {transient.height}, of which {first_attempt.height} never re-sent by retry"
            )
    unknown_in_ledger = len(set(unknown["phone"].to_list()) & in_ledger)
    stats = soak.stats()
    return Verdict(
        provider=facts.name,
        campaign=c.cid,
        rows=c.n_input,
        statuses=statuses,
        ledger_entries=ledger.height,
        duplicates=duplicates,
        losses=lost.height,
        unknown=unknown.height,
        unknown_in_ledger=unknown_in_ledger,
        recognised_resends=int(stats["duplicates"]),
        problems=problems,
    )
