"""Contact policy, between validation and planning: who may be messaged in this campaign, and when.

Every valid row is checked against each rule the campaign has; one named Pandera check per reason, run with
lazy=True as validation's are (tasks/validate.py `failing`), so that a row failing several rules reports all
of them in `error_code` (`opted_out;quiet_hours`). What becomes of it (smscast/status.py):

* `opted_out`: its number is on the results location's managed opt-out list or a `--suppress` list;
* `country_blocked`: its country (`country`, from validation) is outside `--allow-countries` or in
  `--block-countries` (a number with no country is outside any allow list);
* `frequency_cap`: `--max-per-recipient` messages were already accepted to the number within `--per-window`
  by the campaigns under the same results location (tasks/frequency.py);
  any of these makes the row `suppressed`: never sent, never retried;
* `quiet_hours`: it is inside `--quiet-hours` in its local time now. Alone, it makes the row `held` until
  `release_at`, when a release attempt sends it (flows/release.py). If its possible zones never share an hour
  outside the quiet hours (a number that may be anywhere in a country spanning many zones, with long quiet
  hours), no release could ever send it: `suppressed`, with the reason saying so.

Rows validation already refused stay `invalid`: their phone may not even be a number, and one status is
enough. Everything is joins and expressions over the frame: no Python per row (the per-zone arithmetic of quiet
hours runs once per distinct zone list, smscast/quiet_hours.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import polars as pl

from smscast.campaign import CampaignSpec, duration_seconds
from smscast.providers.base import RowRule
from smscast.status import Status
from smscast.step_log import step_logger
from smscast.tasks.suppression import on_lists, suppression_lists
from smscast.tasks.validate import failing, with_country

__all__ = ["OPTED_OUT", "POLICY_REASONS", "apply_policy", "has_policy"]

OPTED_OUT = "opted_out"
COUNTRY_BLOCKED = "country_blocked"
FREQUENCY_CAP = "frequency_cap"
QUIET_HOURS = "quiet_hours"
# Every reason the policy step gives, in the order `error_code` lists them. `over_budget` is not here: it is
# decided while sending (the spend cap, smscast/pricing.py), and its rows are `failed`.
POLICY_REASONS: tuple[str, ...] = (OPTED_OUT, COUNTRY_BLOCKED, FREQUENCY_CAP, QUIET_HOURS)
# Reasons that forbid the row in this campaign (suppressed); quiet hours alone only delay it (held).
_FORBIDS = (OPTED_OUT, COUNTRY_BLOCKED, FREQUENCY_CAP)

LIST = "_list"  # the list(s) a number is on
_SENT = "_recent_sent"
_QUIET, _RELEASE, _NO_WINDOW = "_quiet", "_release_at", "_no_window"


def _logger() -> logging.Logger | logging.LoggerAdapter[Any]:
    return step_logger("smscast.policy")


def has_policy(spec: CampaignSpec) -> bool:
    """Whether the campaign asks for a rule beyond the managed opt-out list, which always applies."""
    return bool(
        spec.suppress
        or spec.allow_countries
        or spec.block_countries
        or spec.max_per_recipient is not None
        or spec.quiet_hours is not None
    )


@dataclass(frozen=True)
class _Rule:
    """One reason: how to add the columns it needs to the valid rows, the Pandera rule, and the per-row message."""

    code: str
    prepare: Callable[[pl.DataFrame], pl.DataFrame]
    rule: RowRule
    message: pl.Expr


def _rules(spec: CampaignSpec, now: datetime) -> list[_Rule]:
    out: list[_Rule] = []
    lists = suppression_lists(spec)
    if lists:
        out.append(
            _Rule(
                OPTED_OUT,
                lambda df: df.with_columns(on_lists(pl.col("phone"), lists).alias(LIST)),
                RowRule(OPTED_OUT, "opted out", pl.col(LIST).is_null(), ("phone",)),
                pl.format("opted out (list: {})", pl.col(LIST)),
            )
        )
    if spec.allow_countries or spec.block_countries:
        allowed = pl.lit(True)
        if spec.allow_countries:
            allowed = pl.col("country").is_in(list(spec.allow_countries)).fill_null(False)
        if spec.block_countries:
            allowed = allowed & ~pl.col("country").is_in(list(spec.block_countries)).fill_null(False)
        out.append(
            _Rule(
                COUNTRY_BLOCKED,
                _with_country,
                RowRule(COUNTRY_BLOCKED, "country not allowed", allowed, ("country",)),
                pl.format(
                    "country {} is not allowed by this campaign's country rules",
                    pl.col("country").fill_null("unknown"),
                ),
            )
        )
    if spec.max_per_recipient is not None and spec.per_window is not None:
        limit, window = spec.max_per_recipient, spec.per_window
        out.append(
            _Rule(
                FREQUENCY_CAP,
                lambda df: _with_recent(df, spec, now),
                RowRule(FREQUENCY_CAP, "frequency cap", pl.col(_SENT).fill_null(0) < limit, ("phone",)),
                pl.format(
                    "{} message(s) already accepted to this number within {} (cap {})",
                    pl.col(_SENT),
                    pl.lit(window),
                    pl.lit(limit),
                ),
            )
        )
    if spec.quiet_hours is not None:
        quiet = spec.quiet_hours
        out.append(
            _Rule(
                QUIET_HOURS,
                lambda df: _with_quiet(df, quiet, now),
                RowRule(QUIET_HOURS, "quiet hours", ~pl.col(_QUIET).fill_null(False), ("phone",)),
                pl.when(pl.col(_NO_WINDOW))
                .then(
                    pl.lit(f"no hour outside the quiet hours {quiet} in every time zone the number may be in")
                )
                .otherwise(
                    pl.format(
                        "quiet hours {} in the recipient's time zone: held until {} UTC",
                        pl.lit(quiet),
                        pl.col(_RELEASE).dt.strftime("%Y-%m-%d %H:%M"),
                    )
                ),
            )
        )
    return out


def _with_country(df: pl.DataFrame) -> pl.DataFrame:
    # Validation adds `country`; rows planned before it did (a retry of an older campaign) get it here.
    return df if "country" in df.columns else with_country(df)


def _with_recent(df: pl.DataFrame, spec: CampaignSpec, now: datetime) -> pl.DataFrame:
    from smscast.tasks.frequency import recent_messages

    since = now - timedelta(seconds=duration_seconds(spec.per_window or ""))
    recent = recent_messages(spec.results, since=since, now=now, exclude_campaign=spec.campaign_id)
    recent = recent.select(pl.col("phone").cast(pl.String), pl.col("sent").cast(pl.Int64).alias(_SENT))
    return df.join(recent, on="phone", how="left", maintain_order="left")


def _with_quiet(df: pl.DataFrame, window: str, now: datetime) -> pl.DataFrame:
    """`_quiet`, `_release_at`, `_no_window` from each row's possible zones: its `timezone` column's zone when
    the source has one and the row gives it (validation refused unknown names), else its number's zones."""
    from smscast.numbering import time_zone_ids, zone_lists
    from smscast.quiet_hours import QuietHours, quiet_release

    hours = QuietHours.parse(window)
    # Numbers share a few hundred zone lists: each list in use is judged once, by its id, and the answers
    # gathered back; validation's number_type spares classifying the numbers again.
    types = df.get_column("number_type") if "number_type" in df.columns else None
    ids = time_zone_ids(df.get_column("phone"), types).alias("_zone_id")
    used = ids.drop_nulls().unique()
    judged = quiet_release(zone_lists().gather(used), hours, now).with_columns(used)
    found = ids.to_frame().join(judged, on="_zone_id", how="left", maintain_order="left")
    if "timezone" in df.columns:
        given = df.get_column("timezone").cast(pl.String).str.strip_chars()
        named = given.str.len_chars().fill_null(0) > 0
        if named.any():
            own = quiet_release(pl.select(pl.concat_list(given)).to_series(), hours, now)
            found = found.select(
                pl.when(named).then(own.get_column(c)).otherwise(pl.col(c)).alias(c) for c in own.columns
            )
    return df.with_columns(
        found.get_column("quiet").fill_null(False).alias(_QUIET),
        found.get_column("release_at").alias(_RELEASE),
        found.get_column("no_window").fill_null(False).alias(_NO_WINDOW),
    )


