"""Time strings as the contract defines them: what is accepted, what it means, what is refused."""

from __future__ import annotations

import math

import pytest

from hitl_workers.domain.timestrings import DurationError, format_duration, parse_duration

MINUTE, HOUR, DAY, WEEK = 60, 3600, 86400, 604800
HINT = 'use ms, s, m, h, d, w (e.g. "1h 30m") or ISO-8601 like PT1M30S'


# --- accepted -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "seconds"),
    [
        (10, 10.0),
        (2.5, 2.5),
        ("10", 10.0),
        ("2.5", 2.5),
        (".5", 0.5),
        ("  10  ", 10.0),
        ("007", 7.0),
    ],
)
def test_a_bare_number_is_seconds(given: str | float, seconds: float) -> None:
    # Given a bare number, When it is parsed, Then it means that many seconds
    assert parse_duration(given) == seconds


@pytest.mark.parametrize(
    ("unit", "seconds"),
    [
        ("ms", 0.001),
        *[(alias, 1) for alias in ("s", "sec", "secs", "second", "seconds")],
        *[(alias, MINUTE) for alias in ("m", "min", "mins", "minute", "minutes")],
        *[(alias, HOUR) for alias in ("h", "hr", "hrs", "hour", "hours")],
        *[(alias, DAY) for alias in ("d", "day", "days")],
        *[(alias, WEEK) for alias in ("w", "week", "weeks")],
    ],
)
def test_every_unit_and_alias(unit: str, seconds: float) -> None:
    # Given 3 of a unit, with and without a space and in any case,
    # When parsed, Then it is 3 times the unit's length in seconds
    for text in (f"3{unit}", f"3 {unit}", f"3{unit.upper()}", f"3 {unit.title()}"):
        assert parse_duration(text) == pytest.approx(3 * seconds), text


@pytest.mark.parametrize(
    ("given", "seconds"),
    [
        ("1h 30m", HOUR + 30 * MINUTE),
        ("1h30m", HOUR + 30 * MINUTE),
        ("1m30s", 90),
        ("1m 30s", 90),
        ("2 hours 30 minutes", 2 * HOUR + 30 * MINUTE),
        ("1d 2h 3m 4s 500ms", DAY + 2 * HOUR + 3 * MINUTE + 4.5),
        ("1w 1d", WEEK + DAY),
        ("30m 1h", HOUR + 30 * MINUTE),  # order is free
        ("1 HOUR 1 Min", HOUR + MINUTE),
        ("1.5h", 5400),
        ("1.1h", 3960),  # exact: not 3960.0000000000005
        ("0.5s", 0.5),
        ("250ms", 0.25),
        ("1h\t30m", HOUR + 30 * MINUTE),
    ],
)
def test_combined_parts_add_up(given: str, seconds: float) -> None:
    assert parse_duration(given) == seconds


@pytest.mark.parametrize(
    ("given", "seconds"),
    [
        ("PT1M30S", 90),
        ("pt1m30s", 90),
        ("PT10S", 10),
        ("PT0.5S", 0.5),
        ("PT0,5S", 0.5),  # ISO-8601 allows a decimal comma
        ("PT1.5H", 5400),
        ("PT5M", 5 * MINUTE),
        ("PT2H", 2 * HOUR),
        ("P1D", DAY),
        ("P1DT2H", DAY + 2 * HOUR),
        ("P2W", 2 * WEEK),
        ("P1W2D", WEEK + 2 * DAY),
        ("P1DT1H1M1S", DAY + HOUR + MINUTE + 1),
        (" PT1M ", MINUTE),
    ],
)
def test_iso_8601_durations(given: str, seconds: float) -> None:
    assert parse_duration(given) == seconds


@pytest.mark.parametrize("given", [0, 0.0, "0", "0s", "0h 0m", "PT0S", "P0D"])
def test_zero_is_accepted_only_when_allowed(given: str | float) -> None:
    assert parse_duration(given, allow_zero=True) == 0.0
    with pytest.raises(DurationError, match="greater than zero"):
        parse_duration(given)


def test_the_result_is_always_a_float() -> None:
    assert type(parse_duration(10)) is float
    assert type(parse_duration("1h")) is float


