"""Timing of the offline estimators on a 1,000,000-event log, and a large coverage run.

    .venv/bin/python benchmarks/estimators.py                 # timings (table, then the two summary lines)
    .venv/bin/python benchmarks/estimators.py --n 200000      # smaller log
    .venv/bin/python benchmarks/estimators.py --coverage      # coverage, 1000 reps per regime
    .venv/bin/python benchmarks/estimators.py --robust        # DRos, SNDR, q_hat, sub-Gaussian, SLOPE, MIPS
    .venv/bin/python benchmarks/estimators.py --peeking       # A/A: daily looks, fixed-n rule vs confidence sequences

The synthetic log: 20 actions, two numeric context features, softmax logging
(weights up to ~10), a softmax target, Bernoulli rewards.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis.estimators import METHODS, EventData, estimate  # noqa: E402


def synthetic(n: int, n_actions: int = 20, seed: int = 0) -> tuple[EventData, np.ndarray, float]:
    rng = np.random.default_rng(seed)
    x = rng.random((n, 2))
    theta = rng.random((2, n_actions))
    theta /= theta.sum(axis=0, keepdims=True)
    q = 0.1 + 0.8 * (x @ theta)

    def softmax(s: np.ndarray) -> np.ndarray:
        e = np.exp(s - s.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    mu = softmax(-q / 0.3)
    pi = softmax(q / 0.05)
    cdf = np.cumsum(mu, axis=1)
    chosen = np.minimum((cdf < rng.random(n)[:, None] * cdf[:, -1:]).sum(axis=1), n_actions - 1)
    r = (rng.random(n) < q[np.arange(n), chosen]).astype(np.float64)
    truth = float((pi * q).sum(axis=1).mean())  # truth on these contexts
    return EventData.from_arrays(r, chosen, mu, features=x), pi, truth


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} cores"


def timings(n: int, n_resamples: int, refit_resamples: int) -> None:
    print(f"start: {_load()}")
    t0 = time.perf_counter()
    generated, pi, truth = synthetic(n)
    t_gen = time.perf_counter() - t0
    # a fresh EventData, timed: validation is part of "all estimators" (and its caches start cold)
    t0 = time.perf_counter()
    data = EventData.from_arrays(generated.reward, generated.chosen, generated.logging_pmf, features=generated.features)
    t_prep = time.perf_counter() - t0
    print(f"n = {n:,} events, 20 actions; generate {t_gen:.2f} s, validate into EventData {t_prep:.3f} s")
    print(f"target value on these contexts: {truth:.5f}\n")
    print(f"{'method':<10} {'interval':<18} {'seconds':>8} {'value':>9} {'ci_low':>9} {'ci_high':>9}  flags")

    def row(method: str, interval: str, on: EventData = data, **kw: object) -> float:
        t = time.perf_counter()
        e = estimate(on, pi, method, interval, n_resamples=n_resamples, **kw)  # type: ignore[arg-type]
        dt = time.perf_counter() - t
        label = e.interval if interval != "bootstrap" else f"{e.interval}({kw.get('n_resamples', n_resamples)})"
        print(f"{method:<10} {label:<18} {dt:8.3f} {e.value:9.5f} {e.ci_low:9.5f} {e.ci_high:9.5f}  {','.join(e.flags)}")
        return dt

    five = sum(row(method, "normal") for method in METHODS if method != "replay")
    # replay needs uniform logging: the same events and target on a uniformly logged copy
    t0 = time.perf_counter()
    uniform = EventData.from_arrays(data.reward, data.chosen, np.full(data.logging_pmf.shape, 1 / 20))
    t_uniform = time.perf_counter() - t0
    replay = row("replay", "normal", on=uniform)
    boot = {method: row(method, "bootstrap", refit=False) for method in ("ips", "snips", "dm", "dr")}
    for method in ("ips", "snips", "dr"):
        row(method, "bernstein")
    for method in ("dm", "dr"):
        t = time.perf_counter()
        e = estimate(data, pi, method, "bootstrap", n_resamples=refit_resamples, refit=True)
        dt = time.perf_counter() - t
        print(
            f"{method:<10} {'refit(' + str(refit_resamples) + ')':<18} {dt:8.3f} {e.value:9.5f} "
            f"{e.ci_low:9.5f} {e.ci_high:9.5f}  ({dt / refit_resamples:.3f} s per resample)"
        )
    print()
    print(
        f"all estimators, normal intervals, {n:,} events: {t_prep + five:.3f} s "
        f"(EventData {t_prep:.3f} + ips/snips/dm/dr/switch_dr {five:.3f}); "
        f"with replay on the uniform copy {t_prep + five + t_uniform + replay:.3f} s"
    )
    print(
        f"bootstrap, {n_resamples} resamples: "
        + ", ".join(f"{m} {dt:.2f} s" for m, dt in boot.items())
        + f" (mean {sum(boot.values()) / len(boot):.2f} s per estimator)"
    )
    print(f"end: {_load()}")


def coverage(reps: int) -> None:
    from tests.analysis.test_coverage import CELLS, SCENARIOS, run_coverage

    print(f"coverage of 95% intervals, {reps} seeded repetitions per regime (sd {100 * (0.95 * 0.05 / reps) ** 0.5:.1f}pp)")
    print(f"{'regime':<14} {'method':<10} {'interval':<10} {'coverage':>8} {'bias':>8} {'width':>7}")
    for name, scenario in SCENARIOS.items():
        t = time.perf_counter()
        result = run_coverage(scenario, CELLS[name], reps, n_resamples=500, seed0=100_000)
        for (method, interval), (cover, bias, width) in result.items():
            print(f"{name:<14} {method:<10} {interval:<10} {cover:8.3f} {bias:8.4f} {width:7.3f}")
        print(f"  ({time.perf_counter() - t:.1f} s)")


def robust(reps: int) -> None:
    """The CI-sized simulations of tests/analysis/test_robust_estimators.py and test_mips.py, larger."""
    from tests.analysis import test_mips
    from tests.analysis.test_coverage import SCENARIOS
    from tests.analysis.test_robust_estimators import ROBUST_CELLS, SELECTION_CELLS, run

    print(f"coverage of 95% intervals / mean bias / mean width, {reps} seeded repetitions "
          f"(sd {100 * (0.95 * 0.05 / reps) ** 0.5:.1f}pp)")
    cells = {"softmax": {**ROBUST_CELLS["softmax"], **SELECTION_CELLS}, "poor_overlap": ROBUST_CELLS["poor_overlap"]}
    for name, regime in cells.items():
        t = time.perf_counter()
        result = run(SCENARIOS[name], regime, reps, seed0=100_000)
        for label, (cover, bias, width) in result.items():
            print(f"{name:<14} {label:<22} {cover:8.3f} {bias:8.4f} {width:7.3f}")
        print(f"  ({time.perf_counter() - t:.1f} s)")
    for direct in (0.0, 0.1):
        for label, (cover, bias, width) in test_mips.coverage(direct, reps).items():
            print(f"{'mips-world':<14} {label + f' direct={direct}':<22} {cover:8.3f} {bias:8.4f} {width:7.3f}")


def peeking(reps: int, n: int = 2000, every: int = 100) -> None:
    """A/A (every policy worth 0.3): false recommendations over n / every looks."""
    from analysis.intervals import normal_interval
    from analysis.sequences import confidence_sequence
    from tests.analysis.test_sequences import _aa_log

    k = 4
    looks = np.arange(every, n + 1, every)
    candidate = np.zeros((n, k))
    candidate[:, 1] = 1.0
    online = np.full((n, k), 1 / k)
    naive = sequential = missed = 0
    t = time.perf_counter()
    for rep in range(reps):
        data = _aa_log(100_000 + rep, n, k)
        d = (data.chosen == 1) * k * data.reward - data.reward
        naive += any(normal_interval(d[:s], 0.95).low > 0 for s in looks)
        cs_c = confidence_sequence(data, candidate, grid=500)
        cs_o = confidence_sequence(data, online, grid=500)
        sequential += bool((cs_c.lower[looks - 1] > cs_o.upper[looks - 1]).any())
        missed += bool(((cs_c.lower > 0.3) | (cs_c.upper < 0.3)).any())
    print(f"A/A, {reps} runs of {n} events, {looks.size} looks ({time.perf_counter() - t:.1f} s)")
    print(f"  fixed-n paired interval, lower bound > 0 at some look: {naive / reps:.3f} (nominal one-sided 0.025)")
    print(f"  confidence sequences, candidate lower > online upper:   {sequential / reps:.3f} (guaranteed <= 0.05)")
    print(f"  candidate's sequence misses 0.3 at some t:              {missed / reps:.3f} (guaranteed <= 0.05)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--refit-resamples", type=int, default=10)
    parser.add_argument("--coverage", action="store_true")
    parser.add_argument("--robust", action="store_true")
    parser.add_argument("--peeking", action="store_true")
    parser.add_argument("--reps", type=int, default=1000)
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # flags are printed in the table
    if args.coverage:
        coverage(args.reps)
    elif args.robust:
        robust(args.reps)
    elif args.peeking:
        peeking(args.reps)
    else:
        timings(args.n, args.resamples, args.refit_resamples)


if __name__ == "__main__":
    main()
