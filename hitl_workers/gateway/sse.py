"""Server-Sent Events from an agent's Redis Stream (docs/contract.md §6, §8).

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
from typing import TYPE_CHECKING, Any, cast

import redis.asyncio as aioredis

from hitl_workers.gateway import telemetry
from hitl_workers.gateway.wire_html import sanitize_notification
from hitl_workers.notify.streams import stream_key

if TYPE_CHECKING:
    from hitl_workers.gateway.hub import StreamHub, Subscription

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
        event = sanitize_notification(json.loads(raw))
        kind = str(event.get("type") or "message")
        data = json.dumps(event, separators=(",", ":"))  # one line, whatever was stored
    except (ValueError, AttributeError):
        log.warning("stream entry %s is not a JSON notification; sent as is", entry_id)
        kind, data = "message", raw
    return frame(id=entry_id, event=kind, data=data)


def parse_id(entry_id: str) -> tuple[int, int]:
    """A stream id as a comparable pair (``5`` is ``5-0``, as Redis reads it)."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


async def stream_events(hub: StreamHub, sub: Subscription, commands: aioredis.Redis,
                        after: str, *, keepalive_s: float,
                        expires_at: float = float("inf")) -> AsyncIterator[bytes]:
    """The SSE body: notifications after ``after``, and a comment at least every
    ``keepalive_s`` so proxies and browsers keep the connection open, until the token
    expires (Unix ``expires_at``) or the hub ends the stream.

    ``sub`` is already attached to the hub (:mod:`hitl_workers.gateway.hub`): first the
    entries from ``after`` to the stream's end are read here, then the hub's, skipping any
    that were already sent.
    """
    telemetry.SSE_CONNECTIONS.inc()
    try:
        yield frame(comment="connected", retry=RETRY_MS, id=after)
        last = parse_id(after)
        try:
            while True:  # catching up, on the shared command connections
                # RESP2: [[key, [(entry id, fields), …]]], or empty when caught up.
                reply = cast(list[Any], await commands.xread({sub.key: after}, count=BATCH))
                if not reply:
                    break
                for entry_id, fields in reply[0][1]:
                    yield entry_frame(entry_id, fields)
                    telemetry.SSE_EVENTS.inc()
                    after, last = entry_id, parse_id(entry_id)
        except aioredis.RedisError as exc:
            # End the stream: the browser reconnects with its Last-Event-ID and loses
            # nothing, which is better than a silent stream that never delivers again.
            log.warning("reading %s failed: %r; closing the stream", sub.key, exc)
            yield frame(comment="notifications unavailable; reconnect")
            return
        while True:
            if sub.ended is not None and sub.queue.empty():
                yield frame(comment=sub.ended)
                return
            left_s = expires_at - time.time()
            if left_s <= 0:
                # The client must come back with a fresh token; a reconnect with this one
                # gets 401, which is what tells the console to sign in again.
                yield frame(comment="token expired")
                return
            try:
                entry = await asyncio.wait_for(sub.queue.get(), min(keepalive_s, left_s))
            except TimeoutError:
                if expires_at > time.time():
                    yield frame(comment="keep-alive")
                continue
            if entry is None:
                continue  # ended: said at the top of the loop, once the queue is drained
            entry_id, data = entry
            if entry_id <= last:
                continue  # already sent while catching up
            yield data
            telemetry.SSE_EVENTS.inc()
            last = entry_id
    finally:
        hub.close(sub)
        telemetry.SSE_CONNECTIONS.dec()
