import logging
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from pipeline.sender.decision import Reject
from pipeline.sender.expiry import Hold
from pipeline.sender.quiet_hours import (
    DEFAULT_QUIET_HOURS,
    QuietHours,
    _WarnOnce,
    check_quiet_hours,
    next_allowed_ms,
    next_common_open_ms,
    parse_time,
    recipient_zones,
)

MSK = ZoneInfo("Europe/Moscow")
BERLIN = ZoneInfo("Europe/Berlin")
NIGHT = QuietHours.of("21:00", "09:00", "Europe/Moscow")


def ms(*args, zone=UTC):
    return int(datetime(*args, tzinfo=zone).timestamp() * 1000)


def test_parse_time():
    assert parse_time("00:00") == 0
    assert parse_time("23:59") == 1439
    for bad in ("24:00", "25:00", "9:00", "21:60", "2100", "", None):
        with pytest.raises(ValueError):
            parse_time(bad)


def test_crossing_midnight_boundaries():
    assert next_allowed_ms(ms(2024, 6, 1, 20, 59, 59, 999_000, zone=MSK), MSK, NIGHT) is None
    assert next_allowed_ms(ms(2024, 6, 1, 21, zone=MSK), MSK, NIGHT) == ms(2024, 6, 2, 9, zone=MSK)
    assert next_allowed_ms(ms(2024, 6, 1, 23, 59, zone=MSK), MSK, NIGHT) == ms(
        2024, 6, 2, 9, zone=MSK
    )
    assert next_allowed_ms(ms(2024, 6, 2, 0, 0, zone=MSK), MSK, NIGHT) == ms(
        2024, 6, 2, 9, zone=MSK
    )
    assert next_allowed_ms(ms(2024, 6, 2, 8, 59, 59, 999_000, zone=MSK), MSK, NIGHT) == ms(
        2024, 6, 2, 9, zone=MSK
    )
    assert next_allowed_ms(ms(2024, 6, 2, 9, zone=MSK), MSK, NIGHT) is None
    assert next_allowed_ms(ms(2024, 6, 2, 12, zone=MSK), MSK, NIGHT) is None


def test_not_crossing_midnight():
    lunch = QuietHours.of("13:00", "15:00")
    assert next_allowed_ms(ms(2024, 6, 1, 12, 59, zone=MSK), MSK, lunch) is None
    assert next_allowed_ms(ms(2024, 6, 1, 13, zone=MSK), MSK, lunch) == ms(2024, 6, 1, 15, zone=MSK)
    assert next_allowed_ms(ms(2024, 6, 1, 15, zone=MSK), MSK, lunch) is None
    assert next_allowed_ms(ms(2024, 6, 1, 0, zone=MSK), MSK, lunch) is None


def test_window_from_midnight():
    early = QuietHours.of("00:00", "08:00")
    assert next_allowed_ms(ms(2024, 6, 1, 0, zone=MSK), MSK, early) == ms(2024, 6, 1, 8, zone=MSK)
    assert next_allowed_ms(ms(2024, 5, 31, 23, 59, zone=MSK), MSK, early) is None


def test_empty_window_is_never_quiet():
    assert next_allowed_ms(ms(2024, 6, 1, 3), MSK, QuietHours(600, 600)) is None


def test_same_instant_differs_by_zone():
    now = ms(2024, 6, 1, 16)  # 19:00 Moscow, 04:00 next day Vladivostok
    vladivostok = ZoneInfo("Asia/Vladivostok")
    assert next_allowed_ms(now, MSK, NIGHT) is None
    assert next_allowed_ms(now, vladivostok, NIGHT) == ms(2024, 6, 2, 9, zone=vladivostok)


