"""The learner on real databases: reward rules, windows, activation, late rewards, apprentice
mode, exactly-once cursor, leases, catalog versions, and a seeded learning run on the
simulated world through the service's own decide path."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import msgspec
import numpy as np
import pytest
from sqlalchemy import Engine, func, insert, select, update

from api.db.engine import make_engine
from api.db.learning_models import LearnedDecision
from api.db.models import Decision, Reward, Snapshot
from api.learner import (
    SERVER_SAFETY_MARGIN_S,
    SQLITE_SAFETY_MARGIN_S,
    Learner,
    LearnerSettings,
    SlotRules,
    StepReport,
    acquire_lease,
    count_late_rewards,
)
from api.schemas import DecideRequest, decode
from bandits.rewards import RewardRule
from bandits.simulation import World

SLOT = "home.hero"


def seed(service, blocks: int = 4, **settings) -> None:
    body = {"default_block": "b0", "reward_range": [0, 1], "reward_window_s": 60, **settings}
    r = service.client.put(f"/v1/slots/{SLOT}", json=body, headers=service.admin)
    assert r.status_code in (200, 201), r.text
    for i in range(blocks):
        r = service.client.put(f"/v1/slots/{SLOT}/blocks/b{i}", json={"features": {"kind": f"k{i}"}}, headers=service.admin)
        assert r.status_code in (200, 201), r.text


def decide(service, **body) -> dict:
    r = service.client.post(f"/v1/slots/{SLOT}/decide", json=body, headers=service.decider)
    assert r.status_code == 200, r.text
    return r.json()


def reward(service, event_id: str, value: float, reward_id: str | None = None) -> None:
    body = {"value": value} if reward_id is None else {"value": value, "reward_id": reward_id}
    r = service.client.post(f"/v1/events/{event_id}/reward", json=body, headers=service.decider)
    assert r.status_code == 200, r.text


@pytest.fixture
def engine(service) -> Iterator[Engine]:
    engine = make_engine(service.database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def learner_for(service) -> Iterator[Callable[..., Learner]]:
    """Learners on their own engine (as a `slotbandit learn` process has), disposed afterwards."""
    engines = []

    def make(**overrides: object) -> Learner:
        values: dict[str, object] = dict(safety_margin_s=0.0, ledger=True, snapshot_every=1000, snapshot_interval_s=3600)
        values.update(overrides)
        engines.append(make_engine(service.database_url))
        return Learner(engines[-1], LearnerSettings(**values))  # type: ignore[arg-type]

    yield make
    for engine in engines:
        engine.dispose()


def later(seconds: float) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)


def ledger(url: str) -> dict[int, float]:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return dict(connection.execute(select(LearnedDecision.seq, LearnedDecision.reward)).all())
    finally:
        engine.dispose()


def seq_of(url: str, event_id: str) -> int:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return connection.execute(select(Decision.seq).where(Decision.event_id == event_id)).scalar_one()
    finally:
        engine.dispose()


def latest_metrics(url: str) -> dict:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return connection.execute(select(Snapshot.metrics).order_by(Snapshot.version.desc()).limit(1)).scalar_one()
    finally:
        engine.dispose()


# --------------------------------------------------------------------------- pure rules

RULES = SlotRules(window_s=60, aggregation="sum", default_reward=0.1, reward_min=0.0, reward_max=1.0,
                  require_activation=False, default_block=None)


def test_slot_rules_carry_the_reward_rule() -> None:
    """The learner applies ``bandits.rewards`` (tested there) with the slot's rule."""
    assert RULES.reward == RewardRule("sum", 0.1, 0.0, 1.0)
    assert RULES.reward is RULES.reward  # made once per slot, not per decision


def test_learner_settings_from_env() -> None:
    s = LearnerSettings.from_env({"SLOTBANDIT_LEARNER_SNAPSHOT_EVERY": "7", "SLOTBANDIT_LEARNER_LEDGER": "yes",
                                  "SLOTBANDIT_LEARNER_SAFETY_MARGIN_S": "0.5"})
    assert (s.snapshot_every, s.ledger, s.safety_margin_s) == (7, True, 0.5)
    with pytest.raises(ValueError, match="snapshot_every"):
        LearnerSettings(snapshot_every=0)


