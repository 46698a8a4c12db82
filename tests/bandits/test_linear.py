"""The linear policy: exact ridge updates, pmf shaping, Thompson draws, snapshots, numeric safety."""

from __future__ import annotations

import math
import random
from typing import Any

import numpy as np
import pytest

from bandits.errors import InvalidPolicy, ModelError
from bandits.linear import MAGIC, LinearConfig, LinearPolicy
from bandits.policies import Candidate, cost_from_reward
from bandits.sampling import normalize_pmf, sample_index

CANDIDATES = [Candidate(f"b{i}", {"cat": ["x", "y", "z"][i % 3], "len": i / 3}) for i in range(5)]


def _stream(n: int, seed: int = 0) -> list[tuple[dict[str, Any], int, float]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        context = {
            "device": {"type": rng.choice(["mobile", "desktop", "tablet"])},
            "time": {"h": rng.random(), "daypart": rng.choice(["morning", "evening"])},
            "user": {"returning": rng.random() < 0.5},
        }
        out.append((context, rng.randrange(len(CANDIDATES)), float(rng.random() < 0.3)))
    return out


def _trained(config: LinearConfig, n: int = 300, seed: int = 0) -> LinearPolicy:
    policy = LinearPolicy(config)
    for context, chosen, cost in _stream(n, seed):
        policy.learn(context, CANDIDATES, chosen, cost, 0.2)
    return policy


def _batch_error(config: LinearConfig, n: int = 250) -> float:
    """Max difference between the online posterior mean and numpy lstsq on the stacked joint design."""
    policy = LinearPolicy(config)
    data = _stream(n)
    for context, chosen, cost in data:
        policy.learn(context, CANDIDATES, chosen, cost, 0.2)
    beta, thetas = policy.posterior_mean()
    ids = list(thetas)
    k, d = len(beta), len(next(iter(thetas.values())))
    keep = 1.0 if config.half_life is None else 0.5 ** (1.0 / config.half_life)
    rows, ys, weights = [], [], []
    for t, (context, chosen, cost) in enumerate(data):
        z, x = policy.design(context, CANDIDATES[chosen])
        row = np.zeros(k + d * len(ids))
        row[:k] = z
        j = ids.index(CANDIDATES[chosen].id)
        row[k + j * d:k + (j + 1) * d] = x
        rows.append(row)
        ys.append(1.0 - cost - config.prior_reward)
        weights.append(keep ** (n - 1 - t))
    design, y, root = np.array(rows), np.array(ys), np.sqrt(np.array(weights))
    width = design.shape[1]
    stacked = np.vstack([design * root[:, None], math.sqrt(config.ridge) * np.eye(width)])  # the prior as rows
    target = np.concatenate([y * root, np.zeros(width)])
    solution = np.linalg.lstsq(stacked, target, rcond=None)[0]
    errors = [float(np.abs(solution[:k] - beta).max()) if k else 0.0]
    errors += [float(np.abs(solution[k + j * d:k + (j + 1) * d] - thetas[b]).max()) for j, b in enumerate(ids)]
    return max(errors)


@pytest.mark.parametrize(
    "config",
    [
        LinearConfig(shared=False),
        LinearConfig(shared=True, shared_dim=16),
        LinearConfig(shared=True, shared_dim=256),  # the vocabulary grows through the stream: rank-one downdates
        LinearConfig(shared=True, shared_dim=256, ridge=0.05, ucb_alpha=0.3),
        LinearConfig(shared=True, shared_dim=16, ridge=0.05),
        LinearConfig(shared=True, shared_dim=16, half_life=40.0),
        LinearConfig(shared=False, half_life=25.0, ridge=0.3),
        LinearConfig(shared=True, shared_dim=8, prior_reward=1.0),
    ],
    ids=["per-block", "hybrid", "hybrid-growing", "hybrid-growing-small-ridge", "hybrid-small-ridge", "hybrid-forgetting", "per-block-forgetting", "optimistic"],
)
def test_online_posterior_mean_equals_batch_ridge(config: LinearConfig) -> None:
    assert _batch_error(config) < 1e-8


def test_posterior_is_not_trivial() -> None:
    # the exactness test compares something: blocks differ, the shared part is used
    beta, thetas = _trained(LinearConfig(shared=True, shared_dim=16)).posterior_mean()
    assert np.abs(beta).max() > 0.01
    assert np.abs(thetas["b0"] - thetas["b1"]).max() > 0.01


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"exploration": "ucb"}, "policy.linear.exploration"),
        ({"gamma_scale": 0}, "policy.linear.gamma_scale"),
        ({"gamma_exponent": 1.5}, "policy.linear.gamma_exponent"),
        ({"floor": -0.1}, "policy.linear.floor"),
        ({"floor": math.nan}, "policy.linear.floor"),
        ({"ridge": 0}, "policy.linear.ridge"),
        ({"noise": True}, "policy.linear.noise"),
        ({"thompson_draws": 0}, "policy.linear.thompson_draws"),
        ({"thompson_draws": 2.5}, "policy.linear.thompson_draws"),
        ({"half_life": 0.5}, "policy.linear.half_life"),
        ({"max_features": 5000}, "policy.linear.max_features"),
        ({"shared": "yes"}, "policy.linear.shared"),
        ({"shared_dim": 0}, "policy.linear.shared_dim"),
        ({"max_blocks": 0}, "policy.linear.max_blocks"),
        ({"new_block_share": 1.5}, "policy.linear.new_block_share"),
        ({"new_block_min_examples": -1}, "policy.linear.new_block_min_examples"),
        ({"alpha": 0.1}, "policy.linear.alpha"),
    ],
)
def test_invalid_linear_configs(data: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidPolicy) as caught:
        LinearConfig.from_dict(data)
    assert caught.value.field == field


