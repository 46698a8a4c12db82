"""Sweep ``LinearConfig`` variants over the bake-off protocol (benchmarks/bakeoff.py) in one process.

Usage (with the bake-off script importable, e.g. from the ``bakeoff`` branch)::

    export PYTHONPATH=$PWD:/path/to/bakeoff-checkout OPENBLAS_NUM_THREADS=1
    nice .venv/bin/python benchmarks/linear_sweep.py --seeds 3 --config '{}' --config '{"ridge": 1}'

Each configuration is run as ``bakeoff.ServiceLearner(LinearPolicy(config))`` on the same
shuffles as the bake-off; the supervised reference of every (dataset, seed) is computed once per
invocation. Prints per-dataset normalized scores, the mean over datasets, and letter's reward.
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import sys
from typing import Any

from bandits.linear import LinearConfig, LinearPolicy


def main(argv: list[str] | None = None) -> int:
    bakeoff: Any = importlib.import_module("benchmarks.bakeoff")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", default=",".join(bakeoff.ALL_DATASETS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--max-events", type=int, default=5000)
    parser.add_argument("--config", action="append", default=None)
    args = parser.parse_args(argv)
    names = args.datasets.split(",")
    data = {}
    for name in names:
        dataset = bakeoff.load_dataset(name)
        runs = []
        for seed in range(args.seeds):
            order = bakeoff.shuffle(dataset, seed, args.max_events)
            contexts = bakeoff.contexts_of(dataset, order)
            supervised = bakeoff.supervised_pass(dataset, order).reward
            runs.append((seed, order, contexts, supervised))
        data[name] = (dataset, runs)
    print("config".ljust(58) + " ".join(n[:7].rjust(7) for n in names) + "    mean  letter  ms/1k", flush=True)
    for text in args.config or ["{}"]:
        config = LinearConfig.from_dict(json.loads(text))
        per_dataset, per_seed_means, letter, seconds, events = {}, [0.0] * args.seeds, float("nan"), 0.0, 0
        for name in names:
            dataset, runs = data[name]
            scores, rewards = [], []
            for seed, order, contexts, supervised in runs:
                learner = bakeoff.ServiceLearner(LinearPolicy(config), dataset.classes, seed)
                result = bakeoff.run_pass(learner, dataset, order, contexts)
                seconds, events = seconds + result.seconds, events + result.events
                score = bakeoff.normalized(result.reward, 1.0 / dataset.classes, supervised)
                scores.append(score)
                rewards.append(result.reward)
                per_seed_means[seed] += score / len(names)
            per_dataset[name] = statistics.fmean(scores)
            if name == "letter":
                letter = statistics.fmean(rewards)
        cells = " ".join(f"{per_dataset[n]:7.3f}" for n in names)
        print(f"{text[:57]:58s}{cells} {statistics.fmean(per_seed_means):7.3f} {letter:7.3f} {1e6 * seconds / events:6.0f}",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
