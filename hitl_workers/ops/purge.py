"""``hitl-workers purge --older-than 7d``: retention on demand, until nothing is left."""

from __future__ import annotations

from datetime import timedelta

import redis

from hitl_workers.clock import utcnow
from hitl_workers.domain.timestrings import parse_duration
from hitl_workers.notify.streams import StreamJanitor
from hitl_workers.services import retention
from hitl_workers.settings import get_settings
from hitl_workers.store.retention import Purged


def purge_older_than(older_than: str, *, streams: bool = True) -> Purged:
    """Delete what is older than the time string ``older_than`` (raises ValueError for a bad
    one). Streams are trimmed and removed agents' streams deleted unless ``streams`` is off."""
    keep_for = timedelta(seconds=parse_duration(older_than))
    janitor = None
    if streams:
        janitor = StreamJanitor(redis.Redis.from_url(get_settings().redis_url))
    return retention.purge(utcnow, retention.Policy(keep_for=keep_for), janitor)
