"""Publishing after commit through one kept kombu producer per process (per thread).

``app.send_task`` costs about 1.5 ms of Python per message before the broker sees a byte: it
looks the task up, routes it, acquires a producer from the pool and gives it back, builds the
message with ``saferepr`` of the arguments, copies and re-binds the queue to declare it, asks
the result backend to watch the task and builds an ``AsyncResult`` nobody reads
(docs/benchmarks.md). The exit message and the wake-up of every step pay it, and the exit's
``task-sent`` event paid as much again: a new event dispatcher, a producer from the pool.

:class:`Sender` publishes the same Celery protocol-2 message (the same headers, properties and
``[args, kwargs, embed]`` JSON body, the same exchange, routing key, delivery mode, retry
policy and queue declaration as ``send_task`` would) through a producer it acquired once from
the app's producer pool and keeps, and sends the ``task-sent`` event through that producer
with a dispatcher it keeps too. Nothing the outbox promises changes: a publish still either
returns after the broker took the message (kombu's retry policy reconnects as before) or
raises, and a raise leaves the row unsent for the reconciler. After a failure the kept producer
is dropped (its connection may be half broken) and the next publish acquires a fresh one.

What still goes through ``app.send_task``: tasks whose registration sets routing or
serialisation options of their own, and ETA wake-ups on RabbitMQ with quorum queues (Celery
reroutes those through its native delayed-delivery exchanges).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from datetime import datetime
from typing import Any

from celery import Celery
from celery.events import EventDispatcher
from celery.utils.nodenames import anon_nodename
from celery.utils.quorum_queues import detect_quorum_queues
from celery.utils.saferepr import saferepr

log = logging.getLogger(__name__)
EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
_PLAIN_OPTIONS = ("ignore_result", "time_limit", "soft_time_limit")
"""Options a registered task may carry that this module writes into the message as Celery
does; any other non-empty option (a serializer, an exchange, a priority …) sends the task
through ``app.send_task``."""


class Sender:
    """Publishes tasks and ``task-sent`` events through one kept producer per thread."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self._local = threading.local()
        self._options: dict[str, dict[str, Any] | None] = {}
        self._quorum: bool | None = None
        self._retry_conf: tuple[bool, dict[str, Any]] | None = None

    # --- public ------------------------------------------------------------------------------

    def send(self, name: str, kwargs: dict[str, Any], *, queue: str, task_id: str,
             eta: datetime | None = None, headers: dict[str, Any] | None = None) -> None:
        """Publish task ``name`` with ``kwargs`` to ``queue``, as ``app.send_task(name,
        kwargs=kwargs, queue=queue, task_id=task_id, eta=eta, headers=headers)`` would."""
        options = self._task_options(name)
        if options is None or (eta is not None and self._native_delayed_delivery()):
            self.app.send_task(name, kwargs=kwargs, queue=queue, task_id=task_id, eta=eta,
                               **({"headers": headers} if headers else {}))
            return
        message_headers = self._headers(name, task_id, kwargs, eta, options)
        if headers:
            message_headers.update(headers)
        self._publish(self._kept(), kwargs, queue, task_id, message_headers)

    def send_announced(self, name: str, kwargs: dict[str, Any], *, queue: str, task_id: str
                       ) -> None:
        """:meth:`send` then :meth:`announce_sent`, in one round trip to a Redis broker.

        Both go into one kombu publish batch (``Producer.batch``, kombu 5.7+ on Redis: a
        non-transactional pipeline flushed when the block ends); on other transports they are
        published one after the other, as before. The message and the event are the ones
        :meth:`send` and :meth:`announce_sent` publish.
        A batch that fails is uncertain (the message may have reached the broker); then the
        message is published again the ordinary way, with the retry policy that reconnects
        (an identical copy at worst, as a retried publish could always give), and the event,
        best effort, after it. A failing event alone never fails the message.
        """
        options = self._task_options(name)
        kept = self._kept()
        if options is not None and kept.batches:
            message_headers = self._headers(name, task_id, kwargs, None, options)
            try:
                with kept.producer.batch():
                    # No retry wrapper: nothing here talks to Redis before the flush, and a
                    # failed flush is published again below, with the retry policy.
                    self._publish(kept, kwargs, queue, task_id, message_headers, retry=False)
                    self._announce(kept, task_id, name, queue, kwargs)
                return
            except Exception as exc:
                log.info("batched publish of %s failed (%r); publishing it again", task_id,
                         exc)
                self.drop()
        self.send(name, kwargs, queue=queue, task_id=task_id)
        try:
            self.announce_sent(task_id, name, queue, kwargs)
        except Exception as exc:  # best effort: the message is published
            log.info("task-sent event for %s not published: %r", task_id, exc)

    def _publish(self, kept: _Kept, kwargs: dict[str, Any], queue: str, task_id: str,
                 message_headers: dict[str, Any], *, retry: bool = True) -> None:
        exchange, routing_key, declare, delivery_mode = kept.route(self.app, queue)
        configured, retry_policy = self._retry()
        retry = retry and configured
        try:
            kept.producer.publish(
                ((), kwargs, EMBED), exchange=exchange, routing_key=routing_key,
                serializer="json", delivery_mode=delivery_mode, declare=declare,
                headers=message_headers, retry=retry, retry_policy=dict(retry_policy),
                correlation_id=task_id, reply_to=self.app.thread_oid)
        except BaseException:
            self.drop()
            raise

    def announce_sent(self, task_id: str, name: str, queue: str, kwargs: dict[str, Any]
                      ) -> None:
        """A ``task-sent`` event for a message this process published, through the kept
        producer (Celery's own ``task_send_sent_event`` path: ``EventDispatcher.publish``)."""
        kept = self._kept()
        try:
            self._announce(kept, task_id, name, queue, kwargs)
        except BaseException:
            self.drop()
            raise

    def _announce(self, kept: _Kept, task_id: str, name: str, queue: str,
                  kwargs: dict[str, Any]) -> None:
        kept.dispatcher(self.app).publish(
            "task-sent",
            {"uuid": task_id, "root_id": task_id, "parent_id": None, "name": name,
             "args": "()", "kwargs": kwargs_repr(kwargs), "retries": 0, "eta": None,
             "expires": None, "queue": queue, "exchange": queue, "routing_key": queue},
            kept.producer)

    def drop(self) -> None:
        """Forget this thread's producer (after a failure, or before the process exits):
        the next publish acquires a fresh one from the pool."""
        kept: _Kept | None = getattr(self._local, "kept", None)
        self._local.kept = None
        if kept is not None and kept.pid == os.getpid():
            # A broken connection: the pool replaces it on its next acquire.
            with contextlib.suppress(Exception):
                kept.producer.release()

    # --- internals ---------------------------------------------------------------------------

    def _kept(self) -> _Kept:
        kept: _Kept | None = getattr(self._local, "kept", None)
        if kept is None or kept.pid != os.getpid():
            # A forked pool child must not use its parent's socket (nor give it back to a
            # pool that Celery re-created after the fork): it acquires its own.
            kept = self._local.kept = _Kept(self.app.producer_pool.acquire(block=True))
        return kept

    def _task_options(self, name: str) -> dict[str, Any] | None:
        """The registered task's options that go into the message (None: use send_task)."""
        if name not in self._options:
            task = self.app._tasks.get(name)  # as send_task: without finalizing the app
            found = {k: v for k, v in (task._get_exec_options() if task else {}).items()
                     if v is not None}
            plain = {k: found.pop(k) for k in _PLAIN_OPTIONS if k in found}
            found.pop("queue", None)  # the caller names the queue, which wins in send_task
            if found.get("serializer") == "json":  # what this module sends (a finalized
                del found["serializer"]            # app gives every task the default)
            self._options[name] = None if found else plain
        return self._options[name]

    def _retry(self) -> tuple[bool, dict[str, Any]]:
        # Read once: each lookup in Celery's layered configuration costs microseconds.
        if self._retry_conf is None:
            conf = self.app.conf
            self._retry_conf = (bool(conf.task_publish_retry),
                                dict(conf.task_publish_retry_policy or {}))
        return self._retry_conf

    def _native_delayed_delivery(self) -> bool:
        if self._quorum is None:
            driver = self.app.connection_for_write().transport.driver_type
            self._quorum = bool(detect_quorum_queues(self.app, driver)[0])
        return self._quorum

    def _headers(self, name: str, task_id: str, kwargs: dict[str, Any],
                 eta: datetime | None, options: dict[str, Any]) -> dict[str, Any]:
        # Celery's protocol 2 (celery.app.amqp.AMQP.as_task_v2), field for field.
        root_id, parent_id = task_id, None
        parent = self.app.current_worker_task
        if parent is not None:
            root_id = parent.request.root_id or parent.request.id
            parent_id = parent.request.id
        return {
            "lang": "py", "task": name, "id": task_id, "shadow": None,
            "eta": eta.isoformat() if eta is not None else None, "expires": None,
            "group": None, "group_index": None, "retries": 0,
            "timelimit": [options.get("time_limit"), options.get("soft_time_limit")],
            "root_id": root_id, "parent_id": parent_id, "argsrepr": "()",
            "kwargsrepr": kwargs_repr(kwargs), "origin": _origin(),
            "ignore_result": options.get("ignore_result"),
            "replaced_task_nesting": 0, "stamped_headers": None, "stamps": {},
        }