def test_the_default_safety_margin_depends_on_the_store() -> None:
    s = LearnerSettings()
    assert s.safety_margin_s is None
    assert s.margin_for("sqlite") == SQLITE_SAFETY_MARGIN_S == 0.75
    assert s.margin_for("postgresql") == SERVER_SAFETY_MARGIN_S == 3.0
    assert LearnerSettings(safety_margin_s=1.5).margin_for("sqlite") == 1.5
    assert LearnerSettings(safety_margin_s=0).margin_for("postgresql") == 0.0
    assert LearnerSettings.from_env({"SLOTBANDIT_LEARNER_SAFETY_MARGIN_S": ""}).safety_margin_s is None
    assert LearnerSettings.from_env({"SLOTBANDIT_LEARNER_SAFETY_MARGIN_S": "none"}).safety_margin_s is None
    for bad in (-1.0, float("nan"), True):
        with pytest.raises(ValueError, match="safety_margin_s"):
            LearnerSettings(safety_margin_s=bad)


def test_a_learner_uses_the_margin_of_its_store(service, engine) -> None:
    seed(service, reward_window_s=5)
    decide(service)
    learner = Learner(engine, LearnerSettings())
    learner.step(later(10))
    expected = 0.75 if engine.dialect.name == "sqlite" else 3.0
    assert learner.policies[SLOT].margin_s == expected


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.mark.parametrize("aggregation", ["sum", "first"])
def test_a_rewards_effect_is_in_a_snapshot_within_the_configured_times(service, engine, aggregation) -> None:
    """Learnable at the window's close (sum) or at the final reward (first), plus the margin; in a
    snapshot at most ``snapshot_interval_s`` after it was learned; the run loop sleeps no longer."""
    window, margin, interval = 5, 0.25, 1.0
    seed(service, reward_window_s=window, reward_aggregation=aggregation)
    event = decide(service)["event_id"]
    reward(service, event, 1.0)
    with engine.connect() as connection:
        seq, created = connection.execute(select(Decision.seq, Decision.created_at).where(Decision.event_id == event)).one()
        rewarded = connection.execute(select(Reward.created_at).where(Reward.event_id == event)).scalar_one()
    created, rewarded = (m if m.tzinfo else m.replace(tzinfo=UTC) for m in (created, rewarded))
    ready = created + timedelta(seconds=window) if aggregation == "sum" else rewarded
    clock = Clock()
    settings = LearnerSettings(safety_margin_s=margin, snapshot_interval_s=interval, batch_wait_s=0.1,
                               poll_interval_s=0.25, ledger=True)
    learner = Learner(engine, settings, clock=clock)

    # just before the margin has passed: waiting, and the loop wakes when it becomes learnable
    report = learner.step(ready + timedelta(seconds=margin - 0.05))
    assert (report.learned, report.waiting) == (0, 1)
    if aggregation == "sum":
        assert report.ready_in_s == pytest.approx(0.05)
        assert learner.wait_after(report) == pytest.approx(0.1)  # batch_wait_s: no sooner than that
    else:  # a final reward is not foreseen by the window: the idle poll finds it
        assert learner.wait_after(report) == pytest.approx(0.25)

    report = learner.step(ready + timedelta(seconds=margin))
    assert (report.learned, report.snapshots) == (1, 0)  # learned; the last snapshot was < interval ago
    policy = learner.policies[SLOT]
    assert policy.snapshot_due_in() == pytest.approx(interval)
    assert learner.wait_after(StepReport()) == pytest.approx(0.25)  # idle poll
    clock.t += 0.6
    assert learner.wait_after(StepReport()) == pytest.approx(0.25)
    clock.t += 0.3
    assert learner.wait_after(StepReport()) == pytest.approx(0.1)  # the snapshot comes first
    assert learner.step(ready + timedelta(seconds=margin + 0.9)).snapshots == 0
    clock.t += 0.1
    report = learner.step(ready + timedelta(seconds=margin + 1.0))
    assert report.snapshots == 1
    with engine.connect() as connection:
        cursor = connection.execute(select(Snapshot.cursor).order_by(Snapshot.version.desc()).limit(1)).scalar_one()
    assert cursor >= seq and ledger(service.database_url) == {seq: 1.0}
    assert policy.snapshot_due_in() is None and learner.wait_after(StepReport()) == pytest.approx(0.25)


