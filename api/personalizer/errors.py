"""Errors in Personalizer's shape: ``{"error": {"code", "message", "target"}}``.

The same errors as the v1 API (``api.errors.ApiError``, ``bandits.errors.BanditError``, Litestar's
HTTP errors), told in the codes of Personalizer's ``ErrorCode``: ``BadRequest`` (400; our 422s
are 400s here, as Personalizer answered invalid bodies), ``ResourceNotFound`` (404),
``InternalServerError`` (500), and ``Unauthorized``, ``Forbidden``, ``Conflict``,
``PayloadTooLarge``, ``ServiceUnavailable`` for the statuses Personalizer's front door used.
``target`` names the offending field where we know it; our own code is kept in
``innerError.code``.
"""

from __future__ import annotations

import logging
from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException

from api.errors import ApiError
from bandits.errors import BanditError

__all__ = ["EXCEPTION_HANDLERS", "personalizer_error"]

log = logging.getLogger("slotbandit.personalizer")

CODES = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "ResourceNotFound", 405: "BadRequest",
         409: "Conflict", 413: "PayloadTooLarge", 500: "InternalServerError", 503: "ServiceUnavailable"}


def personalizer_error(status: int, message: str, target: str | None = None, inner: str | None = None) -> Response[Any]:
    status = 400 if status == 422 else status
    error: dict[str, Any] = {"code": CODES.get(status, "BadRequest" if status < 500 else "InternalServerError"),
                             "message": message}
    if target:
        error["target"] = target
    if inner:
        error["innerError"] = {"code": inner}
    return Response({"error": error}, status_code=status)


def _rejected(request: Request[Any, Any, Any], code: str) -> None:
    metrics = getattr(request.app.state, "metrics", None)
    if metrics is not None:
        metrics.rejected.labels(code).inc()


def _api_error(request: Request[Any, Any, Any], exc: ApiError) -> Response[Any]:
    _rejected(request, exc.code)
    return personalizer_error(exc.status, exc.detail, exc.field, exc.code)


def _bandit_error(request: Request[Any, Any, Any], exc: BanditError) -> Response[Any]:
    _rejected(request, "invalid_request")
    return personalizer_error(400, exc.message, exc.field, "invalid_request")


def _http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    if exc.status_code < 500:
        _rejected(request, str(exc.status_code))
    return personalizer_error(exc.status_code, exc.detail)


def _unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return personalizer_error(500, "internal error")


EXCEPTION_HANDLERS: Any = {ApiError: _api_error, BanditError: _bandit_error, HTTPException: _http_error,
                           Exception: _unexpected}
"""The exception handlers of the ``/personalizer`` router."""
