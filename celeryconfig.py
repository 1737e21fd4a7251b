"""Celery configuration for hitl_workers, read by ``hitl_workers.app``.

Every value comes from :class:`hitl_workers.settings.Settings` (environment, prefix HITL_), so
workers, beat, Flower and the gateway always agree.
"""

from typing import Any

from kombu import Exchange, Queue

from hitl_workers.domain.names import QUEUE_NAMES, TASK_QUEUES, QueueName
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
task_default_queue: QueueName = "hitl.requests"
task_routes = {task: {"queue": queue} for task, queue in TASK_QUEUES.items()}  # domain/names.py

# At least once, without duplicates: every task is idempotent, so a message is acked only
# after its task ran, and a worker killed mid-task gives the message back to the broker.
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1
worker_soft_shutdown_timeout = 10.0
worker_enable_soft_shutdown_on_idle = True

# Every message passes the guard in the worker's main process before Celery looks at its task
# name: too deep, undecodable or malformed messages are kept as dead letters and dropped
# instead of crashing the worker (hitl_workers/tasks/consumer.py says why a consumer).
worker_consumer = "hitl_workers.tasks.consumer:GuardedConsumer"

# Flower: task events on. No "task-sent" events: they would double the messages of every
# publish (each timer wake-up and exit message too); Flower shows a task from its receipt on,
# and queue lengths come from the broker. The worker's consumer sends the task events of each
# tenth of a second in one message (hitl_workers/tasks/worker_events.py says why).
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
if _settings.retention_days > 0:
    # Retention (docs/operations.md): a bounded amount of deleting per tick.
    beat_schedule["hitl-purge"] = {
        "task": "hitl.purge",
        "schedule": _settings.retention_interval_s,
        "options": {"expires": _settings.retention_interval_s},
    }


# --- Broker-specific settings -------------------------------------------------------------------
# Redis is the default broker, RabbitMQ the other (README "Choosing a broker"). They differ in
# how the queues are declared and where an ETA wake-up waits until it is due.

RABBITMQ_SCHEMES = ("amqp", "amqps", "pyamqp")


def is_rabbitmq(url: str) -> bool:
    return url.split("://", 1)[0].lower() in RABBITMQ_SCHEMES


def rabbitmq_queue(name: str, queue_type: str) -> Queue:
    """Queue ``name`` as the system declares it on RabbitMQ: durable, of ``queue_type``
    (``HITL_RABBITMQ_QUEUE_TYPE``), bound to a durable *topic* exchange of its own name with its
    name as the routing key. docs/contract.md §2 gives flow engines the same rule for their
    reply queues."""
    # A classic queue is declared without x-queue-type, as most AMQP clients declare one.
    arguments = {"x-queue-type": "quorum"} if queue_type == "quorum" else None
    return Queue(name, Exchange(name, type="topic"), routing_key=name, durable=True,
                 queue_arguments=arguments)


def settings_for_broker(url: str, settings: Settings) -> dict[str, Any]:
    """The settings that depend on the broker at ``url``, applied to this module below (and by
    the test suite to a second app on another broker)."""
    if is_rabbitmq(url):
        queue_type = settings.rabbitmq_queue_type
        by_type: dict[str, Any] = {}
        if queue_type == "quorum":
            # Native delayed delivery (Celery 5.5+, on because the queues are quorum queues): an
            # ETA wake-up waits in the broker's celery_delayed_* queues and reaches a worker
            # within a second of its deadline. With quorum queues Celery turns global QoS off,
            # so the prefetch count is static (concurrency x worker_prefetch_multiplier): a
            # worker holding wake-ups for minutes would have no slot left for anything else.
            by_type["broker_native_delayed_delivery_queue_type"] = "quorum"
        # Classic queues (for flow engines whose AMQP client cannot declare a quorum queue):
        # Celery enables native delayed delivery only when it sees a quorum queue, so an ETA
        # wake-up goes to a worker at once and waits there, unacked, until it is due (global
        # QoS raises the prefetch for each one held). That is why the timer horizon
        # (HITL_TIMER_HORIZON_S, 10 min) must stay below RabbitMQ's consumer_timeout (30 min by
        # default): a message held unacked longer makes RabbitMQ close the worker's channel.
        return {
            # Quorum queues are durable and replicated across a RabbitMQ cluster; classic ones
            # live on one node. Each queue is bound to a *topic* exchange of its own name with
            # its name as the routing key: native delayed delivery routes a due message back
            # through that exchange, which it cannot do through a direct one (and one rule for
            # both types keeps the reply-queue rule of docs/contract.md §2 short).
            "task_queues": [rabbitmq_queue(name, queue_type) for name in QUEUE_NAMES],
            # A reply queue a request names (``reply_to.queue``, the flow engine's) is declared
            # by the same rule when an exit is published to it. A publisher or consumer that
            # declares one of these queues otherwise is refused by RabbitMQ (PRECONDITION_FAILED).
            "task_create_missing_queue_type": queue_type,
            "task_create_missing_queue_exchange_type": "topic",
            # Publisher confirms: publishing returns once RabbitMQ has taken the message, so an
            # outbox row is marked sent only when its message is safe in the broker.
            "broker_transport_options": {"confirm_publish": True},
            **by_type,
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
