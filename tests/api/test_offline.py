"""Offline evaluation in the service, on SQLite and PostgreSQL: the log loader (reward rules, windows,
activation, catalog versions), the admin API (start, poll, fetch, apply a warm snapshot the registry
serves), its validation table, restarts, and ``slotbandit evaluate``."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from sqlalchemy import Engine, insert, select, update

from api.db.engine import make_engine
from api.db.evaluation_models import StoredEvaluation
from api.db.models import Decision, Policy, Reward, Snapshot
from api.errors import ApiError
from api.offline import load_log, release_orphans
from bandits.policies import Candidate

SLOT = "home.hero"
BEST = {"mobile": "b1", "desktop": "b2"}


def seed_slot(service, **settings) -> None:
    body = {"default_block": "b0", "reward_range": [0, 1], "reward_window_s": 2,
            "policy": {"kind": "uniform"}, **settings}
    r = service.client.put(f"/v1/slots/{SLOT}", json=body, headers=service.admin)
    assert r.status_code in (200, 201), r.text
    for i in range(3):
        r = service.client.put(f"/v1/slots/{SLOT}/blocks/b{i}", json={"features": {"kind": f"k{i}"}},
                               headers=service.admin)
        assert r.status_code in (200, 201), r.text


def decide(service, device: str, **body) -> dict:
    r = service.client.post(f"/v1/slots/{SLOT}/decide", json={"context": {"device": {"type": device}}, **body},
                            headers=service.decider)
    assert r.status_code == 200, r.text
    return r.json()


def reward(service, event_id: str, value: float) -> None:
    r = service.client.post(f"/v1/events/{event_id}/reward", json={"value": value}, headers=service.decider)
    assert r.status_code == 200, r.text


def traffic(service, n: int, seed: int = 0) -> list[dict]:
    """Uniformly logged decisions; the device decides the block that gets clicked (0.8 vs 0.1)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        device = ["mobile", "desktop"][int(rng.integers(2))]
        d = decide(service, device)
        if rng.random() < (0.8 if d["block"]["id"] == BEST[device] else 0.1):
            reward(service, d["event_id"], 1.0)
        out.append(d)
    return out


@pytest.fixture
def engine(service) -> Iterator[Engine]:
    engine = make_engine(service.database_url)
    yield engine
    engine.dispose()


