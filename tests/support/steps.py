"""Building requests and reading the system's state, for every tier that runs a system.

The readers go straight to the database the workers write (the test process shares their
configuration), so a test asserts on what the system stored, not on what a task said it did.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa

from hitl_workers.clock import utcnow
from hitl_workers.store import repo
from hitl_workers.store.db import transaction
from hitl_workers.store.tables import dead_letters


def request(team: str, reply_to: dict[str, str], *, execution_id: str | None = None,
            conversation_id: str | None = None, tags: list[str] | None = None,
            **settings: Any) -> dict[str, Any]:
    execution_id = execution_id or f"exec-{uuid.uuid4().hex[:12]}"
    return {
        "execution_id": execution_id,
        "conversation_id": conversation_id or f"conv-{uuid.uuid4().hex[:12]}",
        "flow_id": "flow-1",
        "step_id": "step-1",
        "conversation": {"tags": tags if tags is not None else [team],
                         "contact": {"id": "contact-1", "name": "Ada Lovelace"}},
        "settings": settings,
        "reply_to": reply_to,
    }


# --- reading the database -------------------------------------------------------------------

def execution(execution_id: str) -> Any:
    with transaction() as conn:
        return repo.get_execution(conn, execution_id)


def conversation(conversation_id: str) -> Any:
    with transaction() as conn:
        return repo.get_conversation(conn, conversation_id)


def audit_kinds(execution_id: str) -> list[str]:
    with transaction() as conn:
        return [row.kind for row in repo.audit_trail(conn, execution_id)]


def audit_trail(execution_id: str) -> list[Any]:
    with transaction() as conn:
        return repo.audit_trail(conn, execution_id)


def outbox_rows(execution_id: str, kind: str | None = None) -> list[Any]:
    with transaction() as conn:
        rows = repo.outbox_for_execution(conn, execution_id)
    return [r for r in rows if kind is None or r.kind == kind]


def dead_letters_for(task_id: str) -> list[Any]:
    with transaction() as conn:
        return conn.execute(sa.select(dead_letters).where(
            dead_letters.c.task_id == task_id)).all()


def eventually(check: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Poll ``check`` until it returns something truthy; its last value otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def stays(check: Callable[[], Any], seconds: float, interval: float = 0.1) -> bool:
    """True when ``check`` holds on every poll for ``seconds`` (used to prove an absence)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not check():
            return False
        time.sleep(interval)
    return bool(check())


# --- sending at once ------------------------------------------------------------------------

def call_at_once(app: Any, calls: Sequence[tuple[str, dict[str, Any]]],
                 timeout: float = 30.0) -> list[dict[str, Any]]:
    """Send every ``(task, kwargs)`` from its own thread, released together by a barrier, and
    return the results in the order of ``calls``.

    The app's producer pool is thread-safe and its result backend is thread-local in
    Celery 5, so each thread sends and waits on its own connection.
    """
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)
    errors: list[BaseException] = []

    def run(index: int, task: str, kwargs: dict[str, Any]) -> None:
        try:
            app.backend.client.ping()  # connect before the barrier, not after it
            barrier.wait(timeout=timeout)
            results[index] = app.send_task(task, kwargs=kwargs).get(timeout=timeout)
        except BaseException as exc:  # reported to the test below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i, task, kwargs))
               for i, (task, kwargs) in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=timeout + 5)
    if errors:
        raise errors[0]
    return results


# --- raw messages, as a buggy or hostile client would send them -----------------------------

def publish_raw(broker_url: str, queue: str, body: bytes | str, *, task: str | None,
                content_type: str = "application/json", task_id: str | None = None,
                extra_headers: dict[str, Any] | None = None) -> str:
    """Publish a Celery protocol-2 message whose body is sent as given (never re-encoded).

    ``task=None`` leaves out the task header. Returns the message's task id.
    """
    from kombu import Connection

    from hitl_workers.ops.flow_engine import queue_for

    task_id = task_id or str(uuid.uuid4())
    headers: dict[str, Any] = {"lang": "py", "id": task_id, "root_id": task_id,
                               "parent_id": None, "group": None, "retries": 0, "eta": None,
                               "expires": None, "argsrepr": "(raw)", "kwargsrepr": "(raw)"}
    if task is not None:
        headers["task"] = task
    headers.update(extra_headers or {})
    target = queue_for(broker_url, queue)  # declared as the workers declare it
    with Connection(broker_url) as conn:
        producer = conn.Producer()
        producer.publish(body, exchange=target.exchange, routing_key=queue, declare=[target],
                         headers=headers, content_type=content_type, content_encoding="utf-8",
                         correlation_id=task_id)
    return task_id


def protocol2_body(kwargs_json: str, args_json: str = "[]") -> str:
    """A protocol-2 body ``[args, kwargs, embed]`` built from already-encoded JSON parts."""
    embed = json.dumps({"callbacks": None, "errbacks": None, "chain": None, "chord": None})
    return f"[{args_json},{kwargs_json},{embed}]"


def add_agents(team: str, count: int) -> list[str]:
    """``count`` available agents who see ``team``'s conversations, written through the
    directory service in this process (no worker needed); their ids, sorted."""
    from hitl_workers.services import agents as directory

    ids = sorted(f"agent-{uuid.uuid4().hex[:10]}" for _ in range(count))
    with transaction() as conn:
        for agent_id in ids:
            directory.upsert_agent(conn, directory.UpsertAgentIn(
                agent_id=agent_id, status="available", rule_groups=[[team]]), utcnow())
    return ids
