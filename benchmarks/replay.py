"""Replay speed: ``analysis.replay.replay`` against raw Vowpal Wabbit loops, in the same run.

Usage::

    .venv/bin/python benchmarks/replay.py [--events 50000] [--actions 10] [--seed 0]

A synthetic log (uniform logging, time/device/location/user contexts, 10
blocks with two features each) is replayed with the default ``VWConfig``.
Baselines, each with a fresh workspace and the same arguments, timed over
the same events:

* ``raw text``: the VW text lines are built before the clock starts; per
  event ``predict(lines)`` then ``learn(labelled lines)`` (VW parses both).
* ``raw parsed``: block examples parsed once; per event parse the shared
  line and the labelled chosen block, one ``learn`` (VW's pre-update
  prediction is the progressive pmf). This is the loop ``replay`` runs,
  without its bookkeeping: the floor for this VW build.

``replay`` time includes building the shared text and the label from
structured contexts (the raw loops get them for free) and the final checks.

Measured 2026-11 on the shared 2-core dev machine (load ~4, so +-30%),
vowpalwabbit 9.11.9, 50,000 events, 10 actions, default VWConfig:
raw text 185 us/event, raw parsed 44 us/event, replay 67 us/event
(replay / raw text = 0.36, replay / raw parsed = 1.5); the replayed pmfs
equal the raw text loop's bit for bit.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import vowpalwabbit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis.log import BanditLog  # noqa: E402
from analysis.replay import replay  # noqa: E402
from bandits.features import action_line, shared_line  # noqa: E402
from bandits.policies import Candidate, VWConfig, cost_from_reward  # noqa: E402

CB = vowpalwabbit.LabelType.CONTEXTUAL_BANDIT


def synthetic_log(n: int, n_actions: int, seed: int) -> BanditLog:
    rng = np.random.default_rng(seed)
    blocks = tuple(
        Candidate(f"block-{j}", {"category": f"c{j % 4}", "format": ["image", "video"][j % 2]})
        for j in range(n_actions)
    )
    best = rng.integers(n_actions, size=(4, 3))  # best block per (daypart, device)
    records = []
    for i in range(n):
        daypart, device = int(rng.integers(4)), int(rng.integers(3))
        hour = int(rng.integers(24))
        context = {
            "time": {
                "daypart": ["night", "morning", "afternoon", "evening"][daypart],
                "hour": f"{hour:02d}",
                "hour_sin": round(float(np.sin(2 * np.pi * hour / 24)), 6),
                "weekend": bool(rng.integers(2)),
            },
            "device": {"type": ["mobile", "tablet", "desktop"][device], "os": "ios"},
            "location": {"country": ["DE", "FR", "US", "JP"][int(rng.integers(4))]},
            "user": {"plan": ["free", "pro"][int(rng.integers(2))]},
        }
        chosen = int(rng.integers(n_actions))
        p_click = 0.6 if chosen == best[daypart, device] else 0.1
        records.append(
            {
                "event_id": f"e{i}",
                "timestamp": 1_700_000_000.0 + i,
                "action_ids": [b.id for b in blocks],
                "pmf": [1.0 / n_actions] * n_actions,
                "chosen": chosen,
                "reward": float(rng.random() < p_click),
                "context": context,
                "candidates": blocks,
            }
        )
    return BanditLog.from_records(records, meta={"reward_min": 0.0, "reward_max": 1.0})


def raw_text(log: BanditLog, args: list[str]) -> tuple[float, np.ndarray]:
    actions = [action_line(c.id, c.features) for c in log.candidates[0]]
    shared = [shared_line(c) for c in log.contexts]
    labels = [
        f"0:{cost_from_reward(float(r), 0.0, 1.0)!r}:{float(p)!r} {actions[a]}"
        for r, p, a in zip(log.reward, log.propensity, log.chosen, strict=True)
    ]
    plain = [[s, *actions] for s in shared]
    labelled = []
    for lines, label, a in zip(plain, labels, log.chosen, strict=True):
        copy = list(lines)
        copy[1 + int(a)] = label
        labelled.append(copy)
    ws = vowpalwabbit.Workspace(arg_list=args)
    out = []
    start = time.perf_counter()
    for lines, copy in zip(plain, labelled, strict=True):
        out.append(ws.predict(lines))
        ws.learn(copy)
    elapsed = time.perf_counter() - start
    ws.finish()
    return elapsed, np.array(out)


def raw_parsed(log: BanditLog, args: list[str]) -> tuple[float, np.ndarray]:
    actions = [action_line(c.id, c.features) for c in log.candidates[0]]
    shared = [shared_line(c) for c in log.contexts]
    labels = [
        f"0:{cost_from_reward(float(r), 0.0, 1.0)!r}:{float(p)!r} {actions[a]}"
        for r, p, a in zip(log.reward, log.propensity, log.chosen, strict=True)
    ]
    chosen = log.chosen.tolist()
    ws = vowpalwabbit.Workspace(arg_list=args)
    prediction_type = ws.get_prediction_type()
    out = []
    start = time.perf_counter()
    parsed = [ws.example(line, CB) for line in actions]
    for text, label, a in zip(shared, labels, chosen, strict=True):
        example = ws.example(text, CB)
        multi = [example, *parsed]
        multi[1 + a] = ws.example(label, CB)
        ws.learn(multi)
        out.append(example.get_prediction(prediction_type))
    elapsed = time.perf_counter() - start
    ws.finish()
    return elapsed, np.array(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--actions", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    options = parser.parse_args()

    log = synthetic_log(options.events, options.actions, options.seed)
    config = VWConfig()
    args = config.to_args()
    print(f"vowpalwabbit {vowpalwabbit.__version__}, python {platform.python_version()}, {platform.machine()}")
    print(f"{log.n} events, {options.actions} actions, args: {' '.join(args)}")

    text_time, text_pmf = raw_text(log, args)
    parsed_time, parsed_pmf = raw_parsed(log, args)
    start = time.perf_counter()
    result = replay(log, config)
    replay_time = time.perf_counter() - start

    expected = text_pmf / text_pmf.sum(axis=1, keepdims=True)
    difference = float(np.abs(result.target_pmf - expected).max())
    n = log.n
    print(f"{'loop':<28}{'seconds':>9}{'events/s':>11}{'us/event':>10}")
    for name, seconds in (
        ("raw text predict+learn", text_time),
        ("raw parsed (cached blocks)", parsed_time),
        ("analysis.replay.replay", replay_time),
    ):
        print(f"{name:<28}{seconds:>9.2f}{n / seconds:>11.0f}{1e6 * seconds / n:>10.1f}")
    print(f"replay / raw text time:   {replay_time / text_time:.2f}")
    print(f"replay / raw parsed time: {replay_time / parsed_time:.2f}")
    print(f"max |replay pmf - raw text pmf| = {difference:.2e}; raw parsed vs text: "
          f"{float(np.abs(parsed_pmf - text_pmf).max()):.2e}")
    print(f"progressive loss {result.progressive_loss:.4f}, value {result.progressive_value:.4f}")


if __name__ == "__main__":
    main()