def test_cache_follows_days_back_and_forth():
    for _ in range(2):
        assert next_allowed_ms(ms(2024, 6, 1, 22, zone=MSK), MSK, NIGHT) == ms(
            2024, 6, 2, 9, zone=MSK
        )
        assert next_allowed_ms(ms(2024, 6, 5, 22, zone=MSK), MSK, NIGHT) == ms(
            2024, 6, 6, 9, zone=MSK
        )
        assert next_allowed_ms(ms(2024, 6, 3, 12, zone=MSK), MSK, NIGHT) is None


def test_berlin_spring_forward_night_is_an_hour_shorter():
    # 2024-03-31 02:00 CET -> 03:00 CEST
    night = QuietHours.of("21:00", "09:00", "Europe/Berlin")
    assert next_allowed_ms(ms(2024, 3, 30, 20), BERLIN, night) == ms(2024, 3, 31, 7)  # 21:00 CET
    assert next_allowed_ms(ms(2024, 3, 31, 1, 30), BERLIN, night) == ms(2024, 3, 31, 7)
    assert next_allowed_ms(ms(2024, 3, 31, 7), BERLIN, night) is None  # 09:00 CEST
    assert next_allowed_ms(ms(2024, 3, 31, 19), BERLIN, night) == ms(2024, 4, 1, 7)


def test_berlin_fall_back_night_is_an_hour_longer():
    # 2024-10-27 03:00 CEST -> 02:00 CET
    night = QuietHours.of("21:00", "09:00", "Europe/Berlin")
    assert next_allowed_ms(ms(2024, 10, 26, 19), BERLIN, night) == ms(2024, 10, 27, 8)
    assert next_allowed_ms(ms(2024, 10, 27, 7, 59), BERLIN, night) == ms(2024, 10, 27, 8)
    assert next_allowed_ms(ms(2024, 10, 27, 8), BERLIN, night) is None


def test_boundary_inside_the_skipped_hour_turns_at_the_jump():
    ends_in_gap = QuietHours.of("22:00", "02:30", "Europe/Berlin")
    assert next_allowed_ms(ms(2024, 3, 31, 0, 59, 59), BERLIN, ends_in_gap) == ms(2024, 3, 31, 1)
    assert next_allowed_ms(ms(2024, 3, 31, 1), BERLIN, ends_in_gap) is None
    starts_in_gap = QuietHours.of("02:30", "05:00", "Europe/Berlin")
    assert next_allowed_ms(ms(2024, 3, 31, 0, 59, 59), BERLIN, starts_in_gap) is None
    assert next_allowed_ms(ms(2024, 3, 31, 1), BERLIN, starts_in_gap) == ms(2024, 3, 31, 3)


def test_boundary_in_the_repeated_hour_turns_at_its_first_occurrence():
    ends_repeated = QuietHours.of("22:00", "02:30", "Europe/Berlin")
    assert next_allowed_ms(ms(2024, 10, 27, 0, 29), BERLIN, ends_repeated) == ms(
        2024, 10, 27, 0, 30
    )
    assert next_allowed_ms(ms(2024, 10, 27, 0, 30), BERLIN, ends_repeated) is None
    assert next_allowed_ms(ms(2024, 10, 27, 1, 30), BERLIN, ends_repeated) is None


def test_zone_whose_midnight_does_not_exist():
    # Chile skips 2024-09-08 00:00-01:00 local
    santiago = ZoneInfo("America/Santiago")
    night = QuietHours.of("23:00", "07:00", "America/Santiago")
    assert next_allowed_ms(ms(2024, 9, 8, 3, 30), santiago, night) == ms(2024, 9, 8, 10)
    assert next_allowed_ms(ms(2024, 9, 8, 4, 30), santiago, night) == ms(2024, 9, 8, 10)
    assert next_allowed_ms(ms(2024, 9, 8, 10), santiago, night) is None


