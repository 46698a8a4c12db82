"""``/schema`` is a page that loads nothing from elsewhere, ``/health`` names nothing, and
``/schema/openapi.json`` describes the API as it answers: request bodies, every status seen,
the real error body, one charset."""

from __future__ import annotations

import re

from tests.api.test_bad_input import CASES
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


def _operation(doc: dict, method: str, path: str) -> dict | None:
    path = path.split("?")[0]
    for template, item in doc["paths"].items():
        pattern = "^" + re.sub(r"\\{[^}]+\\}", "[^/]+", re.escape(template)) + "$"
        if re.match(pattern, path) and method.lower() in item:
            return item[method.lower()]
    return None


def test_the_document_describes_bodies_statuses_and_the_error_body(service: Service) -> None:
    c = service.client
    r = c.get("/schema/openapi.json")
    assert r.headers["content-type"] == "application/json"
    doc = r.json()
    for path in ("/metrics", "/health"):
        assert c.get(path).headers["content-type"].count("charset") <= 1
    error = doc["components"]["schemas"]["ErrorBody"]
    assert set(error["required"]) == {"error", "field", "detail"}
    bodies = {("post", "/v1/slots/{slot}/decide"): "DecideRequest", ("post", "/v1/events/{event_id}/reward"): "RewardRequest",
              ("put", "/v1/slots/{slot}"): "SlotRequest", ("put", "/v1/slots/{slot}/blocks/{block}"): "BlockRequest",
              ("put", "/v1/policies/{name}"): "PolicyRequest", ("post", "/v1/experiments"): "ExperimentIn",
              ("post", "/v1/evaluations"): "EvaluationIn", ("post", "/v1/policies/{name}/rollback"): "RollbackBody"}
    for (method, path), name in bodies.items():
        content = doc["paths"][path][method]["requestBody"]["content"]
        assert content["application/json"]["schema"] == {"$ref": f"#/components/schemas/{name}"}
        assert name in doc["components"]["schemas"]
    assert "default_block" in doc["components"]["schemas"]["ErrorBody"]["properties"]
    for path, item in doc["paths"].items():
        assert not path.startswith(("/dashboard", "/demo")), path
        for method, operation in item.items():
            for status, answer in operation.get("responses", {}).items():
                if status.startswith(("4", "5")) and path != "/health":  # health's 503 is its own body
                    assert answer["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorBody"}, (
                        method, path, status)
            if path not in ("/health", "/metrics"):
                assert "503" in operation["responses"] and "Retry-After" in operation["responses"]["503"]["headers"]
    # every status the hostile-input table draws from the API is one its operation documents
    from tests.api.test_decision_api import seed_slot

    seed_slot(service, blocks=3)
    event = c.post("/v1/slots/home.hero/decide", json={}, headers=service.decider).json()["event_id"]
    undocumented = []
    for method, path, body, _, _ in CASES:
        path = path.replace("EVENT", event)
        if path.startswith(("/dashboard", "/static")):
            continue
        operation = _operation(doc, method, path)
        if operation is None:
            continue  # a path with control characters matches no operation
        r = c.request(method, path, json=body, headers=service.admin if "/decide" not in path else service.decider)
        if str(r.status_code) not in operation["responses"]:
            undocumented.append((method, path, r.status_code))
    assert not undocumented
