"""Hostile input gets a 4xx naming the field on every endpoint and both databases, never a 500,
and nothing stored changes: integers past the id columns, NUL characters, deep nesting,
non-ASCII beacon tokens, control characters in paths, a default block that names no block."""

from __future__ import annotations

from sqlalchemy import func, select

from api.db.engine import make_engine
from api.db.experiment_models import Experiment
from api.db.models import Activation, Block, Decision, Policy, Reward, Slot
from tests.api.test_decision_api import seed_slot, service  # noqa: F401 - both paths: ASGI and Litestar

NUL = "a\u0000b"
DEEP = '{"a":' * 3000 + "1" + "}" * 3000


def everything(url: str) -> tuple[int, ...]:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return tuple(connection.execute(select(func.count()).select_from(table)).scalar_one()
                         for table in (Decision, Reward, Activation, Slot, Block, Policy, Experiment))
    finally:
        engine.dispose()


BIG = [2**31, 2**63]
# (method, path, json body, status, field); EVENT is a logged decision's id
CASES = [
    *[(m, p.format(n=n), b, status, field) for n in BIG for m, p, b, status, field in [
        ("GET", "/v1/experiments/{n}", None, 404, "experiment_id"),
        ("POST", "/v1/experiments/{n}/start", None, 404, "experiment_id"),
        ("POST", "/v1/experiments/{n}/stop", None, 404, "experiment_id"),
        ("GET", "/v1/experiments/{n}/report", None, 404, "experiment_id"),
        ("GET", "/v1/evaluations/{n}", None, 404, "evaluation_id"),
        ("POST", "/v1/evaluations/{n}/apply", {"candidate": "x"}, 404, "evaluation_id"),
        ("GET", "/dashboard/experiments/{n}", None, 404, "experiment_id"),
        ("GET", "/v1/policies/home.hero/model?version={n}", None, 400, "version"),
    ]],
    ("POST", "/v1/policies/home.hero/rollback", {"version": 2**63}, 400, "version"),
    ("POST", "/v1/policies/home.hero/rollback", {"version": 2**64}, 400, "version"),
    ("POST", "/v1/slots/home.hero/decide", {"event_id": NUL}, 400, "event_id"),
    ("POST", "/v1/slots/home.hero/decide", {"unit_id": NUL}, 400, "unit_id"),
    ("POST", "/v1/slots/home.hero/decide", {"candidates": [{"id": NUL}]}, 400, "candidates.0.id"),
    ("POST", "/v1/slots/home.hero/decide", {"context": {"user": {"k": NUL}}}, 400, "context.user.k"),
    ("POST", "/v1/slots/home.hero/decide", {"exclude": [NUL]}, 400, "exclude.0"),
    ("POST", "/v1/events/EVENT/reward", {"value": 1, "reward_id": NUL}, 400, "reward_id"),
    ("POST", "/v1/events/a%00b/reward", {"value": 1}, 404, "path"),
    ("POST", "/v1/events/a%00b/activate", None, 404, "path"),
    ("GET", "/v1/events/a%00b", None, 404, "path"),
    ("DELETE", "/v1/units/a%00b", None, 404, "path"),
    ("PUT", "/v1/slots/home.hero", {"default_block": NUL}, 400, "default_block"),
    ("PUT", "/v1/slots/home.hero/blocks/a%00b", {}, 404, "path"),
    ("DELETE", "/v1/slots/home.hero/blocks/a%00b", None, 404, "path"),
    ("PUT", "/v1/slots/home.hero/blocks/b9", {"features": {"f": NUL}}, 400, "features.f"),
    ("PUT", "/v1/policies/p", {"kind": "fixed", "block": NUL}, 400, "block"),
    ("POST", "/v1/experiments", {"slot": "home.hero", "name": NUL, "arms": []}, 400, "name"),
    ("GET", "/v1/experiments?slot=a%00b", None, 400, "slot"),
    ("GET", "/static/slotbandit.js%00.png", None, 404, "path"),
    ("POST", "/v1/beacon/EVENT/reward?t=%C3%A9", {"value": 1}, 401, "t"),
    ("POST", "/v1/beacon/EVENT/activate?t=\u00e9t\u00e9", None, 401, "t"),
    # a default block must be one of the slot's blocks once it has some
    ("PUT", "/v1/slots/home.hero", {"default_block": "nope"}, 422, "default_block"),
    ("DELETE", "/v1/slots/home.hero/blocks/b0", None, 409, "block"),
]
DEEP_PATHS = [("PUT", "/v1/slots/home.hero"), ("PUT", "/v1/slots/home.hero/blocks/b9"), ("PUT", "/v1/policies/p"),
              ("POST", "/v1/experiments"), ("POST", "/v1/evaluations"), ("POST", "/v1/policies/home.hero/reset"),
              ("POST", "/v1/policies/home.hero/rollback"), ("POST", "/v1/slots/home.hero/decide"),
              ("POST", "/v1/events/EVENT/reward"), ("POST", "/v1/evaluations/1/apply")]


def test_hostile_input_is_a_4xx_naming_the_field(service) -> None:  # noqa: F811
    seed_slot(service, blocks=3)
    c = service.client
    event = c.post("/v1/slots/home.hero/decide", json={}, headers=service.decider).json()["event_id"]
    assert c.post("/dashboard/login", data={"key": service.admin_key}, follow_redirects=False).status_code == 303
    before = everything(service.database_url)
    failures = []
    for method, path, body, status, field in CASES:
        path = path.replace("EVENT", event)
        headers = service.decider if "/decide" in path or "/events/" in path and method == "POST" else service.admin
        r = c.request(method, path, json=body, headers=headers)
        answer = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
        if r.status_code != status or answer.get("field") != field:
            failures.append((method, path, r.status_code, r.text[:200]))
    for method, path in DEEP_PATHS:
        path = path.replace("EVENT", event)
        r = c.request(method, path, content=DEEP, headers={**service.admin, "content-type": "application/json"})
        if r.status_code != 400 or not r.json()["field"]:  # "body", or the first unknown field of a hot call
            failures.append((method, path, r.status_code, r.text[:200]))
    assert not failures, "\n".join(map(str, failures))
    assert everything(service.database_url) == before


def test_a_slot_always_serves_a_default_among_its_blocks(service) -> None:  # noqa: F811
    c = service.client
    # a new slot may name the block it is about to get, and that block must come first
    assert c.put("/v1/slots/s", json={"default_block": "main"}, headers=service.admin).status_code == 201
    r = c.put("/v1/slots/s/blocks/other", json={}, headers=service.admin)
    assert r.status_code == 422 and r.json()["field"] == "block", r.text
    assert c.put("/v1/slots/s/blocks/main", json={}, headers=service.admin).status_code == 201
    assert c.put("/v1/slots/s/blocks/other", json={}, headers=service.admin).status_code == 201
    assert c.put("/v1/slots/s", json={"default_block": "other"}, headers=service.admin).status_code == 200
    assert c.delete("/v1/slots/s/blocks/main", headers=service.admin).status_code == 200
    r = c.delete("/v1/slots/s/blocks/other", headers=service.admin)
    assert r.status_code == 409 and r.json()["error"] == "default_block_in_use"
    assert c.get("/v1/slots/s", headers=service.admin).json()["default_block"] == "other"
