"""Learning quality of the ``linear`` policy on the simulated audience, served as the service serves it.

Usage::

    cd <checkout> && export PYTHONPATH=$PWD OPENBLAS_NUM_THREADS=1
    nice .venv/bin/python benchmarks/linear_quality.py --events 20000 --seeds 0,1,2,3 \\
        --config '{}' --config '{"floor": 0.002}' --refresh 500

Each run emulates the service (``tests/api/test_learner.py``): a learner model learns every
decision in order (``learn`` with the logged probability), and decisions are served by a
copy loaded from the learner's snapshot (``save()`` -> ``LinearPolicy(config, bytes)``) that
is replaced every ``--refresh`` decisions (0: serve the learner itself, learning every
decision). All configurations of one invocation run in one process, on the same cached
visitors (``World(seed).visitors(n)``, stream 0) and the same sampling draws.

Reported per (configuration, world seed): the share of the uniform-to-oracle gap closed over
the last quarter and over the whole run, whether the policy beats the best fixed block over
the last quarter, and the Kish effective sample size ``(sum w)^2 / sum w^2`` (as a share of
the window) of evaluating uniform and the best fixed block of the window by importance
weights ``w = target / logged`` on the run's own log, in expectation over the logged pmfs:
``E[sum w] = n`` and ``E[sum w^2] = sum_i sum_a target_a^2 / p_i(a)``, so the share is
``n / sum_i sum_a target_a^2 / p_i(a)`` (the realised ESS of a nearly greedy log looks fine
until one rare choice arrives; the offline evaluation's ``tiny_ess`` flag is ESS < max(10, 1% of n)).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from bandits.linear import LinearConfig, LinearPolicy
from bandits.policies import cost_from_reward
from bandits.sampling import normalize_pmf, sample_index
from bandits.simulation import World


@dataclass
class Stream:
    contexts: list[Any]
    expected: np.ndarray


_STREAMS: dict[tuple[int, int, float], Stream] = {}


def stream(seed: int, n: int, drift: float = 0.0) -> Stream:
    key = (seed, n, drift)
    if key not in _STREAMS:
        world = World(seed=seed, drift=drift)
        contexts, expected = [], []
        for visitor in world.visitors(n):
            contexts.append(visitor.context())
            expected.append(world.expected_rewards(visitor))
        _STREAMS[key] = Stream(contexts, np.array(expected))
    return _STREAMS[key]


def run(config: LinearConfig, seed: int, n: int, refresh: int, drift: float = 0.0) -> dict[str, float]:
    data = stream(seed, n, drift)
    world = World(seed=seed)
    candidates = [b.to_candidate() for b in world.catalog]
    k = len(candidates)
    learner = LinearPolicy(config)
    served = learner if refresh == 0 else LinearPolicy(config)
    rng = np.random.default_rng([seed, 2])
    pmfs = np.empty((n, k))
    chosen = np.empty(n, dtype=np.int64)
    learn_s = pmf_s = 0.0
    for i in range(n):
        context = data.contexts[i]
        t0 = time.perf_counter()
        pmf = normalize_pmf(served.pmf(context, candidates, "sim"))
        t1 = time.perf_counter()
        index = sample_index(pmf, float(rng.random()))
        click = float(rng.random() < data.expected[i, index])
        learner.learn(context, candidates, index, cost_from_reward(click, 0.0, 1.0), pmf[index], "sim")
        t2 = time.perf_counter()
        pmf_s += t1 - t0
        learn_s += t2 - t1
        pmfs[i], chosen[i] = pmf, index
        if refresh and (i + 1) % refresh == 0:
            served = LinearPolicy(config, learner.save())
    out: dict[str, float] = {"pmf_us": 1e6 * pmf_s / n, "learn_us": 1e6 * learn_s / n}
    for name, window in (("last", slice(n - n // 4, n)), ("all", slice(0, n))):
        expected = data.expected[window]
        policy = float((pmfs[window] * expected).sum(axis=1).mean())
        uniform = float(expected.mean())
        oracle = float(expected.max(axis=1).mean())
        columns = expected.mean(axis=0)
        best = int(np.argmax(columns))
        out[f"gap_{name}"] = (policy - uniform) / (oracle - uniform)
        out[f"over_best_{name}"] = policy - float(columns[best])
        logged = pmfs[window]
        # Expected Kish ESS share of importance weighting target / logged: n / sum_i sum_a target^2 / logged
        out[f"ess_uniform_{name}"] = len(expected) / float((1.0 / k**2 / np.maximum(logged, 1e-300)).sum())
        out[f"ess_best_{name}"] = len(expected) / float((1.0 / np.maximum(logged[:, best], 1e-300)).sum())
    return out


def costs(config: LinearConfig, repeat: int = 2000) -> tuple[float, float, float]:
    """(served pmf, learner pmf, learn) microseconds with timeit: 20 candidates (the world's 17 blocks and
    three featureless ones), a model trained on 3,000 decisions of World(0), the served copy loaded from it.

    Timed in process CPU time (``time.process_time``): on a loaded machine wall time mostly measures
    the wait for a core."""
    import timeit

    clock = time.process_time

    data = stream(0, 3000 + repeat)
    world = World(seed=0)
    candidates = [b.to_candidate() for b in world.catalog]
    candidates += [type(candidates[0])(f"extra-{i}", {}) for i in range(20 - len(candidates))]
    learner = LinearPolicy(config)
    for i in range(3000):
        learner.learn(data.contexts[i], candidates, i % 20, float(i % 3 == 0), 0.05, "sim")
    served = LinearPolicy(config, learner.save())
    contexts = data.contexts[3000:3000 + repeat]
    position = iter(range(repeat))
    served_s = min(timeit.repeat(lambda: served.pmf(contexts[next(position) % repeat], candidates, "sim"),
                                 number=repeat // 4, repeat=3, timer=clock)) / (repeat // 4)
    position = iter(range(10**9))
    learner_s = min(timeit.repeat(lambda: learner.pmf(contexts[next(position) % repeat], candidates, "sim"),
                                  number=repeat // 4, repeat=3, timer=clock)) / (repeat // 4)
    steps = iter(range(repeat))

    def step() -> None:
        i = next(steps)
        learner.learn(contexts[i], candidates, i % 20, float(i % 3 == 0), 0.05, "sim")

    learn_s = timeit.timeit(step, number=repeat, timer=clock) / repeat
    return 1e6 * served_s, 1e6 * learner_s, 1e6 * learn_s


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--seeds", default="0,1,2,3")
    parser.add_argument("--refresh", type=int, default=500, help="serve a snapshot copy replaced every N decisions")
    parser.add_argument("--drift", type=float, default=0.0)
    parser.add_argument("--config", action="append", default=None, help="LinearConfig fields as JSON (repeatable)")
    parser.add_argument("--timeit", action="store_true", help="measure pmf and learn costs instead (20 candidates)")
    args = parser.parse_args(argv)
    if args.timeit:
        import os

        for text in args.config or ["{}"]:
            served, learner, learn = costs(LinearConfig.from_dict(json.loads(text)))
            print(f"{text:60s} pmf (served copy) {served:.0f} us, pmf (learner) {learner:.0f} us, learn {learn:.0f} us;"
                  f" (process CPU time) load average {os.getloadavg()[0]:.1f}", flush=True)
        return 0
    seeds = [int(s) for s in args.seeds.split(",")]
    configs = args.config or ["{}"]
    for text in configs:
        config = LinearConfig.from_dict(json.loads(text))
        rows = [run(config, seed, args.events, args.refresh, args.drift) for seed in seeds]
        cells = " ".join(f"{r['gap_last']:.3f}" for r in rows)
        mean = statistics.fmean(r["gap_last"] for r in rows)
        whole = statistics.fmean(r["gap_all"] for r in rows)
        beats = sum(r["over_best_last"] > 0.01 for r in rows)
        ess_u = min(r["ess_uniform_last"] for r in rows)
        ess_b = min(r["ess_best_last"] for r in rows)
        cost = statistics.fmean(r["pmf_us"] for r in rows), statistics.fmean(r["learn_us"] for r in rows)
        print(f"{text:60s} last-quarter gap {cells} mean {mean:.3f} | whole {whole:.3f} | beats best {beats}/{len(rows)}"
              f" | min ESS uniform {ess_u:.3f} best {ess_b:.3f} | pmf {cost[0]:.0f} us learn {cost[1]:.0f} us",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