def test_config_round_trips() -> None:
    config = LinearConfig(exploration="thompson", half_life=500.0, floor=0.01)
    assert LinearConfig.from_dict(config.to_dict()) == config


def test_untrained_is_uniform_and_trained_after_one_example() -> None:
    policy = LinearPolicy(LinearConfig())
    context = _stream(1)[0][0]
    assert not policy.trained and policy.pmf(context, CANDIDATES) == [0.2] * 5
    policy.learn(context, CANDIDATES, 1, 0.0, 0.2)
    assert policy.trained and policy.learned_examples == 1
    pmf = policy.pmf(context, CANDIDATES)
    assert max(range(5), key=pmf.__getitem__) == 1


@pytest.mark.parametrize("alpha", [0.0, 0.3])
def test_squarecb_pmf_is_the_formula_over_the_posterior_means(alpha: float) -> None:
    config = LinearConfig(gamma_scale=5.0, gamma_exponent=0.5, floor=0.0, ucb_alpha=alpha)
    policy = _trained(config)
    context = _stream(1, seed=9)[0][0]
    means = policy.scores(context, CANDIDATES)
    if alpha:  # optimistic means: + alpha * sqrt(x' A_a^-1 x), A_a the block's ridge precision
        _, thetas = policy.posterior_mean()
        for position, candidate in enumerate(CANDIDATES):
            _, x = policy.design(context, candidate)
            row = policy._rows[candidate.id]
            precision = config.ridge * np.eye(len(x)) + policy._A[row]
            means[position] += alpha * math.sqrt(float(x @ np.linalg.solve(precision, x)))
    gamma = 5.0 * math.sqrt(policy.learned_examples + 1)
    best = max(range(5), key=means.__getitem__)
    expected = [1.0 / (5 + gamma * (means[best] - m)) for m in means]
    expected[best] = 1.0 - (sum(expected) - expected[best])
    assert policy.pmf(context, CANDIDATES) == pytest.approx(expected, abs=1e-12)
    assert policy.pmf(context, CANDIDATES, catalog_key="c") == pytest.approx(expected, abs=1e-12)
    assert len(set(round(p, 9) for p in expected)) == 5  # the means really differ


