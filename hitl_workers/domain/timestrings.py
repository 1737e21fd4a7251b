"""The contract's time strings: ``10``, ``2.5``, ``1h 30m``, ``2 hours 30 minutes``, ``PT1M30S``.

Pure: no I/O, no clock. Parsing is a hand-written, anchored, single-pass tokenizer (no regex, so
no backtracking), arithmetic is exact so ``1.1h`` is 3960 s and not 3960.0000000000005 (whole
numbers as ``int``, which is exact and cheap; a decimal or milliseconds as ``Fraction``; a float
given as a number as itself, compared exactly), and every rejection is a :class:`DurationError`
whose message says what was wrong and what is accepted.
"""

from __future__ import annotations

import math
from fractions import Fraction

__all__ = ["DurationError", "format_duration", "parse_duration"]

MAX_LENGTH = 100
_HINT = 'use ms, s, m, h, d, w (e.g. "1h 30m") or ISO-8601 like PT1M30S'

# alias -> canonical unit; the canonical unit keys _SECONDS and detects a unit given twice.
_UNITS: dict[str, str] = {
    "ms": "ms",
    **dict.fromkeys(("s", "sec", "secs", "second", "seconds"), "s"),
    **dict.fromkeys(("m", "min", "mins", "minute", "minutes"), "m"),
    **dict.fromkeys(("h", "hr", "hrs", "hour", "hours"), "h"),
    **dict.fromkeys(("d", "day", "days"), "d"),
    **dict.fromkeys(("w", "week", "weeks"), "w"),
}
_SECONDS: dict[str, Fraction | int] = {
    "ms": Fraction(1, 1000),
    "s": 1,
    "m": 60,
    "h": 3600,
    "d": 86400,
    "w": 604800,
}
Exact = Fraction | int | float
"""A duration in exact arithmetic: Python compares ints, floats and Fractions with each other
exactly, and ``float()`` of each rounds once, as ``float(Fraction(...))`` did."""
# ISO-8601 designators in the order they must appear, before and after the "T".
_ISO_DATE = ("y", "m", "w", "d")
_ISO_TIME = ("h", "m", "s")
_NON_FINITE = frozenset({"nan", "inf", "infinity", "+inf", "+infinity", "-inf", "-infinity"})


class DurationError(ValueError):
    """A time string or number that is not a valid duration."""


def parse_duration(
    value: str | int | float, *, max_s: float | None = None, allow_zero: bool = False
) -> float:
    """Return ``value`` as a number of seconds.

    Raises :class:`DurationError` for anything that is not a finite, positive (or zero when
    ``allow_zero``) duration of at most ``max_s`` seconds.
    """
    if isinstance(value, bool):  # bool is an int subclass: True must not mean one second
        raise DurationError(f"expected a duration, got the boolean {value}; {_HINT}")
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise DurationError(f"{value!r} is not a finite number; {_HINT}")
        if isinstance(value, int) and value.bit_length() > 1024:  # beyond float; repr may refuse
            raise DurationError(f"the number is too large for a duration; {_HINT}")
        shown = repr(value)
        shown = shown if len(shown) <= 40 else shown[:37] + "..."
        return _check(value, shown, max_s=max_s, allow_zero=allow_zero)
    if not isinstance(value, str):
        raise DurationError(f"expected a string or a number, got {type(value).__name__}; {_HINT}")
    if len(value) > MAX_LENGTH:
        raise DurationError(
            f"duration is {len(value)} characters long; at most {MAX_LENGTH} are accepted; {_HINT}"
        )
    text = value.strip().lower()
    if not text:
        raise DurationError(f"duration is empty; {_HINT}")
    if text in _NON_FINITE:
        raise DurationError(f"{value!r} is not a finite number; {_HINT}")
    if "-" in text:
        raise DurationError(f"negative durations are not allowed: {value!r}; {_HINT}")
    total = _parse_iso(text, value) if text.startswith("p") else _parse_human(text, value)
    return _check(total, repr(value), max_s=max_s, allow_zero=allow_zero)


def format_duration(seconds: float) -> str:
    """Return a short human form of ``seconds``: ``"1h 30m"``, ``"10s"``, ``"250ms"``.

    Rounds to whole milliseconds; a positive value below 1 ms is shown in fractional ms.
    """
    if not math.isfinite(seconds):
        return str(seconds)
    if seconds < 0:
        return "-" + format_duration(-seconds)
    total_ms = round(seconds * 1000)
    if total_ms == 0:
        return f"{seconds * 1000:g}ms" if seconds > 0 else "0s"
    parts = []
    for unit, size_ms in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        count, total_ms = divmod(total_ms, size_ms)
        if count:
            parts.append(f"{count}{unit}")
    if total_ms:
        parts.append(f"{total_ms}ms")
    return " ".join(parts)