@pytest.mark.parametrize("zone_key", ["Europe/Berlin", "America/Santiago", "Europe/Moscow"])
@pytest.mark.parametrize("window", [("21:00", "09:00"), ("01:30", "04:00"), ("00:00", "02:30")])
def test_agrees_with_wall_clock_every_quarter_hour(zone_key, window):
    zone = ZoneInfo(zone_key)
    rule = QuietHours.of(*window, zone_key)
    start, end = rule.start_min, rule.end_min
    for start_day in (
        datetime(2024, 3, 29, tzinfo=UTC),
        datetime(2024, 9, 6, tzinfo=UTC),
        datetime(2024, 10, 25, tzinfo=UTC),
    ):
        for step in range(4 * 24 * 4):
            now = start_day + timedelta(minutes=15 * step)
            now_ms = int(now.timestamp() * 1000)
            local = now.astimezone(zone)
            minute = local.hour * 60 + local.minute
            quiet = start <= minute < end if start < end else minute >= start or minute < end
            until = next_allowed_ms(now_ms, zone, rule)
            if local.fold:  # a repeated hour: the window already turned at its first pass
                continue
            assert (until is not None) == quiet, (zone_key, window, local)
            if until is not None:
                assert until > now_ms
                assert next_allowed_ms(until, zone, rule) is None
                assert next_allowed_ms(until - 1, zone, rule) == until


RUSSIA = [
    ZoneInfo(z)
    for z in (
        "Europe/Kaliningrad",
        "Europe/Moscow",
        "Europe/Samara",
        "Asia/Yekaterinburg",
        "Asia/Omsk",
        "Asia/Novosibirsk",
        "Asia/Irkutsk",
        "Asia/Yakutsk",
        "Asia/Vladivostok",
        "Asia/Magadan",
        "Asia/Kamchatka",
    )
]
VLADIVOSTOK = ZoneInfo("Asia/Vladivostok")


def test_recipient_zones_prefers_a_valid_profile_zone():
    assert recipient_zones("Asia/Yekaterinburg", ["Europe/Samara"], "c-1") == (
        ZoneInfo("Asia/Yekaterinburg"),
    )
    assert recipient_zones(None, ["Europe/Samara"], "c-2") == (ZoneInfo("Europe/Samara"),)
    assert recipient_zones("", [], "c-3") == ()  # nothing known: the lane's default zone
    # An invalid profile zone is no zone: every zone the number can be in, unknown ones skipped.
    assert recipient_zones(
        "Not/AZone", ["Europe/Samara", "Etc/Unknown", "Asia/Omsk", "Europe/Samara"], "c-4"
    ) == (
        ZoneInfo("Europe/Samara"),
        ZoneInfo("Asia/Omsk"),
    )


def test_invalid_or_missing_profile_zone_warns_once_per_customer(caplog):
    caplog.set_level(logging.WARNING, logger="pipeline.sender.quiet_hours")
    zones = [z.key for z in RUSSIA]
    for _ in range(3):
        assert recipient_zones("Mars/Olympus", zones, "cust-mars") == tuple(RUSSIA)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1
    assert "cust-mars" in warnings[0] and "'Mars/Olympus'" in warnings[0]
    assert "Asia/Kamchatka" in warnings[0]
    caplog.clear()
    recipient_zones(None, zones, "cust-no-zone")
    recipient_zones(None, zones, "cust-no-zone")
    recipient_zones(None, ["Europe/Minsk"], "cust-minsk")  # the number pins one zone: fine
    recipient_zones("Europe/Moscow", zones, "cust-fine")
    assert [r.getMessage() for r in caplog.records] == [
        "customer cust-no-zone: no time zone in the profile; quiet hours use every zone the"
        " number can be in (11: " + ", ".join(zones) + ")"
    ]


def test_warned_customers_are_bounded():
    once = _WarnOnce(limit=2)
    assert [once.first_time(k) for k in ("a", "b", "a", "c")] == [True, True, False, True]
    assert once.first_time("b")  # forgotten: the oldest of three with a limit of two
    assert not once.first_time("c")


