"""Worker and beat logs: every line from task code carries the task id and the step's ids.

Celery sets up its handlers, then sends ``after_setup_logger`` (the root logger, which our
modules' loggers reach) and ``after_setup_task_logger`` (``celery.task``). Both get a filter
that adds the running task's ``task_id``, ``task_name``, ``execution_id`` and
``conversation_id`` (:mod:`hitl_workers.observe.task_context`), and either

* JSON, one object a line, when ``HITL_LOG_JSON=true``: ``ts``, ``level``, ``logger``,
  ``process``, ``message``, the ids that are known, ``exc_info`` for a traceback; or
* Celery's own text format with `` execution_id=… conversation_id=… task_id=…`` appended.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from celery.signals import after_setup_logger, after_setup_task_logger
from celery.utils.log import ColorFormatter

from hitl_workers.observe import task_context
from hitl_workers.settings import get_settings

TEXT_SUFFIX = "%(hitl_ids)s"
TEXT_FIELDS = ("execution_id", "conversation_id", "task_id")


class TaskContextFilter(logging.Filter):
    """Puts the running task's ids on every record (``record.hitl`` and ``record.hitl_ids``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = task_context.current()
        fields = context.fields() if context is not None else _received(record)
        record.hitl = fields
        record.hitl_ids = "".join(f" {k}={fields[k]}" for k in TEXT_FIELDS if k in fields)
        return True


def _received(record: logging.LogRecord) -> dict[str, str]:
    """The worker's main process logs each message it receives with the task's id and name
    in ``record.data`` (outside any task): keep them."""
    data = getattr(record, "data", None)
    if not isinstance(data, dict) or not isinstance(data.get("id"), str):
        return {}
    return {"task_id": data["id"], "task_name": str(data.get("name", ""))}


class JsonFormatter(logging.Formatter):
    """One JSON object a line: easy for Loki, Elasticsearch or ``jq`` to index by id."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "process": record.processName,
            "pid": record.process,
            "message": record.getMessage(),
        }
        fields = getattr(record, "hitl", None)
        if fields is None:  # a handler this module did not set up
            context = task_context.current()
            fields = context.fields() if context is not None else {}
        entry.update(fields)
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure(logger: logging.Logger, fmt: str | None, colorize: bool, *,
              as_json: bool) -> None:
    """Give each of ``logger``'s handlers the context filter and the chosen format."""
    for handler in logger.handlers:
        if not any(isinstance(f, TaskContextFilter) for f in handler.filters):
            handler.addFilter(TaskContextFilter())
        if as_json:
            handler.setFormatter(JsonFormatter())
        elif fmt and isinstance(handler.formatter, ColorFormatter) \
                and TEXT_SUFFIX not in fmt:
            # The same class Celery chose (its task formatter adds task_name and task_id).
            handler.setFormatter(type(handler.formatter)(fmt + TEXT_SUFFIX, use_color=colorize))


@after_setup_logger.connect
@after_setup_task_logger.connect
def _on_setup(logger: logging.Logger | None = None, format: str | None = None,
              colorize: bool = False, **_: Any) -> None:
    if logger is not None:
        configure(logger, format, bool(colorize), as_json=get_settings().log_json)