def _batches(producer: Any) -> bool:
    """Whether ``producer`` defers publishes in a batch (kombu 5.7+ on Redis); RabbitMQ and
    older kombu publish each message on its own, the ordinary way."""
    return getattr(producer, "batch", None) is not None and bool(
        getattr(producer, "supports_batch_publish", False))


class _Kept:
    """A producer this thread keeps, with what it learned about its queues."""

    def __init__(self, producer: Any) -> None:
        self.producer = producer
        self.pid = os.getpid()
        self._routes: dict[str, tuple[str, str, Any, Any, Any]] = {}
        self._dispatcher: EventDispatcher | None = None
        # Asked once: kombu works it out from the transport's connection options each time.
        self.batches = _batches(producer)

    def route(self, app: Celery, queue: str) -> tuple[str, str, list[Any], Any]:
        """Exchange, routing key, entities to declare and delivery mode for ``queue``, as
        ``send_task_message`` computes them (a queue the config does not name is created
        by the config's rule: ``task_create_missing_queue_*``)."""
        channel = self.producer.channel
        found = self._routes.get(queue)
        if found is None or found[3] is not channel:
            declared = app.amqp.queues[queue]
            exchange_type = declared.exchange.type if declared.exchange else "direct"
            if exchange_type == "direct":
                exchange, routing_key = "", queue  # the anonymous exchange, as Celery does
            else:
                exchange = declared.exchange.name or app.amqp.default_exchange.name
                routing_key = declared.routing_key or app.conf.task_default_routing_key
            delivery_mode = ((declared.exchange.delivery_mode if declared.exchange else None)
                             or app.conf.task_default_delivery_mode)
            # A copy bound to this producer's channel, once (again after a reconnect gave
            # the producer a new channel): kombu's maybe_declare then finds it declared
            # instead of copying and binding the queue for every message.
            found = self._routes[queue] = (exchange, routing_key, delivery_mode, channel,
                                           declared.bind(channel))
        exchange, routing_key, delivery_mode, _, bound = found
        return exchange, routing_key, [bound], delivery_mode

    def dispatcher(self, app: Celery) -> EventDispatcher:
        if self._dispatcher is None:
            # Not enabled: it opens no producer of its own; ``publish`` uses ours.
            dispatcher = app.events.Dispatcher(connection=self.producer.connection,
                                               enabled=False)
            # Its exchange bound to our channel once: kombu's maybe_declare would otherwise
            # copy and bind it for every event.
            dispatcher.exchange = dispatcher.exchange.bind(self.producer.channel)
            self._dispatcher = dispatcher
        return self._dispatcher


KWARGSREPR_CHARS = 1024  # what Celery's own client sends at most (kwargsrepr_maxsize)


def kwargs_repr(kwargs: dict[str, Any]) -> str:
    """The ``kwargsrepr`` header: ``repr`` when short (microseconds), Celery's ``saferepr``
    cut at :data:`KWARGSREPR_CHARS` when not."""
    text = repr(kwargs)
    return text if len(text) <= KWARGSREPR_CHARS else saferepr(kwargs, KWARGSREPR_CHARS)


_origins: dict[int, str] = {}


def _origin() -> str:
    pid = os.getpid()
    origin = _origins.get(pid)
    if origin is None:
        origin = _origins[pid] = anon_nodename()
    return origin
