"""Business metrics for Prometheus: what the steps did, and what is waiting right now.

Two kinds, both named ``hitl_*`` (docs/operations.md has the table):

* **Counted by worker processes** when a transition commits (exits by kind and reason, time to
  claim, timer lateness, task runs). A prefork worker is several processes, so they use
  prometheus-client's multiprocess mode: each process writes its own small file in its worker
  node's directory ``<HITL_METRICS_DIR>/<node>/``, emptied when the worker starts; a reader
  merges the files of each node and labels the series ``node``. A worker restart therefore
  resets only its own node's counters, which Prometheus handles as any counter reset.
* **Read from the database at scrape time** (waiting executions, outbox backlog, reconciler
  heartbeat age, …): correct however many processes or hosts there are, and never stale.

Where they are served (:mod:`hitl_workers.observe.metrics_reader` reads them): the gateway's
``/metrics`` has both (the workers' counters of every node on its host, and the database
gauges); with ``HITL_METRICS_PORT`` set, each worker also serves its own node's counters (for
workers on hosts without a gateway, such as Kubernetes pods).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import time
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from celery.signals import (
    worker_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
)
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server, values
from prometheus_client.multiprocess import mark_process_dead

from hitl_workers.observe import task_context
from hitl_workers.observe.metrics_reader import NodesCollector, node_dir
from hitl_workers.settings import get_settings

log = logging.getLogger(__name__)

# Seconds; time to claim spans a quick click to the longest step timeout (30 days).
WAIT_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600, 86400)
LATENESS_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300)
TASK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
TIMER_VIA = {"hitl.fire_timer": "wakeup", "hitl.reconcile": "reconciler",
             "hitl.fire_overdue": "reconciler"}  # fire_overdue: the reconciler's helpers
AGENT_EVENT_TASKS = {"hitl.claim": "claim", "hitl.reject": "reject", "hitl.close": "close"}
_LABEL_VALUE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


# --- counted in worker processes ------------------------------------------------------------

class _Children:
    """A labelled metric's children, found by their label values in one dict lookup.

    prometheus-client's ``labels()`` checks the count, converts every value with ``str()`` and
    takes a lock on each call: several microseconds, several times a task in a pool process
    (docs/benchmarks.md). The children are the library's own (made by ``labels()`` the first
    time), so this holds no series the metric does not already keep. No lock: two threads
    missing at once both call ``labels()``, which returns the same child to both."""

    __slots__ = ("_found", "metric")

    def __init__(self, metric: Any) -> None:
        self.metric = metric
        self._found: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        child = self._found.get(values)
        if child is None:
            child = self._found[values] = self.metric.labels(*values)
        return child


class _WorkerMetrics:
    """Created on first use, after :func:`use_multiprocess` chose where values live. Not
    registered anywhere: readers merge the processes' files (:class:`NodesCollector`)."""

    def __init__(self) -> None:
        self.exits = _Children(Counter(
            "hitl_exits", "Exits recorded, by exit and reason (once per execution).",
            ["exit", "reason"], registry=None))
        self.cancellations = Counter(
            "hitl_cancellations", "Executions cancelled by the flow engine (no exit).",
            registry=None)
        self.time_to_claim = Histogram(
            "hitl_time_to_claim_seconds", "From dispatch to the winning claim.",
            buckets=WAIT_BUCKETS, registry=None)
        self.step_duration = _Children(Histogram(
            "hitl_step_duration_seconds", "From dispatch to the exit, by exit.", ["exit"],
            buckets=WAIT_BUCKETS, registry=None))
        self.timer_lateness = _Children(Histogram(
            "hitl_timer_lateness_seconds",
            "How late a deadline fired (fired_at - due_at), by timer kind and by what fired "
            "it: its ETA wake-up or the reconciler.", ["kind", "via"],
            buckets=LATENESS_BUCKETS, registry=None))
        self.wakeups = _Children(Counter(
            "hitl_timer_wakeups", "Timer wake-up tasks by outcome (fired, early, stale, …).",
            ["outcome"], registry=None))
        self.offers = _Children(Counter(
            "hitl_offers", "Offers made (at dispatch, when an agent became able to claim, next "
            "in a sequence), withdrawn (the agent could no longer claim, or rejected a "
            "sequential offer it held) and missed (a sequential offer's timeout passed), by "
            "why (§9).",
            ["change", "reason"], registry=None))
        self.time_to_first_offer = Histogram(
            "hitl_time_to_first_offer_seconds",
            "From the request to the step's first offer, broadcast or sequential (once per "
            "step).", buckets=WAIT_BUCKETS, registry=None)
        self.agent_events = _Children(Counter(
            "hitl_agent_events", "Claim, reject and close tasks by outcome.",
            ["action", "outcome"], registry=None))
        self.tasks = _Children(Counter(
            "hitl_tasks", "Task runs by task name and final state.", ["task", "state"],
            registry=None))
        self.webhook_attempts = _Children(Counter(
            "hitl_webhook_attempts", "Webhook exit POSTs by outcome: delivered (a 2xx), "
            "failed (another status, a timeout, a refused connection; retried), gave_up (the "
            "last one, 24 hours after the exit).", ["outcome"], registry=None))
        self.task_duration = _Children(Histogram(
            "hitl_task_duration_seconds", "Task run time, by task name.", ["task"],
            buckets=TASK_BUCKETS, registry=None))


_worker_metrics: _WorkerMetrics | None = None


def _m() -> _WorkerMetrics:
    global _worker_metrics
    if _worker_metrics is None:
        _worker_metrics = _WorkerMetrics()
    return _worker_metrics


