"""Task results: the same JSON in the same Redis key and channel, in one round trip.

Celery's Redis result backend stores a task's result in two round trips and five commands: a
``GET`` of the key (so that a copy of a task that runs again after its twin succeeded cannot
overwrite the success), then ``MULTI``/``SETEX``/``PUBLISH``/``EXEC``. Every
``hitl.request_assistance`` and ``hitl.claim`` pays it (their answers are read: by flow engines,
the gateway, clients in any language), which made it about a tenth of a worker pool process's
time per claimed step (docs/benchmarks.md). :class:`ResultBackend` runs the same check and
the same writes in one script, atomically: the value (``encode(meta)``, byte for byte what
Celery writes), the key (``celery-task-meta-<id>``), the expiry (``result_expires``; a failure
``result_failure_expires``), the ``PUBLISH`` on the key's channel that a waiting
``AsyncResult.get`` listens to, and "a stored SUCCESS is never overwritten". Reading is
Celery's own, unchanged. Used when the result backend is Redis (``redis://``, ``rediss://``):
:mod:`hitl_workers.app` names it; any other backend is Celery's as configured.

Also here, for the same pool processes: :func:`result_repr`. After a task succeeds Celery's
tracer computes ``saferepr(result, 1024)`` for the ``task-succeeded`` event and the log line
(about 130 µs for a claim's answer, ``repr`` takes 5 µs and gives the same text when it fits).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from celery import states
from celery.app import trace
from celery.backends.base import BackendStoreError
from celery.backends.redis import RedisBackend
from celery.utils.saferepr import saferepr

# ARGV: the encoded meta, the expiry in seconds (0: none). Returns 1 when stored, 0 when a
# SUCCESS was there already. pcall: a value that is not JSON (another serializer wrote it)
# is not a SUCCESS this backend could read either, as in Celery's own check.
STORE_SCRIPT = """
local current = redis.call('GET', KEYS[1])
if current then
  local ok, meta = pcall(cjson.decode, current)
  if ok and type(meta) == 'table' and meta['status'] == 'SUCCESS' then return 0 end
end
local expires = tonumber(ARGV[2])
if expires and expires > 0 then
  redis.call('SETEX', KEYS[1], expires, ARGV[1])
else
  redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('PUBLISH', KEYS[1], ARGV[1])
return 1
"""


class ResultBackend(RedisBackend):  # type: ignore[misc]
    """Celery's Redis result backend, storing a result in one round trip (module docstring)."""

    _store_script: Any = None
    _plain_meta: bool | None = None

    def _get_result_meta(self, result: Any, state: str, traceback: Any, request: Any,
                         format_date: bool = True, encode: bool = False) -> dict[str, Any]:
        """Celery's meta, field for field, without its per-result configuration lookup and
        time-zone conversion (a third of the store's CPU) when neither can change it: no
        extended results, the app's time zone UTC."""
        if self._plain_meta is None:
            conf = self.app.conf
            self._plain_meta = (not conf.find_value_for_key("extended", "result")
                                and str(conf.timezone or "UTC") == "UTC")
        if not self._plain_meta or not format_date:
            meta: dict[str, Any] = super()._get_result_meta(
                result, state, traceback, request, format_date=format_date, encode=encode)
            return meta
        meta = {
            "status": state,
            "result": result,
            "traceback": traceback,
            "children": self.current_task_children(request),
            "date_done": (datetime.now(UTC).isoformat() if state in self.READY_STATES
                          else None),
        }
        if request and getattr(request, "group", None):
            meta["group_id"] = request.group
        if request and getattr(request, "parent_id", None):
            meta["parent_id"] = request.parent_id
        return meta

    def _store_result(self, task_id: Any, result: Any, state: str, traceback: Any = None,
                      request: Any = None, **kwargs: Any) -> Any:
        meta = self._get_result_meta(result=result, state=state, traceback=traceback,
                                     request=request)
        meta["task_id"] = task_id.decode() if isinstance(task_id, bytes) else task_id
        value = self.encode(meta)
        if isinstance(value, str) and len(value) > self._MAX_STR_VALUE_SIZE:
            raise BackendStoreError("value too large for Redis backend", state=state,
                                    task_id=task_id)
        expires = self.failure_expires if state == states.FAILURE else self.expires
        # Connection errors are retried as Celery's ``set`` retries them (result_backend_*
        # retry policy); the script is idempotent, so a retry after a lost answer is harmless.
        self.ensure(self._run_store, (self.get_key_for_task(task_id), value, expires or 0))
        return result

    def _run_store(self, key: Any, value: Any, expires: int | float) -> Any:
        script = self._store_script
        if script is None or script.registered_client is not self.client:
            # redis-py's Script sends EVALSHA and, when Redis does not know the script (first
            # use, a restart, SCRIPT FLUSH), loads it and sends it again.
            script = self._store_script = self.client.register_script(STORE_SCRIPT)
        return script(keys=[key], args=[value, int(expires)])


_saferepr = saferepr


def result_repr(value: Any, maxlen: int) -> str:
    """Celery's ``saferepr(value, maxlen)``: ``repr`` when it fits (the same text for the
    JSON-like answers tasks return), Celery's own otherwise."""
    try:
        text = repr(value)
    except Exception:  # a result whose repr fails: saferepr copes
        return str(_saferepr(value, maxlen))
    return text if len(text) <= maxlen else str(_saferepr(value, maxlen))


# The tracer looks ``saferepr`` up in its module at each call (celery/app/trace.py: ``Rstr =
# saferepr(R, resultrepr_maxsize)``), only for the result's repr; nothing else there uses it.
trace.saferepr = result_repr
