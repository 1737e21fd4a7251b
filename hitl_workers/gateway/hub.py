"""Every event stream of a gateway process shares a few Redis connections (docs/contract.md §8).

One connection per stream does not scale: a hundred streams fill Redis's client limit. Here a
**reader** holds one connection and blocks in a single ``XREAD`` over the streams of every agent
connected to this process (``hitl:agent:<id>`` → the last entry id it fanned out), and fans each
new entry out, rendered once as an SSE frame, to the bounded queue of every connection of that
agent. ``HITL_GATEWAY_STREAM_READERS`` readers (default one) split the agents between them.

Nothing is lost between a connection's own position and the reader's. A connection is
registered with the reader *first*: from then on the reader hands it every entry after the
reader's position for that key, which is never beyond the stream's end at registration. Then
the connection reads from its own position (``Last-Event-ID``, or "now") up to the stream's end
with plain ``XREAD`` calls on the shared command connections. The two ranges overlap; the
connection drops every entry whose id is not above the last one it sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import redis.asyncio as aioredis

from hitl_workers.gateway.sse import entry_frame, parse_id
from hitl_workers.notify.streams import stream_key

log = logging.getLogger(__name__)

BATCH = 100
QUEUE_SIZE = 500
"""Entries a connection may fall behind before it is ended (it resumes with Last-Event-ID)."""
BLOCK_MS = 2000
"""A reader's longest XREAD. Agents who connect while it blocks are added at once (CLIENT
UNBLOCK); this only bounds the rare case where the unblock overtakes the XREAD."""

Entry = tuple[tuple[int, int], bytes]
"""(parsed entry id, the SSE frame) as queued for a connection."""


class TooManyStreams(Exception):
    def __init__(self, agent_id: str, limit: int) -> None:
        super().__init__(f"agent {agent_id!r} already has {limit} open event streams on this "
                         "gateway; close one first")


@dataclass(eq=False)
class Subscription:
    """One open event stream: the entries the reader fanned out to it, in order."""

    agent_id: str
    key: str
    queue: asyncio.Queue[Entry | None] = field(
        default_factory=lambda: asyncio.Queue(QUEUE_SIZE))
    ended: str | None = None
    """Why the hub ended this stream (the client reconnects and resumes), or None."""

    def offer(self, entry: Entry) -> bool:
        try:
            self.queue.put_nowait(entry)
        except asyncio.QueueFull:
            self.end("too far behind; reconnect to resume")
            return False
        return True

    def end(self, why: str) -> None:
        if self.ended is None:
            self.ended = why
        # Wakes a connection waiting on an empty queue; a full one is not waiting, and sees
        # `ended` after the entries it holds.
        with contextlib.suppress(asyncio.QueueFull):
            self.queue.put_nowait(None)


class Reader:
    """One Redis connection blocking in XREAD over its share of the connected agents."""

    def __init__(self, name: str, connect: Callable[[], aioredis.Redis],
                 commands: aioredis.Redis, block_ms: int = BLOCK_MS) -> None:
        self.name = name
        self._connect = connect
        self._commands = commands
        self.block_ms = block_ms
        self.positions: dict[str, str] = {}
        self.subscribers: dict[str, set[Subscription]] = {}
        self._changed = asyncio.Event()
        self._client_id: int | None = None
        self._blocking = False
        self._unblocking = False
        self._task: asyncio.Task[None] | None = None
        self._conn: aioredis.Redis | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._conn is not None:
            await self._conn.aclose()

    async def add(self, sub: Subscription) -> None:
        """Register ``sub``: from now on it gets every entry after the reader's position."""
        if sub.key not in self.positions:
            # A new key starts at the stream's newest entry: the subscriber's own catch-up,
            # which comes after this, covers everything up to the stream's end.
            newest = await self._commands.xrevrange(sub.key, count=1)
            # Another connection of this agent may have registered the key while we waited:
            # its position is no later than the stream's end, so keep it.
            if sub.key not in self.positions:
                self.positions[sub.key] = str(newest[0][0]) if newest else "0-0"
                self.subscribers[sub.key] = set()
                self._keys_changed()
        self.subscribers[sub.key].add(sub)

    def remove(self, sub: Subscription) -> None:
        subs = self.subscribers.get(sub.key)
        if subs is None:
            return
        subs.discard(sub)
        if not subs:
            del self.subscribers[sub.key]
            del self.positions[sub.key]
            # No unblock: an XREAD that still watches the key costs nothing until it ends.

    def _keys_changed(self) -> None:
        self._changed.set()
        if self._blocking and self._client_id is not None and not self._unblocking:
            # Wake the blocked XREAD so the next one includes the new key.
            self._unblocking = True
            asyncio.get_running_loop().create_task(self._unblock(self._client_id))

    async def _unblock(self, client_id: int) -> None:
        try:
            await self._commands.client_unblock(client_id)
        except aioredis.RedisError as exc:
            log.debug("CLIENT UNBLOCK %s failed: %r", client_id, exc)
        finally:
            self._unblocking = False

    async def _run(self) -> None:
        backoff_s = 0.1
        streams: dict[str, str] = {}
        while True:
            if not self.positions:
                self._changed.clear()
                await self._changed.wait()
                continue
            try:
                if self._conn is None:
                    self._conn = self._connect()
                    self._client_id = int(await self._conn.client_id())
                self._changed.clear()
                streams = dict(self.positions)
                self._blocking = True
                try:
                    # RESP2: [[key, [(entry id, fields), …]], …], or None on timeout.
                    reply = cast(list[Any], await self._conn.xread(
                        streams, count=BATCH, block=self.block_ms))  # type: ignore[arg-type]
                finally:
                    self._blocking = False
                backoff_s = 0.1
            except aioredis.RedisError as exc:
                # Every connection of this reader ends; browsers reconnect with their
                # Last-Event-ID and lose nothing. Better than streams that silently stall.
                log.warning("%s: reading %d streams failed: %r", self.name, len(streams), exc)
                self._fail_all("notifications unavailable; reconnect")
                await self._drop_connection()
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, 5.0)
                continue
            for key, entries in reply or ():
                self._fan_out(str(key), entries)

    def _fan_out(self, key: str, entries: list[Any]) -> None:
        subs = self.subscribers.get(key)
        if not subs:
            return  # everyone left while the XREAD was out
        last = parse_id(self.positions[key])
        for entry_id, fields in entries:
            parsed = parse_id(entry_id)
            if parsed <= last:
                continue  # the key was dropped and re-added at a later position meanwhile
            frame = entry_frame(entry_id, fields)
            for sub in list(subs):
                if not sub.offer((parsed, frame)):
                    subs.discard(sub)
            last = parsed
            self.positions[key] = entry_id
        if not subs:
            self.subscribers.pop(key, None)
            self.positions.pop(key, None)

    def _fail_all(self, why: str) -> None:
        for subs in self.subscribers.values():
            for sub in subs:
                sub.end(why)
        self.subscribers.clear()
        self.positions.clear()

    async def _drop_connection(self) -> None:
        conn, self._conn, self._client_id = self._conn, None, None
        if conn is not None:
            with contextlib.suppress(Exception):  # already broken; we want its socket gone
                await conn.aclose()