def apply_policy(validated: pl.DataFrame, spec: CampaignSpec, now: datetime | None = None) -> pl.DataFrame:
    """`validated` with the valid rows the policy holds back marked `suppressed` or `held` (with their reasons,
    and `release_at` for held rows). `now` (aware) decides quiet hours and the frequency window: the real
    time unless a test gives one."""
    now = datetime.now(UTC) if now is None else now
    out = validated if "release_at" in validated.columns else validated.with_columns(release_at=_NO_TIME)
    rules = _rules(spec, now)
    if not rules:
        return out
    # Over every row, so that the frame keeps its order (no split, concat and sort of a million rows); a row
    # validation refused passes every policy check and keeps its own status and reasons.
    refused = pl.col("status").is_not_null()
    for r in rules:
        out = r.prepare(out)
    checks = [replace(r.rule, valid=r.rule.valid | refused) for r in rules]
    checked = failing(out.rename({"error_code": "_was_code", "error_message": "_was_message"}), checks)
    # Only the rows a rule caught (usually a small share) get a status, reasons and release time: they are
    # worked out on those rows alone and scattered back, not computed for every row and mostly thrown away.
    caught = checked.select(pl.arg_where(pl.col("error_code").is_not_null() & ~refused)).to_series()
    outcome = checked[caught].select(_outcome(rules))
    result = checked.with_columns(
        checked.get_column("status").scatter(caught, outcome.get_column("status")),
        checked.get_column("_was_code")
        .scatter(caught, checked.get_column("error_code")[caught])
        .alias("error_code"),
        checked.get_column("_was_message")
        .scatter(caught, outcome.get_column("error_message"))
        .alias("error_message"),
        (
            checked.get_column("release_at").scatter(caught, outcome.get_column("release_at"))
            if caught.len()
            else checked.get_column("release_at")
        ),
    ).drop(["_was_code", "_was_message", LIST, _SENT, _QUIET, _RELEASE, _NO_WINDOW], strict=False)
    _tell(result)
    return result