def test_a_backlog_is_learned_without_sleeping(service, learner_for) -> None:
    seed(service, reward_window_s=0)
    for _ in range(30):
        decide(service)
    learner = learner_for(batch_size=10)
    report = learner.step(later(1))
    assert (report.learned, report.waiting) == (10, 0)
    assert learner.wait_after(report) == 0.0


# --------------------------------------------------------------------------- windows and rules


@pytest.mark.parametrize(("aggregation", "expected"), [("sum", [1.0, 0.9, 0.0]), ("max", [0.7, 0.5, 0.0]),
                                                       ("first", [0.7, 0.4, 0.0])])
def test_window_closing_and_aggregation(service, learner_for, aggregation: str, expected: list[float]) -> None:
    seed(service, reward_aggregation=aggregation, reward_window_s=60)
    events = [decide(service)["event_id"] for _ in range(3)]
    reward(service, events[0], 0.7, "a")
    reward(service, events[0], 0.6, "b")
    reward(service, events[1], 0.4, "a")
    reward(service, events[1], 0.5, "b")
    learner = learner_for()
    if aggregation == "sum":  # nothing is final early under sum: the open window holds everything back
        report = learner.step(later(30))
        assert (report.learned, report.waiting) == (0, 3)
    report = learner.run_until_idle(later(61))
    assert report.learned == 3 - (0 if aggregation == "sum" else 0)
    learned = ledger(service.database_url)
    assert [learned[seq_of(service.database_url, e)] for e in events] == pytest.approx(expected)
    metrics = latest_metrics(service.database_url)
    assert metrics["decisions_learned"] == 3
    assert metrics["average_reward"] == pytest.approx(sum(expected) / 3)
    assert 0.0 <= metrics["pv_loss"]


def test_a_final_reward_makes_a_decision_learnable_before_its_window_closes(service, learner_for) -> None:
    seed(service, reward_aggregation="first", reward_window_s=3600)
    first, second, third = (decide(service)["event_id"] for _ in range(3))
    reward(service, first, 1.0)
    reward(service, third, 1.0)
    learner = learner_for()
    report = learner.step(later(1))
    # the first is final; the second (no reward yet, window open) stops the cursor, so the third waits too
    assert (report.learned, report.waiting) == (1, 2)
    reward(service, second, 0.5)
    report = learner.run_until_idle(later(2))
    assert report.learned == 2
    assert sorted(ledger(service.database_url).values()) == [0.5, 1.0, 1.0]


def test_activation_rules(service, learner_for) -> None:
    seed(service, require_activation=True, reward_window_s=10)
    shown, not_shown = decide(service)["event_id"], decide(service)["event_id"]
    assert service.client.post(f"/v1/events/{shown}/activate", headers=service.decider).status_code == 200
    reward(service, not_shown, 1.0)  # a reward without activation does not make it learnable
    learner = learner_for()
    learner.run_until_idle(later(11))
    assert list(ledger(service.database_url)) == [seq_of(service.database_url, shown)]
    assert latest_metrics(service.database_url)["skipped"] == {"not_activated": 1}
    # without require_activation, a deferred decision that was never activated is not learned either
    service.client.put(f"/v1/slots/{SLOT}", json={"require_activation": False}, headers=service.admin)
    deferred = decide(service, defer_activation=True)["event_id"]
    plain = decide(service)["event_id"]
    learner.run_until_idle(later(11))
    learned = ledger(service.database_url)
    assert seq_of(service.database_url, plain) in learned and seq_of(service.database_url, deferred) not in learned
    assert latest_metrics(service.database_url)["skipped"] == {"not_activated": 2}