def _check(total: Exact, shown: str, *, max_s: float | None, allow_zero: bool) -> float:
    if total < 0:
        raise DurationError(f"negative durations are not allowed: {shown}; {_HINT}")
    if total == 0:
        if not allow_zero:
            raise DurationError(f"duration must be greater than zero, got {shown}; {_HINT}")
        return 0.0  # never -0.0 (a float given as -0.0)
    if max_s is not None and total > max_s:  # exact for int, float and Fraction alike
        raise DurationError(
            f"duration {shown} is longer than the maximum of {_spell(max_s)} "
            f"({format_duration(max_s)})"
        )
    try:
        return float(total)
    except OverflowError:
        raise DurationError(f"duration {shown} is too large; {_HINT}") from None


def _read_number(text: str, i: int, original: str) -> tuple[Fraction | int, str, int]:
    """Read an unsigned decimal (``10``, ``2.5``, ``.5``) at ``text[i]``.

    Returns its value, its text and the index just past it.
    """
    start = i
    while i < len(text) and (text[i] == "." or "0" <= text[i] <= "9"):
        i += 1
    token = text[start:i]
    if not token:
        found = text[start] if start < len(text) else "end of input"
        raise DurationError(f"expected a number at {found!r} in {original!r}; {_HINT}")
    if token.count(".") > 1 or token.endswith(".") or token == ".":
        raise DurationError(f"malformed number {token!r} in {original!r}; {_HINT}")
    # Only ASCII digits and dots reach here: without a dot, int() is the exact value.
    return (Fraction(token) if "." in token else int(token)), token, i


def _parse_human(text: str, original: str) -> Fraction | int:
    total: Fraction | int = 0
    seen: set[str] = set()
    bare: tuple[Fraction | int, str] | None = None  # a number with no unit: valid only on its own
    i = 0
    while i < len(text):
        if text[i].isspace():
            i += 1
            continue
        if bare is not None:
            raise _missing_unit(bare[1], original)
        number, token, i = _read_number(text, i, original)
        while i < len(text) and text[i].isspace():
            i += 1
        start = i
        while i < len(text) and "a" <= text[i] <= "z":
            i += 1
        word = text[start:i]
        if not word:
            if i < len(text) and not text[i].isdigit() and text[i] != ".":
                raise DurationError(f"unexpected {text[i]!r} in {original!r}; {_HINT}")
            bare = (number, token)
            continue
        unit = _UNITS.get(word)
        if unit is None:
            raise DurationError(f"unknown unit {word!r} in {original!r}; {_HINT}")
        if unit in seen:
            raise DurationError(f"unit {word!r} is given twice in {original!r}; {_HINT}")
        seen.add(unit)
        total += number * _SECONDS[unit]
    if bare is not None:
        if seen:
            raise _missing_unit(bare[1], original)
        return bare[0]
    return total


def _missing_unit(token: str, original: str) -> DurationError:
    return DurationError(f"missing unit after the number {token} in {original!r}; {_HINT}")


def _parse_iso(text: str, original: str) -> Fraction | int:
    """Parse ``P[nW][nD][T[nH][nM][nS]]`` (lower-cased); months and years are refused."""
    text = text.replace(",", ".")  # ISO-8601 allows a decimal comma
    total: Fraction | int = 0
    order: tuple[str, ...] = _ISO_DATE
    done, parts, in_time = -1, 0, False
    i = 1
    while i < len(text):
        if text[i] == "t" and not in_time:
            order, done, in_time = _ISO_TIME, -1, True
            i += 1
            continue
        number, _, i = _read_number(text, i, original)
        designator = text[i] if i < len(text) else ""
        i += 1
        if designator not in order:
            where = "after" if in_time else "before"
            raise DurationError(
                f"unexpected {designator.upper() or 'end of input'!r} {where} 'T' in ISO-8601 "
                f"duration {original!r}; {_HINT}"
            )
        if not in_time and designator in ("y", "m"):
            name = "years" if designator == "y" else "months"
            raise DurationError(
                f"{original!r} uses {name}, which have no fixed length; use days or weeks "
                f"(e.g. P30D), and write minutes after the T (PT1M)"
            )
        position = order.index(designator)
        if position <= done:
            raise DurationError(
                f"ISO-8601 parts out of order or repeated in {original!r}; "
                f"write them as P[n]W[n]DT[n]H[n]M[n]S"
            )
        done, parts = position, parts + 1
        total += number * _SECONDS[designator]
    if parts == 0 or text.endswith("t"):
        raise DurationError(f"ISO-8601 duration {original!r} has no parts; {_HINT}")
    return total


def _spell(seconds: float) -> str:
    """A long human form for messages: ``"30 days"``, ``"1 hour 30 minutes"``."""
    names = {"d": "day", "h": "hour", "m": "minute", "s": "second", "ms": "millisecond"}
    words = []
    for part in format_duration(seconds).split():
        digits = part.rstrip("abcdefghijklmnopqrstuvwxyz")
        unit = names.get(part[len(digits) :])
        if unit is None:
            return format_duration(seconds)
        words.append(f"{digits} {unit}{'' if digits == '1' else 's'}")
    return " ".join(words)
