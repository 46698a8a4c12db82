"""Experiments through the real service: validation, lifecycle, sticky assignment, learning isolation."""

from __future__ import annotations

import math
import random

import pytest
from sqlalchemy import select

from api.db.engine import make_engine
from api.db.models import Decision, Snapshot
from api.experiments import unit_draw
from bandits.policies import VWConfig, VWPolicy


def seed(service, slot: str = "home.hero", blocks: int = 3, **settings) -> None:
    c = service.client
    r = c.put(f"/v1/slots/{slot}", json={"default_block": "b0", "reward_range": [0, 1], **settings}, headers=service.admin)
    assert r.status_code in (200, 201), r.text
    for i in range(blocks):
        r = c.put(f"/v1/slots/{slot}/blocks/b{i}", json={"features": {"category": f"c{i}"}}, headers=service.admin)
        assert r.status_code in (200, 201), r.text
    for i in range(blocks):
        c.put(f"/v1/policies/fix{i}", json={"kind": "fixed", "block": f"b{i}"}, headers=service.admin)


def create(service, arms, control="a", **extra):
    return service.client.post("/v1/experiments", json={"slot": "home.hero", "control": control, "arms": arms, **extra},
                               headers=service.admin)


TWO = [{"name": "a", "policy": "fix0", "share": 0.5}, {"name": "b", "policy": "fix1", "share": 0.5}]
RULES = {"kind": "rules", "rules": {"rules": [{"when": [{"feature": "device_type", "value": "mobile"}], "block": "b9"}],
                                    "fallback": "b1"}}


@pytest.mark.parametrize(
    ("arms", "extra", "status", "field"),
    [
        ([{"name": "a", "policy": "fix0", "share": 0.5}, {"name": "b", "policy": "fix1", "share": 0.4}], {}, 422, "arms"),
        ([{"name": "a", "policy": "fix0", "share": 0.5}, {"name": "a", "policy": "fix1", "share": 0.5}], {}, 422, "arms.1.name"),
        ([{"name": "a", "policy": "fix0", "share": 0.5}, {"name": "b", "policy": "nope", "share": 0.5}], {}, 422, "arms.1.policy"),
        (TWO, {"control": "z"}, 422, "control"),
        (TWO, {"slot": "missing.slot"}, 422, "slot"),
        ([{"name": "a", "policy": "fix0", "share": 0.5}, {"name": "b", "policy": RULES, "share": 0.5}], {}, 422,
         "arms.1.policy.rules.rules.0.block"),
        ([{"name": "a", "policy": "fix0", "share": 0.5},
          {"name": "b", "policy": {"kind": "rules", "rules": {"rules": [], "fallback": "b1", "exploration": 2}}, "share": 0.5}],
         {}, 422, "arms.1.policy.rules.exploration"),
        ([{"name": "a", "policy": "fix0", "share": 0.5}, {"name": "b", "policy": {"kind": "fixed", "block": "b7"}, "share": 0.5}],
         {}, 422, "arms.1.policy.block"),
        ([{"name": "a", "policy": "fix0", "share": 0.0}, {"name": "b", "policy": "fix1", "share": 1.0}], {}, 400, "arms.0.share"),
        ([{"name": "a", "policy": "fix0", "share": 1.0}], {}, 400, "arms"),
        ([{"name": "a", "policy": "vw1", "share": 0.5}, {"name": "b", "policy": "vw1", "share": 0.5}], {}, 422, "arms.1.policy"),
        (TWO, {"analysis": {"level": 1.5}}, 422, "analysis.level"),
        (TWO, {"guardrails": {"max_fallback_rate": 2}}, 400, "guardrails.max_fallback_rate"),
        (TWO, {"colour": "red"}, 400, "colour"),
    ],
)
def test_invalid_experiments_are_rejected_naming_the_field(service, arms, extra, status, field) -> None:
    seed(service)
    service.client.put("/v1/policies/vw1", json={"kind": "vw"}, headers=service.admin)
    r = create(service, arms, **extra)
    assert r.status_code == status, r.text
    assert r.json()["field"] == field
    assert service.client.get("/v1/experiments", headers=service.admin).json()["experiments"] == [] or status == 422


def test_lifecycle_one_running_per_slot_and_auth(service) -> None:
    seed(service)
    c = service.client
    assert create(service, TWO).status_code == 201
    first = c.get("/v1/experiments", headers=service.admin).json()["experiments"][0]
    assert first["status"] == "draft" and [a["name"] for a in first["arms"]] == ["a", "b"]
    second = create(service, TWO, name="again").json()
    assert c.post(f"/v1/experiments/{first['id']}/start", headers=service.admin).json()["status"] == "running"
    r = c.post(f"/v1/experiments/{second['id']}/start", headers=service.admin)
    assert r.status_code == 409 and r.json()["field"] == "slot"
    assert c.post(f"/v1/experiments/{first['id']}/start", headers=service.admin).status_code == 409
    assert c.post("/v1/experiments", json={}, headers=service.decider).status_code == 403
    assert c.get(f"/v1/experiments/{first['id']}/report").status_code == 401
    assert c.post(f"/v1/experiments/{first['id']}/stop", headers=service.admin).json()["status"] == "stopped"
    assert c.post(f"/v1/experiments/{first['id']}/stop", headers=service.admin).status_code == 409
    assert c.post(f"/v1/experiments/{second['id']}/start", headers=service.admin).status_code == 200
    assert c.get("/v1/experiments/999", headers=service.admin).status_code == 404
    # after stop, decisions no longer carry the stopped experiment
    d = c.post("/v1/slots/home.hero/decide", json={"unit_id": "u1"}, headers=service.decider).json()
    assert d["arm"] in ("a", "b")
    c.post(f"/v1/experiments/{second['id']}/stop", headers=service.admin)
    d = c.post("/v1/slots/home.hero/decide", json={"unit_id": "u1"}, headers=service.decider).json()
    assert d["arm"] is None and d["policy"] == "home.hero"