@pytest.mark.parametrize("floor", [0.0, 0.01, 0.05, 0.19])
def test_pmf_sums_to_one_and_respects_the_floor(floor: float) -> None:
    for exploration in ("squarecb", "thompson"):
        policy = _trained(LinearConfig(exploration=exploration, floor=floor, gamma_scale=1000.0))
        for context, _, _ in _stream(30, seed=3):
            pmf = policy.pmf(context, CANDIDATES)
            assert abs(math.fsum(pmf) - 1.0) < 1e-12
            assert min(pmf) >= floor - 1e-15
            assert all(math.isfinite(p) for p in pmf)


def test_a_floor_above_one_over_k_is_uniform() -> None:
    policy = _trained(LinearConfig(floor=0.5))
    assert policy.pmf(_stream(1)[0][0], CANDIDATES) == pytest.approx([0.2] * 5, abs=1e-15)


def _new_block_world(config: LinearConfig) -> tuple[LinearPolicy, list[Candidate], dict[str, Any]]:
    """Three trained blocks; the best one's features on a new block (so the shared part likes it)."""
    old = [Candidate("good", {"cat": "x"}), Candidate("bad", {"cat": "y"}), Candidate("worse", {"cat": "z"})]
    policy = LinearPolicy(config)
    context = {"device": {"type": "mobile"}}
    rng = random.Random(1)
    for _ in range(300):
        chosen = rng.randrange(3)
        click = rng.random() < (0.5, 0.1, 0.05)[chosen]
        policy.learn(context, old, chosen, 0.0 if click else 1.0, 1 / 3)
    return policy, old + [Candidate("new", {"cat": "x"}), Candidate("new2", {})], context


def test_new_blocks_share_is_bounded_and_at_least_their_floor() -> None:
    free, candidates, context = _new_block_world(LinearConfig(shared=True, gamma_scale=1.0, floor=0.01, new_block_share=1.0))
    unbounded = free.pmf(context, candidates)
    # the shared part makes the new twin of the best block look better than a featureless block
    assert free.scores(context, candidates)[3] > free.scores(context, candidates)[4] + 0.05
    assert unbounded[3] + unbounded[4] > 0.2
    capped, _, _ = _new_block_world(
        LinearConfig(shared=True, gamma_scale=1.0, floor=0.01, new_block_share=0.1, new_block_min_examples=20)
    )
    pmf = capped.pmf(context, candidates)
    assert pmf[3] + pmf[4] == pytest.approx(0.1, abs=1e-12)
    assert min(pmf[3], pmf[4]) >= 0.01 - 1e-15 and abs(math.fsum(pmf) - 1.0) < 1e-12
    # the old blocks keep their relative order and the new ones theirs
    assert pmf[0] > pmf[1] >= pmf[2] and pmf[3] > pmf[4]
    # once learned enough, a block is no longer new: the cap stops applying to it
    for _ in range(20):
        capped.learn(context, candidates, 3, 1.0, 0.05)
    assert capped.block_examples("new") == 20
    after = capped.pmf(context, candidates)
    assert after[4] <= 0.1 + 1e-12 and after[3] > 0.0


def test_new_share_when_all_blocks_are_new_is_not_capped() -> None:
    policy = _trained(LinearConfig(new_block_share=0.1, new_block_min_examples=10**6))
    pmf = policy.pmf(_stream(1)[0][0], CANDIDATES)
    assert abs(math.fsum(pmf) - 1.0) < 1e-12 and max(pmf) > 0.1


def test_new_share_can_be_at_most_the_floors_of_many_new_blocks() -> None:
    policy, candidates, context = _new_block_world(
        LinearConfig(floor=0.1, new_block_share=0.05, new_block_min_examples=20)
    )
    pmf = policy.pmf(context, candidates)
    assert pmf[3] == pytest.approx(0.1, abs=1e-12) and pmf[4] == pytest.approx(0.1, abs=1e-12)


