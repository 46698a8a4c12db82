"""The v1 decision API through the real HTTP stack on real databases."""

from __future__ import annotations

import math

import pytest
from sqlalchemy import func, select

from api.db.engine import make_engine
from api.db.models import Activation, Decision, Reward

IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1"
)


@pytest.fixture(params=["asgi", "litestar"])
def service(request: pytest.FixtureRequest, database_url: str, tmp_path):
    """The app with decide, activate and reward served by the ASGI fast path or by the Litestar
    routes: every test of this module holds for both (``api.hot_path``)."""
    from litestar.testing import TestClient

    from api.app import create_app
    from tests.conftest import Service, create_keys, make_service_settings

    admin_key, decide_key = create_keys(database_url)
    settings = make_service_settings(database_url, tmp_path, fast_path=request.param == "asgi")
    with TestClient(app=create_app(settings)) as client:  # type: ignore[arg-type]
        yield Service(client, admin_key, decide_key, settings, database_url)


def seed_slot(service, slot: str = "home.hero", blocks: int = 5, **settings) -> None:
    c = service.client
    body = {"default_block": "b0", "timezone": "Europe/Berlin", "reward_range": [0, 1], **settings}
    r = c.put(f"/v1/slots/{slot}", json=body, headers=service.admin)
    assert r.status_code in (200, 201), r.text
    for i in range(blocks):
        r = c.put(f"/v1/slots/{slot}/blocks/b{i}", json={"features": {"category": ["news", "sports", "video"][i % 3], "rank": i}},
                  headers=service.admin)
        assert r.status_code in (200, 201), r.text


def table_counts(url: str) -> tuple[int, int, int]:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return (
                connection.execute(select(func.count()).select_from(Decision)).scalar_one(),
                connection.execute(select(func.count()).select_from(Reward)).scalar_one(),
                connection.execute(select(func.count()).select_from(Activation)).scalar_one(),
            )
    finally:
        engine.dispose()


def stored_decisions(url: str) -> dict[str, dict]:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(select(Decision.__table__)).mappings().all()
            return {r["event_id"]: dict(r) for r in rows}
    finally:
        engine.dispose()


def test_slot_and_catalog_versions(service) -> None:
    seed_slot(service, blocks=3)
    c = service.client
    slot = c.get("/v1/slots/home.hero", headers=service.admin).json()
    assert [b["id"] for b in slot["blocks"]] == ["b0", "b1", "b2"]
    assert slot["catalog_version"] == 3
    assert slot["timezone"] == "Europe/Berlin"
    # an unchanged block keeps the version, a changed one makes a new version
    r = c.put("/v1/slots/home.hero/blocks/b1", json={"features": {"category": "sports", "rank": 1}}, headers=service.admin)
    assert r.json()["catalog_version"] == 3
    r = c.put("/v1/slots/home.hero/blocks/b1", json={"features": {"category": "offer"}}, headers=service.admin)
    assert r.json()["catalog_version"] == 4
    r = c.delete("/v1/slots/home.hero/blocks/b2", headers=service.admin)
    assert r.status_code == 200 and r.json()["catalog_version"] == 5
    slot = c.get("/v1/slots/home.hero", headers=service.admin).json()
    assert [b["id"] for b in slot["blocks"]] == ["b0", "b1"]
    assert slot["blocks"][1]["features"] == {"category": "offer"}
    # a decision never offers the deactivated block
    for _ in range(20):
        d = c.post("/v1/slots/home.hero/decide", json={}, headers=service.decider).json()
        assert {x["id"] for x in d["ranking"]} == {"b0", "b1"}