def wait_done(service, evaluation_id: int, timeout_s: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        r = service.client.get(f"/v1/evaluations/{evaluation_id}", headers=service.admin)
        assert r.status_code == 200, r.text
        data = r.json()
        assert 0.0 <= data["progress"] <= 1.0
        if data["status"] in ("done", "failed"):
            return data
        time.sleep(0.1)
    raise AssertionError(f"evaluation {evaluation_id} did not finish: {data}")


# --------------------------------------------------------------------------- the loader


def test_load_log_joins_aggregates_and_marks_learnable(service, engine) -> None:
    seed_slot(service, reward_window_s=60, reward_aggregation="sum", default_reward=0.0)
    plain = decide(service, "mobile")
    deferred_shown = decide(service, "mobile", defer_activation=True)
    deferred_never = decide(service, "desktop", defer_activation=True)
    inline = service.client.post(
        f"/v1/slots/{SLOT}/decide", headers=service.decider,
        json={"candidates": [{"id": "x", "features": {"kind": "inline"}}, {"id": "y"}]},
    ).json()
    reward(service, plain["event_id"], 0.25)
    reward(service, plain["event_id"], 0.5)
    assert service.client.post(f"/v1/events/{deferred_shown['event_id']}/activate",
                               headers=service.decider).status_code == 200
    with engine.begin() as connection:  # a late reward, stamped after the 60 s window: kept, not joined
        created = connection.execute(select(Decision.created_at).where(Decision.event_id == plain["event_id"])).scalar_one()
        connection.execute(insert(Reward).values(event_id=plain["event_id"], value=0.2, reward_id="late",
                                                 created_at=created + timedelta(seconds=120)))
    # a catalog change after the decisions: the log keeps the features they had
    service.client.put(f"/v1/slots/{SLOT}/blocks/b1", json={"features": {"kind": "changed"}}, headers=service.admin)
    later = decide(service, "desktop")

    log = load_log(engine, SLOT)
    assert list(log.event_ids) == [plain["event_id"], deferred_shown["event_id"], deferred_never["event_id"],
                                   inline["event_id"], later["event_id"]]
    assert log.reward.tolist() == [0.75, 0.0, 0.0, 0.0, 0.0]  # sum within the window, late reward left out
    assert log.learnable.tolist() == [True, True, False, True, True]
    assert log.candidates[0][1] == Candidate("b1", {"kind": "k1"})
    assert log.candidates[4][1] == Candidate("b1", {"kind": "changed"})
    assert log.candidates[3] == (Candidate("x", {"kind": "inline"}), Candidate("y", {}))
    assert log.contexts[0]["device"]["type"] == "mobile"
    np.testing.assert_allclose(log.logging_pmf[0, :3], [1 / 3] * 3)
    assert log.meta["slot"] == SLOT and log.meta["default_block"] == "b0"
    assert (log.meta["reward_min"], log.meta["reward_max"]) == (0.0, 1.0)
    assert log.meta["open_windows"] == 5 and log.meta["missing_candidates"] == 0

    assert load_log(engine, SLOT, limit=2).event_ids.tolist() == [inline["event_id"], later["event_id"]]
    assert load_log(engine, SLOT, until=datetime.now(UTC) - timedelta(hours=1)).n == 0
    assert load_log(engine, SLOT, since=datetime.now(UTC) - timedelta(hours=1)).n == 5
    with pytest.raises(ApiError) as error:
        load_log(engine, "no.such.slot")
    assert error.value.field == "slot"


# --------------------------------------------------------------------------- the admin API flow


def test_evaluate_poll_apply_and_serve(service, engine) -> None:
    seed_slot(service)
    traffic(service, 300)
    body = {"slot": SLOT, "candidates": {"good": {}, "control": {"interactions": [], "ignore_linear_context": False}},
            "time_buckets": "hour"}
    r = service.client.post("/v1/evaluations", json=body, headers=service.admin)
    assert r.status_code == 202, r.text
    started = r.json()
    assert started["status"] in ("pending", "running", "done") and started["slot"] == SLOT
    data = wait_done(service, started["id"])
    assert data["status"] == "done", data["error"]
    result = data["result"]
    assert [p["name"] for p in result["policies"]] == ["online", "baseline", "uniform", "good", "control"]
    values = {p["name"]: p["value"] for p in result["policies"]}
    assert values["good"] > values["uniform"] + 0.1
    assert result["recommendation"]["candidate"] == "good"
    assert result["health"]["ok"] is True and result["log"]["last_seq"] > 0
    assert json.dumps(result, allow_nan=False)
    listed = service.client.get(f"/v1/evaluations?slot={SLOT}", headers=service.admin).json()["evaluations"]
    assert listed[0]["id"] == started["id"] and listed[0]["recommendation"]["candidate"] == "good"

    # not recommended: refused unless forced
    r = service.client.post(f"/v1/evaluations/{started['id']}/apply", json={"candidate": "control"},
                            headers=service.admin)
    assert r.status_code == 409 and r.json()["field"] == "candidate", r.text

    with engine.connect() as connection:
        revision_before = connection.execute(select(Policy.revision).where(Policy.name == SLOT)).scalar_one()
    time.sleep(2.1)  # apply trains on decisions whose 2 s reward window has closed
    r = service.client.post(f"/v1/evaluations/{started['id']}/apply", json={"candidate": "good"},
                            headers=service.admin)
    assert r.status_code == 201, r.text
    applied = r.json()
    assert applied["policy"] == SLOT and applied["decisions_learned"] == 300 and not applied["forced"]
    with engine.connect() as connection:
        policy = connection.execute(select(Policy.kind, Policy.revision).where(Policy.name == SLOT)).one()
        snapshot = connection.execute(select(Snapshot.version, Snapshot.cursor, Snapshot.metrics)
                                      .where(Snapshot.policy_name == SLOT)).one()
    assert policy.kind == "vw" and policy.revision == applied["policy_revision"] > revision_before
    assert snapshot.version == applied["snapshot_version"] and snapshot.cursor == result["log"]["last_seq"]
    assert snapshot.metrics["source"] == "evaluation" and snapshot.metrics["candidate"] == "good"
    served = service.client.get(f"/v1/policies/{SLOT}", headers=service.admin).json()
    assert served["kind"] == "vw" and served["trained"] is True
    assert served["model_version"] == applied["snapshot_version"]
    # warm: the served model already prefers each device's best block
    registry = service.client.app.state.registry
    chooser = registry.policies[SLOT].chooser
    candidates = registry.slots[SLOT].candidates
    for device, best in BEST.items():
        pmf = chooser.pmf({"device": {"type": device}}, candidates)
        assert [c.id for c in candidates][int(np.argmax(pmf))] == best
    assert service.client.get(f"/v1/evaluations/{started['id']}", headers=service.admin).json()["applied"][
        "snapshot_version"] == applied["snapshot_version"]


def test_a_linear_challenger_is_evaluated_applied_and_then_evaluated_as_the_online_snapshot(service, engine) -> None:
    """A ``{"kind": "linear"}`` candidate is replayed by the linear family beside a vw one; applied, the slot's
    policy becomes linear with a warm snapshot; an evaluation with ``online: snapshot`` then replays that
    linear snapshot (predict only) as the online policy."""
    seed_slot(service)
    traffic(service, 300)
    body = {"slot": SLOT, "candidates": {"twin": {"kind": "linear"}, "vw-default": {"kind": "vw"}},
            "time_buckets": None}
    r = service.client.post("/v1/evaluations", json=body, headers=service.admin)
    assert r.status_code == 202, r.text
    data = wait_done(service, r.json()["id"])
    assert data["status"] == "done", data["error"]
    policies = {p["name"]: p for p in data["result"]["policies"]}
    assert policies["twin"]["config"]["kind"] == "linear" and "gamma_scale" in policies["twin"]["config"]
    assert policies["twin"]["value"] > policies["uniform"]["value"] + 0.1
    time.sleep(2.1)  # apply trains on decisions whose 2 s reward window has closed
    r = service.client.post(f"/v1/evaluations/{data['id']}/apply", json={"candidate": "twin", "force": True},
                            headers=service.admin)
    assert r.status_code == 201, r.text
    served = service.client.get(f"/v1/policies/{SLOT}", headers=service.admin).json()
    assert served["kind"] == "linear" and served["trained"] is True
    registry = service.client.app.state.registry
    chooser, candidates = registry.policies[SLOT].chooser, registry.slots[SLOT].candidates
    for device, best in BEST.items():
        pmf = chooser.pmf({"device": {"type": device}}, candidates)
        assert [c.id for c in candidates][int(np.argmax(pmf))] == best
    r = service.client.post("/v1/evaluations", json={"slot": SLOT, "online": "snapshot", "time_buckets": None},
                            headers=service.admin)
    again = wait_done(service, r.json()["id"])
    assert again["status"] == "done", again["error"]
    online = {p["name"]: p for p in again["result"]["policies"]}["online"]
    assert online["kind"] == "online" and online["value"] > policies["uniform"]["value"] + 0.1


BAD_LINEAR = [({"kind": "linear", "ridge": -1}, "candidates.twin.ridge"),
              ({"kind": "linear", "bogus": 1}, "candidates.twin.bogus"),
              ({"kind": "cart"}, "candidates.twin.kind")]


@pytest.mark.parametrize(("options", "field"), BAD_LINEAR)
def test_a_bad_linear_candidate_names_its_field(service, options, field) -> None:
    seed_slot(service)
    r = service.client.post("/v1/evaluations", json={"slot": SLOT, "candidates": {"twin": options}},
                            headers=service.admin)
    assert r.status_code == 422 and r.json()["field"] == field, r.text


def test_stored_evaluations_survive_a_restart_and_orphans_rerun(service, engine, tmp_path) -> None:
    from litestar.testing import TestClient

    from api.app import create_app
    from tests.conftest import make_service_settings

    seed_slot(service)
    traffic(service, 60)
    r = service.client.post("/v1/evaluations", json={"slot": SLOT, "time_buckets": None}, headers=service.admin)
    first = wait_done(service, r.json()["id"])
    assert first["status"] == "done"
    # an evaluation whose process died mid-run: stale heartbeat
    with engine.begin() as connection:
        orphan = connection.execute(insert(StoredEvaluation).values(
            slot_name=SLOT, status="running", progress=0.4, request=first["request"],
            started_at=datetime.now(UTC) - timedelta(minutes=10), heartbeat_at=datetime.now(UTC) - timedelta(minutes=10),
        )).inserted_primary_key[0]
    assert release_orphans(engine) == 1
    with engine.begin() as connection:
        connection.execute(update(StoredEvaluation).where(StoredEvaluation.id == orphan).values(status="pending"))
    settings = make_service_settings(service.database_url, tmp_path / "second")
    (tmp_path / "second").mkdir()
    with TestClient(app=create_app(settings)) as client:  # type: ignore[arg-type]
        again = client.get(f"/v1/evaluations/{first['id']}", headers=service.admin).json()
        assert again["result"] == first["result"]
        deadline = time.monotonic() + 60
        while client.get(f"/v1/evaluations/{orphan}", headers=service.admin).json()["status"] != "done":
            assert time.monotonic() < deadline
            time.sleep(0.1)


BAD_REQUESTS = [
    ({}, 400, "slot"),
    ({"slot": "nope"}, 422, "slot"),
    ({"slot": SLOT, "surprise": 1}, 400, "surprise"),
    ({"slot": SLOT, "method": "magic"}, 422, "method"),
    ({"slot": SLOT, "interval": "wide"}, 422, "interval"),
    ({"slot": SLOT, "level": 1.5}, 422, "level"),
    ({"slot": SLOT, "since": "last tuesday"}, 422, "since"),
    ({"slot": SLOT, "since": "2024-03-02", "until": "2024-03-01"}, 422, "until"),
    ({"slot": SLOT, "candidates": {"x": {"exploration": "telepathy"}}}, 422, "candidates.x.exploration"),
    ({"slot": SLOT, "candidates": {"x": {"epsilon": 7}}}, 422, "candidates.x.epsilon"),
    ({"slot": SLOT, "candidates": {"x": {"bogus": 1}}}, 422, "candidates.x.bogus"),
    ({"slot": SLOT, "candidates": {"uniform": {}}}, 422, "candidates.uniform"),
    ({"slot": SLOT, "candidates": {"bad name!": {}}}, 422, "candidates.bad name!"),
    ({"slot": SLOT, "candidates": {f"c{i}": {} for i in range(11)}}, 422, "candidates"),
    ({"slot": SLOT, "candidates": {"x": 5}}, 422, "candidates.x"),
    ({"slot": SLOT, "limit": 3}, 400, "limit"),
    ({"slot": SLOT, "online": "yesterday"}, 400, "online"),
]


def test_bad_requests_name_their_field(service) -> None:
    seed_slot(service)
    for body, status, field in BAD_REQUESTS:
        r = service.client.post("/v1/evaluations", json=body, headers=service.admin)
        assert (r.status_code, r.json()["field"]) == (status, field), (body, r.text)
    assert service.client.get("/v1/evaluations", headers=service.admin).json()["evaluations"] == []
    r = service.client.post("/v1/evaluations", content=b"{not json", headers=service.admin)
    assert r.status_code == 400 and r.json()["field"] == "body"
    assert service.client.get("/v1/evaluations/999", headers=service.admin).status_code == 404
    r = service.client.post("/v1/evaluations/999/apply", json={"candidate": "x"}, headers=service.admin)
    assert r.status_code == 404 and r.json()["field"] == "id"
    r = service.client.post("/v1/evaluations", json={"slot": SLOT}, headers=service.decider)
    assert r.status_code in (401, 403)
    # apply: unknown candidate, bad body
    traffic(service, 30)
    done = wait_done(service, service.client.post("/v1/evaluations", json={"slot": SLOT, "candidates": {"a": {}}},
                                                  headers=service.admin).json()["id"])
    r = service.client.post(f"/v1/evaluations/{done['id']}/apply", json={"candidate": "zzz"}, headers=service.admin)
    assert r.status_code == 422 and r.json()["field"] == "candidate"
    r = service.client.post(f"/v1/evaluations/{done['id']}/apply", json={"candidate": "a", "force": "yes"},
                            headers=service.admin)
    assert r.status_code == 400 and r.json()["field"] == "force"


# --------------------------------------------------------------------------- CLI


def test_cli_evaluate_a_slot_and_a_file(service, tmp_path, capsys) -> None:
    from api.cli import main

    seed_slot(service)
    traffic(service, 120)
    url = service.database_url
    assert main(["--database-url", url, "evaluate", "--slot", SLOT, "--json", "--candidate", "good={}",
                 "--bucket", "none"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [p["name"] for p in data["policies"]] == ["online", "baseline", "uniform", "good"]
    path = tmp_path / "log.dsjson"
    assert main(["--database-url", url, "export", "--slot", SLOT, "--format", "dsjson", "--output", str(path)]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--log", str(path), "--default-block", "b0", "--candidate", "good={}",
                 "--estimator", "snips", "--interval", "bootstrap"]) == 0
    table = capsys.readouterr().out
    assert "recommendation:" in table and "bootstrap" in table
    assert main(["evaluate", "--log", str(path), "--candidate", 'bad={"epsilon": 3}']) == 2
    assert "epsilon" in capsys.readouterr().err
    assert main(["evaluate", "--log", str(path), "--estimator", "magic"]) == 2
    assert "method" in capsys.readouterr().err
    assert main(["--database-url", url, "evaluate", "--slot", "nope"]) == 2