def test_thompson_pmf_is_reproducible_and_made_of_draw_frequencies() -> None:
    draws = 50
    policy = _trained(LinearConfig(exploration="thompson", thompson_draws=draws, noise=0.5, floor=0.0))
    context = _stream(1, seed=4)[0][0]
    first = policy.pmf(context, CANDIDATES, seed=7)
    assert policy.pmf(context, CANDIDATES, seed=7) == first
    assert policy.pmf(context, CANDIDATES) == policy.pmf(context, CANDIDATES)  # seed from the context
    others = {tuple(policy.pmf(context, CANDIDATES, seed=s)) for s in range(10)}
    assert len(others) > 1  # the seed matters
    for p in first:
        assert abs(p * draws - round(p * draws)) < 1e-9
    assert sum(p > 0 for p in first) >= 2  # the posterior is wide enough to explore
    floored = _trained(LinearConfig(exploration="thompson", thompson_draws=draws, noise=0.5, floor=0.02))
    for p in floored.pmf(context, CANDIDATES, seed=7):
        share = (p - 0.02) / (1 - 5 * 0.02)  # undo the floor mix: a multiple of 1/draws
        assert abs(share * draws - round(share * draws)) < 1e-9


def test_thompson_draw_frequencies_match_the_exact_joint_posterior() -> None:
    # with many draws, P(argmax) from the pmf agrees with a brute-force joint Gaussian sample
    config = LinearConfig(exploration="thompson", thompson_draws=20_000, noise=0.3, shared_dim=8)
    policy = _trained(config, n=60)
    context = _stream(1, seed=5)[0][0]
    pmf = np.array(policy.pmf(context, CANDIDATES, seed=1))
    # brute force: the joint precision of (beta, theta_b0..theta_b4) and the joint design of the candidates
    beta, thetas = policy.posterior_mean()
    ids = list(thetas)
    k, d = len(beta), len(thetas[ids[0]])
    width = k + d * len(ids)
    precision = config.ridge * np.eye(width)
    for ctx, chosen, _ in _stream(60):
        z, x = policy.design(ctx, CANDIDATES[chosen])
        row = np.zeros(width)
        row[:k] = z
        j = ids.index(CANDIDATES[chosen].id)
        row[k + j * d:k + (j + 1) * d] = x
        precision += np.outer(row, row)
    mean = np.concatenate([beta] + [thetas[b] for b in ids])
    features = np.zeros((5, width))
    for position, candidate in enumerate(CANDIDATES):
        z, x = policy.design(context, candidate)
        features[position, :k] = z
        j = ids.index(candidate.id)
        features[position, k + j * d:k + (j + 1) * d] = x
    cov = config.noise * features @ np.linalg.solve(precision, features.T)
    samples = np.random.default_rng(2).multivariate_normal(features @ mean, cov, size=200_000)
    brute = np.bincount(samples.argmax(axis=1), minlength=5) / len(samples)
    assert np.abs(pmf - brute).max() < 0.015


def test_snapshot_round_trip_gives_identical_pmfs() -> None:
    for config in (LinearConfig(floor=0.01), LinearConfig(exploration="thompson"), LinearConfig(half_life=30.0),
                   LinearConfig(shared=False)):
        policy = _trained(config)
        blob = policy.save()
        assert blob.startswith(MAGIC)
        restored = LinearPolicy(config, blob)
        assert restored.trained and restored.learned_examples == policy.learned_examples
        for context, _, _ in _stream(20, seed=8):
            assert restored.pmf(context, CANDIDATES, seed=3) == pytest.approx(policy.pmf(context, CANDIDATES, seed=3), abs=1e-12)
        # and it keeps learning exactly where it left off
        context, chosen, cost = _stream(1, seed=11)[0]
        policy.learn(context, CANDIDATES, chosen, cost, 0.2)
        restored.learn(context, CANDIDATES, chosen, cost, 0.2)
        assert restored.scores(context, CANDIDATES) == pytest.approx(policy.scores(context, CANDIDATES), abs=1e-12)
    assert not LinearPolicy(LinearConfig(), LinearPolicy(LinearConfig()).save()).trained
    assert not LinearPolicy(LinearConfig(), _trained(LinearConfig()).save(), trained=False).trained


