"""Quiet hours in the recipient's local time (smscast/quiet_hours.py): every `now` is passed explicitly, so no
test depends on the real time of day; a seeded property test checks the interval arithmetic against a plain
per-minute scan of the wall clocks."""

from __future__ import annotations

import functools
import random
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo, available_timezones

import phonenumbers
import polars as pl
import pytest
from phonenumbers import timezone as phone_timezones

from smscast.quiet_hours import HORIZON, QuietHours, quiet_release

NIGHT = QuietHours.parse("21:00-08:00")
LONDON = ["Europe/London"]
NEW_YORK = ["America/New_York"]
COASTS = ["America/New_York", "America/Los_Angeles"]


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, micro: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, micro, tzinfo=UTC)


def one(zones: list[str] | None, window: QuietHours, now: datetime) -> dict[str, object]:
    frame = quiet_release(pl.Series([zones], dtype=pl.List(pl.String)), window, now)
    assert frame.height == 1
    return frame.row(0, named=True)


def held_until(zones: list[str], window: QuietHours, now: datetime) -> datetime | None:
    row = one(zones, window, now)
    assert row["quiet"] is True and row["no_window"] is False, row
    release = row["release_at"]
    assert isinstance(release, datetime)
    return release


def not_quiet(zones: list[str], window: QuietHours, now: datetime) -> bool:
    row = one(zones, window, now)
    return row == {"quiet": False, "release_at": None, "no_window": False, "bad_zone": None}


# -- the window ------------------------------------------------------------------------------------------


def test_parse_accepts_the_campaign_form_and_refuses_the_rest() -> None:
    assert QuietHours.parse("21:00-08:00") == QuietHours(time(21), time(8))
    assert QuietHours.parse(" 12:00 - 14:30 ") == QuietHours(time(12), time(14, 30))
    assert str(QuietHours.parse("07:05-23:59")) == "07:05-23:59"
    assert QuietHours.parse("21:00-08:00").crosses_midnight
    assert not QuietHours.parse("12:00-14:00").crosses_midnight
    for bad in ("08:00-08:00", "24:00-08:00", "8:00-09:00", "21:00", "21:00-08:60", ""):
        with pytest.raises(ValueError):
            QuietHours.parse(bad)
    with pytest.raises(ValueError):
        QuietHours(time(9), time(9))
    with pytest.raises(ValueError):
        QuietHours(time(9, tzinfo=UTC), time(10))


def test_now_must_be_timezone_aware() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        quiet_release(pl.Series([LONDON]), NIGHT, datetime(2026, 1, 15, 22, 30))


# -- one zone --------------------------------------------------------------------------------------------


def test_london_late_evening_is_held_until_eight_local_in_winter_and_summer() -> None:
    # 22:30 GMT in January: 08:00 GMT is 08:00 UTC.
    assert held_until(LONDON, NIGHT, utc(2026, 1, 15, 22, 30)) == utc(2026, 1, 16, 8)
    # 22:30 BST in July is 21:30 UTC: 08:00 BST is 07:00 UTC.
    assert held_until(LONDON, NIGHT, utc(2026, 7, 15, 21, 30)) == utc(2026, 7, 16, 7)
    # The same instant given in another zone is the same instant.
    in_tokyo = utc(2026, 7, 15, 21, 30).astimezone(ZoneInfo("Asia/Tokyo"))
    assert held_until(LONDON, NIGHT, in_tokyo) == utc(2026, 7, 16, 7)
    # Past midnight, the release is the same morning, not the next one.
    assert held_until(LONDON, NIGHT, utc(2026, 1, 16, 3, 0)) == utc(2026, 1, 16, 8)


def test_london_in_the_morning_is_not_quiet() -> None:
    assert not_quiet(LONDON, NIGHT, utc(2026, 1, 15, 9, 0))
    assert not_quiet(LONDON, NIGHT, utc(2026, 7, 15, 8, 0))  # 09:00 BST


def test_window_edges_start_is_quiet_end_is_not() -> None:
    assert held_until(LONDON, NIGHT, utc(2026, 1, 15, 21, 0)) == utc(2026, 1, 16, 8)
    assert not_quiet(LONDON, NIGHT, utc(2026, 1, 15, 20, 59, 59, 999999))
    assert not_quiet(LONDON, NIGHT, utc(2026, 1, 16, 8, 0))
    # A microsecond before the end: still quiet, released at the end itself, never before now.
    just_before = utc(2026, 1, 16, 7, 59, 59, 999999)
    assert held_until(LONDON, NIGHT, just_before) == utc(2026, 1, 16, 8)


