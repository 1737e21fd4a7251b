"""Task results through hitl_workers/tasks/results.py against a real Redis: what a client
reads (the key, its JSON, its expiry, the PUBLISH a waiting ``AsyncResult.get`` listens to)
is what Celery's own Redis backend writes; a stored success is never overwritten."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import states
from celery.backends.redis import RedisBackend
from celery.result import AsyncResult
from celery.utils.saferepr import saferepr

from hitl_workers.app import app
from hitl_workers.tasks.results import ResultBackend, result_repr

ANSWER = {"outcome": "claimed", "execution_id": "e-1", "state": "exited", "exit": "claimed",
          "merge_field": {"addClaimedBy": "ann"}, "n": 1.5, "none": None, "ok": True}


@pytest.fixture
def results(redis_urls: dict[str, str]) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_urls["result_backend"])
    yield client
    client.close()


def stored(results: redis.Redis, task_id: str) -> dict[str, Any]:
    raw = results.get(f"celery-task-meta-{task_id}")
    assert raw is not None
    return dict(json.loads(raw))


def test_the_app_stores_results_through_it(redis_urls):
    assert isinstance(app.backend, ResultBackend)
    assert app.backend.url == redis_urls["result_backend"]


def test_a_result_is_what_celerys_backend_stores_and_clients_read_it(results, redis_urls):
    ours, celerys = f"ours-{uuid.uuid4().hex}", f"celery-{uuid.uuid4().hex}"
    pubsub = results.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(f"celery-task-meta-{ours}")
    pubsub.get_message(timeout=1.0)
    app.backend.store_result(ours, ANSWER, states.SUCCESS)
    RedisBackend(app=app, url=redis_urls["result_backend"]).store_result(
        celerys, ANSWER, states.SUCCESS)
    published = pubsub.get_message(timeout=2.0)
    pubsub.close()
    mine, theirs = stored(results, ours), stored(results, celerys)
    assert published is not None and json.loads(published["data"]) == mine
    assert mine.pop("task_id") == ours and theirs.pop("task_id") == celerys
    mine_done, theirs_done = mine.pop("date_done"), theirs.pop("date_done")
    assert mine_done[19:] != "" and mine_done[-6:] == theirs_done[-6:] == "+00:00"
    assert len(mine_done) == len(theirs_done)
    assert mine == theirs
    assert list(mine) == list(theirs)  # the same JSON, key for key
    ttl = results.ttl(f"celery-task-meta-{ours}")
    assert app.conf.result_expires - 5 <= ttl <= app.conf.result_expires
    assert AsyncResult(ours, app=app).get(timeout=5) == ANSWER


def test_a_stored_success_is_never_overwritten(results):
    task_id = f"twice-{uuid.uuid4().hex}"
    app.backend.store_result(task_id, ANSWER, states.SUCCESS)
    app.backend.store_result(task_id, {"outcome": "other"}, states.SUCCESS)
    app.backend.store_result(task_id, None, states.RETRY)
    assert stored(results, task_id)["result"] == ANSWER
    retried = f"retried-{uuid.uuid4().hex}"
    app.backend.store_result(retried, None, states.RETRY)
    app.backend.store_result(retried, ANSWER, states.SUCCESS)
    assert stored(results, retried)["status"] == states.SUCCESS


def test_a_failure_is_stored_for_its_own_expiry(results):
    task_id = f"failed-{uuid.uuid4().hex}"
    app.backend.mark_as_failure(task_id, ValueError("boom"))
    meta = stored(results, task_id)
    assert meta["status"] == states.FAILURE
    assert meta["result"]["exc_type"] == "ValueError"
    assert 0 < results.ttl(f"celery-task-meta-{task_id}") <= app.backend.failure_expires
    with pytest.raises(ValueError, match="boom"):
        AsyncResult(task_id, app=app).get(timeout=5)


def test_a_forgotten_script_is_loaded_again(results):
    app.backend.store_result(f"a-{uuid.uuid4().hex}", ANSWER, states.SUCCESS)
    results.script_flush()
    task_id = f"b-{uuid.uuid4().hex}"
    app.backend.store_result(task_id, ANSWER, states.SUCCESS)
    assert stored(results, task_id)["result"] == ANSWER


def test_the_result_repr_is_celerys_saferepr():
    assert result_repr(ANSWER, 1024) == saferepr(ANSWER, 1024)
    long = {"outcome": "x", "text": "y" * 5000}
    assert result_repr(long, 1024) == saferepr(long, 1024)


def test_a_result_meta_is_celerys_field_for_field(redis_urls):
    """Parent and group ids, children, no date before the task is done: as Celery builds it."""
    from types import SimpleNamespace

    celerys = RedisBackend(app=app, url=redis_urls["result_backend"])
    request = SimpleNamespace(group="g-1", parent_id="p-1", children=[], id="t-1")
    for state in (states.SUCCESS, states.RETRY, states.STARTED, states.FAILURE):
        mine = app.backend._get_result_meta(ANSWER, state, None, request)
        theirs = celerys._get_result_meta(ANSWER, state, None, request)
        assert (mine.pop("date_done") is None) == (theirs.pop("date_done") is None)
        assert mine == theirs and list(mine) == list(theirs)