# --- refused --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("", "duration is empty"),
        ("   ", "duration is empty"),
        ("-5", "negative durations are not allowed: '-5'"),
        ("-1h", "negative durations are not allowed"),
        ("1h -30m", "negative durations are not allowed"),
        ("-PT1M", "negative durations are not allowed"),
        (-5, "negative durations are not allowed: -5"),
        (-0.5, "negative durations are not allowed"),
        ("2 fortnight", "unknown unit 'fortnight' in '2 fortnight'; " + HINT),
        ("10 parsecs", "unknown unit 'parsecs'"),
        ("5 mo", "unknown unit 'mo'"),
        ("1e3", "unknown unit 'e'"),
        ("abc", "expected a number at 'a' in 'abc'"),
        ("h", "expected a number at 'h'"),
        ("1h,30m", "expected a number at ','"),
        ("+5", "expected a number at '+'"),
        ("1_000", "unexpected '_' in '1_000'"),
        ("10µs", "unexpected 'µ'"),
        ("٣s", "expected a number at '٣'"),  # only ASCII digits
        ("1.5.5h", "malformed number '1.5.5'"),
        ("5.", "malformed number '5.'"),
        (".", "malformed number '.'"),
        ("1h 30", "missing unit after the number 30 in '1h 30'"),
        ("30 1h", "missing unit after the number 30"),
        ("1 0", "missing unit after the number 1"),
        ("1m 1min", "unit 'min' is given twice in '1m 1min'"),
        ("1h 2hours", "unit 'hours' is given twice"),
        ("nan", "'nan' is not a finite number"),
        ("inf", "'inf' is not a finite number"),
        ("Infinity", "is not a finite number"),
        (float("nan"), "nan is not a finite number"),
        (float("inf"), "inf is not a finite number"),
        (float("-inf"), "-inf is not a finite number"),
        (True, "got the boolean True"),
        (False, "got the boolean False"),
        (None, "expected a string or a number, got NoneType"),
        ([10], "expected a string or a number, got list"),
        (10**400, "the number is too large for a duration"),
    ],
)
def test_invalid_values_are_refused_with_a_helpful_message(given: object, message: str) -> None:
    # Given an invalid value, When parsed, Then DurationError says what was wrong
    with pytest.raises(DurationError) as caught:
        parse_duration(given)  # type: ignore[arg-type]
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("P1M", "uses months, which have no fixed length; use days or weeks"),
        ("P1Y", "uses years, which have no fixed length"),
        ("P1Y2M3D", "uses years"),
        ("P1M", "write minutes after the T (PT1M)"),
        ("P", "ISO-8601 duration 'P' has no parts"),
        ("PT", "has no parts"),
        ("P1DT", "has no parts"),
        ("P1H", "unexpected 'H' before 'T'"),
        ("PT1D", "unexpected 'D' after 'T'"),
        ("PT1", "unexpected 'end of input' after 'T'"),
        ("PT1S1M", "out of order or repeated"),
        ("PT1H1H", "out of order or repeated"),
        ("P2D1W", "out of order or repeated"),
        ("PT1M 30S", "expected a number at ' '"),
        ("PTM", "expected a number at 'm'"),
        ("P1.5.5D", "malformed number"),
    ],
)
def test_invalid_iso_durations_are_refused(given: str, message: str) -> None:
    with pytest.raises(DurationError) as caught:
        parse_duration(given)
    assert message in str(caught.value)


def test_a_string_over_100_characters_is_refused_without_parsing_it() -> None:
    # Given 101 characters (this would otherwise be a valid duration)
    given = "1s" + " " * 99
    # Then it is refused for its length alone, and the message says the limit
    with pytest.raises(DurationError, match="101 characters long; at most 100 are accepted"):
        parse_duration(given)


def test_100_characters_is_still_accepted() -> None:
    assert parse_duration("1s".ljust(100)) == 1.0


def test_without_a_maximum_a_huge_but_finite_value_is_accepted() -> None:
    assert parse_duration("9" * 99 + "w") == pytest.approx(6.048e104)


def test_duration_error_is_a_value_error() -> None:
    # so pydantic validators turn it into a validation error, not a crash
    assert issubclass(DurationError, ValueError)


# --- max_s ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "max_s"),
    [("30d", 30 * DAY), ("24h", 24 * HOUR), ("P30D", 30 * DAY), (86400, DAY), ("1h", 3600.0)],
)
def test_a_value_equal_to_the_maximum_is_accepted(given: str | int, max_s: float) -> None:
    assert parse_duration(given, max_s=max_s) == max_s


@pytest.mark.parametrize(
    ("given", "max_s", "message"),
    [
        ("31d", 30 * DAY, "duration '31d' is longer than the maximum of 30 days (30d)"),
        ("30d 1ms", 30 * DAY, "maximum of 30 days"),
        ("P5W", 30 * DAY, "maximum of 30 days"),
        ("25h", 24 * HOUR, "maximum of 1 day (1d)"),
        (86401, DAY, "duration 86401 is longer than the maximum of 1 day"),
        ("2h", 90 * MINUTE, "maximum of 1 hour 30 minutes (1h 30m)"),
        ("2s", 1.5, "maximum of 1 second 500 milliseconds (1s 500ms)"),
    ],
)
def test_a_value_above_the_maximum_is_refused(given: str | int, max_s: float, message: str) -> None:
    with pytest.raises(DurationError) as caught:
        parse_duration(given, max_s=max_s)
    assert message in str(caught.value)


# --- format_duration ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (10, "10s"),
        (0.25, "250ms"),
        (90, "1m 30s"),
        (5400, "1h 30m"),
        (DAY, "1d"),
        (30 * DAY, "30d"),
        (DAY + HOUR + MINUTE + 1.5, "1d 1h 1m 1s 500ms"),
        (3600.0004, "1h"),  # rounded to whole milliseconds
        (0.0005, "0.5ms"),  # but a positive value never shows as zero
        (0, "0s"),
        (-5, "-5s"),
        (float("inf"), "inf"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize("seconds", [0.001, 0.25, 1, 59, 61, 3599, 5400, 90061.5, 30 * DAY])
def test_formatted_durations_parse_back_to_the_same_value(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


def test_a_negative_zero_number_is_zero_when_zero_is_allowed() -> None:
    result = parse_duration(-0.0, allow_zero=True)
    assert result == 0.0 and math.copysign(1.0, result) == 1.0


@pytest.mark.parametrize("value", ["5m", "1h 30m", "PT1M30S", "1.1h", "250ms", 7, 2.5])
def test_durations_are_floats(value: str | int | float) -> None:
    assert type(parse_duration(value)) is float
