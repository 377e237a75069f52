"""Quiet hours in the recipient's local time (contact policy, issue 12).

`--quiet-hours 21:00-08:00` holds back every row whose recipient's clock currently reads a time inside the
window, and says when it may go: `quiet_release` answers, for a column of per-row zone lists, whether each
row is quiet now and the earliest instant at which none of its zones is.

The rule, DST included: a zone is quiet at an instant when its wall clock at that instant reads a time in
[start, end) (a window crossing midnight: at or after start, or before end). A number in several zones is
quiet when it is quiet in any of them. So:

- the window's end is exact to the minute: 08:00 local converted to UTC, never a rounded time;
- spring forward: a window edge inside the gap (02:30 on a night the clock jumps from 02:00 to 03:00) takes
  effect at the first instant after the gap, because that is when the clock first reads past it;
- fall back: the clock reads the repeated hour twice, and each reading inside the window is quiet. A window
  ending at 01:30 on the night the clock goes back from 02:00 to 01:00 ends at the first 01:30; a row looked at
  during the second 01:00-01:30 is quiet again, until the second 01:30.

The work is done once per zone (its quiet intervals in UTC, over a few days around now) and once per distinct
zone list (the union of its zones' intervals), never per row: a campaign has at most a few hundred distinct
lists, and the answers are joined back onto the rows.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import polars as pl

from smscast.campaign import QUIET_HOURS

__all__ = ["HORIZON", "QuietHours", "quiet_release"]

# How far ahead a release is looked for: beyond it a row is `no_window` (its zones' allowed hours never
# overlap), and the caller suppresses it rather than holding it for ever.
HORIZON = timedelta(days=8)

_US = 1_000_000
_DAY = 86_400
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
# Offsets are sampled a day apart and each change between two samples is bisected to the second. Two
# transitions of one zone within a day that undo each other would go unseen; the tz database has none in the
# present era (the closest, Morocco's suspension of summer time for Ramadan, are about a month apart).
_SAMPLE_S = _DAY
# Zone intervals are built for this span around now: a window shorter than a day that holds now began less
# than a day before it, and the horizon is checked with a margin after it.
_BEFORE_S = 2 * _DAY
_AFTER_S = HORIZON.days * _DAY + 2 * _DAY
_INF = 1 << 62

_RESULT_SCHEMA: dict[str, pl.DataType] = {
    "quiet": pl.Boolean(),
    "release_at": pl.Datetime("us", "UTC"),
    "no_window": pl.Boolean(),
    "bad_zone": pl.String(),
}


@dataclass(frozen=True)
class QuietHours:
    """A daily window in local wall-clock time, [start, end); start > end crosses midnight."""

    start: time
    end: time

    def __post_init__(self) -> None:
        if self.start.tzinfo is not None or self.end.tzinfo is not None:
            raise ValueError("quiet hours are local wall-clock times: give them without a time zone")
        if self.start.microsecond or self.end.microsecond:
            raise ValueError("quiet hours are whole seconds (the command line gives whole minutes)")
        if self.start == self.end:
            raise ValueError("quiet hours need two different times")

    @classmethod
    def parse(cls, text: str) -> QuietHours:
        """`"21:00-08:00"` (spaces allowed), the form `CampaignSpec.quiet_hours` accepts."""
        match = QUIET_HOURS.match(text.replace(" ", ""))
        if match is None or match.group(1, 2) == match.group(3, 4):
            raise ValueError(
                f"quiet hours {text!r}: use HH:MM-HH:MM with two different times, e.g. 21:00-08:00"
            )
        h1, m1, h2, m2 = (int(g) for g in match.groups())
        return cls(time(h1, m1), time(h2, m2))

    @property
    def crosses_midnight(self) -> bool:
        return self.start > self.end

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"


def quiet_release(zones: pl.Series, window: QuietHours, now: datetime) -> pl.DataFrame:
    """For each row's list of IANA zone names: is it quiet at `now`, and from when may it be sent.

    Same height and order as `zones`. `quiet`: inside the window in at least one known zone. `release_at`
    (UTC, null unless quiet): the earliest instant >= now at which no zone is inside the window. `no_window`:
    quiet, and no such instant within `HORIZON` (release_at is then null). `bad_zone`: the first name that
    zoneinfo does not know; the other zones of the list are still judged, and a list with no known zone, an
    empty list or a null is never quiet (the caller decides what to do with it).
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware (e.g. datetime.now(UTC))")
    if zones.dtype != pl.List(pl.String):
        zones = zones.cast(pl.List(pl.String))
    now_us = (now - _EPOCH) // timedelta(microseconds=1)
    # Nulls never match in the join below, so a null list needs no special case: its row is filled in after.
    distinct = zones.drop_nulls().unique()
    judge = _Judge(window, now_us)
    answers = [judge.row(names) for names in distinct.to_list()]
    table = pl.DataFrame(
        {
            "zones": distinct,
            "quiet": [a[0] for a in answers],
            "release_at": pl.Series([a[1] for a in answers], dtype=pl.Int64).cast(pl.Datetime("us", "UTC")),
            "no_window": [a[2] for a in answers],
            "bad_zone": [a[3] for a in answers],
        },
        schema={"zones": pl.List(pl.String), **_RESULT_SCHEMA},
    )
    return (
        pl.DataFrame({"zones": zones})
        .join(table, on="zones", how="left", maintain_order="left")
        .select(
            pl.col("quiet").fill_null(False),
            pl.col("release_at"),
            pl.col("no_window").fill_null(False),
            pl.col("bad_zone"),
        )
    )


