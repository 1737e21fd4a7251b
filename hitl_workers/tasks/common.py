"""What every task shares: transactions with retries, publishing after commit, bad payloads."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

import redis
from celery.signals import worker_process_shutdown
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from hitl_workers.app import app
from hitl_workers.clock import utcnow
from hitl_workers.domain.names import TASK_QUEUES
from hitl_workers.notify.streams import StreamPublisher
from hitl_workers.observe import metrics, task_context
from hitl_workers.services import delivery
from hitl_workers.services.effects import (
    Effects,
    FirstOffer,
    Observation,
    OffersChanged,
    StepEnded,
    timer_task_id,
)
from hitl_workers.settings import get_settings
from hitl_workers.store import repo
from hitl_workers.store.db import transaction
from hitl_workers.tasks.sending import Sender

log = logging.getLogger(__name__)
sender = Sender(app)
"""Exits, wake-ups and ``task-sent`` events go out through one kept producer per process."""
T = TypeVar("T")

# Infrastructure trouble worth retrying with backoff (PostgreSQL restarting, a dropped
# connection). Domain conflicts are outcomes and never retried.
TRANSIENT = (OperationalError,)
RETRY = {
    "autoretry_for": TRANSIENT,
    "retry_backoff": 0.5,
    "retry_backoff_max": 30,
    "retry_jitter": True,
    "max_retries": 20,
}


def in_transaction(work: Callable[[Connection], T], *, attempts: int = 3) -> T:
    """Run ``work`` in one transaction, again from scratch if a unique key says a twin won.

    A twin is another worker that handled a copy of the same input at the same moment (the
    same client ``event_id``, say): its row is committed now, so the retry finds it.
    """
    for attempt in range(1, attempts + 1):
        try:
            with transaction() as conn:
                return work(conn)
        except IntegrityError:
            if attempt == attempts:
                raise
            log.info("unique key conflict with a concurrent twin; retrying (%d)", attempt)
        except DBAPIError as exc:
            if not exc.connection_invalidated or attempt == attempts:
                raise
    raise AssertionError("unreachable")


class CeleryPublisher:
    def __init__(self, streams: StreamPublisher, probe_client: redis.Redis | None = None
                 ) -> None:
        self.streams = streams
        self.probe_client = probe_client

    def send_exit(self, *, task: str, queue: str, kwargs: dict[str, Any]) -> None:
        task_id = f"exit:{kwargs['execution_id']}"
        if _task_events():
            # The exit and its task-sent event (below) in one round trip to the broker.
            sender.send_announced(task, kwargs, queue=queue, task_id=task_id)
        else:
            sender.send(task, kwargs, queue=queue, task_id=task_id)

    def notify(self, agent_ids: Sequence[str], event: dict[str, Any]) -> None:
        self.streams.publish(agent_ids, event)

    def hand_off_webhook(self, outbox_id: int) -> None:
        # Expires: a copy still queued when the reconciler hands the row off again is
        # dropped unread (it would only find the row not due).
        app.send_task("hitl.deliver_webhook", kwargs={"id": outbox_id},
                      queue=TASK_QUEUES["hitl.deliver_webhook"], expires=3600)

    def probe(self) -> bool:
        """Does the notification Redis answer a PING within half a second?"""
        try:
            return bool((self.probe_client or self.streams.client).ping())
        except redis.RedisError:
            return False


_events_on: bool | None = None


def _task_events() -> bool:
    """Whether the exit gets a ``task-sent`` event, so Flower shows every step's exit (state
    PENDING until a flow-engine worker with task events reports it), whatever runs the flow
    engine: a celery-node or raw AMQP consumer sends no events of its own.

    Only exits: ``task_send_sent_event`` stays off for everything else (a sent event for each
    wake-up and notification publish would double the messages of the hot path). Best effort:
    a lost event only hides the exit from Flower. It travels with the exit, through the same
    producer (:meth:`hitl_workers.tasks.sending.Sender.send_announced`). Read once: a lookup
    in Celery's layered configuration costs microseconds, and it does not change.
    """
    global _events_on
    if _events_on is None:
        _events_on = bool(app.conf.worker_send_task_events)
    return _events_on


_publisher: CeleryPublisher | None = None
PROBE_TIMEOUT_S = 0.5
"""A PING of a live Redis takes a millisecond; one that hangs costs only this much."""


def publisher() -> CeleryPublisher:
    global _publisher
    if _publisher is None:
        settings = get_settings()
        # A live Redis answers an XADD pipeline in about a millisecond; one that hangs costs
        # this timeout once per worker (the breaker in services.delivery then skips it).
        client = redis.Redis.from_url(settings.redis_url,
                                      socket_timeout=settings.notify_timeout_s,
                                      socket_connect_timeout=settings.notify_timeout_s,
                                      health_check_interval=30)
        probe = redis.Redis.from_url(settings.redis_url, socket_timeout=PROBE_TIMEOUT_S,
                                     socket_connect_timeout=PROBE_TIMEOUT_S)
        _publisher = CeleryPublisher(
            StreamPublisher(client, settings.notification_stream_maxlen), probe)
    return _publisher


def after_commit(effects: Effects) -> None:
    """Publish what the committed transaction queued. Failures here lose nothing: the
    reconciler re-sends outbox rows and fires deadlines whose wake-up never arrived."""
    if effects.execution is not None:
        task_context.learn(*effects.execution)  # for the task's own log lines from here on
    for observation in effects.observations:
        _count(observation)
    if effects.outbox:
        delivery.publish(effects.outbox, publisher(), utcnow)
    for execution_id, kind, due_at in effects.arm:
        arm_timer(execution_id, kind, due_at)
    if effects.revoke and get_settings().revoke_timers:
        try:
            app.control.revoke([timer_task_id(e, k) for e, k in effects.revoke])
        except Exception as exc:  # an optimisation only
            log.info("revoke of %s failed: %r", effects.revoke, exc)


def _count(observation: Observation) -> None:
    try:
        if isinstance(observation, StepEnded):
            metrics.count_step_ended(state=observation.state, exit=observation.exit,
                                     merge_field=observation.merge_field,
                                     dispatched_at=observation.dispatched_at,
                                     now=observation.at)
        elif isinstance(observation, OffersChanged):
            metrics.count_offers(change=observation.change, reason=observation.reason,
                                 count=observation.count)
        elif isinstance(observation, FirstOffer):
            metrics.count_first_offer(requested_at=observation.requested_at,
                                      now=observation.at)
        else:
            metrics.count_timer_fired(kind=observation.kind, due_at=observation.due_at,
                                      now=observation.at)
    except Exception:  # the data is committed; a failing metric must not undo the task
        log.exception("metrics: %r not counted", observation)


@worker_process_shutdown.connect
def _mark_what_was_sent(**_: Any) -> None:
    # A pool process stopping (warm shutdown, max-tasks-per-child) writes its pending "sent"
    # marks, so what it published is not re-sent by the reconciler.
    delivery.sent_marks.flush()


def arm_timer(execution_id: str, kind: str, due_at: datetime) -> None:
    when: dict[str, Any] = {"eta": due_at}
    if 0 < (due_at - utcnow()).total_seconds() < 1:
        # RabbitMQ's native delayed delivery counts whole seconds and refuses a delay under
        # one; so does Celery's send_task with it on. A wake-up that close is carried in the
        # message's own eta header instead: the worker holds it for that fraction of a second.
        when = {"headers": {"eta": due_at.isoformat()}}
    try:
        sender.send("hitl.fire_timer", {"execution_id": execution_id, "kind": kind},
                    task_id=timer_task_id(execution_id, kind),
                    queue=TASK_QUEUES["hitl.fire_timer"], **when)
    except Exception as exc:
        # The row is the truth: the reconciler fires it when overdue.
        log.warning("wake-up for %s %s not published: %r", kind, execution_id, exc)


def dead_letter(task_name: str, task_id: str | None, args: tuple[Any, ...],
                kwargs: dict[str, Any], reason: str) -> None:
    """Keep a payload we cannot tie to anything, with why."""
    try:
        payload = json.dumps({"args": args, "kwargs": kwargs}, default=repr)[:65536]
    except (RecursionError, ValueError, TypeError):
        payload = repr((args, kwargs))[:65536]
    with transaction() as conn:
        repo.add_dead_letter(conn, task_name=task_name, task_id=task_id, payload=payload,
                             reason=reason, now=utcnow())
