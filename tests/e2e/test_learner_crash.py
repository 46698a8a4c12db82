"""Crash test: a `slotbandit learn` process is killed with SIGKILL mid-stream and restarted.

Every learned decision is recorded in the ledger (``learned_decisions``, primary key
(policy, seq)) in the same transaction as the snapshot and its cursor; a decision
learned twice would be an integrity error. After the restart the ledger holds exactly
the learnable decisions, and the snapshot metrics agree.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import func, insert, select

from api.db.engine import make_engine, migrate
from api.db.learning_models import LearnedDecision
from api.db.models import Decision, Reward, Slot, Snapshot
from api.db.queries import upsert_block, upsert_policy, upsert_slot

ROOT = Path(__file__).resolve().parents[2]
POLICY = "crash.slot"


def _log_decisions(url: str, n: int) -> set[int]:
    """n decisions of a vw policy, a fifth of them not learnable; returns the learnable seqs."""
    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            upsert_policy(connection, POLICY, "vw", {"kind": "vw"})
            upsert_slot(connection, POLICY, {"policy_name": POLICY, "reward_window_s": 0, "default_block": "b0"})
            slot_id = connection.execute(select(Slot.id).where(Slot.name == POLICY)).scalar_one()
            for i in range(4):
                _, version = upsert_block(connection, slot_id, f"b{i}", {"kind": f"k{i}"})
        ids = [f"b{i}" for i in range(4)]
        past = datetime.now(UTC) - timedelta(minutes=5)
        rows, rewards = [], []
        for i in range(n):
            created = past + timedelta(milliseconds=i)
            chosen = i % 4
            rows.append({
                "event_id": f"e{i}", "slot_id": slot_id, "policy_name": POLICY, "policy_kind": "vw",
                "model_version": 0, "trained": False, "learning_mode": "online", "catalog_version": version,
                "inline_candidates": None, "candidate_ids": ids, "pmf": [0.25] * 4, "chosen_index": chosen,
                "chosen_block": ids[chosen], "probability": 0.25,
                "context": {"user": {"segment": f"s{i % 3}"}, "device": {"type": "mobile" if i % 2 else "desktop"}},
                "consent": i % 10 != 3, "deferred": False, "fallback": i % 10 == 7, "fallback_reason": None,
                "unit_key": None, "experiment_id": None, "arm": None, "created_at": created,
            })
            if chosen == i % 3:
                rewards.append({"event_id": f"e{i}", "value": 1.0, "reward_id": None, "created_at": created})
        with engine.begin() as connection:
            connection.execute(insert(Decision.__table__), rows)
            connection.execute(insert(Reward), rewards)
            return set(connection.execute(
                select(Decision.seq).where(Decision.consent.is_(True), Decision.fallback.is_(False))
            ).scalars())
    finally:
        engine.dispose()


def _learner(url: str, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "SLOTBANDIT_DATABASE_URL": url,
        "SLOTBANDIT_LEARNER_SNAPSHOT_EVERY": "100",
        "SLOTBANDIT_LEARNER_BATCH_SIZE": "50",
        "SLOTBANDIT_LEARNER_LEDGER": "1",
        "SLOTBANDIT_LEARNER_SAFETY_MARGIN_S": "0",
        "SLOTBANDIT_LEARNER_LEASE_TTL_S": "1",
        "SLOTBANDIT_LEARNER_POLL_INTERVAL_S": "0.1",
    }
    with open(log, "ab") as stream:
        return subprocess.Popen([sys.executable, "-m", "api.cli", "learn", "--log-level", "warning"], cwd=ROOT,
                                env=env, stdout=stream, stderr=subprocess.STDOUT)


def _state(url: str) -> tuple[int, int]:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            row = connection.execute(
                select(Snapshot.version, Snapshot.cursor).order_by(Snapshot.version.desc()).limit(1)
            ).first()
        return (row.version, row.cursor) if row else (0, 0)
    finally:
        engine.dispose()


def _wait(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def test_sigkill_mid_stream_then_restart_learns_each_decision_once(database_url: str, tmp_path: Path) -> None:
    log = tmp_path / "learner.log"
    migrate(database_url)
    learnable = _log_decisions(database_url, 3000)
    last_seq = max(learnable)
    first = _learner(database_url, log)
    try:
        _wait(lambda: _state(database_url)[0] >= 3, 60, "the third snapshot")
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
    version, cursor = _state(database_url)
    assert cursor < last_seq, "the learner finished before it was killed: not a mid-stream crash"
    second = _learner(database_url, log)
    try:
        _wait(lambda: _state(database_url)[1] >= last_seq, 90, "the restarted learner to reach the end of the log")
        second.send_signal(signal.SIGTERM)
        assert second.wait(30) == 0, log.read_text()
    finally:
        if second.poll() is None:
            second.kill()
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            ledger = list(connection.execute(select(LearnedDecision.seq)).scalars())
            metrics = connection.execute(
                select(Snapshot.metrics).order_by(Snapshot.version.desc()).limit(1)
            ).scalar_one()
            kept = connection.execute(select(func.count()).select_from(Snapshot)).scalar_one()
    finally:
        engine.dispose()
    assert len(ledger) == len(set(ledger)) == len(learnable)
    assert set(ledger) == learnable
    assert metrics["decisions_learned"] == len(learnable)
    assert sum(metrics["skipped"].values()) == 3000 - len(learnable)
    assert metrics["skipped"] == {"no_consent": 300, "fallback": 300}
    assert kept == 10  # pruned to the last K
