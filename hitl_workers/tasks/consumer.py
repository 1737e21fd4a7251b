"""The worker's consumer: every message passes the guard first, whatever its task name.

Installed by ``worker_consumer`` in celeryconfig. Why here: Celery's consumer builds one
function, ``create_task_handler()``, that receives *every* message from the broker and only
then looks up the task's strategy by name. A per-task hook (``Task.start_strategy``) never sees
a message for Celery's built-ins (``celery.backend_cleanup``, ``celery.chord_unlock``, …), for a
task someone forgot to guard, or for a name nobody registered; wrapping ``on_unknown_task``
would cover only the last. A consumer bootstep could not replace the handler, which the event
loop asks the consumer for each time it (re)connects. So this subclass wraps that one handler:
nothing reaches a strategy, an unknown-task path or a pool without passing
:func:`hitl_workers.tasks.guard.refusal`.

On the same (re)connection it also guards the Redis channel's message factory
(:mod:`hitl_workers.tasks.envelope`), so a list entry kombu cannot read is refused here too
instead of dropping the connection and vanishing.

A refused message is kept as a dead letter with why, a too-deep ``hitl.request_assistance``
with a readable top level gets its ``error`` exit, and the message is acked: redelivering it
would only have it refused again.

It also sends the worker's task events for Flower in fewer messages
(:mod:`hitl_workers.tasks.worker_events` says how and why here).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from celery import signals
from celery.exceptions import InvalidTaskError
from celery.utils.objects import Bunch
from celery.worker.consumer import Consumer
from vine import promise

from hitl_workers.tasks.envelope import guard_channel
from hitl_workers.tasks.guard import TOO_DEEP, UNDECODABLE, keep_dead_letter, refusal
from hitl_workers.tasks.refused_request import answer_refused_request
from hitl_workers.tasks.worker_events import CoalescedTaskEvents

log = logging.getLogger(__name__)


class GuardedConsumer(CoalescedTaskEvents, Consumer):  # type: ignore[misc]
    """Celery's consumer, with every message checked before Celery looks at its task name,
    and its task events sent a tenth of a second's worth to a message."""

    guards_every_message = True
    """Read by :class:`~hitl_workers.tasks.guard.GuardedTask`: no need to check twice."""

    def stop(self) -> None:
        # Before the Heart bootstep announces worker-offline: a task's last events first.
        self.flush_task_events()
        super().stop()

    def shutdown(self) -> None:
        self.flush_task_events()
        super().shutdown()

    def on_close(self) -> None:
        # The connection is lost and the Events bootstep is about to replace the dispatcher.
        self.keep_buffered_events_for_next_connection()
        super().on_close()

    def create_task_handler(self, promise: Any = promise) -> Callable[[Any], Any]:
        handle = super().create_task_handler(promise)
        if getattr(self, "task_consumer", None) is not None:
            guard_channel(self.task_consumer.channel)

        def on_task_received(message: Any) -> Any:
            reason = refusal(message)
            if reason is not None:
                return self.refuse(message, reason)
            task = message.headers["task"]  # refusal() checked it is a string
            if task not in self.strategies:
                # Celery rejects it and stores NotRegistered as its result; keep it too, so a
                # misspelt task name is found where operators look for lost messages.
                keep_dead_letter(message, f"no task named {task!r} is registered in this "
                                          f"worker")
            try:
                return handle(message)
            except self.connection_errors + self.channel_errors:
                raise  # the connection is gone: Celery reconnects, the broker redelivers
            except Exception as exc:
                # The last resort for a message the checks above let through and Celery still
                # cannot take: raised here, it would stop the whole worker ("Unrecoverable
                # error") and come back to stop the next one.
                if message.acknowledged:
                    log.exception("message %r failed after it was taken", _task_id(message))
                    return None
                return self.refuse(message, f"the worker could not take the message: {exc!r}"
                                   [:2000])

        return on_task_received

    def refuse(self, message: Any, reason: str) -> None:
        """Keep, answer where readable, and drop ``message``; never raises."""
        headers = message.headers if isinstance(message.headers, dict) else {}
        log.error("refused message %r for task %r: %s", headers.get("id"), headers.get("task"),
                  reason)
        keep_dead_letter(message, reason)
        if reason == TOO_DEEP or reason.startswith(UNDECODABLE):
            answer_refused_request(message)  # a request whose ids are readable gets its exit
        self.store_refusal(message, reason)
        message.ack_log_error(log, self.connection_errors)
        signals.task_rejected.send(sender=self, message=message, exc=None)

    def store_refusal(self, message: Any, reason: str) -> None:
        """Store the refusal as the task's result (``InvalidTaskError`` with the reason), as
        Celery does for an unknown task: a caller waiting on the result learns why at once
        instead of waiting for ever. Never raises."""
        headers = message.headers if isinstance(message.headers, dict) else {}
        task_id = headers.get("id")
        if not isinstance(task_id, str):
            return  # nothing a caller could be waiting on
        root_id = headers.get("root_id")
        properties = message.properties if isinstance(message.properties, dict) else {}
        request = Bunch(name=str(headers.get("task")), chord=None, errbacks=None,
                        root_id=root_id if isinstance(root_id, str) else None,
                        correlation_id=properties.get("correlation_id"),
                        reply_to=properties.get("reply_to"))
        try:
            self.app.backend.mark_as_failure(task_id, InvalidTaskError(reason),
                                             request=request)
        except Exception as exc:  # the result backend is down: the dead letter is kept
            log.warning("refusal of %r not stored as its result: %r", task_id, exc)


def _task_id(message: Any) -> Any:
    return message.headers.get("id") if isinstance(message.headers, dict) else None