def test_late_rewards_are_kept_and_counted_not_learned(service, learner_for, engine) -> None:
    seed(service, reward_window_s=10)
    on_time, late = decide(service)["event_id"], decide(service)["event_id"]
    reward(service, on_time, 1.0)
    with engine.begin() as connection:
        decided = connection.execute(select(Decision.created_at).where(Decision.event_id == late)).scalar_one()
        connection.execute(insert(Reward).values(event_id=late, value=1.0, created_at=decided + timedelta(seconds=30)))
    learner = learner_for()
    learner.run_until_idle(later(40))
    learned = ledger(service.database_url)
    assert learned[seq_of(service.database_url, on_time)] == 1.0
    assert learned[seq_of(service.database_url, late)] == 0.0  # the default reward: the late one is not learned
    assert latest_metrics(service.database_url)["late_rewards"] == 1
    # a reward for an already learned decision: stored, counted, and it changes nothing learned
    reward(service, on_time, 0.5, "after")
    with engine.begin() as connection:
        connection.execute(update(Reward).where(Reward.reward_id == "after").values(
            created_at=datetime.now(UTC) + timedelta(seconds=60)))
        assert count_late_rewards(connection, SLOT) == 2
        assert connection.execute(select(func.count()).select_from(Reward)).scalar_one() == 3
    status = service.client.get(f"/v1/policies/{SLOT}/learning", headers=service.admin).json()
    assert status["late_rewards"] == 2 and status["decisions_pending"] == 0
    learner.run_until_idle(later(100))
    assert ledger(service.database_url) == learned


def test_logging_only_and_fallbacks_learn_nothing(service, learner_for) -> None:
    seed(service, learning_mode="logging-only", reward_window_s=5)
    for _ in range(5):
        reward(service, decide(service)["event_id"], 1.0)
    learner = learner_for()
    report = learner.run_until_idle(later(10))
    # one snapshot that learned nothing: it only carries the cursor past the skipped decisions
    assert (report.learned, report.skipped, report.snapshots) == (0, 5, 1)
    assert latest_metrics(service.database_url)["trained"] is False
    assert ledger(service.database_url) == {}


# --------------------------------------------------------------------------- apprentice


def test_apprentice_learns_to_imitate_the_default_block(service, learner_for) -> None:
    seed(service, blocks=5, learning_mode="apprentice", reward_window_s=0)
    learner = learner_for(snapshot_every=100)
    segments = ["a", "b", "c"]
    for i in range(300):
        d = decide(service, context={"user": {"segment": segments[i % 3]}})
        assert d["block"]["id"] == "b0" and d["probability"] == 1.0
    learner.run_until_idle(later(1))
    metrics = latest_metrics(service.database_url)
    apprentice = metrics["apprentice"]
    assert apprentice["decisions"] == 300
    assert apprentice["recent_match_rate"] > 0.9  # after 200 decisions the model's top choice is the default
    assert 0.5 < apprentice["match_rate"] < apprentice["recent_match_rate"]
    assert metrics["average_reward"] == 1.0  # the imitation reward; real rewards stay in the log for reports
    status = service.client.get(f"/v1/policies/{SLOT}/learning", headers=service.admin).json()
    assert status["apprentice_match_rate"] == apprentice["match_rate"]
    # switched to online, the learned model ranks the default block first
    service.client.put(f"/v1/slots/{SLOT}", json={"learning_mode": "online"}, headers=service.admin)
    service.client.app.state.registry.refresh()
    d = decide(service, context={"user": {"segment": "b"}})
    assert d["model_version"] >= 3 and d["ranking"][0]["id"] == "b0" and d["ranking"][0]["probability"] > 0.5


# --------------------------------------------------------------------------- exactly once


def test_cursor_and_snapshot_are_one_transaction(service, learner_for, engine) -> None:
    seed(service, reward_window_s=5)
    for i in range(120):
        e = decide(service, context={"user": {"i": i % 4}})["event_id"]
        if i % 3 == 0:
            reward(service, e, 1.0)
    first = learner_for(snapshot_every=50, batch_size=20)
    for _ in range(4):  # reads 20, 20, 10 (up to the snapshot at 50), 20: 70 learned, 50 of them in v1
        first.step(later(10))
    assert first.policies[SLOT].totals.learned == 70
    # crash: the first learner vanishes without a final snapshot (its lease expires)
    from api.db.learning_models import LearnerLease

    with engine.begin() as connection:
        connection.execute(update(LearnerLease).values(expires_at=datetime.now(UTC) - timedelta(seconds=1)))
    second = learner_for(snapshot_every=50, batch_size=20)
    second.run_until_idle(later(10))
    learned = ledger(service.database_url)
    assert len(learned) == 120
    with engine.connect() as connection:
        all_seqs = set(connection.execute(select(Decision.seq)).scalars())
        versions = connection.execute(select(Snapshot.version, Snapshot.cursor).order_by(Snapshot.version)).all()
    assert set(learned) == all_seqs
    metrics = latest_metrics(service.database_url)
    assert metrics["decisions_learned"] == 120 and metrics["reward_sum"] == 40.0 and metrics["late_rewards"] == 0
    assert versions[0] == (1, min(all_seqs) + 49) and versions[-1][1] == max(all_seqs)
    # the stale learner cannot write over the new one (lease fence), and reloads instead
    assert first.policies[SLOT].snapshot() is None
    assert len(ledger(service.database_url)) == 120