def test_assignment_is_sticky_near_the_shares_and_logged(service) -> None:
    seed(service)
    c = service.client
    arms = [{"name": "a", "policy": "fix0", "share": 0.2}, {"name": "b", "policy": "fix1", "share": 0.3},
            {"name": "c", "policy": "fix2", "share": 0.5}]
    e = create(service, arms).json()
    c.post(f"/v1/experiments/{e['id']}/start", headers=service.admin)
    seen: dict[str, str] = {}
    n = 600
    for u in range(n):
        d = c.post("/v1/slots/home.hero/decide", json={"unit_id": f"user-{u}"}, headers=service.decider).json()
        seen[f"user-{u}"] = d["arm"]
        assert d["block"]["id"] == {"a": "b0", "b": "b1", "c": "b2"}[d["arm"]]
    for u in range(0, n, 15):  # sticky: the same unit gets the same arm again
        d = c.post("/v1/slots/home.hero/decide", json={"unit_id": f"user-{u}"}, headers=service.decider).json()
        assert d["arm"] == seen[f"user-{u}"]
    for arm, share in (("a", 0.2), ("b", 0.3), ("c", 0.5)):
        count = sum(1 for v in seen.values() if v == arm)
        assert abs(count - n * share) < 4 * math.sqrt(n * share * (1 - share)), (arm, count)
    engine = make_engine(service.database_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(select(Decision.experiment_id, Decision.arm, Decision.policy_name)).all()
    finally:
        engine.dispose()
    assert {r.experiment_id for r in rows} == {e["id"]}
    assert {(r.arm, r.policy_name) for r in rows} == {("a", "fix0"), ("b", "fix1"), ("c", "fix2")}


def test_hash_assignment_is_uniform_and_independent_across_salts() -> None:
    rng = random.Random(3)
    units = [f"u{rng.random()}" for _ in range(20_000)]
    first = [unit_draw(b"salt-one", u) < 0.5 for u in units]
    second = [unit_draw(b"salt-two", u) < 0.5 for u in units]
    n = len(units)
    assert abs(sum(first) - n / 2) < 4 * math.sqrt(n / 4)
    both = sum(a and b for a, b in zip(first, second, strict=True))
    assert abs(both - n / 4) < 4 * math.sqrt(n * 0.25 * 0.75)  # independent: P(both) = 1/4


def test_learning_arms_start_from_the_slot_snapshot_or_scratch(service) -> None:
    seed(service)
    c = service.client
    model = VWPolicy(VWConfig()).save()
    engine = make_engine(service.database_url)
    try:
        with engine.begin() as connection:
            connection.execute(Snapshot.__table__.insert().values(policy_name="home.hero", version=3, model=model, cursor=42,
                                                                  metrics={}))
        # a different VW configuration cannot start from the slot's model
        r = create(service, [{"name": "a", "policy": "fix0", "share": 0.5},
                             {"name": "eps", "policy": {"kind": "vw", "vw": {"exploration": "epsilon"}}, "share": 0.5}],
                   learning_start="snapshot")
        assert r.status_code == 422 and r.json()["field"] == "arms.1.start", r.text
        e = create(service, [{"name": "a", "policy": "fix0", "share": 0.4},
                             {"name": "warm", "policy": {"kind": "vw"}, "share": 0.3},
                             {"name": "cold", "policy": {"kind": "vw"}, "share": 0.3, "start": "scratch"}],
                   learning_start="snapshot").json()
        warm, cold = (a["policy"] for a in e["arms"][1:])
        assert warm != cold and warm != "home.hero"
        assert c.post(f"/v1/experiments/{e['id']}/start", headers=service.admin).status_code == 200
        with engine.connect() as connection:
            rows = connection.execute(select(Snapshot.policy_name, Snapshot.version, Snapshot.model, Snapshot.cursor)).all()
        copies = {r.policy_name: r for r in rows}
        assert copies[warm].version == 1 and copies[warm].model == model and copies[warm].cursor == 42
        assert cold not in copies
        # each arm logs its own policy name, so the learner (per policy) learns each arm from its own decisions
        arms = {}
        for u in range(60):
            d = c.post("/v1/slots/home.hero/decide", json={"unit_id": f"x{u}"}, headers=service.decider).json()
            arms.setdefault(d["arm"], set()).add(d["policy"])
        assert arms["warm"] == {warm} and arms["cold"] == {cold} and arms["a"] == {"fix0"}
        policies = {p["name"]: p for p in c.get("/v1/policies", headers=service.admin).json()["policies"]}
        assert policies[warm]["model_version"] == 1 and policies[warm]["trained"]
        assert not policies[cold]["trained"]
    finally:
        engine.dispose()
