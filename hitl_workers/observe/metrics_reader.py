"""Reading the business metrics (:mod:`hitl_workers.observe.metrics`) for Prometheus.

:class:`NodesCollector` merges the files that worker processes wrote, one node at a time, and
labels each series with its node; :class:`DatabaseCollector` computes the gauges from the
database at each scrape. :func:`register` adds both to a registry: the gateway's ``/metrics``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from hitl_workers.clock import utcnow
from hitl_workers.domain.names import TIMER_KINDS
from hitl_workers.settings import Settings, get_settings
from hitl_workers.store import overview
from hitl_workers.store.db import read_only

log = logging.getLogger(__name__)


def node_dir(base: Path, node: str) -> Path:
    """The directory of one worker node (``requests@host-1``) under ``base``."""
    return base / re.sub(r"[^A-Za-z0-9@._-]", "_", node)


class NodesCollector(Collector):
    """The worker processes' values under ``base``, merged per node, labelled ``node``."""

    def __init__(self, base: Path, nodes: Iterable[str] | None = None) -> None:
        self.base = base
        self.nodes = list(nodes) if nodes is not None else None

    def _dirs(self) -> list[Path]:
        if self.nodes is not None:
            return [node_dir(self.base, n) for n in self.nodes]
        try:
            return sorted(p for p in self.base.iterdir() if p.is_dir())
        except OSError:
            return []

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        for path in self._dirs():
            for metric in _merge(_readable(path.glob("*.db"))):
                family = families.get(metric.name)
                if family is None:
                    family = families[metric.name] = Metric(
                        metric.name, metric.documentation, metric.type)
                family.samples.extend(
                    s._replace(labels={**s.labels, "node": path.name}) for s in metric.samples)
        yield from families.values()

    def describe(self) -> list[Metric]:
        return []  # series appear as workers write them


def _readable(files: Iterable[Path]) -> list[str]:
    """The files with something to read. prometheus-client creates a process's file before it
    sizes it, so one is empty for a moment, and for good when its process is killed in that
    moment (a ``kill -9``, an OOM kill): reading it raises ``struct.error`` and the whole merge
    with it, every node's counters lost to one file (prometheus/client_python issue 1199). An
    empty file has nothing recorded yet; it is left out."""
    found = []
    for file in files:
        try:
            if file.stat().st_size > 0:
                found.append(str(file))
        except OSError:
            continue  # gone since the directory was listed: its process's files were removed
    return found


def _merge(files: list[str]) -> Iterable[Metric]:
    """The files' values merged; a file that cannot be read is left out, with a warning,
    rather than taking every other file's values with it."""
    try:
        return MultiProcessCollector.merge(files, accumulate=True)
    except Exception:  # any read error: find the file, keep the rest
        good = []
        for file in files:
            try:
                list(MmapedDict.read_all_values_from_file(file))  # it reads lazily
            except Exception as exc:
                log.warning("metrics: left out %s, which cannot be read: %r", file, exc)
            else:
                good.append(file)
        return MultiProcessCollector.merge(good, accumulate=True)


class DatabaseCollector(Collector):
    """Gauges read from the database at each scrape (:mod:`hitl_workers.store.overview`)."""

    def describe(self) -> list[Metric]:
        return []  # never query the database at registration

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("hitl_database_up",
                               "1 when the database answered this scrape's queries.")
        try:
            with read_only() as conn:
                found = overview.load(conn, utcnow(), late_after_s=0)
        except Exception as exc:
            log.warning("metrics: database gauges unavailable: %r", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from database_gauges(found)


def database_gauges(found: overview.Overview) -> Iterator[Metric]:
    def gauge(name: str, doc: str, value: float | None) -> GaugeMetricFamily:
        family = GaugeMetricFamily(name, doc)
        if value is not None:
            family.add_metric([], value)
        return family

    def by(name: str, doc: str, label: str, counts: Mapping[str, int],
           known: Iterable[str]) -> GaugeMetricFamily:
        family = GaugeMetricFamily(name, doc, labels=[label])
        for key in sorted({*known, *counts}):
            family.add_metric([key], counts.get(key, 0))
        return family

    yield gauge("hitl_executions_waiting", "Step executions waiting for an agent.",
                found.waiting)
    yield gauge("hitl_executions_oldest_waiting_seconds",
                "Age of the oldest waiting execution, since its dispatch (0: none waiting).",
                found.age_s(found.oldest_waiting_since) or 0.0)
    yield by("hitl_timers_pending", "Deadlines not yet fired or cancelled, by kind.", "kind",
             found.timers_pending, TIMER_KINDS)
    yield gauge("hitl_timers_overdue",
                "Pending deadlines already due (normal for an instant; a growing number "
                "means nothing is firing them).", found.timers_overdue)
    yield gauge("hitl_timers_oldest_overdue_seconds",
                "How long the most overdue pending deadline has been due (0: none).",
                found.age_s(found.oldest_overdue_due_at) or 0.0)
    yield by("hitl_outbox_unsent", "Outbox messages not yet published, by kind.", "kind",
             found.outbox_unsent, ("exit", "notify"))
    yield gauge("hitl_outbox_failing", "Unsent outbox messages whose last publish failed.",
                found.outbox_failing)
    yield gauge("hitl_outbox_oldest_unsent_seconds",
                "Age of the oldest unsent outbox message (0: none).",
                found.age_s(found.oldest_unsent_at) or 0.0)
    yield gauge("hitl_reconciler_heartbeat_age_seconds",
                "Since the reconciler's last tick (absent until its first).",
                found.age_s(found.heartbeat_at))
    yield gauge("hitl_dead_letters", "Messages kept as dead letters (refused or unreadable).",
                found.dead_letters)


def register(registry: CollectorRegistry, settings: Settings | None = None) -> None:
    """Add the business metrics to ``registry``: every worker node's counters under this
    host's metrics directory and the database gauges (what the gateway's /metrics serves)."""
    settings = settings or get_settings()
    registry.register(NodesCollector(settings.effective_metrics_dir))
    registry.register(DatabaseCollector())
