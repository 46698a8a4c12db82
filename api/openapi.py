"""The OpenAPI document of the API (``/schema/openapi.json``) and its docs page (``/schema``).

Handlers read their bodies themselves (msgspec structs, bounds checked in one place), so
Litestar cannot see what they accept nor every status they answer. :func:`document` completes
the document Litestar generates: every operation's request body (the msgspec structs, as JSON
Schema), every status it can answer with the real error body ``{"error", "field", "detail"}``
(decide's 503 adds ``default_block``; every 503 carries ``Retry-After``). Browser pages
(``/dashboard``, ``/demo``) are not API operations and are left out.

The docs page is rendered on the server from the same document: no script, no outside
resource (``Content-Security-Policy: default-src 'none'``), so it works offline and runs
nothing on the admin cookie's origin.
"""

from __future__ import annotations

import copy
import html
from typing import Annotated, Any

import msgspec
from litestar import Request
from litestar.enums import MediaType
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import OpenAPIRenderPlugin
from msgspec import Meta, Struct

from api import schemas

__all__ = ["ErrorBody", "config", "document"]


class ErrorBody(Struct):
    """Every answer that is not a success."""

    error: str
    """Machine-readable code (``invalid_request``, ``unknown_slot``, ``log_unavailable``, ...)."""
    field: str | None
    """The dotted name of the field at fault, or null."""
    detail: str
    """What went wrong, for a human."""
    default_block: str | None = None
    """Only on decide's 503 ``log_unavailable``: the slot's default block, to show instead."""


class ResetBody(Struct, forbid_unknown_fields=True):
    from_start: bool = False


class RollbackBody(Struct, forbid_unknown_fields=True):
    version: Annotated[int, Meta(ge=1, le=schemas.INT_MAX)]


def _bodies() -> dict[tuple[str, str], Any]:
    from api.champion.schemas import RunIn
    from api.experiments.schemas import ExperimentIn
    from api.offline import ApplyIn, EvaluationIn

    return {
        ("post", "/v1/slots/{slot}/decide"): schemas.DecideRequest,
        ("post", "/v1/events/{event_id}/activate"): schemas.ActivateRequest,
        ("post", "/v1/events/{event_id}/reward"): schemas.RewardRequest,
        ("post", "/v1/beacon/{event_id}/activate"): schemas.ActivateRequest,
        ("post", "/v1/beacon/{event_id}/reward"): schemas.RewardRequest,
        ("put", "/v1/slots/{slot}"): schemas.SlotRequest,
        ("put", "/v1/slots/{slot}/blocks/{block}"): schemas.BlockRequest,
        ("put", "/v1/policies/{name}"): schemas.PolicyRequest,
        ("post", "/v1/policies/{name}/reset"): ResetBody,
        ("post", "/v1/policies/{name}/rollback"): RollbackBody,
        ("post", "/v1/experiments"): ExperimentIn,
        ("post", "/v1/evaluations"): EvaluationIn,
        ("post", "/v1/evaluations/{evaluation_id}/apply"): ApplyIn,
        ("put", "/v1/policies/{name}/model"): bytes,
        ("post", "/v1/keys"): schemas.KeyRequest,
        ("post", "/v1/keys/{key_id}/rotate"): schemas.RotateRequest,
        ("put", "/v1/slots/{slot}/challengers/{name}"): schemas.PolicyRequest,
        ("post", "/v1/slots/{slot}/auto-optimize/run"): RunIn,
    }


_REASONS = {
    400: "The request is malformed: not JSON, a wrong type, an unknown field, NUL characters, too deep",
    401: "No API key, or an unknown or revoked one (beacons: a wrong token)",
    403: "The key's scope may not do this",
    404: "No such slot, block, event, policy, experiment or evaluation",
    409: "The request conflicts with what is stored (a repeated id with other data, a limit, a state)",
    413: "The body is too large",
    422: "A value is out of its bounds or inconsistent with what is stored",
    503: "The database cannot be reached; retry after Retry-After seconds",
}
_PUBLIC = {"/health", "/metrics", "/v1/beacon/{event_id}/activate", "/v1/beacon/{event_id}/reward"}
_OUT = ("/dashboard", "/demo")


def _statuses(method: str, path: str, has_body: bool) -> list[int]:
    if path == "/metrics":
        return []
    if path == "/health":
        return [503]
    statuses = [400, 401, 404, 409, 422, 503]  # 409: a state that forbids it (a policy kind without a model)
    if path not in _PUBLIC:
        statuses += [403]
    if has_body:
        statuses += [413]
    return sorted(set(statuses))


