"""Learner throughput: learned decisions per second through the learner beside raw VW learn.

Usage::

    .venv/bin/python benchmarks/learn.py                       # 20,000 decisions, SQLite file
    .venv/bin/python benchmarks/learn.py --decisions 50000 --database-url postgresql+psycopg://...

It logs ``--decisions`` decisions of the simulated world (17 blocks, uniform
logging policy, clicks as rewards) into a fresh database, then times

* ``raw VW learn``: ``VWPolicy.learn`` over the same (context, candidates,
  chosen, cost, probability) held in memory: the floor of any learner;
* ``raw VW predict + learn``: the same plus the progressive-validation predict
  the learner makes before each update;
* ``learner``: ``api.learner.Learner.run_until_idle`` from the database:
  read decisions after the cursor, join rewards and activations, catalog
  features, predict + learn, and a snapshot (model bytes + cursor + metrics,
  one transaction) every ``--snapshot-every`` decisions.

The decide benchmark targets 2,000 decisions/s; the learner should keep up
with room to spare.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
from sqlalchemy import insert, select

from api.db.engine import make_engine, migrate
from api.db.models import Decision, Reward, Slot
from api.db.queries import upsert_block, upsert_policy, upsert_slot
from api.learner import Learner, LearnerSettings
from bandits.policies import VWConfig, VWPolicy, cost_from_reward
from bandits.simulation import World


def log_world(url: str, n: int, seed: int) -> list[tuple[dict, int, float, float]]:
    """Log n decisions of the world; returns (context, chosen, cost, probability) per decision."""
    world = World(seed=seed)
    engine = make_engine(url)
    ids = [b.id for b in world.catalog]
    k = len(ids)
    rng = np.random.default_rng(seed)
    try:
        with engine.begin() as connection:
            upsert_policy(connection, "bench", "vw", {"kind": "vw"})
            upsert_slot(connection, "bench", {"policy_name": "bench", "reward_window_s": 0, "default_block": ids[0]})
            slot_id = connection.execute(select(Slot.id).where(Slot.name == "bench")).scalar_one()
            for block in world.catalog:
                _, version = upsert_block(connection, slot_id, block.id, block.features)
        past = datetime.now(UTC) - timedelta(hours=1)
        examples, rows, rewards = [], [], []
        for i, visitor in enumerate(world.visitors(n)):
            context = visitor.context()
            chosen = int(rng.integers(k))
            click = float(rng.random() < world.expected_rewards(visitor)[chosen])
            created = past + timedelta(microseconds=i)
            rows.append({
                "event_id": f"b{i}", "slot_id": slot_id, "policy_name": "bench", "policy_kind": "vw", "model_version": 0,
                "trained": False, "learning_mode": "online", "catalog_version": version, "inline_candidates": None,
                "candidate_ids": ids, "pmf": [1.0 / k] * k, "chosen_index": chosen, "chosen_block": ids[chosen],
                "probability": 1.0 / k, "context": context, "consent": True, "deferred": False, "fallback": False,
                "fallback_reason": None, "unit_key": None, "experiment_id": None, "arm": None, "created_at": created,
            })
            if click:
                rewards.append({"event_id": f"b{i}", "value": 1.0, "reward_id": None, "created_at": created})
            examples.append((context, chosen, cost_from_reward(click, 0.0, 1.0), 1.0 / k))
            if len(rows) == 5000:
                with engine.begin() as connection:
                    connection.execute(insert(Decision.__table__), rows)
                rows = []
        with engine.begin() as connection:
            if rows:
                connection.execute(insert(Decision.__table__), rows)
            if rewards:
                connection.execute(insert(Reward), rewards)
        return examples
    finally:
        engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--decisions", type=int, default=20_000)
    parser.add_argument("--database-url", help="default: a fresh SQLite file")
    parser.add_argument("--snapshot-every", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="sb-learn-")
    url = args.database_url or f"sqlite:///{Path(folder) / 'bench.db'}"
    migrate(url)
    began = time.perf_counter()
    examples = log_world(url, args.decisions, args.seed)
    print(f"logged {len(examples)} decisions in {time.perf_counter() - began:.1f} s ({url.split(':')[0]})")
    world = World(seed=args.seed)
    candidates = [b.to_candidate() for b in world.catalog]

    policy = VWPolicy(VWConfig())
    began = time.perf_counter()
    for context, chosen, cost, p in examples:
        policy.learn(context, candidates, chosen, cost, p)
    raw = len(examples) / (time.perf_counter() - began)
    policy.close()

    policy = VWPolicy(VWConfig())
    began = time.perf_counter()
    for context, chosen, cost, p in examples:
        policy.pmf(context, candidates, "catalog")
        policy.learn(context, candidates, chosen, cost, p)
    raw_pv = len(examples) / (time.perf_counter() - began)
    policy.close()

    engine = make_engine(url)
    try:
        learner = Learner(engine, LearnerSettings(safety_margin_s=0.0, snapshot_every=args.snapshot_every,
                                                  batch_size=args.batch_size, snapshot_interval_s=3600))
        began = time.perf_counter()
        report = learner.run_until_idle()
        seconds = time.perf_counter() - began
        learner.close()
    finally:
        engine.dispose()
    assert report.learned == len(examples), report
    rate = report.learned / seconds
    print(f"raw VW learn              {raw:>8.0f} decisions/s")
    print(f"raw VW predict + learn    {raw_pv:>8.0f} decisions/s")
    print(f"learner (db -> snapshot)  {rate:>8.0f} decisions/s  ({report.snapshots} snapshots, {seconds:.1f} s)")
    print(f"learner / raw learn {rate / raw:.2f}; learner / (predict + learn) {rate / raw_pv:.2f}; "
          f"learner / decide target 2000/s {rate / 2000:.1f}x")


if __name__ == "__main__":
    main()
