"""The worker's task events for Flower (hitl_workers/tasks/worker_events.py), against a real
Redis broker and real worker processes: a ``celery.events.EventReceiver`` (what Flower and
``celery events`` read with) gets every task's received, started and succeeded events, several
to a message; each message is the one kombu publishes for Celery's dispatcher, field for field;
and the events of a task that finished just before the worker was told to stop still go out."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from kombu import Connection

from hitl_workers.tasks.worker_events import FLUSH_AFTER_S, CoalescedTaskEvents
from tests.support.steps import eventually

LIFE = ("task-received", "task-started", "task-succeeded")


class Events:
    """Every event a real ``EventReceiver`` hands out, in arrival order."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self.seen: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._receiver: Any = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="test-events")

    def __enter__(self) -> Events:
        self._thread.start()
        assert self._ready.wait(10), "the event receiver did not start"
        time.sleep(0.3)  # its subscription is in place before anything is sent
        return self

    def __exit__(self, *_: Any) -> None:
        if self._receiver is not None:
            self._receiver.should_stop = True
        self._thread.join(timeout=5)

    def _run(self) -> None:
        with self.app.connection_for_read() as conn:
            self._receiver = self.app.events.Receiver(conn, handlers={"*": self._on_event})
            self._ready.set()
            # (raises once the test is over and its connection closed)
            with contextlib.suppress(Exception):
                self._receiver.capture(limit=None, timeout=None, wakeup=False)

    def _on_event(self, event: dict[str, Any]) -> None:
        with self._lock:
            self.seen.append(event)

    def of(self, task_id: str) -> list[str]:
        with self._lock:
            return [e["type"] for e in self.seen if e.get("uuid") == task_id]

    def all(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.seen)


class RawEventMessages:
    """The task-event messages as they cross Redis (kombu's fanout: a PUBLISH to
    ``/<db>.celeryev/task.multi``), read with a plain Redis client."""

    def __init__(self, url: str) -> None:
        self.pubsub = redis.Redis.from_url(url).pubsub(ignore_subscribe_messages=True)
        self.pubsub.psubscribe("*celeryev/task.multi")
        self.pubsub.get_message(timeout=1)  # the subscription's confirmation

    def read(self, seconds: float) -> list[tuple[bytes, dict[str, Any]]]:
        """(channel, envelope) of each message published in the next ``seconds``."""
        found = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            message = self.pubsub.get_message(timeout=0.1)
            if message is not None:
                found.append((message["channel"], json.loads(message["data"])))
        return found

    def close(self) -> None:
        self.pubsub.close()


@pytest.fixture
def raw_events(redis_urls: dict[str, str]) -> Iterator[RawEventMessages]:
    raw = RawEventMessages(redis_urls["broker"])
    yield raw
    raw.close()


def statuses(count: int) -> list[tuple[str, dict[str, Any]]]:
    return [("hitl.set_agent_status",
             {"agent_id": f"events-{uuid.uuid4().hex[:10]}", "status": "busy"})
            for _ in range(count)]


def run_at_once(system: Any, count: int) -> list[str]:
    """Task ids of ``count`` tasks sent together, once each has run."""
    results = [system.app.send_task(task, kwargs=kwargs) for task, kwargs in statuses(count)]
    for result in results:
        result.get(timeout=30)
    return [result.id for result in results]


def test_a_receiver_gets_every_event_of_every_task(system: Any) -> None:
    # Given a receiver, as Flower runs one
    with Events(system.app) as events:
        # When twenty tasks run at once
        ids = run_at_once(system, 20)

        # Then each task's received, started and succeeded events arrive, in that order, from
        # the worker that ran it, each with its own logical clock and result
        assert eventually(lambda: all(len(events.of(i)) >= 3 for i in ids), timeout=10), \
            {i: events.of(i) for i in ids}
        time.sleep(0.3)  # nothing more comes: each event once
        for task_id in ids:
            assert events.of(task_id) == list(LIFE)
        mine = [e for e in events.all() if e.get("uuid") in ids]
        assert len({e["hostname"] for e in mine}) == 1
        assert mine[0]["hostname"] in system.nodes.values()
        assert len({e["clock"] for e in mine}) == 60
        for event in mine:
            assert event["type"] != "task-received" or event["name"] == "hitl.set_agent_status"
            assert event["type"] != "task-succeeded" or event["result"]