def test_window_not_crossing_midnight() -> None:
    lunch = QuietHours.parse("12:00-14:00")
    paris = ["Europe/Paris"]  # UTC+1 in January
    assert held_until(paris, lunch, utc(2026, 1, 15, 11, 0)) == utc(2026, 1, 15, 13, 0)
    assert held_until(paris, lunch, utc(2026, 1, 15, 12, 59)) == utc(2026, 1, 15, 13, 0)
    assert not_quiet(paris, lunch, utc(2026, 1, 15, 10, 59))
    assert not_quiet(paris, lunch, utc(2026, 1, 15, 13, 0))
    assert not_quiet(paris, lunch, utc(2026, 1, 15, 22, 0))  # the night is not in a lunch window


# -- several zones ---------------------------------------------------------------------------------------


def test_two_zones_quiet_in_one_is_quiet_and_released_when_both_are_out() -> None:
    # 08:30 in New York (out), 05:30 in Los Angeles (in): held until 08:00 in Los Angeles, 15:00 UTC.
    assert not_quiet(NEW_YORK, NIGHT, utc(2026, 5, 5, 12, 30))
    assert held_until(COASTS, NIGHT, utc(2026, 5, 5, 12, 30)) == utc(2026, 5, 5, 15, 0)
    # 21:30 in New York (in), 18:30 in Los Angeles (out): New York is out at 12:00 UTC, but Los Angeles is
    # then at 05:00 and in its own night, so the row waits for Los Angeles' 08:00.
    assert held_until(COASTS, NIGHT, utc(2026, 5, 6, 1, 30)) == utc(2026, 5, 6, 15, 0)
    # 12:00 in New York and 09:00 in Los Angeles: out in both.
    assert not_quiet(COASTS, NIGHT, utc(2026, 5, 5, 16, 0))


def test_one_zones_night_ending_as_anothers_begins_is_one_night() -> None:
    # July: New York's 08:00 EDT is 12:00 UTC, the very instant Tokyo's 21:00 begins, so there is no gap
    # between the two nights; the row waits for Tokyo's 08:00, 23:00 UTC (19:00 in New York).
    assert held_until(["America/New_York", "Asia/Tokyo"], NIGHT, utc(2026, 7, 15, 2, 0)) == utc(
        2026, 7, 15, 23
    )


def russia() -> list[str]:
    return list(phone_timezones.time_zones_for_number(phonenumbers.parse("+79161234567")))


def test_russia_wide_list_has_a_short_common_window() -> None:
    zones = russia()
    assert len(zones) > 10 and "Asia/Anadyr" in zones and "Europe/Bucharest" in zones
    # Allowed 08:00-21:00 everywhere: the list runs from Bucharest (UTC+2, +3 in summer) to Anadyr (UTC+12),
    # so only 06:00-09:00 UTC in winter (08:00 Bucharest to 21:00 Anadyr), 05:00-09:00 in summer.
    assert held_until(zones, NIGHT, utc(2026, 1, 15, 0, 0)) == utc(2026, 1, 15, 6, 0)
    assert held_until(zones, NIGHT, utc(2026, 7, 15, 0, 0)) == utc(2026, 7, 15, 5, 0)
    assert not_quiet(zones, NIGHT, utc(2026, 1, 15, 8, 59))
    assert held_until(zones, NIGHT, utc(2026, 1, 15, 9, 0)) == utc(2026, 1, 16, 6, 0)


def test_zones_around_the_world_have_no_window() -> None:
    everywhere = [
        "Pacific/Honolulu",  # UTC-10
        "America/New_York",
        "Europe/London",
        "Asia/Kolkata",
        "Asia/Tokyo",
        "Pacific/Kiritimati",  # UTC+14
    ]
    row = one(everywhere, QuietHours.parse("18:00-10:00"), utc(2026, 1, 15, 12, 0))
    assert row == {"quiet": True, "release_at": None, "no_window": True, "bad_zone": None}
    # UTC-10 and UTC+14 read the same hour (a day apart), so those two alone do share a window.
    assert one(
        ["Pacific/Honolulu", "Pacific/Kiritimati"], QuietHours.parse("18:00-10:00"), utc(2026, 1, 15, 12)
    )["release_at"] == utc(2026, 1, 15, 20, 0)


# -- DST -------------------------------------------------------------------------------------------------


