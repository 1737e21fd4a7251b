"""The worker's task events for Flower, a tenth of a second's worth to a message.

Flower (and ``celery events``, and any ``celery.events.EventReceiver``) learns what each task
did from the events the worker's main process sends: ``task-received``, ``task-started``,
``task-succeeded`` … (``worker_send_task_events`` in celeryconfig). Celery already buffers
them: its Events bootstep gives the dispatcher ``buffer_group=['task']``, and each buffered
event asks the event loop to flush the buffer, which publishes everything in it as *one*
``task.multi`` message whose body is the list of events (receivers unpack the list). But the
flush runs on the loop's very next tick, and the events of a step arrive on different ticks
(a message read, then the pool's "accepted", then its result): measured under load, a message
carried 1.4 events, so the main process paid a whole kombu publish and a Redis round trip for
almost every event (about 40 % of its CPU in docs/benchmarks.md's profile; the bare worker
sends none).

:class:`CoalescedTaskEvents` keeps Celery's buffer, message and flush and changes only *when*
the flush runs: :data:`FLUSH_AFTER_S` after the first event that found the buffer empty, on the
event loop's timer, so the events of that tenth of a second travel in one message (Celery's own
limit, 24 events, still flushes a full buffer at once). Every event keeps its own timestamp and
logical clock, taken when it happened, so Flower shows the same times and order; it only learns
of them up to :data:`FLUSH_AFTER_S` later. The message is the one Celery publishes, through the
dispatcher's own kombu producer, so it is the same on Redis and RabbitMQ, and a publish that
fails is kept by the dispatcher and sent again as before.

Why a consumer method and not a pipeline of our own: the batching already exists, byte for
byte what every receiver reads; only its timing was the cost. Celery reads the flush request
from the consumer (``on_send_event_buffered``, passed to the dispatcher when the Events
bootstep starts), so overriding that method on the consumer this project already installs
(:class:`~hitl_workers.tasks.consumer.GuardedConsumer`) is the whole hook. A bootstep could not
replace it without reaching into the dispatcher after each (re)connection.

Nothing buffered is dropped where Celery would have sent it: the consumer flushes before it
stops (so a task's last events go out before the worker's ``worker-offline``), flushes at once
whenever it is not running, and on a lost connection hands the buffer to the next connection's
dispatcher as Celery does with a failed publish.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import bootsteps
from vine import promise

log = logging.getLogger(__name__)

FLUSH_AFTER_S = 0.1
"""How long a task event may wait for others before its message goes out. Far below what an
operator watching Flower notices; long enough that, under load, one message carries the events
of several steps instead of one event."""


class CoalescedTaskEvents:
    """Mixed into the worker's consumer (a :class:`celery.worker.consumer.Consumer`)."""

    hub: Any
    blueprint: Any
    event_dispatcher: Any
    _event_flush_entry: Any = None
    """The armed timer entry (the event loop's), or None when no flush is due."""
    _arm_event_flush_promise: Any = None

    def on_send_event_buffered(self) -> None:
        # Called by the dispatcher after it buffered a task event, from whatever thread sent
        # it (the loop's own with the prefork pool). ``call_soon`` is the hub's thread-safe
        # entry point; the timer is then armed on the loop's thread, which alone touches it.
        hub = self.hub
        if hub is None:  # no event loop (the dispatcher then buffers nothing)
            return
        if self._arm_event_flush_promise is None:
            # One promise, reused: the hub's ready set then holds at most one (as Celery's).
            self._arm_event_flush_promise = promise(self._arm_event_flush)
        hub.call_soon(self._arm_event_flush_promise)

    def _arm_event_flush(self) -> None:
        if self.blueprint.state != bootsteps.RUN:
            # Starting, stopping or reconnecting: the loop may not tick again to fire a timer.
            self.flush_task_events()
            return
        entry = self._event_flush_entry
        if entry is not None and not entry.canceled:
            return  # a flush is already due: this event travels with it
        self._event_flush_entry = self.hub.call_later(FLUSH_AFTER_S, self.flush_task_events)

    def flush_task_events(self) -> None:
        """Publish the buffered task events now (one message). Never raises: a failed publish
        stays in the dispatcher's buffer for the next flush, as in Celery."""
        entry, self._event_flush_entry = self._event_flush_entry, None
        if entry is not None:
            entry.cancel()  # harmless when it is the entry firing now
        dispatcher = self.event_dispatcher
        if dispatcher is None:
            return
        try:
            dispatcher.flush()
        except Exception as exc:  # the dispatcher keeps what it could not send
            log.warning("task events not flushed: %r", exc)

    def keep_buffered_events_for_next_connection(self) -> None:
        """On a lost connection: move the buffered task events to the dispatcher's retry
        buffer, which the Events bootstep carries to the next connection's dispatcher and
        flushes there (Celery carries only that buffer across; it is where a failed publish
        lands, so the events go exactly as a flush that failed would have sent them)."""
        entry, self._event_flush_entry = self._event_flush_entry, None
        if entry is not None:
            entry.cancel()
        dispatcher = self.event_dispatcher
        groups = getattr(dispatcher, "_group_buffer", None)
        retry = getattr(dispatcher, "_outbound_buffer", None)
        if not groups or retry is None:
            return  # nothing buffered (or a Celery whose dispatcher keeps them otherwise)
        with dispatcher.mutex:
            for group, events in groups.items():
                if events:
                    retry.append((list(events), f"{group}.multi"))  # as EventDispatcher.flush
                    del events[:]
