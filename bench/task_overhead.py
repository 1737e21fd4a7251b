"""What the worker pool spends around a task, beyond the task's own code: Celery's tracer, the
result's store and our signal handlers (metrics, log context), in this one process.

    .venv/bin/python -m bench.task_overhead [--steps 500] [--profile] [--without-hooks]

Runs whole claimed steps (``hitl.request_assistance`` then ``hitl.claim``) the way a prefork
pool process runs them: the message body decoded and handed to the task's tracer
(``celery.app.trace.fast_trace_task``, after ``setup_worker_optimizations``), so
``task_prerun``/``task_postrun`` fire, the result is stored in Redis and the metrics are kept
in multiprocess files, as in a worker. Prints this process's CPU per step and, timed around
each signal's receivers, the CPU of the handlers alone. ``--without-hooks`` disconnects this
project's per-task receivers (the figure without them, for a before/after of the whole);
``--profile`` adds a cProfile (``time.process_time``) of the loop.

Like :mod:`bench.cost`, a per-process figure: the machine's load moves it less than a
whole-machine one, but it is CPU time, not a count; compare runs made back to back.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import tempfile
import time
import uuid
import weakref
from pathlib import Path
from typing import Any

from bench.common import configure, flush_redis, fresh_database

HOSTNAME = "bench-overhead@localhost"


class _TimedSignal:
    """Wraps a Celery signal's ``send`` so the CPU its receivers take is summed."""

    def __init__(self, signal: Any) -> None:
        self.signal = signal
        self.cpu = 0.0
        self.calls = 0
        self._send = signal.send

        def send(*args: Any, **kwargs: Any) -> Any:
            started = time.process_time()
            try:
                return self._send(*args, **kwargs)
            finally:
                self.cpu += time.process_time() - started
                self.calls += 1

        signal.send = send

    def reset(self) -> None:
        self.cpu, self.calls = 0.0, 0


def _request(name: str, task_id: str, kwargs: dict[str, Any], queue: str) -> dict[str, Any]:
    """The request a prefork pool process gets for a protocol-2 message (its headers, the
    delivery info and properties), before the tracer adds the arguments."""
    return {
        "lang": "py", "task": name, "id": task_id, "shadow": None, "eta": None,
        "expires": None, "group": None, "group_index": None, "retries": 0,
        "timelimit": [None, None], "root_id": task_id, "parent_id": None,
        "argsrepr": "()", "kwargsrepr": repr(kwargs)[:1024], "origin": "bench@localhost",
        "ignore_result": False, "replaced_task_nesting": 0, "stamped_headers": None,
        "stamps": {}, "reply_to": str(uuid.uuid4()), "correlation_id": task_id,
        "delivery_info": {"exchange": queue, "routing_key": queue, "priority": 0,
                          "redelivered": False},
        "properties": {"correlation_id": task_id, "reply_to": None, "delivery_mode": 2,
                       "priority": 0},
    }


def _as_a_pool_process(*, hooks: bool) -> dict[str, _TimedSignal]:
    """Set this process up as a worker sets up a prefork pool process: the hooks imported,
    metric values in this process's files (``worker_init``), the tracers built with the
    worker's optimisations (the pool's start-up). Returns the timed task signals."""
    from celery import signals
    from celery._state import _set_task_join_will_block
    from celery.app import trace

    from hitl_workers.app import HOOK_MODULES, app
    from hitl_workers.observe import metrics

    app.loader.import_default_modules()
    for module in HOOK_MODULES:
        __import__(module)
    metrics_dir = Path(tempfile.mkdtemp(prefix="hitl-overhead-")) / "node"
    metrics.prepare_node_dir(metrics_dir)
    metrics.use_multiprocess(metrics_dir)
    _set_task_join_will_block(True)
    trace.setup_worker_optimizations(app, HOSTNAME)
    for name, task in app.tasks.items():  # as celery.concurrency.prefork.process_initializer
        task.__trace__ = trace.build_tracer(name, task, app.loader, HOSTNAME, app=app)
    if not hooks:
        for signal in (signals.task_prerun, signals.task_postrun, signals.task_success,
                       signals.task_failure, signals.task_retry):
            for receiver in _receivers(signal):
                if getattr(receiver, "__module__", "").startswith("hitl_workers."):
                    signal.disconnect(receiver)
    timed = {name: _TimedSignal(getattr(signals, name))
             for name in ("task_prerun", "task_postrun", "task_success")}
    # The tracer calls the send functions its module bound at import.
    trace.send_prerun = signals.task_prerun.send
    trace.send_postrun = signals.task_postrun.send
    trace.send_success = signals.task_success.send
    return timed


