"""A stand-in flow engine: consumes exit messages from a reply queue, as a real one would.

It speaks only the wire contract (a Celery protocol-2 JSON message on a queue), so it shows
what a flow engine in any language sees. Used by ``hitl-workers simulate``, the tests and the
benchmarks.

On RabbitMQ every queue of the system, the flow engine's reply queue included, is a durable
queue of the type HITL_RABBITMQ_QUEUE_TYPE names (quorum by default), bound to a topic exchange
of the same name with the queue's name as the routing key (celeryconfig.py declares it so when it
publishes an exit). A consumer must declare its queue
the same way, or RabbitMQ refuses the declaration. On Redis the exchange is a direct one.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from typing import Any

from kombu import Connection, Exchange, Queue


def queue_for(broker_url: str, name: str) -> Queue:
    """Queue ``name`` (a reply queue, or one of hitl_workers' own) declared as hitl_workers
    declares it on the broker at ``broker_url``."""
    if broker_url.split("://", 1)[0].lower() in ("amqp", "amqps", "pyamqp"):
        from hitl_workers.settings import get_settings

        quorum = get_settings().rabbitmq_queue_type == "quorum"  # else classic: no argument
        return Queue(name, Exchange(name, type="topic"), routing_key=name,
                     queue_arguments={"x-queue-type": "quorum"} if quorum else None)
    return Queue(name, Exchange(name, type="direct"), routing_key=name)


class ExitListener:
    """Collects exit messages from ``queue`` on a background thread."""

    def __init__(self, broker_url: str, queue: str, task: str = "flow.step_exited", *,
                 delete_queue_on_stop: bool = True) -> None:
        self.broker_url = broker_url
        self.queue_name = queue
        self.task = task
        # The tests and the simulator name a queue for one run: deleting it when done keeps a
        # RabbitMQ vhost from collecting a durable queue and an exchange per run.
        self.delete_queue_on_stop = delete_queue_on_stop
        self.queue = queue_for(broker_url, queue)
        self.exits: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.received_at: dict[str, float] = {}
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"exits:{queue}", daemon=True)

    @property
    def reply_to(self) -> dict[str, str]:
        return {"task": self.task, "queue": self.queue_name}

    def start(self) -> ExitListener:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        if self.delete_queue_on_stop:
            try:
                with Connection(self.broker_url) as conn:
                    self.queue(conn.default_channel).delete()
                    self.queue.exchange(conn.default_channel).delete()
            except Exception:  # the broker is gone: nothing to tidy up
                pass

    def __enter__(self) -> ExitListener:
        return self.start()

    def __exit__(self, *_: Any) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with Connection(self.broker_url) as conn, \
                        conn.Consumer([self.queue], callbacks=[self._on_message],
                                      accept=["json"], prefetch_count=100):
                    while not self._stop.is_set():
                        try:
                            conn.drain_events(timeout=0.2)
                        except TimeoutError:
                            continue
            except Exception:  # broker restarting: reconnect
                if self._stop.wait(0.5):
                    return

    def _on_message(self, body: Any, message: Any) -> None:
        now = time.monotonic()
        _args, kwargs, _embed = body if isinstance(body, list) else ([], body, {})
        execution_id = str(kwargs.get("execution_id"))
        with self._cond:
            self.exits[execution_id].append(
                {**kwargs, "_task": message.headers.get("task"), "_id": message.headers.get("id")})
            self.received_at.setdefault(execution_id, now)
            self._cond.notify_all()
        message.ack()

    def wait_for(self, execution_id: str, timeout: float = 15.0) -> dict[str, Any]:
        """The first exit message for ``execution_id``; raises TimeoutError if none comes."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self.exits.get(execution_id):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no exit for {execution_id} within {timeout}s")
                self._cond.wait(remaining)
            return self.exits[execution_id][0]

    def wait_count(self, count: int, timeout: float) -> int:
        """Wait until exits for ``count`` distinct executions arrived; returns how many did."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.exits) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            return len(self.exits)

    def count_for(self, execution_id: str) -> int:
        with self._cond:
            return len(self.exits.get(execution_id, []))
