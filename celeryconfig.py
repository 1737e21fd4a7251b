"""Celery configuration for hitl_workers, read by ``hitl_workers.app``.

Every value comes from :class:`hitl_workers.settings.Settings` (environment, prefix HITL_), so
workers, beat, Flower and the gateway always agree.
"""

from kombu import Exchange, Queue

from hitl_workers.settings import get_settings

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
result_extended = True  # Flower and `celery result` show the task's name and arguments

timezone = "UTC"
enable_utc = True

# Each queue gets its own direct exchange and routing key. (A bare ``Queue(name)`` is bound to
# the default exchange with the default routing key, so every queue would get every message.)
task_queues = [
    Queue(name, Exchange(name, type="direct"), routing_key=name)
    for name in ("hitl.requests", "hitl.events", "hitl.timers", "hitl.outbox")
]
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

broker_transport_options = {
    # An unacked message (an armed ETA wake-up) comes back after this; keep it above the
    # timer horizon so wake-ups are not redelivered while they wait.
    "visibility_timeout": _settings.effective_visibility_timeout_s,
}

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
