"""``/openapi.json`` as clients generated from it need it (issue 11.4).

FastAPI types an optional body as ``anyOf: [EventIn, null]``; a generated client then sends
its "unset" marker as the body and crashes. The claim / reject / close body is described here
as what it is: an ``EventIn`` object in a request body that is not required, so a generated
client may call them with no body at all.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

OPTIONAL_EVENT_BODY = {
    "required": False,
    "description": 'Optional: {"event_id": "…"} makes a retry safe (a repeat answers the '
                   "first answer verbatim).",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/EventIn"}}},
}
EVENT_PATHS = [f"/executions/{{execution_id}}/{action}" for action in ("claim", "reject",
                                                                       "close")]


def install(app: FastAPI) -> None:
    generate: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        schema = generate()  # built once and cached by FastAPI; the edits are idempotent
        for path in EVENT_PATHS:
            schema["paths"][path]["post"]["requestBody"] = OPTIONAL_EVENT_BODY
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