def test_decide_logs_exact_probability_and_context(service) -> None:
    seed_slot(service)
    c = service.client
    r = c.post(
        "/v1/slots/home.hero/decide",
        json={"unit_id": "user-1", "context": {"time": {"timestamp": "2026-11-23T07:30:00Z"}, "user": {"segment": "sports"}}},
        headers={**service.decider, "User-Agent": IPHONE, "CF-IPCountry": "DE"},
    )
    assert r.status_code == 200, r.text
    d = r.json()
    assert set(d) >= {"event_id", "slot", "block", "probability", "ranking", "policy", "model_version", "fallback", "arm"}
    assert d["fallback"] is False
    assert d["model_version"] == 0  # untrained vw chooses uniformly, honestly logged
    assert math.isclose(sum(x["probability"] for x in d["ranking"]), 1.0, rel_tol=1e-12)
    assert d["probability"] == pytest.approx(0.2)
    chosen = next(x for x in d["ranking"] if x["id"] == d["block"]["id"])
    assert chosen["probability"] == d["probability"]
    assert "category" in d["block"]["features"]
    row = stored_decisions(service.database_url)[d["event_id"]]
    assert row["probability"] == d["probability"]
    assert row["chosen_block"] == d["block"]["id"]
    assert row["pmf"][row["chosen_index"]] == d["probability"]
    assert row["trained"] is False
    ctx = row["context"]
    assert ctx["device"]["type"] == "mobile"
    assert ctx["location"]["country"] == "DE"
    assert ctx["time"]["daypart"] == "morning"  # 07:30Z is 08:30 in Berlin
    assert ctx["user"] == {"segment": "sports"}
    assert row["unit_key"] and "user-1" not in row["unit_key"]
    assert "testclient" not in str(row)  # the client address is not stored


def test_repeated_event_id_returns_stored_decision(service) -> None:
    seed_slot(service)
    c = service.client
    first = c.post("/v1/slots/home.hero/decide", json={"event_id": "evt-1"}, headers=service.decider).json()
    for _ in range(5):
        again = c.post("/v1/slots/home.hero/decide", json={"event_id": "evt-1"}, headers=service.decider).json()
        assert again == first
    assert table_counts(service.database_url)[0] == 1


def test_inline_candidates_and_exclude(service) -> None:
    seed_slot(service)
    c = service.client
    body = {"candidates": [{"id": "x", "features": {"f": "a|b:c"}}, {"id": "y"}, {"id": "z"}], "exclude": ["z"]}
    d = c.post("/v1/slots/home.hero/decide", json=body, headers=service.decider).json()
    assert {x["id"] for x in d["ranking"]} == {"x", "y"}
    assert d["probability"] == pytest.approx(0.5)
    row = stored_decisions(service.database_url)[d["event_id"]]
    assert row["inline_candidates"] == [{"id": "x", "features": {"f": "a|b:c"}}, {"id": "y", "features": {}}]
    d = c.post("/v1/slots/home.hero/decide", json={"exclude": ["b0", "b1"]}, headers=service.decider).json()
    assert {x["id"] for x in d["ranking"]} == {"b2", "b3", "b4"}


def test_consent_false_serves_default_and_stores_no_unit(service) -> None:
    seed_slot(service)
    d = service.client.post(
        "/v1/slots/home.hero/decide", json={"unit_id": "u-9", "consent": False, "context": {"user": {"a": 1}}},
        headers=service.decider,
    ).json()
    assert d["block"]["id"] == "b0" and d["probability"] == 1.0
    row = stored_decisions(service.database_url)[d["event_id"]]
    assert row["unit_key"] is None and "user" not in row["context"] and row["consent"] is False