def test_new_york_spring_forward() -> None:
    # 2026-03-08: 02:00 EST (07:00 UTC) jumps to 03:00 EDT. Through the night, 08:00 is EDT: 12:00 UTC.
    assert held_until(NEW_YORK, NIGHT, utc(2026, 3, 8, 3, 0)) == utc(2026, 3, 8, 12, 0)
    # A window ending at 02:30, a time that never happens that night: released at the first instant after
    # the gap, 03:00 EDT.
    to_half_two = QuietHours.parse("21:00-02:30")
    assert held_until(NEW_YORK, to_half_two, utc(2026, 3, 8, 5, 0)) == utc(2026, 3, 8, 7, 0)
    # The day before, 02:30 EST exists: 07:30 UTC.
    assert held_until(NEW_YORK, to_half_two, utc(2026, 3, 7, 5, 0)) == utc(2026, 3, 7, 7, 30)
    # A window starting in the gap begins at the first instant after it.
    from_half_two = QuietHours.parse("02:30-06:00")
    assert not_quiet(NEW_YORK, from_half_two, utc(2026, 3, 8, 6, 59))
    assert held_until(NEW_YORK, from_half_two, utc(2026, 3, 8, 7, 0)) == utc(2026, 3, 8, 10, 0)


def test_london_spring_forward() -> None:
    # 2026-03-29: 01:00 GMT jumps to 02:00 BST. 08:00 that morning is BST: 07:00 UTC.
    assert held_until(LONDON, NIGHT, utc(2026, 3, 28, 22, 30)) == utc(2026, 3, 29, 7, 0)
    # 01:30 never happens that night: released at 02:00 BST, 01:00 UTC.
    assert held_until(LONDON, QuietHours.parse("21:00-01:30"), utc(2026, 3, 28, 23, 0)) == utc(2026, 3, 29, 1)


def test_london_fall_back_follows_the_wall_clock() -> None:
    # 2026-10-25: 02:00 BST (01:00 UTC) goes back to 01:00 GMT, so 01:00-02:00 is read twice.
    to_half_one = QuietHours.parse("21:00-01:30")
    # The first 01:30 (BST) ends the night.
    assert held_until(LONDON, to_half_one, utc(2026, 10, 24, 21, 0)) == utc(2026, 10, 25, 0, 30)
    # During the second pass the clock reads 01:10 again: quiet until the second 01:30 (GMT).
    assert held_until(LONDON, to_half_one, utc(2026, 10, 25, 1, 10)) == utc(2026, 10, 25, 1, 30)
    assert not_quiet(LONDON, to_half_one, utc(2026, 10, 25, 0, 45))  # 01:45 BST
    # 21:00-08:00 across that night: 08:00 GMT, 08:00 UTC.
    assert held_until(LONDON, NIGHT, utc(2026, 10, 24, 21, 0)) == utc(2026, 10, 25, 8, 0)


# -- names, nulls, rows ----------------------------------------------------------------------------------


def test_unknown_zone_is_named_and_the_known_ones_still_count() -> None:
    row = one(["Europe/London", "Mars/Olympus", "America"], NIGHT, utc(2026, 1, 15, 22, 30))
    assert row == {
        "quiet": True,
        "release_at": utc(2026, 1, 16, 8),
        "no_window": False,
        "bad_zone": "Mars/Olympus",
    }
    for names in (["Mars/Olympus"], ["europe/london"], ["../etc/passwd"], [""]):
        row = one(names, NIGHT, utc(2026, 1, 15, 22, 30))
        assert row == {"quiet": False, "release_at": None, "no_window": False, "bad_zone": names[0]}


def test_height_and_order_are_kept_with_nulls_and_empty_lists() -> None:
    zones = pl.Series(
        [LONDON, None, [], NEW_YORK, None, LONDON, ["Asia/Tokyo"], [None, "Europe/London"], COASTS],
        dtype=pl.List(pl.String),
    )
    now = utc(2026, 1, 15, 22, 30)  # London 22:30, New York 17:30, Tokyo 07:30, Los Angeles 14:30
    frame = quiet_release(zones, NIGHT, now)
    assert frame.columns == ["quiet", "release_at", "no_window", "bad_zone"]
    assert frame.dtypes == [pl.Boolean(), pl.Datetime("us", "UTC"), pl.Boolean(), pl.String()]
    assert frame["quiet"].to_list() == [True, False, False, False, False, True, True, True, False]
    assert frame["release_at"].to_list() == [
        utc(2026, 1, 16, 8),
        None,
        None,
        None,
        None,
        utc(2026, 1, 16, 8),
        utc(2026, 1, 15, 23),  # 08:00 in Tokyo
        utc(2026, 1, 16, 8),
        None,
    ]
    assert frame["no_window"].to_list() == [False] * 9
    assert frame["bad_zone"].to_list() == [None] * 9
    assert quiet_release(pl.Series([], dtype=pl.List(pl.String)), NIGHT, now).height == 0
    assert quiet_release(pl.Series([None, None]), NIGHT, now)["quiet"].to_list() == [False, False]


