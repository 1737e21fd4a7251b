"""Server-Sent Events from an agent's Redis Stream (CONTRACT.md §6, §8).

Every message carries ``id:`` = the stream entry id, so a client that reconnects with
``Last-Event-ID`` resumes right after the last entry it saw: ``XREAD`` returns only entries with
a greater id, hence nothing is repeated, and the stream keeps every entry until it is trimmed
(``HITL_NOTIFICATION_STREAM_MAXLEN``), hence nothing is missed.

A connection without a position starts "now". "Now" is pinned to the stream's last entry id
*before* the response starts, and sent as an ``id:`` line of its own: a browser that drops the
connection before any notification arrived then still reconnects with a ``Last-Event-ID`` and
gets what it missed while away (an ``id:`` line without ``data:`` sets the EventSource's last
event id without firing an event).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import AsyncIterator
from typing import Any, cast

import redis.asyncio as aioredis

from hitl_workers.gateway import telemetry
from hitl_workers.notify.streams import stream_key

log = logging.getLogger(__name__)

STREAM_ID = re.compile(r"^\d{1,20}(-\d{1,20})?$")
EMPTY_STREAM_ID = "0-0"
RETRY_MS = 1000
"""How soon a browser reconnects after a drop (its default is ~3 s)."""
BATCH = 100


def frame(*, data: str | None = None, event: str | None = None, id: str | None = None,
          comment: str | None = None, retry: int | None = None) -> bytes:
    lines = []
    if comment is not None:
        lines.append(f": {comment}")
    if retry is not None:
        lines.append(f"retry: {retry}")
    if event is not None:
        lines.append(f"event: {event}")
    if data is not None:
        lines.extend(f"data: {line}" for line in data.split("\n"))
    if id is not None:
        lines.append(f"id: {id}")
    return ("\n".join(lines) + "\n\n").encode()


async def current_position(client: aioredis.Redis, agent_id: str) -> str:
    """The id of the stream's newest entry ("now"), or ``0-0`` when it has none yet."""
    newest = await client.xrevrange(stream_key(agent_id), count=1)
    return str(newest[0][0]) if newest else EMPTY_STREAM_ID


def entry_frame(entry_id: str, fields: dict[str, str]) -> bytes:
    raw = fields.get("event", "")
    try:
        event = json.loads(raw)
        kind = str(event.get("type") or "message")
        data = json.dumps(event, separators=(",", ":"))  # one line, whatever was stored
    except (ValueError, AttributeError):
        log.warning("stream entry %s is not a JSON notification; sent as is", entry_id)
        kind, data = "message", raw
    return frame(id=entry_id, event=kind, data=data)


async def stream_events(client: aioredis.Redis, agent_id: str, after: str, *,
                        keepalive_s: float, stopping: asyncio.Event,
                        expires_at: float = float("inf")) -> AsyncIterator[bytes]:
    """The SSE body: notifications after ``after``, and a comment at least every
    ``keepalive_s`` so proxies and browsers keep the connection open, until the token
    expires (Unix ``expires_at``)."""
    key = stream_key(agent_id)
    telemetry.SSE_CONNECTIONS.inc()
    try:
        yield frame(comment="connected", retry=RETRY_MS, id=after)
        while not stopping.is_set():
            left_s = expires_at - time.time()
            if left_s <= 0:
                # The client must come back with a fresh token; a reconnect with this one
                # gets 401, which is what tells the console to sign in again.
                yield frame(comment="token expired")
                return
            block_ms = max(100, int(min(keepalive_s, left_s) * 1000))
            try:
                reply = await _read_unless_stopping(client, key, after, block_ms, stopping)
            except aioredis.RedisError as exc:
                # End the stream: the browser reconnects with its Last-Event-ID and loses
                # nothing, which is better than a silent stream that never delivers again.
                log.warning("reading %s failed: %r; closing the stream", key, exc)
                yield frame(comment="notifications unavailable; reconnect")
                return
            if reply is None:
                return  # the gateway is shutting down: end the stream, the client reconnects
            if not reply:
                yield frame(comment="keep-alive")
                continue
            for entry_id, fields in reply[0][1]:
                yield entry_frame(entry_id, fields)
                telemetry.SSE_EVENTS.inc()
                after = entry_id
    finally:
        telemetry.SSE_CONNECTIONS.dec()


async def _read_unless_stopping(client: aioredis.Redis, key: str, after: str, block_ms: int,
                                stopping: asyncio.Event) -> list[Any] | None:
    """``XREAD BLOCK``, given up (None) as soon as the gateway starts to shut down, so open
    streams end at once and their browsers reconnect elsewhere, while claims in flight still
    get the whole graceful-shutdown period to finish."""
    read = asyncio.ensure_future(client.xread({key: after}, count=BATCH, block=block_ms))
    stop = asyncio.ensure_future(stopping.wait())
    try:
        await asyncio.wait({read, stop}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.cancel()
        if not read.done():
            read.cancel()  # redis-py drops that connection rather than reuse it mid-reply
    if not read.done() or read.cancelled():
        return None
    # RESP2 (the client's default): [[key, [(entry id, fields), …]]], or None on timeout.
    return cast(list[Any], read.result() or [])