@pytest.mark.parametrize(
    ("path", "body", "status", "field"),
    [
        ("/v1/slots/nope/decide", {}, 404, "slot"),
        ("/v1/slots/home.hero/decide", {"unit_id": 5}, 400, "unit_id"),
        ("/v1/slots/home.hero/decide", {"event_id": "x" * 257}, 400, "event_id"),
        ("/v1/slots/home.hero/decide", {"candidates": []}, 422, "candidates"),
        ("/v1/slots/home.hero/decide", {"candidates": [{"id": "a"}, {"id": "a"}]}, 422, "candidates.1.id"),
        ("/v1/slots/home.hero/decide", {"candidates": [{"id": f"c{i}"} for i in range(51)]}, 422, "candidates"),
        ("/v1/slots/home.hero/decide", {"exclude": ["b0", "b1", "b2", "b3", "b4"]}, 422, "exclude"),
        ("/v1/slots/home.hero/decide", {"context": {"user": {"a": [1]}}}, 400, "context.user"),
        ("/v1/slots/home.hero/decide", {"context": {"user": {f"k{i}": 1 for i in range(40)}}}, 422, "context.user"),
        ("/v1/slots/home.hero/decide", {"context": {"user": {"k": "v" * 300}}}, 422, "context.user.k"),
        ("/v1/slots/home.hero/decide", {"context": {"time": {"timezone": "Mars/Base"}}}, 422, "context.time.timezone"),
        ("/v1/slots/home.hero/decide", {"context": {"device": {"type": "toaster"}}}, 422, "context.device.type"),
        ("/v1/slots/home.hero/decide", {"context": {"location": {"country": "Germany"}}}, 422, "context.location.country"),
        ("/v1/slots/home.hero/decide", {"surprise": 1}, 400, "surprise"),
        ("/v1/slots/home.hero/decide", {"candidates": [{"id": "a", "features": {"x": {"y": 1}}}]}, 400, "candidates.0.features"),
    ],
)
def test_bad_decide_input_is_a_4xx_naming_the_field(service, path, body, status, field) -> None:
    seed_slot(service)
    before = table_counts(service.database_url)
    r = service.client.post(path, json=body, headers=service.decider)
    assert r.status_code == status, r.text
    assert r.json()["field"] is not None and r.json()["field"].startswith(field), r.json()
    assert table_counts(service.database_url) == before


