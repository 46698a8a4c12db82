"""Champion and challenger on SQLite and PostgreSQL: challengers learn the serving policy's stream
without serving, auto-optimize promotes only on a paired lower-bound win (a seeded world where the
challenger is truly better; an A/A world where it is not), dry-run records without changing
anything, a rollback restores the old revision and its snapshot, and the holdout is near its share,
sticky per unit, never learned, with its lift measured by the report's statistics."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from sqlalchemy import Engine, func, select

from api.champion.holdout import holdout_draw, in_holdout
from api.champion.optimize import claim_slot, run_due
from api.db.champion_models import PolicyRevision
from api.db.engine import make_engine
from api.db.learning_models import LearnedDecision, LearnerLease
from api.db.models import Decision, Policy
from api.learner import Learner, LearnerSettings, latest_snapshot

SLOT = "home.hero"
BEST = {"mobile": "b1", "desktop": "b2"}
CONTEXT_BLIND_EPSILON = {"kind": "vw", "vw": {"exploration": "epsilon", "epsilon": 0.3, "interactions": [],
                                              "ignore_linear_context": False}}


def seed(service, policy: object, **settings: object) -> None:
    body = {"default_block": "b0", "reward_range": [0, 1], "reward_window_s": 1, "policy": policy, **settings}
    r = service.client.put(f"/v1/slots/{SLOT}", json=body, headers=service.admin)
    assert r.status_code in (200, 201), r.text
    for i in range(3):
        r = service.client.put(f"/v1/slots/{SLOT}/blocks/b{i}", json={"features": {"kind": f"k{i}"}},
                               headers=service.admin)
        assert r.status_code in (200, 201), r.text


def traffic(service, n: int, rate: Callable[[str, str], float], seed_: int = 0,
            units: int | None = None) -> list[dict]:
    """``n`` decisions (of ``units`` distinct units, else one unit each); block clicked with ``rate(device, block)``."""
    rng = np.random.default_rng(seed_)
    out = []
    for i in range(n):
        device = ["mobile", "desktop"][int(rng.integers(2))]
        body: dict[str, object] = {"context": {"device": {"type": device}}}
        if units is not None:
            body["unit_id"] = f"u{i % units}"
        r = service.client.post(f"/v1/slots/{SLOT}/decide", json=body, headers=service.decider)
        assert r.status_code == 200, r.text
        d = r.json()
        d["device"] = device
        if rng.random() < rate(device, d["block"]["id"]):
            r = service.client.post(f"/v1/events/{d['event_id']}/reward", json={"value": 1.0}, headers=service.decider)
            assert r.status_code == 200, r.text
        out.append(d)
    return out


def contextual(device: str, block: str) -> float:
    return 0.8 if block == BEST[device] else 0.1


def flat(device: str, block: str) -> float:
    return 0.3


def later(seconds: float) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)


@pytest.fixture
def engine(service) -> Iterator[Engine]:
    engine = make_engine(service.database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def learner(service) -> Iterator[Learner]:
    engine = make_engine(service.database_url)
    yield Learner(engine, LearnerSettings(safety_margin_s=0.0, ledger=True, snapshot_every=100_000,
                                          snapshot_interval_s=3600))
    engine.dispose()


def put_challenger(service, name: str, body: object, slot: str = SLOT):
    return service.client.put(f"/v1/slots/{slot}/challengers/{name}", json=body, headers=service.admin)


def newest(engine: Engine, policy: str):
    with engine.connect() as connection:
        return latest_snapshot(connection, policy)


def policy_config(engine: Engine, policy: str) -> dict:
    with engine.connect() as connection:
        return connection.execute(select(Policy.config).where(Policy.name == policy)).scalar_one()


# --------------------------------------------------------------------------- challengers


@pytest.mark.parametrize(("name", "body", "status", "field"), [
    ("bad name!", {"kind": "linear"}, 422, "name"),
    ("x" * 65, {"kind": "linear"}, 422, "name"),
    ("uni", {"kind": "uniform"}, 422, "kind"),
    ("fixed", {"kind": "fixed", "block": "b0"}, 422, "kind"),
    (SLOT, {"kind": "linear"}, 422, "name"),
    ("online", {"kind": "linear"}, 422, "name"),
    ("lin", {"kind": "linear", "linear": {"ridge": -1}}, 422, "policy.linear.ridge"),
    ("lin", {"kind": "linear", "linear": {"nope": 1}}, 400, "linear.nope"),
    ("vw2", {"kind": "vw", "vw": {"epsilon": 2.0}}, 422, "policy.vw.epsilon"),
    ("other", {"kind": "linear"}, 409, "name"),  # a serving policy of that name exists
])
def test_challenger_validation_names_the_field_and_stores_nothing(service, engine, name, body, status, field) -> None:
    seed(service, {"kind": "uniform"})
    assert service.client.put("/v1/policies/other", json={"kind": "uniform"}, headers=service.admin).status_code == 201
    r = put_challenger(service, name, body)
    assert r.status_code == status, r.text
    assert r.json()["field"] == field, r.json()
    listed = service.client.get(f"/v1/slots/{SLOT}/challengers", headers=service.admin).json()
    assert listed["challengers"] == []
    with engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(Policy).where(Policy.source.is_not(None))).scalar_one() == 0


def test_challengers_are_bounded_and_unknown_slots_are_404(service) -> None:
    seed(service, {"kind": "uniform"})
    assert put_challenger(service, "lin", {"kind": "linear"}, slot="nope").status_code == 404
    for i in range(5):
        assert put_challenger(service, f"c{i}", {"kind": "linear"}).status_code == 201
    r = put_challenger(service, "c5", {"kind": "linear"})
    assert r.status_code == 422 and r.json()["field"] == "name"
    assert put_challenger(service, "c0", {"kind": "linear", "linear": {"ridge": 2.0}}).status_code == 200
    assert service.client.delete(f"/v1/slots/{SLOT}/challengers/nope", headers=service.admin).status_code == 404
    # a challenger never serves: no slot may name it
    r = service.client.put(f"/v1/slots/{SLOT}", json={"policy": "c0"}, headers=service.admin)
    assert r.status_code == 422 and r.json()["field"] == "policy"


def test_a_challenger_learns_the_serving_stream_exactly_once_without_serving(service, engine, learner) -> None:
    seed(service, {"kind": "uniform"})
    r = put_challenger(service, "lin", {"kind": "linear"})
    assert r.status_code == 201, r.text
    assert r.json()["source"] == SLOT and r.json()["kind"] == "linear"
    assert "lin" not in {p["name"] for p in service.client.get("/v1/policies", headers=service.admin).json()["policies"]}
    decisions = traffic(service, 300, contextual)
    assert {d["policy"] for d in decisions} == {SLOT}
    report = learner.run_until_idle(now=later(5))
    assert report.learned == 300
    snap = newest(engine, "lin")
    assert snap is not None and snap.metrics["decisions_learned"] == 300
    assert snap.metrics["learns_from"] == SLOT and snap.metrics["trained"] is True
    assert 0.0 <= snap.metrics["pv_loss"] <= 1.0
    with engine.connect() as connection:
        seqs = connection.execute(select(Decision.seq).where(Decision.policy_name == SLOT)).scalars().all()
        learned = connection.execute(select(LearnedDecision.seq).where(LearnedDecision.policy_name == "lin")).scalars().all()
        assert sorted(learned) == sorted(seqs)  # each once (the ledger's key refuses twice)
        assert connection.execute(select(LearnerLease.holder).where(LearnerLease.policy_name == "lin")).scalar() == learner.holder
        assert connection.execute(select(Decision.seq).where(Decision.policy_name == "lin")).first() is None
    assert snap.cursor == max(seqs)
    # nothing new: nothing learned again; the API shows the metrics
    assert learner.run_until_idle(now=later(5)).learned == 0
    listed = service.client.get(f"/v1/slots/{SLOT}/challengers", headers=service.admin).json()
    (item,) = listed["challengers"]
    assert item["name"] == "lin" and item["decisions_pending"] == 0
    assert item["metrics"]["decisions_learned"] == 300 and item["metrics"]["pv_loss"] == snap.metrics["pv_loss"]
    # the model admin works for it like for any policy
    assert service.client.get("/v1/policies/lin/snapshots", headers=service.admin).status_code == 200
    r = service.client.delete(f"/v1/slots/{SLOT}/challengers/lin", headers=service.admin)
    assert r.status_code == 200
    assert newest(engine, "lin") is None
    learner.step(now=later(5))
    assert "lin" not in learner.policies


# --------------------------------------------------------------------------- auto-optimize


def optimize_setting(mode: str, **extra: object) -> dict:
    return {"mode": mode, "every_hours": 1, "window_hours": 24, "min_decisions": 100, **extra}


def test_auto_optimize_setting_validation(service, engine) -> None:
    seed(service, {"kind": "uniform"})
    for setting, status, field in [
        ({"mode": "sometimes"}, 400, "auto_optimize.mode"),
        ({"every_hours": 0}, 400, "auto_optimize.every_hours"),
        ({"window_hours": 1e9}, 400, "auto_optimize.window_hours"),
        ({"min_decisions": 5}, 400, "auto_optimize.min_decisions"),
        ({"level": 1.0}, 400, "auto_optimize.level"),
        ({"surprise": 1}, 400, "auto_optimize.surprise"),
        ({"candidates": {"eps": {"epsilon": 3}}}, 422, "auto_optimize.candidates.eps.epsilon"),
        ({"candidates": {"online": {}}}, 422, "auto_optimize.candidates.online"),
    ]:
        r = service.client.put(f"/v1/slots/{SLOT}", json={"auto_optimize": setting}, headers=service.admin)
        assert r.status_code == status, (setting, r.text)
        assert r.json()["field"] == field, (setting, r.json())
    slot = service.client.get(f"/v1/slots/{SLOT}", headers=service.admin).json()
    assert slot["auto_optimize"] == {"mode": "off"}
    r = service.client.put(f"/v1/slots/{SLOT}", json={"auto_optimize": optimize_setting("dry-run")}, headers=service.admin)
    assert r.status_code == 200 and r.json()["auto_optimize"]["mode"] == "dry-run"


def test_promotion_on_a_lower_bound_win_dry_run_first_then_apply_and_roll_back(service, engine, learner) -> None:
    """The serving vw policy cannot see the device; its linear challenger can, and truly earns more."""
    seed(service, CONTEXT_BLIND_EPSILON, auto_optimize=optimize_setting("dry-run"))
    assert put_challenger(service, "lin", {"kind": "linear"}).status_code == 201
    traffic(service, 800, contextual, seed_=1)
    learner.run_until_idle(now=later(5))
    old_config = policy_config(engine, SLOT)
    old_snap, lin_snap = newest(engine, SLOT), newest(engine, "lin")
    assert old_snap is not None and lin_snap is not None

    # dry-run: the recommendation is recorded, nothing else changes
    (outcome,) = run_due(engine, now=later(5))
    assert outcome["outcome"] == "recommended" and outcome["winner"] == "lin", outcome
    assert policy_config(engine, SLOT) == old_config and policy_config(engine, "lin")["kind"] == "linear"
    assert newest(engine, SLOT).version == old_snap.version and newest(engine, "lin").version == lin_snap.version
    (recorded,) = service.client.get(f"/v1/slots/{SLOT}/revisions", headers=service.admin).json()["revisions"]
    assert recorded["action"] == "recommendation" and recorded["actor"] == "auto-optimize"
    evidence = recorded["evidence"]
    assert evidence["candidate"] == "lin" and evidence["ci"][0] > 0 and evidence["p_adjusted"] < 0.05
    assert evidence["health_ok"] is True and evidence["difference"] > 0
    evaluation = service.client.get(f"/v1/evaluations/{evidence['evaluation_id']}", headers=service.admin).json()
    assert evaluation["status"] == "done" and evaluation["request"]["online"] == "snapshot"
    # the schedule: not due again within every_hours
    assert run_due(engine, now=later(10)) == []

    # apply, through the API: the challenger's model serves, the old champion becomes the challenger
    r = service.client.put(f"/v1/slots/{SLOT}", json={"auto_optimize": optimize_setting("apply")}, headers=service.admin)
    assert r.status_code == 200
    r = service.client.post(f"/v1/slots/{SLOT}/auto-optimize/run", json={}, headers=service.admin)
    assert r.status_code == 200, r.text
    outcome = r.json()
    assert outcome["outcome"] == "promoted" and outcome["winner"] == "lin", outcome
    assert policy_config(engine, SLOT)["kind"] == "linear" and policy_config(engine, "lin") == old_config
    promoted, demoted = newest(engine, SLOT), newest(engine, "lin")
    assert promoted.model == lin_snap.model and promoted.cursor == lin_snap.cursor
    assert demoted.model == old_snap.model and demoted.cursor == old_snap.cursor
    served = service.client.get(f"/v1/policies/{SLOT}", headers=service.admin).json()
    assert served["kind"] == "linear" and served["model_version"] == promoted.version
    revisions = service.client.get(f"/v1/slots/{SLOT}/revisions", headers=service.admin).json()["revisions"]
    promotion = revisions[0]
    assert promotion["action"] == "promotion" and promotion["actor"].startswith("key:")
    assert promotion["old_config"] == old_config and promotion["new_config"]["kind"] == "linear"
    assert promotion["evidence"]["ci"][0] > 0 and "old_model" not in promotion
    # the learner continues both from the swapped snapshots
    traffic(service, 50, contextual, seed_=2)
    learner.run_until_idle(now=later(5))
    assert newest(engine, SLOT).metrics["decisions_learned"] == lin_snap.metrics["decisions_learned"] + 50

    # rollback restores the old revision and its snapshot
    r = service.client.post(f"/v1/revisions/{promotion['id']}/rollback", headers=service.admin)
    assert r.status_code == 201, r.text
    assert r.json()["action"] == "rollback" and r.json()["rollback_of"] == promotion["id"]
    assert policy_config(engine, SLOT) == old_config and policy_config(engine, "lin")["kind"] == "linear"
    restored, back = newest(engine, SLOT), newest(engine, "lin")
    assert restored.model == old_snap.model and restored.cursor == old_snap.cursor
    assert back.model == lin_snap.model and back.cursor == lin_snap.cursor
    served = service.client.get(f"/v1/policies/{SLOT}", headers=service.admin).json()
    assert served["kind"] == "vw" and served["model_version"] == restored.version
    again = service.client.post(f"/v1/revisions/{promotion['id']}/rollback", headers=service.admin)
    assert again.status_code == 409 and again.json()["error"] == "already_rolled_back"
    assert service.client.post(f"/v1/revisions/{recorded['id']}/rollback", headers=service.admin).status_code == 409
    assert service.client.post("/v1/revisions/999999/rollback", headers=service.admin).status_code == 404
    # the relearning after a rollback is exactly once (the ledger forgot what the old model never learned)
    learner.run_until_idle(now=later(5))
    with engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(PolicyRevision)).scalar_one() == 3


def test_no_promotion_when_nothing_is_truly_better(service, engine, learner) -> None:
    """A/A-like: every block earns the same in every context; the challenger must not be promoted."""
    seed(service, CONTEXT_BLIND_EPSILON, auto_optimize=optimize_setting("apply"))
    assert put_challenger(service, "lin", {"kind": "linear"}).status_code == 201
    traffic(service, 800, flat, seed_=3)
    learner.run_until_idle(now=later(5))
    old_config, old_snap = policy_config(engine, SLOT), newest(engine, SLOT)
    (outcome,) = run_due(engine, now=later(5))
    assert outcome["outcome"] == "keep", outcome
    assert outcome["evidence"]["candidate"] is None and outcome["evidence"]["evaluation_id"] is not None
    assert policy_config(engine, SLOT) == old_config and newest(engine, SLOT).version == old_snap.version
    assert service.client.get(f"/v1/slots/{SLOT}/revisions", headers=service.admin).json()["revisions"] == []


def test_too_few_decisions_and_one_worker_at_a_time(service, engine) -> None:
    seed(service, {"kind": "uniform"}, auto_optimize=optimize_setting("apply"))
    assert put_challenger(service, "lin", {"kind": "linear"}).status_code == 201
    traffic(service, 20, contextual)
    assert claim_slot(engine, SLOT, every_s=None, holder="another-worker")
    assert run_due(engine) == []  # claimed elsewhere
    r = service.client.post(f"/v1/slots/{SLOT}/auto-optimize/run", json={}, headers=service.admin)
    assert r.status_code == 409 and r.json()["field"] == "slot"
    with engine.begin() as connection:
        from api.db.champion_models import AutoOptimizeState

        connection.execute(AutoOptimizeState.__table__.delete())
    (outcome,) = run_due(engine)
    assert outcome["outcome"] == "too_few_decisions"
    r = service.client.post(f"/v1/slots/{SLOT}/auto-optimize/run", json={"mode": "later"}, headers=service.admin)
    assert r.status_code == 400 and r.json()["field"] == "mode"


# --------------------------------------------------------------------------- holdout


def test_the_holdout_draw_is_sticky_and_near_its_share() -> None:
    secret = b"s"
    draws = [holdout_draw(secret, SLOT, f"u{i}") for i in range(20_000)]
    assert abs(np.mean(np.array(draws) < 0.1) - 0.1) < 0.01
    assert holdout_draw(secret, SLOT, "u1") == holdout_draw(secret, SLOT, "u1")
    assert holdout_draw(secret, "other", "u1") != holdout_draw(secret, SLOT, "u1")
    assert not in_holdout(secret, SLOT, "u1", 0.0)
    assert all(in_holdout(secret, SLOT, f"u{i}", 0.2) for i in range(200) if in_holdout(secret, SLOT, f"u{i}", 0.1))


def test_holdout_share_validation(service) -> None:
    seed(service, {"kind": "uniform"})
    for value in (0.6, -0.1, "a"):
        r = service.client.put(f"/v1/slots/{SLOT}", json={"holdout_share": value}, headers=service.admin)
        assert r.status_code == 400 and r.json()["field"] == "holdout_share", r.text
    assert service.client.get(f"/v1/slots/{SLOT}", headers=service.admin).json()["holdout_share"] == 0.0


def test_holdout_is_near_its_share_sticky_never_learned_and_its_lift_measured(service, engine, learner) -> None:
    seed(service, {"kind": "uniform"}, holdout_share=0.2)
    assert put_challenger(service, "lin", {"kind": "linear"}).status_code == 201
    # b0 (the baseline) earns 0.1; the others 0.5: serving uniformly beats the baseline
    decisions = traffic(service, 1200, lambda device, block: 0.1 if block == "b0" else 0.5, seed_=4, units=600)
    by_unit: dict[str, set] = {}
    for i, d in enumerate(decisions):
        by_unit.setdefault(f"u{i % 600}", set()).add(d["arm"])
    assert all(len(arms) == 1 for arms in by_unit.values())  # sticky
    held = [u for u, arms in by_unit.items() if arms == {"holdout"}]
    assert abs(len(held) / 600 - 0.2) < 0.06
    assert all(d["block"]["id"] == "b0" and d["probability"] == 1.0 for d in decisions if d["arm"] == "holdout")
    assert all(d["arm"] is None for d in decisions if d["arm"] != "holdout")
    # never learned, by the serving stream's learners
    learner.run_until_idle(now=later(5))
    with engine.connect() as connection:
        held_seqs = set(connection.execute(select(Decision.seq).where(Decision.arm == "holdout")).scalars())
        learned = set(connection.execute(select(LearnedDecision.seq).where(LearnedDecision.policy_name == "lin")).scalars())
    assert held_seqs and not held_seqs & learned
    assert len(learned) == 1200 - len(held_seqs)
    assert newest(engine, "lin").metrics["skipped"]["holdout"] == len(held_seqs)
    # the lift of personalization, with the report's statistics (once the last reward window closed)
    time.sleep(1.1)
    r = service.client.get(f"/v1/slots/{SLOT}/holdout", headers=service.admin)
    assert r.status_code == 200, r.text
    lift = r.json()
    assert lift["holdout_share"] == 0.2 and lift["decisions"]["holdout"] == len(held_seqs)
    arms = {a["arm"]: a for a in lift["analysis"]["arms"]}
    assert arms["holdout"]["units"] == len(held) and arms["holdout"]["ci"][0] < arms["holdout"]["mean"]
    assert lift["lift"]["absolute"] > 0.2 and lift["lift"]["absolute_ci"][0] > 0 and lift["lift"]["p_value"] < 0.001
    assert lift["analysis"]["srm"]["mismatch"] is False
    assert service.client.get(f"/v1/slots/{SLOT}/holdout?since=yesterday", headers=service.admin).status_code == 422
    assert service.client.get("/v1/slots/nope/holdout", headers=service.admin).status_code == 404


def test_the_cli_adds_lists_and_removes_challengers(service, engine, capsys) -> None:
    from api.cli import main

    seed(service, {"kind": "uniform"})
    url = ["--database-url", service.database_url]
    assert main([*url, "challenger", "add", "--slot", SLOT, "--name", "lin"]) == 0
    assert json.loads(capsys.readouterr().out)["kind"] == "linear"
    assert main([*url, "challenger", "list", "--slot", SLOT]) == 0
    assert [c["name"] for c in json.loads(capsys.readouterr().out)["challengers"]] == ["lin"]
    assert main([*url, "challenger", "add", "--slot", SLOT, "--name", "bad", "--policy", '{"kind": "fixed"}']) == 2
    assert "kind" in capsys.readouterr().err
    assert main([*url, "revisions", "list", "--slot", SLOT]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert main([*url, "revisions", "rollback", "7"]) == 2
    assert main([*url, "challenger", "remove", "--slot", SLOT, "--name", "lin"]) == 0
    with engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(Policy).where(Policy.name == "lin")).scalar_one() == 0


def test_the_dashboard_shows_the_holdout_lift(service) -> None:
    seed(service, {"kind": "uniform"}, holdout_share=0.3)
    traffic(service, 200, lambda device, block: 0.1 if block == "b0" else 0.5, seed_=5, units=100)
    time.sleep(1.1)
    page = service.client.get("/dashboard", headers=service.admin)
    assert page.status_code == 200
    text = " ".join(page.text.split())
    assert "Holdout 30.0% of units: personalization" in text, text[text.find("Holdout"):][:400]