def test_one_lease_holder_per_policy(service, learner_for) -> None:
    seed(service, reward_window_s=5)
    for _ in range(10):
        decide(service)
    a, b = learner_for(), learner_for()
    assert a.step(later(10)).learned == 10
    assert b.step(later(10)).learned == 0 and SLOT not in b.policies
    a.close()  # graceful stop: final snapshot, lease released
    assert acquire_lease(b.engine, SLOT, b.holder, 30.0)
    for _ in range(5):
        decide(service)
    assert b.run_until_idle(later(10)).learned == 5
    assert len(ledger(service.database_url)) == 15


def test_admin_change_makes_the_running_learner_reload(service, learner_for) -> None:
    seed(service, reward_window_s=5)
    for _ in range(30):
        decide(service)
    learner = learner_for()
    learner.run_until_idle(later(10))
    for _ in range(10):
        decide(service)
    learner.step(later(10))  # 10 learned, not yet in a snapshot
    r = service.client.post(f"/v1/policies/{SLOT}/reset", headers=service.admin)
    assert r.status_code == 201 and r.json()["version"] == 2
    learner.run_until_idle(later(10))
    state = learner.policies[SLOT]
    assert state.version == 3 and state.totals.learned == 40  # the 10 were learned again, once, after the reset
    assert len(ledger(service.database_url)) == 40


# --------------------------------------------------------------------------- catalog changes


def test_catalog_changes(service, learner_for) -> None:
    seed(service, blocks=3, reward_window_s=5)
    old = decide(service)
    for _ in range(200):
        d = decide(service)
        reward(service, d["event_id"], 1.0 if d["block"]["id"] == "b1" else 0.0)
    learner = learner_for()
    learner.run_until_idle(later(10))
    registry = service.client.app.state.registry
    registry.refresh()
    assert decide(service)["ranking"][0]["id"] == "b1"
    # a changed block gets a new catalog version; the old decision keeps its original features
    service.client.put(f"/v1/slots/{SLOT}/blocks/b1", json={"features": {"kind": "changed"}}, headers=service.admin)
    # a new block is explored from its first decision
    service.client.put(f"/v1/slots/{SLOT}/blocks/b9", json={"features": {"kind": "new"}}, headers=service.admin)
    registry.refresh()
    fresh = decide(service)
    assert {x["id"]: x["probability"] for x in fresh["ranking"]}["b9"] > 0.0
    row = service.client.get(f"/v1/events/{old['event_id']}", headers=service.admin).json()
    cached = learner._catalogs.candidates(SimpleNamespace(
        slot_id=registry.slots[SLOT].id, catalog_version=row["catalog_version"], inline_candidates=None,
        candidate_ids=row["candidate_ids"]))
    assert cached is not None and dict(cached[1].features) == {"kind": "k1"}
    # a deactivated block is never chosen again, even by the trained model that preferred it
    service.client.delete(f"/v1/slots/{SLOT}/blocks/b1", headers=service.admin)
    registry.refresh()
    for _ in range(30):
        d = decide(service)
        assert d["block"]["id"] != "b1" and "b1" not in {x["id"] for x in d["ranking"]}


# --------------------------------------------------------------------------- learning on the simulated world