def test_check_quiet_hours_by_lane():
    night_ms = ms(2024, 6, 1, 23, zone=MSK)
    hold = check_quiet_hours("marketing", night_ms, (MSK,), DEFAULT_QUIET_HOURS)
    assert hold == Hold(ms(2024, 6, 2, 9, zone=MSK), "quiet_hours")
    assert check_quiet_hours("transactional", night_ms, (MSK,), DEFAULT_QUIET_HOURS) is None
    assert (
        check_quiet_hours("marketing", ms(2024, 6, 1, 12, zone=MSK), (MSK,), DEFAULT_QUIET_HOURS)
        is None
    )


def test_check_quiet_hours_defaults_to_the_rules_zone():
    rule = {"marketing": QuietHours.of("21:00", "09:00", "Asia/Vladivostok")}
    now = ms(2024, 6, 1, 22, zone=VLADIVOSTOK)
    assert check_quiet_hours("marketing", now, (), rule).until_ms == ms(
        2024, 6, 2, 9, zone=VLADIVOSTOK
    )


def test_every_russian_zone_opens_together_only_from_0700_to_0900_utc():
    # 09:00 in Kaliningrad (UTC+2) is 07:00 UTC; 21:00 in Kamchatka (UTC+12) is 09:00 UTC.
    night = {"marketing": NIGHT}
    at_2330_vladivostok = ms(2026, 1, 15, 23, 30, zone=VLADIVOSTOK)  # 16:30 in Moscow
    assert check_quiet_hours("marketing", at_2330_vladivostok, RUSSIA, night) == Hold(
        ms(2026, 1, 16, 7), "quiet_hours"
    )
    assert check_quiet_hours("marketing", ms(2026, 1, 16, 7), RUSSIA, night) is None
    assert check_quiet_hours("marketing", ms(2026, 1, 16, 8, 59), RUSSIA, night) is None
    assert check_quiet_hours("marketing", ms(2026, 1, 16, 9), RUSSIA, night) == Hold(
        ms(2026, 1, 17, 7), "quiet_hours"
    )


@pytest.mark.parametrize("backwards", [False, True])  # remembered answers, either way
@pytest.mark.parametrize(
    "start_day", [datetime(2024, 3, 29, tzinfo=UTC), datetime(2024, 10, 25, tzinfo=UTC)]
)
def test_common_window_agrees_with_every_zones_wall_clock(start_day, backwards):
    zones = [BERLIN, MSK, ZoneInfo("Asia/Yekaterinburg")]  # Berlin's clock changes
    steps = range(3 * 24 * 4)
    for step in reversed(steps) if backwards else steps:
        now_ms = int((start_day + timedelta(minutes=15 * step)).timestamp() * 1000)
        until = next_common_open_ms(now_ms, zones, NIGHT)
        assert until is not None and until >= now_ms
        assert all(next_allowed_ms(until, z, NIGHT) is None for z in zones)
        # Nothing earlier is open everywhere: check each quarter hour in between.
        for earlier in range(now_ms, until, 15 * 60_000):
            assert any(next_allowed_ms(earlier, z, NIGHT) is not None for z in zones)


def test_windows_that_never_overlap_suppress_with_a_reason():
    # Open 10:00-20:00 local: Kaliningrad 08:00-18:00 UTC, Kamchatka 22:00-08:00 UTC.
    short_day = {"marketing": QuietHours.of("20:00", "10:00")}
    decision = check_quiet_hours("marketing", ms(2026, 1, 15, 12), RUSSIA, short_day)
    assert isinstance(decision, Reject)
    assert (decision.status, decision.reason) == ("suppressed", "no_common_send_window")
    assert "Asia/Kamchatka" in decision.detail
    assert next_common_open_ms(ms(2026, 1, 15, 12), RUSSIA, short_day["marketing"]) is None
    # Either end alone is fine.
    assert check_quiet_hours("marketing", ms(2026, 1, 15, 12), RUSSIA[:1], short_day) is None


def test_rule_validation():
    with pytest.raises(ValueError):
        QuietHours(1440, 0)
    with pytest.raises(ValueError):
        QuietHours(0, 60, "Mars/Olympus")