def test_the_events_travel_several_to_a_message(system: Any,
                                                raw_events: RawEventMessages) -> None:
    # When twenty tasks run at once
    ids = set(run_at_once(system, 20))

    # Then their sixty events travel in one message per tenth of a second they were sent over
    # (and one per 24 events at most, Celery's limit), whatever the machine's load stretched
    # that to (Celery alone flushed on each loop tick: about one event a message)
    carried: list[list[dict[str, Any]]] = []
    deadline = time.monotonic() + 10
    while sum(len(c) for c in carried) < 60 and time.monotonic() < deadline:
        for _, message in raw_events.read(0.3):
            found = [e for e in json.loads(base64.b64decode(message["body"]))
                     if e.get("uuid") in ids]
            if found:
                carried.append(found)
    assert sum(len(c) for c in carried) == 60
    stamps = [e["timestamp"] for c in carried for e in c]
    windows = (max(stamps) - min(stamps)) / FLUSH_AFTER_S + 1
    assert len(carried) <= windows + 60 / 24, (windows, [len(c) for c in carried])


def test_each_message_is_what_kombu_publishes_for_celerys_dispatcher(
        system: Any, raw_events: RawEventMessages, redis_urls: dict[str, str]) -> None:
    # Given a message of task events the worker sent
    ids = set(run_at_once(system, 5))
    sent = [(channel, envelope) for channel, envelope in raw_events.read(1.0)
            if ids & {e.get("uuid") for e in json.loads(base64.b64decode(envelope["body"]))}]
    assert sent
    channel, by_worker = sent[0]
    events = json.loads(base64.b64decode(by_worker["body"]))

    # When kombu publishes the same events as Celery's EventDispatcher publishes a buffer
    # (celery/events/dispatcher.py: _publish of the list, routing key "task.multi")
    dispatcher = system.app.events.Dispatcher(
        Connection(redis_urls["broker"]), hostname=by_worker["headers"]["hostname"],
        buffer_group=["task"])
    try:
        exchange = dispatcher.exchange
        dispatcher.producer.publish(
            events, routing_key="task.multi", exchange=exchange.name, retry=False,
            retry_policy=None, declare=[exchange], serializer=dispatcher.serializer,
            headers=dispatcher.headers, delivery_mode=dispatcher.delivery_mode)
        # (the session's worker may publish its own events meanwhile: beat's reconciler)
        ((by_kombu_channel, by_kombu),) = [
            (c, m) for c, m in raw_events.read(1.0)
            if json.loads(base64.b64decode(m["body"])) == events]
    finally:
        dispatcher.close()
        dispatcher.connection.close()

    # Then the two messages are the same, field for field and byte for byte, but for the tag
    # kombu gives every message
    assert by_kombu_channel == channel
    assert by_worker["properties"].pop("delivery_tag") != by_kombu["properties"].pop(
        "delivery_tag")
    assert by_worker == by_kombu
    assert base64.b64decode(by_worker["body"]) == base64.b64decode(by_kombu["body"])
    assert sorted(by_worker) == ["body", "content-encoding", "content-type", "headers",
                                 "properties"]
    assert by_worker["properties"]["delivery_info"] == {"exchange": "celeryev",
                                                        "routing_key": "task.multi"}