@pytest.mark.parametrize(("kind", "n", "last", "min_gap", "beat_best_fixed"), [
    pytest.param("vw", 20_000, 5_000, 0.6, True, marks=pytest.mark.slow),  # the evidence (~30 s)
    pytest.param("linear", 20_000, 5_000, 0.6, True, marks=pytest.mark.slow),  # measured 0.670 (docs/learning.md)
    ("vw", 6_000, 1_500, 0.4, True),  # CI-sized
    # the linear default's optimism (ucb_alpha 0.3, chosen on the bake-off) still costs at 6,000: measured 0.307,
    # below the best fixed block; no explorer tried beat it here by 6,000 (docs/learning.md)
    ("linear", 6_000, 1_500, 0.25, False),
])
def test_model_policy_learns_the_simulated_world(sqlite_url, tmp_path, kind: str, n: int, last: int,
                                                 min_gap: float, beat_best_fixed: bool) -> None:
    """n decisions of the default policy of each learning kind through the service's decide path, the
    decision log and the learner (one step per 500 decisions, then a hot swap), against the world's truth."""
    from litestar.testing import TestClient

    from api.app import create_app
    from tests.conftest import create_keys, make_service_settings

    admin_key, _ = create_keys(sqlite_url)
    settings = make_service_settings(sqlite_url, tmp_path, reload_interval_s=3600.0, model_poll_interval_s=3600.0)
    world = World(seed=3)
    headers = {"Authorization": f"Bearer {admin_key}"}
    with TestClient(app=create_app(settings)) as client:  # type: ignore[arg-type]
        r = client.put("/v1/slots/sim", json={"default_block": world.catalog[0].id, "reward_window_s": 0,
                                              "reward_range": [0, 1], "policy": {"kind": kind}}, headers=headers)
        assert r.status_code == 201, r.text
        for block in world.catalog:
            client.put(f"/v1/slots/sim/blocks/{block.id}", json={"features": block.features}, headers=headers)
        state = client.app.state
        decider, writer, registry, engine = state.decider, state.writer, state.registry, state.engine
        registry.refresh()
        learner = Learner(engine, LearnerSettings(safety_margin_s=0.0, snapshot_every=500, batch_size=500))
        slot_ids = [c.id for c in registry.slots["sim"].candidates]
        assert slot_ids == [b.id for b in world.catalog]
        batch = 500
        rng = np.random.default_rng(5)
        visitors = list(world.visitors(n))
        policy_reward = np.empty(n)
        expected_all = np.empty((n, len(slot_ids)))
        versions = set()
        for start in range(0, n, batch):
            slot = registry.slots["sim"]
            rewards = []
            for i in range(start, start + batch):
                visitor = visitors[i]
                body = visitor.request_body(event_id=f"sim-{i}")  # fixed event ids: fixed sampling draws
                request = decode(msgspec.json.encode(body), DecideRequest)
                facts = decider.facts(request, {k.lower(): v for k, v in visitor.headers().items()}, None)
                row = decider.decide(slot, request, facts)
                writer.submit(row)
                p = world.expected_rewards(visitor)
                expected_all[i] = p
                policy_reward[i] = float(np.dot(row["pmf"], p))
                versions.add(row["model_version"])
                if rng.random() < p[row["chosen_index"]]:
                    rewards.append({"event_id": row["event_id"], "value": 1.0, "created_at": row["created_at"]})
            writer.flush()
            if rewards:
                with engine.begin() as connection:
                    connection.execute(insert(Reward), rewards)
            learner.step()
            registry.refresh()  # the hot swap a worker's poll does
        window = slice(n - last, n)
        policy = float(policy_reward[window].mean())
        uniform = float(expected_all[window].mean())
        oracle = float(expected_all[window].max(axis=1).mean())
        best_fixed = float(expected_all[window].mean(axis=0).max())
        gap = (policy - uniform) / (oracle - uniform)
        print(f"{kind}: {n} decisions, last {last}: policy {policy:.4f} uniform {uniform:.4f} best fixed {best_fixed:.4f} "
              f"oracle {oracle:.4f} gap closed {gap:.3f}; model versions {min(versions)}..{max(versions)}")
        assert len(versions) >= n // batch - 2  # a new model every 500 decisions, served by the next ones
        assert gap > min_gap
        if beat_best_fixed:
            assert policy > best_fixed + 0.01
        metrics = latest_metrics(sqlite_url)
        assert metrics["decisions_learned"] == n


