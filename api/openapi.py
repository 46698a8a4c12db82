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

import html
from typing import Any

from litestar import Request
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import OpenAPIRenderPlugin

__all__ = ["config"]


def _document_of(request: Request, generated: dict[str, Any]) -> dict[str, Any]:  # type: ignore[type-arg]
    return generated


class _Page(OpenAPIRenderPlugin):
    """``/schema``: every operation, its body and its statuses, as plain HTML."""

    def __init__(self) -> None:
        super().__init__(path="/", media_type="text/html", favicon="", style="")

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
    return OpenAPIConfig(title="slotbandit", version="1", path="/schema", render_plugins=[_Page()])