class StreamHub:
    """The event streams of one gateway process: per-agent caps, and the readers."""

    def __init__(self, connect: Callable[[], aioredis.Redis], commands: aioredis.Redis, *,
                 readers: int = 1, max_per_agent: int = 5, block_ms: int = BLOCK_MS) -> None:
        self.max_per_agent = max_per_agent
        self._readers = [Reader(f"hitl-gw-reader-{n}", connect, commands, block_ms)
                         for n in range(readers)]
        self._open: dict[str, set[Subscription]] = {}
        self.closed = False

    def start(self) -> None:
        for reader in self._readers:
            reader.start()

    async def stop(self, why: str = "the gateway is shutting down; reconnect") -> None:
        self.end_all(why)
        await asyncio.gather(*(reader.stop() for reader in self._readers))

    def end_all(self, why: str) -> None:
        self.closed = True
        for subs in self._open.values():
            for sub in subs:
                sub.end(why)

    def _reader(self, key: str) -> Reader:
        return self._readers[zlib.crc32(key.encode()) % len(self._readers)]

    def open(self, agent_id: str) -> Subscription:
        """A new stream for ``agent_id``; :class:`TooManyStreams` past the cap.

        Synchronous, so the count and the check cannot interleave with another request's.
        """
        mine = self._open.setdefault(agent_id, set())
        if len(mine) >= self.max_per_agent:
            raise TooManyStreams(agent_id, self.max_per_agent)
        sub = Subscription(agent_id, stream_key(agent_id))
        mine.add(sub)
        if self.closed:
            sub.end("the gateway is shutting down; reconnect")
        return sub

    async def attach(self, sub: Subscription) -> None:
        """Start fanning entries out to ``sub`` (see the module docstring for the order)."""
        await self._reader(sub.key).add(sub)

    def close(self, sub: Subscription) -> None:
        """Forget ``sub`` (idempotent: called by the stream and by its response)."""
        self._reader(sub.key).remove(sub)
        mine = self._open.get(sub.agent_id)
        if mine is not None:
            mine.discard(sub)
            if not mine:
                del self._open[sub.agent_id]

    def agents(self) -> list[str]:
        """The agents with an open stream on this process."""
        return list(self._open)

    def end_agent(self, agent_id: str, why: str) -> None:
        for sub in self._open.get(agent_id, ()):
            sub.end(why)

    @property
    def streams(self) -> int:
        return sum(len(subs) for subs in self._open.values())

    @property
    def keys(self) -> int:
        return sum(len(reader.positions) for reader in self._readers)