# --------------------------------------------------------------------------- cursor edge cases (hardening)


def test_a_policy_whose_decisions_are_all_skipped_still_advances_its_cursor(service, learner_for, engine) -> None:
    seed(service, learning_mode="logging-only", reward_window_s=5)
    for _ in range(7):
        decide(service)
    learner_for().run_until_idle(later(10))
    with engine.connect() as connection:
        top = connection.execute(select(func.max(Decision.seq))).scalar_one()
        cursor = connection.execute(select(Snapshot.cursor).order_by(Snapshot.version.desc()).limit(1)).scalar_one()
    assert cursor == top  # a restarted learner starts after them instead of re-reading them forever
    assert latest_metrics(service.database_url)["skipped"] == {"logging_only": 7}
    status = service.client.get(f"/v1/policies/{SLOT}/learning", headers=service.admin).json()
    assert status["decisions_pending"] == 0
    fresh = learner_for()
    assert fresh.run_until_idle(later(10)).processed == 0  # nothing re-read


def test_reset_from_start_with_the_ledger_relearns_the_log_once(service, learner_for) -> None:
    seed(service, reward_window_s=5)
    for _ in range(20):
        decide(service)
    learner = learner_for()
    assert learner.run_until_idle(later(10)).learned == 20
    r = service.client.post(f"/v1/policies/{SLOT}/reset", json={"from_start": True}, headers=service.admin)
    assert r.status_code == 201, r.text
    for _ in range(5):
        decide(service)
    report = learner.run_until_idle(later(10))
    assert report.learned == 25 and report.snapshots >= 1  # not refused on the ledger's keys
    state = learner.policies[SLOT]
    assert state.totals.learned == 25 and state.cursor == seq_of(service.database_url, decide(service)["event_id"]) - 1
    assert len(ledger(service.database_url)) == 25


def test_log_positions_are_never_reused_after_a_purge(service, learner_for, engine) -> None:
    from api.db.queries import purge_older_than

    seed(service, reward_window_s=5)
    first = [decide(service)["event_id"] for _ in range(10)]
    learner = learner_for()
    assert learner.run_until_idle(later(10)).learned == 10
    top = seq_of(service.database_url, first[-1])
    assert purge_older_than(engine, 0.0, now=later(1))["decisions"] == 10
    again = [decide(service)["event_id"] for _ in range(11)]
    assert seq_of(service.database_url, again[0]) > top
    assert learner.run_until_idle(later(10)).learned == 11  # none silently skipped under the old cursor


def test_migration_0007_keeps_the_log_and_stops_position_reuse(sqlite_url) -> None:
    """A SQLite log written at 0006 is rebuilt with AUTOINCREMENT: rows, positions and indexes kept, and a
    position freed by a purge is never handed out again."""
    from sqlalchemy import delete, inspect

    from api.db.engine import migrate

    migrate(sqlite_url, "0006")
    engine = make_engine(sqlite_url)
    try:
        row = dict(slot_id=1, policy_name="p", policy_kind="vw", model_version=0, trained=False, learning_mode="online",
                   candidate_ids=["a"], pmf=[1.0], chosen_index=0, chosen_block="a", probability=1.0, context={},
                   consent=True, deferred=False, fallback=False, created_at=datetime.now(UTC))
        with engine.begin() as connection:
            for i in range(5):
                connection.execute(insert(Decision.__table__).values(event_id=f"e{i}", **row))
        before_indexes = {ix["name"] for ix in inspect(engine).get_indexes("decisions")}
        engine.dispose()
        migrate(sqlite_url)
        engine = make_engine(sqlite_url)
        with engine.begin() as connection:
            kept = connection.execute(select(Decision.seq, Decision.event_id).order_by(Decision.seq)).all()
            assert [tuple(r) for r in kept] == [(i + 1, f"e{i}") for i in range(5)]
            connection.execute(delete(Decision.__table__))
            connection.execute(insert(Decision.__table__).values(event_id="new", **row))
            assert connection.execute(select(Decision.seq).where(Decision.event_id == "new")).scalar_one() == 6
        assert {ix["name"] for ix in inspect(engine).get_indexes("decisions")} == before_indexes
    finally:
        engine.dispose()
