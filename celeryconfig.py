"""Celery configuration for hitl_workers, read by ``hitl_workers.app``.

Every value comes from :class:`hitl_workers.settings.Settings` (environment, prefix HITL_), so
workers, beat, Flower and the gateway always agree.
"""

from typing import Any

from kombu import Exchange, Queue

from hitl_workers.settings import Settings, get_settings

_settings = get_settings()

broker_url = _settings.broker_url
result_backend = _settings.result_backend_url
broker_connection_retry_on_startup = True

# JSON only: never pickle. A message from any language can be read, and nothing executes code.
task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
result_accept_content = ["json"]
result_expires = 24 * 3600
# Off: storing each task's name, arguments and worker beside its result costs a larger write
# per task, and nothing reads it (Flower learns names and arguments from task events; the
# flow engine and the gateway read only the result). Wake-ups, the reconciler and outbox
# deliveries store no result at all (``ignore_result`` on those tasks).
result_extended = False

timezone = "UTC"
enable_utc = True

# task_queues and the broker's transport options depend on the broker: see the end of this file.
task_default_queue = "hitl.requests"
task_routes = {
    "hitl.request_assistance": {"queue": "hitl.requests"},
    "hitl.cancel": {"queue": "hitl.requests"},
    "hitl.upsert_agent": {"queue": "hitl.requests"},
    "hitl.set_agent_status": {"queue": "hitl.requests"},
    "hitl.remove_agent": {"queue": "hitl.requests"},
    "hitl.claim": {"queue": "hitl.events"},
    "hitl.reject": {"queue": "hitl.events"},
    "hitl.close": {"queue": "hitl.events"},
    "hitl.fire_timer": {"queue": "hitl.timers"},
    "hitl.reconcile": {"queue": "hitl.timers"},
    "hitl.fire_overdue": {"queue": "hitl.timers"},
    "hitl.deliver_outbox": {"queue": "hitl.outbox"},
}

# At least once, without duplicates: every task is idempotent, so a message is acked only
# after its task ran, and a worker killed mid-task gives the message back to the broker.
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1
worker_soft_shutdown_timeout = 10.0
worker_enable_soft_shutdown_on_idle = True

# Flower: task events on. No "task-sent" events: they would double the messages of every
# publish (each timer wake-up and exit message too); Flower shows a task from its receipt on,
# and queue lengths come from the broker.
worker_send_task_events = True
task_send_sent_event = False

beat_schedule = {
    "hitl-reconcile": {
        "task": "hitl.reconcile",
        "schedule": _settings.reconcile_interval_s,
        # A tick nobody ran within a few intervals is worthless: drop it instead of piling up.
        "options": {"expires": max(5.0, _settings.reconcile_interval_s * 5)},
    },
}


# --- Broker-specific settings -------------------------------------------------------------------
# Redis is the default broker, RabbitMQ the other (README "Choosing a broker"). They differ in
# how the queues are declared and where an ETA wake-up waits until it is due.

QUEUE_NAMES = ("hitl.requests", "hitl.events", "hitl.timers", "hitl.outbox")
RABBITMQ_SCHEMES = ("amqp", "amqps", "pyamqp")


def is_rabbitmq(url: str) -> bool:
    return url.split("://", 1)[0].lower() in RABBITMQ_SCHEMES


def settings_for_broker(url: str, settings: Settings) -> dict[str, Any]:
    """The settings that depend on the broker at ``url``, applied to this module below (and by
    the test suite to a second app on another broker)."""
    if is_rabbitmq(url):
        return {
            # Quorum queues: durable and replicated across a RabbitMQ cluster. Each queue is
            # bound to a *topic* exchange of its own name with its name as the routing key:
            # native delayed delivery routes a due message back through that exchange, which it
            # cannot do through a direct one.
            "task_queues": [
                Queue(name, Exchange(name, type="topic"), routing_key=name,
                      queue_arguments={"x-queue-type": "quorum"})
                for name in QUEUE_NAMES
            ],
            # A reply queue a request names (``reply_to.queue``, the flow engine's) is declared
            # by the same rule when an exit is published to it. A publisher or consumer that
            # declares one of these queues otherwise is refused by RabbitMQ (PRECONDITION_FAILED).
            "task_create_missing_queue_type": "quorum",
            "task_create_missing_queue_exchange_type": "topic",
            # Native delayed delivery (Celery 5.5+, on because the queues are quorum queues): an
            # ETA wake-up waits in the broker's celery_delayed_* queues and reaches a worker
            # within a second of its deadline. With quorum queues Celery turns global QoS off,
            # so the prefetch count is static (concurrency x worker_prefetch_multiplier): a
            # worker holding wake-ups for minutes would have no slot left for anything else.
            "broker_native_delayed_delivery_queue_type": "quorum",
            # Publisher confirms: publishing returns once RabbitMQ has taken the message, so an
            # outbox row is marked sent only when its message is safe in the broker.
            "broker_transport_options": {"confirm_publish": True},
        }
    return {
        # Each queue gets its own direct exchange and routing key. (A bare ``Queue(name)`` is
        # bound to the default exchange with the default routing key, so every queue would get
        # every message.)
        "task_queues": [Queue(name, Exchange(name, type="direct"), routing_key=name)
                        for name in QUEUE_NAMES],
        "broker_transport_options": {
            # An unacked message (an armed ETA wake-up) comes back after this; keep it above
            # the timer horizon so wake-ups are not redelivered while they wait.
            "visibility_timeout": settings.effective_visibility_timeout_s,
        },
    }


# task_queues and broker_transport_options; on RabbitMQ also the queue types and delayed delivery.
globals().update(settings_for_broker(broker_url, _settings))