def test_snapshot_rejects_wrong_magic_version_config_and_garbage() -> None:
    blob = _trained(LinearConfig()).save()
    cases = [
        b"",
        b"VWMODEL" + blob[7:],
        blob[:8] + (99).to_bytes(2, "big") + blob[10:],
        blob[:60] + b"broken",
    ]
    for bad in cases:
        with pytest.raises(ModelError):
            LinearPolicy(LinearConfig(), bad)
    for other in (LinearConfig(shared_dim=32), LinearConfig(half_life=10.0), LinearConfig(max_features=64)):
        with pytest.raises(ModelError, match="another linear configuration"):
            LinearPolicy(other, blob)
    # exploration settings (and the ridge, added at solve time) may change across a load
    LinearPolicy(LinearConfig(exploration="thompson", floor=0.05, gamma_scale=3.0, ridge=2.0), blob)


def test_colinear_constant_huge_and_tiny_features_stay_finite() -> None:
    policy = LinearPolicy(LinearConfig(floor=0.01))
    rng = random.Random(0)
    for step in range(300):
        a = rng.random()
        context = {
            "user": {"a": a, "twice_a": 2 * a, "constant": 1.0, "huge": 1e11 * (1 + 5 * a), "tiny": 1e-300 * a},
            "device": {"type": "mobile"},  # constant categorical: colinear with the intercept
        }
        chosen = step % 5
        policy.learn(context, CANDIDATES, chosen, float(rng.random() < 0.5), 0.2)
        pmf = policy.pmf(context, CANDIDATES)
        assert all(math.isfinite(p) and p >= 0.01 - 1e-15 for p in pmf) and abs(math.fsum(pmf) - 1.0) < 1e-12
    scores = policy.scores({"user": {"a": 0.5, "huge": 1e12}}, CANDIDATES)
    assert all(math.isfinite(s) for s in scores)
    restored = LinearPolicy(LinearConfig(floor=0.01), policy.save())
    assert all(math.isfinite(p) for p in restored.pmf({"user": {"huge": 5e11}}, CANDIDATES))


@pytest.mark.parametrize(
    ("context", "cost", "probability", "field"),
    [
        ({"user": {"x": math.nan}}, 0.0, 0.5, "user.x"),
        ({"user": {"x": math.inf}}, 0.0, 0.5, "user.x"),
        ({"user": {"x": 1e13}}, 0.0, 0.5, "user.x"),
        ({"user": {"x": None}}, 0.0, 0.5, "user.x"),
        ({"other": {"x": 1}}, 0.0, 0.5, "context.other"),
        ({}, math.nan, 0.5, "probability"),
        ({}, 0.0, 0.0, "probability"),
    ],
)
def test_non_finite_inputs_are_rejected(context: dict[str, Any], cost: float, probability: float, field: str) -> None:
    policy = LinearPolicy(LinearConfig())
    with pytest.raises(ModelError) as caught:
        policy.learn(context, CANDIDATES, 0, cost, probability)
    assert caught.value.field == field
    assert policy.learned_examples == 0


def test_vocabularies_and_blocks_are_bounded() -> None:
    policy = LinearPolicy(LinearConfig(max_features=4, max_blocks=2, shared_dim=8))
    for i in range(50):
        policy.learn({"user": {f"f{i}": 1.0}, "device": {"type": f"t{i}"}}, CANDIDATES, i % 5, 0.0, 0.2)
    assert policy._d == 4 and len(policy._ctx.tokens) == 4  # intercept + the first three features
    assert len(policy._blk.tokens) <= 4
    assert [b for b in CANDIDATES if policy.block_examples(b.id)] == CANDIDATES[:2]
    assert policy.learned_examples == 20  # examples of the blocks past the bound are not learned
    pmf = policy.pmf({"user": {"f99": 1.0}}, CANDIDATES)
    assert abs(math.fsum(pmf) - 1.0) < 1e-12


