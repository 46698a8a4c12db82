"""Offline evaluation benchmark: ``analysis.evaluate`` over uniformly logged events of the
simulated world (17 blocks) with 3 candidate VW configurations (DR, normal intervals,
daily series), and one replay alone for its events/s.

    .venv/bin/python benchmarks/evaluate.py [N_EVENTS=50000]
"""
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import numpy as np

from analysis.evaluation import evaluate
from analysis.log import BanditLog
from analysis.replay import replay
from bandits.policies import VWConfig
from bandits.simulation import World

n = int(sys.argv[1]) if len(sys.argv) > 1 else 50_000
world = World(seed=1)
rng = np.random.default_rng(0)
cands = tuple(b.to_candidate() for b in world.catalog)
ids = [b.id for b in world.catalog]
k = len(ids)
t = time.perf_counter()
recs = []
for i, v in enumerate(world.visitors(n)):
    p = world.expected_rewards(v)
    a = int(rng.integers(k))
    recs.append(dict(event_id=f"e{i}", timestamp=v.timestamp.timestamp(), action_ids=ids, pmf=[1 / k] * k, chosen=a,
                     reward=float(rng.random() < p[a]), context=v.context(), candidates=cands))
log = BanditLog.from_records(recs, meta={"reward_min": 0.0, "reward_max": 1.0})
print(f"built log of {log.n} events x {k} blocks in {time.perf_counter() - t:.1f} s")
candidates = {"squarecb": VWConfig(), "epsilon": VWConfig(exploration="epsilon", epsilon=0.1),
              "no-interactions": VWConfig(interactions=(), ignore_linear_context=False)}
t = time.perf_counter()
ev = evaluate(log, candidates, online_model=None, default_block=ids[0])
total = time.perf_counter() - t
print(f"evaluate (dr, normal, 3 candidates, daily series): {total:.2f} s")
t = time.perf_counter()
replay(log, VWConfig())
r = time.perf_counter() - t
print(f"one replay alone: {r:.2f} s ({log.n / r:,.0f} events/s)")
print(ev.table())