def _outcome(rules: list[_Rule]) -> list[pl.Expr]:
    """Status, message and release time of rows some rule caught, from their `;`-joined codes."""
    # Reason codes never contain one another, so a literal search finds each in the list.
    has = {r.code: pl.col("error_code").str.contains(r.code, literal=True) for r in rules}
    quiet = has.get(QUIET_HOURS, pl.lit(False))
    forbids = pl.any_horizontal([has[c] for c in _FORBIDS if c in has] or [pl.lit(False)])
    if QUIET_HOURS in has:
        forbids = forbids | (quiet & pl.col(_NO_WINDOW))
    held = quiet & ~forbids
    return [
        pl.when(forbids)
        .then(pl.lit(Status.SUPPRESSED.value))
        .otherwise(pl.lit(Status.HELD.value))
        .alias("status"),
        pl.concat_str(
            [pl.when(has[r.code]).then(r.message) for r in rules], separator="; ", ignore_nulls=True
        ).alias("error_message"),
        (pl.when(held).then(pl.col(_RELEASE)) if QUIET_HOURS in has else _NO_TIME).alias("release_at"),
    ]


_NO_TIME = pl.lit(None, pl.Datetime("us", "UTC"))


def _tell(rows: pl.DataFrame) -> None:
    held_back = rows.filter(pl.col("status").is_in([Status.SUPPRESSED.value, Status.HELD.value]))
    if held_back.height == 0:
        return
    counts = (
        held_back.select("status", pl.col("error_code").str.split(";"))
        .explode("error_code")
        .group_by("status", "error_code")
        .len()
        .sort("status", "error_code")
    )
    detail = ", ".join(f"{c} {n:,}" for _, c, n in counts.iter_rows())
    by_status = dict(held_back.group_by("status").len().iter_rows())
    _logger().info(
        "contact policy: %s rows suppressed, %s held (%s)",
        f"{by_status.get(Status.SUPPRESSED.value, 0):,}",
        f"{by_status.get(Status.HELD.value, 0):,}",
        detail,
    )
    if by_status.get(Status.HELD.value):
        first = rows.filter(pl.col("status") == Status.HELD.value).get_column("release_at").min()
        _logger().info("contact policy: the first held rows may go at %s UTC", first)