_Answer = tuple[bool, int | None, bool, str | None]
_Intervals = list[tuple[int, int]]


class _Judge:
    """One call's work: zone intervals cached by name, answers by distinct list."""

    def __init__(self, window: QuietHours, now_us: int) -> None:
        self.window = window
        self.now_us = now_us
        self.now_s = now_us // _US
        self.zones: dict[str, _Intervals | None] = {}

    def row(self, names: list[str | None]) -> _Answer:
        bad: str | None = None
        known: list[_Intervals] = []
        for name in dict.fromkeys(n for n in names if n is not None):
            intervals = self._zone(name)
            if intervals is None:
                bad = name if bad is None else bad
            else:
                known.append(intervals)
        release = _first_free(sorted(i for intervals in known for i in intervals), self.now_us)
        if release is None:
            return (False, None, False, bad)
        if release > self.now_us + HORIZON // timedelta(microseconds=1):
            return (True, None, True, bad)
        return (True, release, False, bad)

    def _zone(self, name: str) -> _Intervals | None:
        if name not in self.zones:
            try:
                tz = ZoneInfo(name)
            except (ZoneInfoNotFoundError, ValueError, OSError):
                # Not found, a malformed key, or a folder of the tz database ("America"): not a zone.
                self.zones[name] = None
            else:
                self.zones[name] = _zone_intervals(tz, self.window, self.now_s)
        return self.zones[name]


def _zone_intervals(tz: ZoneInfo, window: QuietHours, now_s: int) -> _Intervals:
    """The zone's quiet instants around now as sorted, disjoint [start, end) epoch microseconds.

    Between two transitions the offset is constant, so the wall clock is UTC plus that offset and a wall-time
    window maps to one UTC interval; clipping each to its offset's span and merging gives the exact set of
    instants whose wall clock reads inside the window, gaps and repeated hours included."""
    lo, hi = now_s - _BEFORE_S, now_s + _AFTER_S
    segments = _offset_segments(tz, lo, hi)
    first_day = _wall_date(tz, lo) - timedelta(days=1)
    last_day = _wall_date(tz, hi) + timedelta(days=1)
    start_s = _seconds(window.start)
    end_s = _seconds(window.end) + (_DAY if window.crosses_midnight else 0)
    pieces: _Intervals = []
    for n in range((last_day - first_day).days + 1):
        midnight = (first_day.toordinal() - _EPOCH_ORDINAL + n) * _DAY
        wall_start, wall_end = midnight + start_s, midnight + end_s
        for seg_start, seg_end, offset in segments:
            a = max(wall_start - offset, seg_start)
            b = min(wall_end - offset, seg_end)
            if a < b:
                pieces.append((a * _US, b * _US))
    return _merge(sorted(pieces))


def _offset_segments(tz: ZoneInfo, lo: int, hi: int) -> list[tuple[int, int, int]]:
    """(start, end, utc offset) in epoch seconds, covering [lo, hi]; the outer ones run on without bound."""
    samples = [*range(lo, hi, _SAMPLE_S), hi]
    offsets = [_offset(tz, t) for t in samples]
    changes: list[tuple[int, int]] = []
    for a, b, oa, ob in zip(samples, samples[1:], offsets, offsets[1:], strict=False):
        changes.extend(_transitions(tz, a, oa, b, ob))
    bounds = [-_INF, *(t for t, _ in changes), _INF]
    values = [offsets[0], *(o for _, o in changes)]
    return [(bounds[i], bounds[i + 1], values[i]) for i in range(len(values))]


def _transitions(tz: ZoneInfo, a: int, oa: int, b: int, ob: int) -> list[tuple[int, int]]:
    """Instants in (a, b] where the offset changes, with the offset from then on; bisected to the second."""
    if oa == ob:
        return []
    if b - a == 1:
        return [(b, ob)]
    mid = (a + b) // 2
    om = _offset(tz, mid)
    return _transitions(tz, a, oa, mid, om) + _transitions(tz, mid, om, b, ob)


def _offset(tz: ZoneInfo, epoch_s: int) -> int:
    offset = datetime.fromtimestamp(epoch_s, tz).utcoffset()
    assert offset is not None  # a ZoneInfo always has one
    return offset // timedelta(seconds=1)


def _wall_date(tz: ZoneInfo, epoch_s: int) -> date:
    return datetime.fromtimestamp(epoch_s, tz).date()


def _seconds(t: time) -> int:
    return t.hour * 3600 + t.minute * 60 + t.second


def _merge(intervals: Iterable[tuple[int, int]]) -> _Intervals:
    """Sorted intervals to disjoint ones; touching ones join (quiet up to T in one, from T in the next)."""
    merged: _Intervals = []
    for a, b in intervals:
        if merged and a <= merged[-1][1]:
            if b > merged[-1][1]:
                merged[-1] = (merged[-1][0], b)
        else:
            merged.append((a, b))
    return merged


def _first_free(intervals: _Intervals, now_us: int) -> int | None:
    """With every zone's quiet intervals sorted by start: None if now is in none of them, else the end of the
    run of overlapping or touching intervals that holds now, the first instant where no zone is quiet."""
    free_from: int | None = None
    for a, b in intervals:
        if free_from is None:
            if a <= now_us < b:
                free_from = b
        elif a <= free_from:
            free_from = max(free_from, b)
        else:
            break
    return free_from