def document(generated: dict[str, Any]) -> dict[str, Any]:
    """Litestar's generated document, completed with the request bodies, statuses and error body."""
    doc = copy.deepcopy(generated)
    bodies = _bodies()
    structs = sorted({t for t in bodies.values() if t is not bytes} | {ErrorBody}, key=lambda t: t.__name__)
    _, components = msgspec.json.schema_components(structs, ref_template="#/components/schemas/{name}")
    doc.setdefault("components", {}).setdefault("schemas", {}).update(components)
    error = {"$ref": "#/components/schemas/ErrorBody"}
    paths = {p: item for p, item in doc.get("paths", {}).items() if not p.startswith(_OUT)}
    doc["paths"] = paths
    for path, item in paths.items():
        for method, operation in item.items():
            if method not in ("get", "put", "post", "delete", "patch"):
                continue
            kind = bodies.get((method, path))
            if kind is bytes:
                operation["requestBody"] = {"required": True, "content": {
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}
            elif kind is not None:
                ref = {"$ref": f"#/components/schemas/{kind.__name__}"}
                content: dict[str, Any] = {"application/json": {"schema": ref}}
                if path.startswith("/v1/beacon"):  # navigator.sendBeacon sends its JSON as text/plain
                    content["text/plain"] = {"schema": {"type": "string", "description": "the same object, as JSON text"}}
                operation["requestBody"] = {"required": False, "content": content}
            responses = operation.setdefault("responses", {})
            if method == "put" and "200" in responses:  # a PUT that creates answers 201
                responses["201"] = {**responses["200"], "description": "Created"}
            for status in _statuses(method, path, kind is not None):
                answer: dict[str, Any] = {"description": _REASONS[status], "content": {"application/json": {"schema": error}}}
                if status == 503:
                    answer["headers"] = {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}}
                responses[str(status)] = answer
            if path == "/health":
                responses["503"]["content"] = {"application/json": {"schema": {"type": "object"}}}
            elif path == "/metrics":  # the Prometheus text format
                responses["200"]["content"] = {"text/plain": {"schema": {"type": "string"}}}
            elif (method, path) == ("get", "/v1/policies/{name}/model"):
                responses["200"]["content"] = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
    return doc


_documents: dict[int, dict[str, Any]] = {}


def _document_of(request: Request, generated: dict[str, Any]) -> dict[str, Any]:  # type: ignore[type-arg]
    key = id(generated)
    if key not in _documents:
        _documents.clear()
        _documents[key] = document(generated)
    return _documents[key]


class _Json(OpenAPIRenderPlugin):
    def __init__(self) -> None:
        super().__init__(path="/openapi.json", media_type=MediaType.JSON)

    def render(self, request: Request, openapi_schema: dict[str, Any]) -> bytes:  # type: ignore[type-arg]
        return msgspec.json.encode(_document_of(request, openapi_schema))


class _Page(OpenAPIRenderPlugin):
    """``/schema``: every operation, its body and its statuses, as plain HTML."""

    def __init__(self) -> None:
        super().__init__(path="/", media_type=MediaType.HTML, favicon="", style="")

    def render(self, request: Request, openapi_schema: dict[str, Any]) -> bytes:  # type: ignore[type-arg]
        doc = _document_of(request, openapi_schema)
        e = html.escape
        rows = []
        for path, item in doc["paths"].items():
            for method, operation in item.items():
                if not isinstance(operation, dict) or "responses" not in operation:
                    continue
                body = operation.get("requestBody", {}).get("content", {})
                refs = [str(v.get("schema", {}).get("$ref", "binary")).rsplit("/", 1)[-1] for v in body.values()]
                rows.append(f"<tr><td>{e(method.upper())}</td><td><code>{e(path)}</code></td>"
                            f"<td>{e(operation.get('summary') or '')}</td><td>{e(', '.join(dict.fromkeys(refs)))}</td>"
                            f"<td>{e(' '.join(sorted(operation['responses'])))}</td></tr>")
        page = (
            "<!DOCTYPE html><html><head><meta charset=\"utf-8\">"
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">"
            f"<title>{e(doc['info']['title'])} API</title><style>body{{font:14px system-ui,sans-serif;margin:2em}}"
            "td,th{padding:2px 8px;text-align:left;vertical-align:top}tr:nth-child(even){background:#f4f4f4}</style>"
            f"</head><body><h1>{e(doc['info']['title'])} API</h1>"
            "<p>The OpenAPI document: <a href=\"/schema/openapi.json\">/schema/openapi.json</a>. Errors are "
            "<code>{\"error\", \"field\", \"detail\"}</code>; request bodies are in its <code>components</code>.</p>"
            "<table><tr><th>method</th><th>path</th><th>summary</th><th>body</th><th>statuses</th></tr>"
            + "".join(rows) + "</table></body></html>"
        )
        return page.encode("utf-8")


def config() -> OpenAPIConfig:
    """The app's OpenAPI configuration: the completed JSON document and the script-free page."""
    return OpenAPIConfig(title="slotbandit", version="1", path="/schema", render_plugins=[_Page(), _Json()])
