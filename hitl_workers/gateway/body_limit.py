"""Refuse request bodies over 64 KiB with 413 before reading them (docs/contract.md §8 "Limits").

An ASGI middleware, outside everything else, so no token, route or body parser sees a byte
more than the limit. A ``Content-Length`` over the limit is refused before any of the body is
read; a body without one (chunked) is counted as it streams in and refused as soon as the
count passes the limit. Either way the connection is closed after the 413, so the client
stops sending and the gateway never holds more than the limit (plus one chunk) of it.

One route takes more: ``POST /v1/executions`` carries a §1 request, which may be up to 256 KiB.
Its limit is twice that, so a request just over 256 KiB still reaches the worker and is recorded
``failed`` with an answer naming the problem (§1), while a body far beyond it is refused here.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_BODY_BYTES = 64 * 1024
MAX_START_BODY_BYTES = 512 * 1024
"""``POST /v1/executions``: the §1 request's own 256 KiB limit, and room to record a refusal."""


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES,
                 max_start_bytes: int = MAX_START_BODY_BYTES) -> None:
        self.app = app
        self.default_max_bytes = max_bytes
        self.max_start_bytes = max_start_bytes

    def _limit(self, scope: Scope) -> int:
        if scope.get("method") == "POST" and scope.get("path") == "/v1/executions":
            return self.max_start_bytes
        return self.default_max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self._limit(scope)
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await self._refuse(send, limit)
            return

        received = 0
        refused = False
        started = False

        async def counting_receive() -> Message:
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    refused = True
                    if not started:
                        await self._refuse(send, limit)
                    # The app sees a client that went away: it stops reading and answers
                    # nothing (its answer would be dropped below anyway).
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused:
                return  # we answered 413 already; the app's own answer goes nowhere
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        await self.app(scope, counting_receive, guarded_send)

    async def _refuse(self, send: Send, limit: int) -> None:
        body = json.dumps({"detail": f"the request body is larger than {limit} "
                                     "bytes"}).encode()
        await send({"type": "http.response.start", "status": 413, "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            # Closing is what stops the client from sending the rest.
            (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the server refuses a malformed one itself
    return None