def test_learning_beats_uniform_on_a_linear_world() -> None:
    # 8 blocks, rewards linear in (device, daypart, segment) one-hots with block-specific weights
    rng = np.random.default_rng(0)
    groups = {"device": ["mobile", "desktop", "tablet"], "daypart": ["morning", "evening"], "segment": list("abcd")}
    weights = {g: rng.normal(0, 0.12, (len(v), 8)) for g, v in groups.items()}
    base = rng.uniform(0.2, 0.4, 8)
    candidates = [Candidate(f"b{i}", {"kind": "p" if i % 2 else "q"}) for i in range(8)]
    results = {}
    for name in ("linear", "uniform"):
        policy = LinearPolicy(LinearConfig(gamma_scale=50.0, floor=0.0))
        draws = np.random.default_rng(1)
        regret = []
        for _ in range(3000):
            picks = {g: int(draws.integers(len(v))) for g, v in groups.items()}
            p = np.clip(base + sum(weights[g][i] for g, i in picks.items()), 0.02, 0.98)
            context = {"device": {"type": groups["device"][picks["device"]]},
                       "time": {"daypart": groups["daypart"][picks["daypart"]]},
                       "user": {"segment": groups["segment"][picks["segment"]]}}
            pmf = policy.pmf(context, candidates, "c") if name == "linear" else [1 / 8] * 8
            regret.append(float(p.max() - np.dot(pmf, p)))
            chosen = int(draws.choice(8, p=np.array(pmf) / sum(pmf)))
            click = draws.random() < p[chosen]
            if name == "linear":
                policy.learn(context, candidates, chosen, 0.0 if click else 1.0, pmf[chosen], "c")
        results[name] = float(np.mean(regret[-1000:]))
    assert results["uniform"] > 0.1
    assert results["linear"] < 0.25 * results["uniform"]


def test_the_shared_vocabulary_is_bounded_counts_what_it_drops_and_round_trips() -> None:
    config = LinearConfig(shared=True, shared_dim=20)
    policy = _trained(config, n=200)
    assert len(policy._crosses) == 20 and policy.dropped_crosses > 0
    assert len(set(policy._crosses)) == 20  # each (block token, context coordinate) cross once
    restored = LinearPolicy(config, policy.save())
    assert restored._crosses == policy._crosses and restored.dropped_crosses == policy.dropped_crosses
    for context, _, _ in _stream(10, seed=3):
        assert restored.pmf(context, CANDIDATES) == pytest.approx(policy.pmf(context, CANDIDATES), abs=1e-12)


def test_a_block_added_to_a_trained_slot_cannot_take_it_over_and_converges() -> None:
    """The simulated world: 2,500 decisions on all blocks but one, then the last block joins (without its
    features, as an inline candidate of a careless caller would). With the default new-block cap its
    share stays within new_block_share from its first decision, and it converges towards its
    true value: its share falls to about how often it is the best block."""
    from bandits.simulation import World

    world = World(seed=1)
    blocks = list(world.catalog)
    old, new = blocks[:-1], blocks[-1]
    policy = LinearPolicy(LinearConfig())
    rng = np.random.default_rng(1)
    shares, best = [], []
    for i, visitor in enumerate(world.visitors(6_000)):
        offered = old if i < 2_500 else blocks
        candidates = [Candidate(b.id, {} if b is new else b.features) for b in offered]
        context = visitor.context()
        pmf = normalize_pmf(policy.pmf(context, candidates))
        index = sample_index(pmf, float(rng.random()))
        p = world.expected_rewards(visitor, offered)
        policy.learn(context, candidates, index, cost_from_reward(float(rng.random() < p[index]), 0, 1), pmf[index])
        if i >= 2_500:
            shares.append(pmf[-1])
            best.append(float(np.argmax(p) == len(offered) - 1))
    shares_arr, best_arr = np.array(shares), np.array(best)
    cap = LinearConfig().new_block_share
    assert shares_arr[:100].max() <= cap + 1e-9  # never more than the cap while it is new
    assert shares_arr[:100].mean() > 0.02  # but it is explored
    # learned: its share settles near how often it is truly the best block (the oracle's share)
    assert abs(shares_arr[-1000:].mean() - best_arr[-1000:].mean()) < 0.1