def test_a_tasks_last_events_go_out_when_the_worker_stops(system: Any) -> None:
    # Given a worker of its own, on a queue of its own
    queue = f"events-stop-{uuid.uuid4().hex[:8]}"
    proc = system.start_worker(f"events-{queue}", concurrency=1, queues=[queue])
    node = system.nodes[proc.name]
    try:
        with Events(system.app) as events:
            # When it is told to stop the moment its task's result is stored (its
            # task-succeeded event then waits for the others of its tenth of a second)
            (task, kwargs), = statuses(1)
            result = system.app.send_task(task, kwargs=kwargs, queue=queue)
            result.get(timeout=30)
            proc.stop()

            # Then the receiver still gets every event of the task
            assert eventually(lambda: len(events.of(result.id)) >= 3, timeout=10), \
                events.of(result.id)
            assert events.of(result.id) == list(LIFE)
            order = [(e["type"], e.get("uuid")) for e in events.all()
                     if e.get("hostname") == node]
            # (the task's received event was held when the stop came: it goes out before the
            # worker's goodbye, as Celery sends it; the pool's answer may come in later, as
            # with Celery alone)
            assert order.index(("worker-offline", None)) > order.index(
                ("task-received", result.id)), order
    finally:
        proc.stop()


def local_ports(pid: int) -> set[int]:
    """The local TCP ports of process ``pid``'s sockets (/proc: its fds, then the TCP table)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def test_no_event_is_lost_when_the_worker_loses_its_broker_connection(
        system: Any, redis_urls: dict[str, str]) -> None:
    # Given a worker of its own, running a task every 20 ms
    queue = f"events-lost-{uuid.uuid4().hex[:8]}"
    proc = system.start_worker(f"events-{queue}", concurrency=2, queues=[queue])
    broker = redis.Redis.from_url(redis_urls["broker"])
    try:
        with Events(system.app) as events:
            results = []
            for n in range(40):
                (task, kwargs), = statuses(1)
                results.append(system.app.send_task(task, kwargs=kwargs, queue=queue))
                time.sleep(0.02)
                if n in (10, 25):
                    # When Redis drops the worker's main process's connections, events held
                    # between flushes among them
                    ports = local_ports(proc.popen.pid)
                    for client in broker.client_list():
                        if int(client["addr"].rsplit(":", 1)[1]) in ports:
                            broker.client_kill_filter(_id=client["id"])
            ran = [result.id for result in results if result.get(timeout=30) is not None]

            # Then every task that ran has all its events (a message the lost connection
            # gave back runs again, at least once, and is reported each time)
            assert eventually(lambda: all(len(events.of(i)) >= 3 for i in ran), timeout=10)
            time.sleep(0.3)
            for task_id in ran:
                seen = events.of(task_id)
                assert seen[0] == "task-received", seen
                assert seen.count("task-received") == seen.count("task-started") \
                    == seen.count("task-succeeded") >= 1, seen
        assert "Connection to broker lost" in proc.tail(400)
    finally:
        proc.stop()


def test_events_held_when_the_connection_is_lost_go_out_on_the_next(system: Any) -> None:
    # Given a dispatcher holding task events, as the worker's is between flushes
    app = system.app
    held = app.events.Dispatcher(app.connection_for_write(), hostname="held@test",
                                 buffer_group=["task"])
    consumer = CoalescedTaskEvents()
    consumer.event_dispatcher = held
    task_id = f"held-{uuid.uuid4().hex[:8]}"
    with Events(app) as events:
        held.send("task-received", uuid=task_id, name="hitl.set_agent_status")
        held.send("task-started", uuid=task_id)
        assert events.of(task_id) == []  # buffered, not sent

        # When its connection is lost: the consumer's on_close, then Celery's Events
        # bootstep building the next connection's dispatcher (celery/worker/consumer/
        # events.py: extend_buffer of the old one, then flush)
        consumer.keep_buffered_events_for_next_connection()
        held.close()
        held.connection.close()
        fresh = app.events.Dispatcher(app.connection_for_write(), hostname="held@test",
                                      buffer_group=["task"])
        try:
            fresh.extend_buffer(held)
            fresh.flush()

            # Then the held events arrive, once each, in order
            assert eventually(lambda: len(events.of(task_id)) >= 2, timeout=5)
            time.sleep(0.3)
            assert events.of(task_id) == ["task-received", "task-started"]
        finally:
            fresh.close()
            fresh.connection.close()