def _label(value: Any) -> str:
    """A bounded label value: anything unexpected is ``other``, never a new series per id."""
    return value if isinstance(value, str) and _LABEL_VALUE.match(value) else "other"


def exit_reason(exit: str | None, merge_field: Mapping[str, Any] | None) -> str:
    merge_field = merge_field or {}
    if exit == "not_claimed":
        return _label(merge_field.get("reason"))
    if exit == "error":
        error = merge_field.get("error")
        return _label(error.get("code") if isinstance(error, Mapping) else None)
    return ""


def count_step_ended(*, state: str, exit: str | None, merge_field: Mapping[str, Any] | None,
                     dispatched_at: datetime | None, now: datetime) -> None:
    """Count an execution that left ``waiting`` (or failed at once). Called by the task layer
    once the transaction that ended it committed (never for one rolled back and retried)."""
    m = _m()
    if exit is None:
        if state == "cancelled":
            m.cancellations.inc()
        return
    m.exits(exit, exit_reason(exit, merge_field)).inc()
    if dispatched_at is not None:
        waited = max(0.0, (now - dispatched_at).total_seconds())
        m.step_duration(exit).observe(waited)
        if exit == "claimed":
            m.time_to_claim.observe(waited)


def count_timer_fired(*, kind: str, due_at: datetime, now: datetime) -> None:
    """Observe a deadline's lateness (after the transaction that fired it committed)."""
    context = task_context.current()
    via = TIMER_VIA.get(context.task_name, "other") if context else "other"
    lateness = max(0.0, (now - due_at).total_seconds())
    _m().timer_lateness(_label(kind), via).observe(lateness)


def count_webhook_attempt(outcome: str) -> None:
    """Count a webhook exit POST (``delivered``, ``failed`` or ``gave_up``), once recorded."""
    _m().webhook_attempts(_label(outcome)).inc()


def count_offers(*, change: str, reason: str, count: int = 1) -> None:
    """Count offers made or withdrawn (after the transaction that wrote them committed)."""
    # status_not_allowed:<status> keeps its status: three values at most.
    _m().offers(_label(change), _label(reason)).inc(count)


def count_first_offer(*, requested_at: datetime, now: datetime) -> None:
    """Observe a step's time to its first offer (once per step, after commit)."""
    _m().time_to_first_offer.observe(max(0.0, (now - requested_at).total_seconds()))


def count_task_run(context: task_context.TaskContext | None, name: str, state: str | None,
                   retval: Any) -> None:
    """Count a finished run of task ``name`` (``hitl.*`` only): its final state, its run time
    from ``context.started`` (the context the run started with), and a claim's, reject's,
    close's or wake-up's outcome. Called once per task by :mod:`hitl_workers.observe.task_run`.
    """
    if not name.startswith("hitl."):
        return
    m = _m()
    m.tasks(name, _label(state)).inc()
    if context is not None:
        m.task_duration(name).observe(time.perf_counter() - context.started)
    action = AGENT_EVENT_TASKS.get(name)
    if action is not None:
        if isinstance(retval, dict):
            m.agent_events(action, _label(retval.get("outcome"))).inc()
    elif name == "hitl.fire_timer" and state == "SUCCESS":
        m.wakeups(_label(retval)).inc()


# --- where worker processes keep their values -----------------------------------------------

def use_multiprocess(path: Path) -> None:
    """Keep this process's (and its future children's) values in files under ``path``.

    prometheus-client chooses between in-memory and file-backed values when it is first
    imported, from ``PROMETHEUS_MULTIPROC_DIR``; a worker learns its node name, hence its
    directory, only later, so the choice is made again here, before any value exists.
    """
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    if not getattr(values.ValueClass, "_multiprocess", False):
        values.ValueClass = values.get_value_class()


def prepare_node_dir(path: Path) -> None:
    """Create ``path`` empty: the files of a previous run of this node are gone."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)


@worker_init.connect
def _on_worker_init(sender: Any = None, **_: Any) -> None:
    settings = get_settings()
    node = str(getattr(sender, "hostname", None) or f"pid-{os.getpid()}")
    path = node_dir(settings.effective_metrics_dir, node)
    try:
        prepare_node_dir(path)
    except OSError as exc:
        log.error("metrics: cannot use %s (%r); this worker's business metrics are off. Set "
                  "HITL_METRICS_DIR to a writable directory.", path, exc)
        return
    use_multiprocess(path)
    global _node
    _node = (node, path)


_node: tuple[str, Path] | None = None
_server: Any = None


@worker_ready.connect
def _serve(**_: Any) -> None:
    settings = get_settings()
    if settings.metrics_port is None or _node is None:
        return
    node, path = _node
    registry = CollectorRegistry()
    registry.register(NodesCollector(path.parent, nodes=[node]))
    global _server
    try:
        _server, _thread = start_http_server(settings.metrics_port, settings.metrics_address,
                                             registry=registry)
    except OSError as exc:
        log.error("metrics: cannot serve on %s:%s: %r", settings.metrics_address,
                  settings.metrics_port, exc)
        return
    log.info("metrics of %s on http://%s:%s/metrics", node, settings.metrics_address,
             settings.metrics_port)


@worker_shutdown.connect
def _stop_serving(**_: Any) -> None:
    if _server is not None:
        _server.shutdown()


@worker_process_shutdown.connect
def _process_gone(pid: int | None = None, **_: Any) -> None:
    # Removes this process's files for "live" gauges only; its counters must keep counting.
    if _node is not None:
        with contextlib.suppress(OSError):
            mark_process_dead(pid or os.getpid(), str(_node[1]))