# -- against a per-minute scan ---------------------------------------------------------------------------


def in_window(clock: time, window: QuietHours) -> bool:
    if window.start < window.end:
        return window.start <= clock < window.end
    return clock >= window.start or clock < window.end


def scan(zones: list[str], window: QuietHours, now: datetime) -> tuple[bool, datetime | None, bool]:
    """The definition, minute by minute: every offset in use has whole minutes, so every edge is on one."""
    tzs = [ZoneInfo(z) for z in zones]

    def quiet(t: datetime) -> bool:
        return any(in_window(t.astimezone(tz).time(), window) for tz in tzs)

    if not quiet(now):
        return (False, None, False)
    t = now.replace(second=0, microsecond=0) + timedelta(minutes=1)
    while t <= now + HORIZON:
        if not quiet(t):
            return (True, t, False)
        t += timedelta(minutes=1)
    return (True, None, True)


DST_ZONES = [
    "America/New_York",
    "America/Los_Angeles",
    "America/Santiago",
    "Europe/London",
    "Europe/Berlin",
    "Australia/Sydney",
    "Australia/Lord_Howe",
    "Pacific/Auckland",
    "Pacific/Chatham",
    "Africa/Casablanca",
    "Antarctica/Troll",
    "Asia/Kathmandu",
    "Pacific/Kiritimati",
]


@functools.cache
def clock_changes(name: str) -> list[datetime]:
    """The zone's clock changes in 2026 and 2027, to the hour."""
    tz = ZoneInfo(name)
    hours = [utc(2026, 1, 1) + timedelta(hours=h) for h in range(2 * 365 * 24)]
    offsets = [t.astimezone(tz).utcoffset() for t in hours]
    return [hours[i] for i in range(1, len(hours)) if offsets[i] != offsets[i - 1]]


def random_case(rng: random.Random, pool: list[str]) -> tuple[list[str], QuietHours, datetime]:
    source = DST_ZONES if rng.random() < 0.6 else pool
    zones = rng.sample(source, rng.choice((1, 1, 2, 3, 4)))
    edges = [time(h, m) for h in (0, 1, 2, 3) for m in (0, 30)]
    while True:
        start = rng.choice(edges) if rng.random() < 0.3 else time(rng.randrange(24), rng.randrange(60))
        end = rng.choice(edges) if rng.random() < 0.3 else time(rng.randrange(24), rng.randrange(60))
        if start != end:
            window = QuietHours(start, end)
            break
    changes = clock_changes(zones[0]) if zones[0] in DST_ZONES else []
    if changes and rng.random() < 0.7:
        # Shortly before (or just after) one of the first zone's clock changes, so that it falls between now
        # and the release.
        base = rng.choice(changes)
        now = base + timedelta(seconds=rng.randrange(-20 * 3600, 4 * 3600), microseconds=rng.randrange(10**6))
    else:
        now = utc(2026, 1, 1) + timedelta(
            seconds=rng.randrange(730 * 86400), microseconds=rng.randrange(10**6)
        )
    if rng.random() < 0.3:
        # Exactly on an edge of the window in one of the zones (either reading of a repeated hour).
        tz = ZoneInfo(rng.choice(zones))
        local = now.astimezone(tz)
        edge = rng.choice((window.start, window.end))
        now = local.replace(
            hour=edge.hour, minute=edge.minute, second=0, microsecond=0, fold=rng.randrange(2)
        )
        now = now.astimezone(UTC)
    return zones, window, now


def test_matches_a_per_minute_scan() -> None:
    rng = random.Random(20260312)
    pool = sorted(available_timezones() - {"Factory", "localtime"})
    for _ in range(300):
        zones, window, now = random_case(rng, pool)
        row = one(zones, window, now)
        expected = scan(zones, window, now)
        assert (row["quiet"], row["release_at"], row["no_window"]) == expected, (zones, str(window), now)
        release = row["release_at"]
        assert release is None or (isinstance(release, datetime) and release >= now)


def test_many_rows_share_the_work_of_their_distinct_lists() -> None:
    rng = random.Random(7)
    lists: list[list[str] | None] = [LONDON, NEW_YORK, COASTS, russia(), None, []]
    rows = [lists[rng.randrange(len(lists))] for _ in range(20_000)]
    now = utc(2026, 3, 8, 4, 0)
    frame = quiet_release(pl.Series(rows, dtype=pl.List(pl.String)), NIGHT, now)
    assert frame.height == len(rows)
    expected = {i: one(zones, NIGHT, now) for i, zones in enumerate(lists)}
    by_list = [expected[lists.index(zones)] for zones in rows]
    assert frame.to_dicts() == by_list
