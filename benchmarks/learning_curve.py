"""Learning curves of VW configurations on the simulated audience, and a cache check.

Usage::

    .venv/bin/python benchmarks/learning_curve.py                # table, 3 world seeds
    .venv/bin/python benchmarks/learning_curve.py --seeds 0 1 2 3 4 --events 20000
    .venv/bin/python benchmarks/learning_curve.py --only default --curve
    .venv/bin/python benchmarks/learning_curve.py --cache-check-only

For each configuration and world seed it runs ``bandits.simulation.run_policy``
(online: predict, sample, learn at once) and reports over the last ``--last``
events the policy's expected click rate ``sum_a pmf(a) p(a)``, the fraction of
the uniform -> oracle gap it closed, the margin over the best single block in
hindsight, and the wall time. The world is never tuned to a configuration.

The cache check trains a policy, then compares ``VWPolicy.pmf`` with a fixed
``catalog_key`` (block examples parsed once and reused across predict /
finish_example) against ``pmf`` without one on twin workspaces loaded from the
same model, while both keep learning the same labels; it also reloads the
saved models and compares again.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace
from functools import partial

import numpy as np

from bandits.policies import UniformPolicy, VWConfig, VWPolicy, cost_from_reward
from bandits.sampling import normalize_pmf, sample_index
from bandits.simulation import World, run_policy

DEFAULT = VWConfig()
CONFIGS: dict[str, VWConfig] = {
    "default (squarecb g1000)": DEFAULT,
    "squarecb g100": replace(DEFAULT, gamma_scale=100.0),
    "squarecb g10000": replace(DEFAULT, gamma_scale=10000.0),
    "epsilon 0.05": replace(DEFAULT, exploration="epsilon", epsilon=0.05),
    "epsilon 0.1": replace(DEFAULT, exploration="epsilon", epsilon=0.1),
    "greedy (epsilon 0)": replace(DEFAULT, exploration="epsilon", epsilon=0.0),
    "squarecb lr 0.1": replace(DEFAULT, learning_rate=0.1),
    "squarecb lr 2.0": replace(DEFAULT, learning_rate=2.0),
    # VW 9.11.9 accepts only --cb_type mtr with --squarecb (VWConfig rejects the others).
    "epsilon 0.05 cb_type ips": replace(DEFAULT, exploration="epsilon", cb_type="ips"),
    "epsilon 0.05 cb_type dr": replace(DEFAULT, exploration="epsilon", cb_type="dr"),
    "regcb (regcbopt)": replace(DEFAULT, exploration="regcb"),
    "bag 5": replace(DEFAULT, exploration="bag", bag=5),
    "squarecb +TDA": replace(DEFAULT, interactions=("TA", "DA", "LA", "UA", "TDA")),
}


def run_table(names: list[str], seeds: list[int], events: int, last: int, drift: float, curve: bool) -> None:
    print(f"{events} events per run, last {last} summarised, world seeds {seeds}, drift {drift}")
    refs = [run_policy(World(seed=s, drift=drift), UniformPolicy(), events, seed=s).summary(-last) for s in seeds]
    print(
        f"reference (mean over seeds): uniform {statistics.fmean(r.uniform for r in refs):.4f}  best fixed {statistics.fmean(r.best_fixed for r in refs):.4f}  oracle {statistics.fmean(r.oracle for r in refs):.4f}  best fixed blocks {sorted({r.best_fixed_block for r in refs})}"
    )
    header = f"{'config':<26} {'reward last':>11} {'gap closed':>10} {'min gap':>8} {'- best fixed':>12} {'s/run':>6}"
    print(header)
    print("-" * len(header))
    for name in names:
        config = CONFIGS[name]
        rewards, gaps, margins, seconds = [], [], [], []
        try:
            VWPolicy(config).close()
        except Exception as error:  # VW rejects some option combinations only at Workspace creation
            print(f"{name:<26} VW error: {error}")
            continue
        for s in seeds:
            result = run_policy(
                World(seed=s, drift=drift), partial(VWPolicy, config), events, seed=s, catalog_key="catalog"
            )
            summary = result.summary(-last)
            rewards.append(summary.policy)
            gaps.append(summary.gap_closed)
            margins.append(summary.policy - summary.best_fixed)
            seconds.append(result.seconds)
            if curve:
                print(f"  {name} seed {s}: gap closed by window", [round(w.gap_closed, 2) for w in result.curve(10)])
        print(
            f"{name:<26} {statistics.fmean(rewards):>11.4f} {statistics.fmean(gaps):>10.3f} "
            f"{min(gaps):>8.3f} {statistics.fmean(margins):>+12.4f} {statistics.fmean(seconds):>6.1f}"
        )


def cache_check(seed: int = 3, train: int = 3000, contexts: int = 600) -> bool:
    """True when pmfs with and without a catalog key agree exactly (see module docstring)."""
    world = World(seed=seed)
    config = VWConfig()
    base = VWPolicy(config)
    run_policy(world, base, train, seed=seed)
    model = base.save()
    plain, cached = VWPolicy(config, model), VWPolicy(config, model)
    candidates = [b.to_candidate() for b in world.catalog]
    rng = np.random.default_rng(seed)
    differing, max_diff, repeat_unstable = 0, 0.0, 0
    began = time.perf_counter()
    for i, visitor in enumerate(world.visitors(contexts, stream=99)):
        context = visitor.context()
        p_plain = plain.pmf(context, candidates)
        repeat_unstable += p_plain != plain.pmf(context, candidates)
        p_cached = cached.pmf(context, candidates, "catalog-v1")
        diff = max(abs(a - b) for a, b in zip(p_plain, p_cached, strict=True))
        differing += diff > 0
        max_diff = max(max_diff, diff)
        if i >= contexts // 2:  # keep learning the same labels on both twins
            pmf = normalize_pmf(p_plain)
            index = sample_index(pmf, float(rng.random()))
            click = float(rng.random() < world.expected_rewards(visitor)[index])
            for policy in (plain, cached):
                policy.learn(context, candidates, index, cost_from_reward(click, 0.0, 1.0), pmf[index])
    reloaded = [VWPolicy(config, p.save()) for p in (plain, cached)]
    reload_diff = 0.0
    for visitor in world.visitors(300, stream=98):
        a, b = (p.pmf(visitor.context(), candidates) for p in reloaded)
        reload_diff = max(reload_diff, max(abs(x - y) for x, y in zip(a, b, strict=True)))
    print(
        f"cache check: {contexts} contexts ({contexts - contexts // 2} with learning in between): "
        f"{differing} differing pmfs, max |diff| {max_diff:g}; repeated plain predicts unstable: "
        f"{repeat_unstable}; after save/reload max |diff| {reload_diff:g}; "
        f"saved bytes equal: {plain.save() == cached.save()} ({time.perf_counter() - began:.1f} s)"
    )
    return differing == 0 and reload_diff == 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--last", type=int, default=5_000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--drift", type=float, default=0.0)
    parser.add_argument("--only", nargs="+", help="config names, or 'default'")
    parser.add_argument("--curve", action="store_true", help="print the learning curve of each run")
    parser.add_argument("--cache-check-only", action="store_true")
    args = parser.parse_args()
    ok = cache_check()
    if not ok:
        print("!!! CACHED ACTION EXAMPLES GIVE DIFFERENT PMFS !!!")
    if args.cache_check_only:
        return
    names = list(CONFIGS)
    if args.only:
        names = [n for n in names if any(o in n for o in args.only)]
    run_table(names, args.seeds, args.events, args.last, args.drift, args.curve)


if __name__ == "__main__":
    main()