def test_malformed_json_and_oversized_body(service) -> None:
    seed_slot(service)
    c = service.client
    r = c.post("/v1/slots/home.hero/decide", content=b"{not json", headers={**service.decider, "content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"] == "malformed_json"
    r = c.post("/v1/slots/home.hero/decide", content=b'{"context": {"user": {"a": NaN}}}',
               headers={**service.decider, "content-type": "application/json"})
    assert r.status_code == 400
    r = c.post("/v1/slots/home.hero/decide", content=b"{" + b" " * 70_000 + b"}",
               headers={**service.decider, "content-type": "application/json"})
    assert r.status_code == 413
    assert table_counts(service.database_url) == (0, 0, 0)


def test_auth_scopes(service) -> None:
    seed_slot(service)
    c = service.client
    assert c.post("/v1/slots/home.hero/decide", json={}).status_code == 401
    assert c.post("/v1/slots/home.hero/decide", json={}, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert c.put("/v1/slots/other", json={}, headers=service.decider).status_code == 403
    assert c.get("/v1/slots", headers=service.decider).status_code == 403
    assert c.post("/v1/slots/home.hero/decide", json={}, headers={"X-API-Key": service.decide_key}).status_code == 200


def test_activate_and_reward_are_idempotent_and_durable(service) -> None:
    seed_slot(service)
    c = service.client
    event = c.post("/v1/slots/home.hero/decide", json={"defer_activation": True}, headers=service.decider).json()["event_id"]
    assert c.post(f"/v1/events/{event}/activate", headers=service.decider).json()["duplicate"] is False
    assert c.post(f"/v1/events/{event}/activate", headers=service.decider).json()["duplicate"] is True
    r = c.post(f"/v1/events/{event}/reward", json={"value": 1, "reward_id": "click"}, headers=service.decider)
    assert r.status_code == 200 and r.json()["duplicate"] is False
    r = c.post(f"/v1/events/{event}/reward", json={"value": 1, "reward_id": "click"}, headers=service.decider)
    assert r.json()["duplicate"] is True
    r = c.post(f"/v1/events/{event}/reward", json={"value": 0.5}, headers=service.decider)
    assert r.status_code == 200
    assert table_counts(service.database_url) == (1, 2, 1)
    stored = c.get(f"/v1/events/{event}", headers=service.admin).json()
    assert [x["value"] for x in stored["rewards"]] == [1.0, 0.5]
    assert stored["activated_at"] is not None and stored["deferred"] is True


@pytest.mark.parametrize(
    ("event", "body", "status", "field"),
    [
        ("unknown", {"value": 1}, 404, "event_id"),
        (None, {"value": 2}, 422, "value"),
        (None, {"value": -0.5}, 422, "value"),
        (None, {"value": "1"}, 400, "value"),
        (None, {}, 400, "value"),
        (None, {"value": 1e300}, 400, "value"),
        (None, {"value": 1, "reward_id": ""}, 400, "reward_id"),
    ],
)
def test_bad_rewards_are_rejected_without_side_effects(service, event, body, status, field) -> None:
    seed_slot(service)
    c = service.client
    event = event or c.post("/v1/slots/home.hero/decide", json={}, headers=service.decider).json()["event_id"]
    before = table_counts(service.database_url)
    r = c.post(f"/v1/events/{event}/reward", json=body, headers=service.decider)
    assert r.status_code == status, r.text
    assert r.json()["field"] == field
    assert table_counts(service.database_url) == before


def test_every_returned_decision_is_in_the_log(service) -> None:
    seed_slot(service, blocks=8)
    c = service.client
    responses = [
        c.post("/v1/slots/home.hero/decide", json={"unit_id": f"u{i % 7}", "context": {"user": {"i": i}}},
               headers=service.decider).json()
        for i in range(60)
    ]
    stored = stored_decisions(service.database_url)
    assert len(stored) == 60
    for d in responses:
        row = stored[d["event_id"]]
        assert row["chosen_block"] == d["block"]["id"]
        assert row["probability"] == d["probability"]
        assert dict(zip(row["candidate_ids"], row["pmf"], strict=True)) == {x["id"]: x["probability"] for x in d["ranking"]}
        assert row["model_version"] == d["model_version"]


def test_unit_erasure_removes_pseudonym_and_user_features(service) -> None:
    seed_slot(service)
    c = service.client
    for _ in range(3):
        c.post("/v1/slots/home.hero/decide", json={"unit_id": "alice", "context": {"user": {"plan": "pro"}}}, headers=service.decider)
    c.post("/v1/slots/home.hero/decide", json={"unit_id": "bob"}, headers=service.decider)
    r = c.delete("/v1/units/alice", headers=service.admin)
    assert r.status_code == 200 and r.json()["decisions"] == 3
    rows = stored_decisions(service.database_url).values()
    assert sum(1 for r in rows if r["unit_key"] is None) == 3
    assert all("user" not in r["context"] for r in rows if r["unit_key"] is None)
    assert sum(1 for r in rows if r["unit_key"] is not None) == 1


def test_apprentice_serves_default_block(service) -> None:
    seed_slot(service, learning_mode="apprentice")
    for _ in range(10):
        d = service.client.post("/v1/slots/home.hero/decide", json={}, headers=service.decider).json()
        assert d["block"]["id"] == "b0" and d["probability"] == 1.0


def test_health_metrics_and_schema(service) -> None:
    seed_slot(service)
    c = service.client
    c.post("/v1/slots/home.hero/decide", json={}, headers=service.decider)
    assert c.get("/health").json()["status"] == "ok"
    text = c.get("/metrics").text
    assert 'slotbandit_decisions_total{slot="home.hero"} 1.0' in text
    assert "slotbandit_decide_seconds_bucket" in text
    schema = c.get("/schema/openapi.json").json()
    assert "/v1/slots/{slot}/decide" in schema["paths"]


def test_rules_and_fixed_policies_are_checked_against_the_catalog(service) -> None:
    seed_slot(service, blocks=3)
    c = service.client
    r = c.put("/v1/slots/home.hero", json={"policy": {"kind": "fixed", "block": "nope"}}, headers=service.admin)
    assert r.status_code == 422 and r.json()["field"] == "policy.block"
    rules = {"rules": [{"when": {"device_type": "mobile"}, "block": "zz"}], "fallback": "b0"}
    r = c.put("/v1/slots/home.hero", json={"policy": {"kind": "rules", "rules": rules}}, headers=service.admin)
    assert r.status_code == 422 and r.json()["field"].startswith("policy.rules")
    r = c.put("/v1/policies/broken", json={"kind": "rules", "rules": {"rules": "not a list"}}, headers=service.admin)
    assert r.status_code == 422 and r.json()["field"].startswith("policy.rules")
    r = c.put("/v1/slots/home.hero", json={"policy": {"kind": "fixed", "block": "b2"}}, headers=service.admin)
    assert r.status_code == 200
    for _ in range(5):
        assert c.post("/v1/slots/home.hero/decide", json={}, headers=service.decider).json()["block"]["id"] == "b2"


def test_the_fast_path_serves_server_calls_and_litestar_serves_browsers(service, monkeypatch) -> None:
    import api.app

    seed_slot(service)
    served = []
    real = api.app.fast_call

    async def spy(*args, **kwargs):
        served.append(args[-1])
        await real(*args, **kwargs)

    monkeypatch.setattr(api.app, "fast_call", spy)
    c = service.client
    browser_headers = {**service.decider, "Origin": "https://shop.example"}
    plain = c.post("/v1/slots/home.hero/decide", json={"event_id": "e-plain"}, headers=service.decider)
    browser = c.post("/v1/slots/home.hero/decide", json={"event_id": "e-browser"}, headers=browser_headers)
    assert plain.status_code == browser.status_code == 200
    for event, headers in (("e-plain", service.decider), ("e-browser", browser_headers)):
        assert c.post(f"/v1/events/{event}/activate", headers=headers).json()["activated"] is True
        assert c.post(f"/v1/events/{event}/reward", json={"value": 1}, headers=headers).json()["stored"] is True
    expected = [("decide", "home.hero"), ("activate", "e-plain"), ("reward", "e-plain")]
    assert served == (expected if service.settings.fast_path else [])
    assert plain.headers["content-type"].startswith("application/json")
    # one contract: the same fields and the same error body either way
    assert plain.json().keys() == browser.json().keys()
    bad = c.post("/v1/slots/home.hero/decide", json={"consent": "yes"}, headers=service.decider)
    assert bad.status_code == 400 and bad.json()["field"] == "consent" and set(bad.json()) == {"error", "field", "detail"}
    unknown = c.post("/v1/slots/nope/decide", json={}, headers=service.decider)
    assert unknown.status_code == 404 and unknown.json()["field"] == "slot"
    no_event = c.post("/v1/events/nope/reward", json={"value": 1}, headers=service.decider)
    assert no_event.status_code == 404 and no_event.json()["field"] == "event_id"
    bad_activation = c.post("/v1/events/e-plain/activate", content=b"[1]", headers=service.decider)
    assert bad_activation.status_code == 400
    metrics = c.get("/metrics").text
    assert 'slotbandit_rejected_requests_total{code="unknown_slot"} 1.0' in metrics
    assert 'slotbandit_rejected_requests_total{code="unknown_event"} 1.0' in metrics
    assert "slotbandit_rewards_total 2.0" in metrics and "slotbandit_activations_total 2.0" in metrics


def test_an_admin_cookie_may_decide_on_both_paths(service) -> None:
    seed_slot(service)
    c = service.client
    assert c.post("/dashboard/login", data={"key": service.admin_key}, follow_redirects=False).status_code == 303
    assert c.post("/v1/slots/home.hero/decide", json={}).status_code == 200
    c.cookies.set("slotbandit_admin", "s1.1.9999999999.wrong")
    r = c.post("/v1/slots/home.hero/decide", json={})
    assert r.status_code == 401 and r.json()["error"] == "unauthorized"
