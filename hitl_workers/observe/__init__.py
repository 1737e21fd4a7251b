"""Cross-cutting worker hooks: Celery signal handlers and what they feed.

``task_context`` (which task and execution a process is running), ``log_format`` (those ids on
every log line), ``metrics`` (business counters) and ``metrics_reader`` (serving them to
Prometheus), ``task_run`` (the receivers around every task run: context set, task counted,
context cleared), ``flower_search`` (task arguments Flower can search), ``worker_startup``
(schema check, fresh engines). They are connected in one place:
``hitl_workers.app.HOOK_MODULES``, which a worker or beat imports at start. The gateway and the
operator tools load none of the hooks.
"""