def run_steps(steps: int, *, hooks: bool = True, profiler: cProfile.Profile | None = None
              ) -> dict[str, float]:
    """``steps`` claimed steps through the tracer; CPU seconds per step, by part."""
    from celery.app import trace

    timed = _as_a_pool_process(hooks=hooks)
    from hitl_workers.tasks import agents as agent_tasks

    agent_tasks.upsert_agent.run(agent_id="overhead-agent", status="available",
                                 rule_groups=[["team:overhead"]])
    reply = {"task": "flow.exit", "queue": f"flow-overhead-{uuid.uuid4().hex[:6]}"}

    def run(name: str, queue: str, kwargs: dict[str, Any]) -> Any:
        task_id = str(uuid.uuid4())
        body = json.dumps([[], kwargs, {"callbacks": None, "errbacks": None, "chain": None,
                                        "chord": None}])
        failed, result, _ = trace.fast_trace_task(
            name, task_id, _request(name, task_id, kwargs, queue), body, "application/json",
            "utf-8")
        if failed:
            raise SystemExit(f"{name} failed: {result}")
        return result

    def one_step() -> None:
        execution_id = f"overhead-{uuid.uuid4().hex}"
        run("hitl.request_assistance", "hitl.requests", {
            "execution_id": execution_id, "conversation_id": f"conv-{execution_id}",
            "conversation": {"tags": ["team:overhead"], "contact": {"name": "Ann"}},
            "settings": {"timeout": "5m", "popup": {"text": "**Overhead** step",
                                                    "timer": {"auto_action_timeout": "2m"}}},
            "reply_to": reply})
        answer = run("hitl.claim", "hitl.events",
                     {"execution_id": execution_id, "agent_id": "overhead-agent"})
        if "'claimed'" not in str(answer):
            raise SystemExit(f"claim answered {answer}")

    for _ in range(20):  # warm up: statement caches, connections, metric files
        one_step()
    for t in timed.values():
        t.reset()
    if profiler:
        profiler.enable()
    cpu = time.process_time()
    for _ in range(steps):
        one_step()
    cpu = time.process_time() - cpu
    if profiler:
        profiler.disable()
    out = {"step": cpu / steps}
    out.update({name: t.cpu / steps for name, t in timed.items()})
    return out


def _receivers(signal: Any) -> list[Any]:
    """The live receiver functions of a Celery signal."""
    found = []
    for _key, ref in list(signal.receivers or []):
        receiver = ref() if isinstance(ref, weakref.ReferenceType) else ref
        if receiver is not None:
            found.append(receiver)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--profile", action="store_true", help="print a cProfile of the loop")
    parser.add_argument("--without-hooks", action="store_true",
                        help="disconnect this project's task_prerun/postrun/success receivers")
    args = parser.parse_args()
    configure()
    fresh_database()
    flush_redis()
    profiler = cProfile.Profile(time.process_time) if args.profile else None
    cpu = run_steps(args.steps, hooks=not args.without_hooks, profiler=profiler)
    print(f"per claimed step ({args.steps} steps, two tasks each, through the tracer): "
          f"{cpu['step'] * 1000:.3f} ms CPU in this process; signal handlers: " + ", ".join(
              f"{name} {cpu[name] * 1e6:.1f} µs" for name in ("task_prerun", "task_postrun",
                                                              "task_success")))
    if profiler:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(45)
        print(out.getvalue())


if __name__ == "__main__":
    main()
