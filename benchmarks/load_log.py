"""Loading the decision log for offline work: ``api.offline.load_log`` over N decisions
(17 candidates of one catalog version, derived contexts) and ~30% rewarded events.

    .venv/bin/python benchmarks/load_log.py [DATABASE_URL (default: a temp SQLite file)] [N=100000]
"""
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from datetime import UTC, datetime, timedelta

import numpy as np
from sqlalchemy import insert, select, text

from api.db import queries
from api.db.engine import make_engine, migrate
from api.db.models import Decision, Reward, Slot
from api.offline import load_log
from bandits.simulation import World

url = sys.argv[1] if len(sys.argv) > 1 else f"sqlite:///{tempfile.mkdtemp()}/bench.db"
n = int(sys.argv[2]) if len(sys.argv) > 2 else 100_000
migrate(url)
engine = make_engine(url)
world = World(seed=1)
with engine.begin() as c:
    queries.upsert_policy(c, "bench", "uniform", {"kind": "uniform"})
    queries.upsert_slot(c, "bench", {"default_block": world.catalog[0].id, "policy_name": "bench", "reward_window_s": 600})
    slot_id = c.execute(select(Slot.id).where(Slot.name == "bench")).scalar_one()
    for b in world.catalog:
        queries.upsert_block(c, slot_id, b.id, b.features)
    version = c.execute(text("select catalog_version from slots where id=:i"), {"i": slot_id}).scalar_one()
ids = [b.id for b in world.catalog]
k = len(ids)
contexts = [v.context() for v in world.visitors(2000)]
rng = np.random.default_rng(0)
t0 = datetime(2026, 1, 1, tzinfo=UTC)
rows, rewards = [], []
for i in range(n):
    a = int(rng.integers(k))
    event = uuid.uuid4().hex
    created = t0 + timedelta(seconds=30 * i)
    rows.append(dict(event_id=event, slot_id=slot_id, policy_name="bench", policy_kind="uniform", model_version=0,
                     trained=False, learning_mode="online", catalog_version=version, inline_candidates=None,
                     candidate_ids=ids, pmf=[1 / k] * k, chosen_index=a, chosen_block=ids[a], probability=1 / k,
                     context=contexts[i % len(contexts)], unit_key=None, experiment_id=None, arm=None, consent=True,
                     deferred=False, fallback=False, fallback_reason=None, created_at=created))
    if rng.random() < 0.3:
        rewards.append(dict(event_id=event, reward_id=None, value=1.0, created_at=created + timedelta(seconds=5)))
t = time.perf_counter()
with engine.begin() as c:
    for s in range(0, n, 5000):
        c.execute(insert(Decision), rows[s:s + 5000])
    for s in range(0, len(rewards), 5000):
        c.execute(insert(Reward), rewards[s:s + 5000])
print(f"{engine.dialect.name}: inserted {n} decisions, {len(rewards)} rewards in {time.perf_counter() - t:.1f} s")
for _attempt in range(2):  # the second run shows the warm cost
    t = time.perf_counter()
    log = load_log(engine, "bench")
    print(f"load_log: {log.n} events x {log.max_actions} candidates, reward sum {log.reward.sum():.0f}: "
          f"{time.perf_counter() - t:.2f} s")
engine.dispose()
