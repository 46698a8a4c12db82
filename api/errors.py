"""The service's error type and how errors become HTTP responses.

Every rejected request gets ``{"error": code, "field": dotted.name | null, "detail": text}``
with a 4xx status; nothing stored is changed by a rejected request.
"""

from __future__ import annotations

import logging
import re

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException

from bandits.errors import BanditError

__all__ = ["ApiError", "error_body", "exception_handlers"]

log = logging.getLogger("slotbandit.api")


class ApiError(Exception):
    def __init__(self, status: int, code: str, detail: str, field: str | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.field = field


def error_body(code: str, detail: str, field: str | None) -> dict[str, object]:
    return {"error": code, "field": field, "detail": detail}


def _rejected(request: Request, code: str) -> None:  # type: ignore[type-arg]
    metrics = getattr(request.app.state, "metrics", None)
    if metrics is not None:
        metrics.rejected.labels(code).inc()


def _api_error(request: Request, exc: ApiError) -> Response:  # type: ignore[type-arg]
    _rejected(request, exc.code)
    return Response(error_body(exc.code, exc.detail, exc.field), status_code=exc.status)


def _bandit_error(request: Request, exc: BanditError) -> Response:  # type: ignore[type-arg]
    _rejected(request, "invalid_request")
    return Response(error_body("invalid_request", exc.message, exc.field), status_code=422)


_PATH = re.compile(r"at `\$\.?([^`]*)`")


def msgspec_field(error: msgspec.ValidationError | msgspec.DecodeError) -> str | None:
    """``$.context.user`` in msgspec's message -> ``context.user``."""
    match = _PATH.search(str(error))
    if not match:
        return None
    return re.sub(r"\[(\d+)\]", r".\1", match.group(1)) or None


def _http_error(request: Request, exc: HTTPException) -> Response:  # type: ignore[type-arg]
    if isinstance(exc, ValidationException):
        field = None
        extra = exc.extra
        if isinstance(extra, list) and extra and isinstance(extra[0], dict):
            key = extra[0].get("key")
            field = str(key) if key else None
        _rejected(request, "invalid_request")
        return Response(error_body("invalid_request", exc.detail, field), status_code=400)
    code = {401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}.get(
        exc.status_code, "http_error"
    )
    if exc.status_code < 500:
        _rejected(request, code)
    return Response(error_body(code, exc.detail, None), status_code=exc.status_code, headers=exc.headers)


def _unexpected(request: Request, exc: Exception) -> Response:  # type: ignore[type-arg]
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return Response(error_body("internal_error", "internal error", None), status_code=500)


exception_handlers = {
    ApiError: _api_error,
    BanditError: _bandit_error,
    HTTPException: _http_error,
    Exception: _unexpected,
}
