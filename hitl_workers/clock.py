"""The one clock seam. Everything that needs "now" calls :func:`utcnow` or takes ``now``."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)


def to_ms(value: datetime) -> int:
    return int(value.timestamp() * 1000)
