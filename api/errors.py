"""The service's error type and how errors become HTTP responses, in one place.

Every rejected request gets ``{"error": code, "field": dotted.name | null, "detail": text}``
with a 4xx status; nothing stored is changed by a rejected request. A request the service
cannot serve because its database is unreachable gets a 503 with ``Retry-After`` (decide
adds ``default_block``: the slot's default, for the caller to show) and is counted in
``slotbandit_unavailable_requests_total``. Only a bug is a 500.

Error roots and their statuses (:data:`ROOTS`, the one table; :func:`as_api_error` reads it)::

    ApiError                        its own status and code (raised by the handlers)
    bandits.errors.BanditError      422 invalid_request (bad features, policies, rules)
    database outage                 503 database_unavailable (sqlalchemy OperationalError,
                                        InterfaceError, pool TimeoutError, DisconnectionError)
    sqlalchemy DataError            422 invalid_request (a value the database refused: out of
                                        range, a NUL; the request checks should have caught it)
    anything else                   500 internal_error (logged with its traceback)

Litestar's own ``HTTPException`` keeps its status (401, 404, 405, 413, ...). The ASGI fast
path (``api.hot_path``) and the Litestar handlers below answer through the same
:func:`as_api_error` and :func:`count`.
"""

from __future__ import annotations

import logging
import re
import traceback
from collections.abc import Mapping
from typing import Any

import msgspec
import sqlalchemy.exc
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException

from bandits.errors import BanditError

__all__ = ["RETRY_AFTER_S", "ROOTS", "ApiError", "as_api_error", "count", "error_body", "escape_control",
           "escape_log_records", "exception_handlers", "is_database_outage", "log_unavailable"]

log = logging.getLogger("slotbandit.api")

RETRY_AFTER_S = 1
"""What a 503 asks the caller to wait before retrying (``Retry-After``, seconds)."""


class ApiError(Exception):
    """An answer to a request that is not a success: status, machine-readable code, the field at
    fault, a human-readable detail; ``headers`` go on the response, ``extra`` into the body."""

    def __init__(self, status: int, code: str, detail: str, field: str | None = None, *,
                 headers: Mapping[str, str] | None = None, extra: Mapping[str, Any] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.field = field
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})

    def body(self) -> dict[str, Any]:
        return {**error_body(self.code, self.detail, self.field), **self.extra}


def error_body(code: str, detail: str, field: str | None) -> dict[str, Any]:
    return {"error": code, "field": field, "detail": detail}


DATABASE_OUTAGE: tuple[type[Exception], ...] = (
    sqlalchemy.exc.OperationalError,  # connection refused or reset, server gone, SQLite locked or full
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.DisconnectionError,
    sqlalchemy.exc.TimeoutError,  # no pooled connection came free
)


def is_database_outage(error: BaseException) -> bool:
    """Whether ``error`` says the database could not be reached (rather than a bug or bad input)."""
    return isinstance(error, DATABASE_OUTAGE)


def _unavailable(code: str, detail: str, **extra: Any) -> ApiError:
    return ApiError(503, code, detail, None, headers={"Retry-After": str(RETRY_AFTER_S)}, extra=extra)


def log_unavailable(default_block: str | None = None, *, decide: bool = False) -> ApiError:
    """The 503 of a decide, activate or reward whose log cannot be read or written."""
    if decide:
        return _unavailable("log_unavailable", "the decision log cannot be written; serve your default block",
                            default_block=default_block)
    return _unavailable("log_unavailable", "the event log cannot be read or written; retry later")


# The one table: error root -> how it is answered. First match wins.
ROOTS: tuple[tuple[tuple[type[BaseException], ...], Any], ...] = (
    ((ApiError,), lambda error: error),
    ((BanditError,), lambda error: ApiError(422, "invalid_request", error.message, error.field)),
    (DATABASE_OUTAGE, lambda error: _unavailable("database_unavailable", "the database cannot be reached; retry later")),
    # the last line of defence: input the request checks (api.schemas.guard_request) let through
    ((sqlalchemy.exc.DataError,), lambda error: ApiError(
        422, "invalid_request", f"a value does not fit the database: {str(error.orig).splitlines()[0][:200]}")),
)


def as_api_error(error: BaseException) -> ApiError:
    """The answer to ``error`` by :data:`ROOTS`; anything unknown is a 500 (and logged as a bug)."""
    for roots, answer in ROOTS:
        if isinstance(error, roots):
            return answer(error)  # type: ignore[no-any-return]
    return ApiError(500, "internal_error", "internal error")


def count(metrics: Any, error: ApiError) -> None:
    """Count an answered error: a 4xx as rejected, a 503 as unavailable, by code."""
    if metrics is None:
        return
    if error.status < 500:
        metrics.rejected.labels(error.code).inc()
    elif error.status == 503:
        metrics.unavailable.labels(error.code).inc()


def _respond(request: Request, error: ApiError) -> Response:  # type: ignore[type-arg]
    count(getattr(request.app.state, "metrics", None), error)
    return Response(error.body(), status_code=error.status, headers=error.headers or None)


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
        return _respond(request, ApiError(400, "invalid_request", exc.detail, field))
    code = {401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}.get(
        exc.status_code, "http_error"
    )
    return _respond(request, ApiError(exc.status_code, code, exc.detail, None, headers=exc.headers))


def _any_error(request: Request, exc: Exception) -> Response:  # type: ignore[type-arg]
    error = as_api_error(exc)
    if error.status == 500:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
    return _respond(request, error)


exception_handlers = {
    HTTPException: _http_error,
    Exception: _any_error,
}


# -- logs that a request cannot forge ---------------------------------------------------

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_TRACEBACK_FRAMES = ("  ", "Traceback", "\nDuring handling", "\nThe above exception")


def escape_control(text: str) -> str:
    """``text`` with every control character (newline included) written as ``\\xNN``."""
    return _CONTROL.sub(lambda match: f"\\x{ord(match.group()):02x}", text)


def _escaped(value: Any) -> Any:
    if isinstance(value, int | float) or value is None:
        return value
    text = str(value)
    return escape_control(text) if _CONTROL.search(text) else value


def _safe_traceback(exc_info: Any) -> str:
    # the frames are the service's own code; the exception lines may carry request text
    chunks = []
    for chunk in traceback.TracebackException(*exc_info).format():
        body = chunk[:-1] if chunk.endswith("\n") else chunk  # traceback ends each chunk with one newline
        chunks.append(chunk if chunk.startswith(_TRACEBACK_FRAMES) else escape_control(body) + "\n")
    return "".join(chunks).rstrip("\n")


_installed = False


def escape_log_records() -> None:
    """Make every log record of this process unforgeable (installed once, by the server and the
    CLI): control characters in its message, its arguments and its exception's text are escaped,
    so a request path or id with ``%0a`` cannot write a line of its own."""
    global _installed
    if _installed:
        return
    _installed = True
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        if isinstance(record.msg, str) and _CONTROL.search(record.msg):
            record.msg = escape_control(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_escaped(arg) for arg in record.args)
        elif isinstance(record.args, Mapping):
            record.args = {key: _escaped(value) for key, value in record.args.items()}
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = _safe_traceback(record.exc_info)
        return record

    logging.setLogRecordFactory(factory)
