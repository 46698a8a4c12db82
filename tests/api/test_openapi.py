"""``/schema`` is a page that loads nothing from elsewhere, ``/health`` names nothing, and
``/schema/openapi.json`` describes the API as it answers: request bodies, every status seen,
the real error body, one charset."""

from __future__ import annotations

import re

from tests.conftest import Service


def test_docs_page_and_health_reveal_nothing_and_load_nothing(service: Service) -> None:
    c = service.client
    assert c.put("/v1/policies/secret-policy-name", json={"kind": "uniform"}, headers=service.admin).status_code == 201
    assert c.put("/v1/slots/secret.slot", json={}, headers=service.admin).status_code == 201
    health = c.get("/health")
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    page = c.get("/schema")
    assert page.status_code == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
    assert "<script" not in page.text.lower()
    assert re.findall(r"""(?:src|href)=["']?(?:https?:)?//""", page.text) == []  # nothing from another origin
    assert "default-src 'none'" in page.text
    assert "/v1/slots/{slot}/decide" in page.text and "/schema/openapi.json" in page.text
    for ui in ("/schema/swagger", "/schema/redoc", "/schema/elements", "/schema/rapidoc"):
        assert c.get(ui).status_code == 404, ui
