"""Every error the gateway answers is JSON with a ``detail`` in words (docs/contract.md §8)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


class Refused(Exception):
    """An answer that is not a 2xx: its status, what was wrong, and the §3 result if any."""

    def __init__(self, status: int, detail: str, result: Mapping[str, Any] | None = None
                 ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.result = dict(result or {})


def _where(loc: Any) -> str:
    parts = [str(p) for p in loc]
    return ".".join(parts) or "request"


_FRIENDLY = {"extra_forbidden": "unknown field", "json_invalid": "invalid JSON",
             "missing": "required"}


def validation_body(exc: RequestValidationError) -> dict[str, Any]:
    issues = []
    for error in exc.errors():
        kind = str(error.get("type", ""))
        msg = _FRIENDLY.get(kind) or str(error.get("msg", "invalid"))
        if kind == "json_invalid" and error.get("ctx", {}).get("error"):
            msg = f"invalid JSON: {error['ctx']['error']}"
        issues.append({"loc": list(error.get("loc", ())), "msg": msg, "type": kind})
    detail = "; ".join(f"{_where(i['loc'])}: {i['msg']}" for i in issues) or "invalid request"
    return {"detail": detail, "errors": issues}


def install(app: FastAPI) -> None:
    @app.exception_handler(Refused)
    async def _refused(_request: Request, exc: Refused) -> JSONResponse:
        return JSONResponse({"detail": exc.detail, **exc.result}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(validation_body(exc), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 400:
            # FastAPI's answer to a body it could not even decode (invalid UTF-8, say): a
            # malformed body like any other, so 422 with the same shape (docs/contract.md §8).
            return JSONResponse({"detail": f"body: invalid JSON ({detail.lower()})",
                                 "errors": [{"loc": ["body"], "msg": "invalid JSON",
                                             "type": "json_invalid"}]}, status_code=422)
        return JSONResponse({"detail": detail}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": f"internal error ({type(exc).__name__}); see the "
                                       "gateway's log"}, status_code=500)
