"""VW text escaping, policy configuration, seeded sampling and a real VW workspace."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import vowpalwabbit

from bandits.choosers import build_chooser
from bandits.errors import InvalidFeature, InvalidPolicy
from bandits.features import action_line, escape_token, shared_line, validate_features
from bandits.linear import LinearConfig, LinearPolicy
from bandits.policies import (
    Candidate,
    FixedPolicy,
    PolicyConfig,
    UniformPolicy,
    VWConfig,
    VWPolicy,
    cost_from_reward,
)
from bandits.sampling import normalize_pmf, sample_index, uniform_draw

HOSTILE = ["a|b", "x:1", "new\nline", "tab\tspace here", "ünïcødé", "|A shared", "0:1:0.5", "%41", ""]


@pytest.mark.parametrize("text", HOSTILE)
def test_escaped_tokens_are_inert(text: str) -> None:
    token = escape_token(text)
    assert all(ch.isalnum() or ch in "_.-%" for ch in token)
    assert token  # never empty


def test_hostile_features_cannot_inject_namespaces_or_labels() -> None:
    ws = vowpalwabbit.Workspace("--cb_explore_adf --quiet --interactions UA")
    context = {"user": {name: value for name, value in zip(HOSTILE, HOSTILE[::-1], strict=True)}}
    line = shared_line(context)
    assert line.count("|") == 1 and "\n" not in line
    actions = [action_line(f"id{i}|evil", {"f": "1:2 |B x"}) for i in range(3)]
    assert all(a.count("|") == 1 for a in actions)
    examples = ws.parse([line, *actions])
    assert len(examples) == 4  # one shared and three actions: nothing split or merged
    pmf = ws.predict(examples)
    assert len(pmf) == 3
    ws.finish_example(examples)
    # a hostile block id with a label-like prefix is still just a feature: the line starts with the
    # namespace (no label), and learning on it keeps two actions with a proper pmf
    hostile = [Candidate("0:1:0.5", {"x": "|"}), Candidate("b")]
    assert action_line(hostile[0].id, hostile[0].features).startswith("|A id=0%3A1%3A0.5 ")
    learned = VWPolicy(VWConfig())
    for _ in range(20):
        learned.learn(context, hostile, 1, 1.0, 0.5)
    pmf = learned.pmf(context, hostile)
    assert len(pmf) == 2 and math.isclose(sum(pmf), 1.0, abs_tol=1e-6) and pmf[0] > pmf[1]


def test_numeric_and_bool_features() -> None:
    assert shared_line({"user": {"age": 31.0, "pro": True}}) == "shared |U age:31.0 pro=true"
    with pytest.raises(InvalidFeature):
        shared_line({"user": {"x": math.nan}})
    with pytest.raises(InvalidFeature):
        shared_line({"other": {"x": 1}})


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ([1], "ctx"),
        ({f"k{i}": 1 for i in range(5)}, "ctx"),
        ({"": 1}, "ctx"),
        ({"k": math.inf}, "ctx.k"),
        ({"k": "v" * 11}, "ctx.k"),
        ({"k": None}, "ctx.k"),
        ({"k": 1e13}, "ctx.k"),
    ],
)
def test_validate_features_names_the_field(values: object, field: str) -> None:
    with pytest.raises(InvalidFeature) as caught:
        validate_features(values, field="ctx", max_features=4, max_name_length=8, max_value_length=10)
    assert caught.value.field == field


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"kind": "neural"}, "policy.kind"),
        ({"kind": "fixed"}, "policy.block"),
        ({"kind": "vw", "vw": {"epsilon": 2}}, "policy.vw.epsilon"),
        ({"kind": "vw", "vw": {"exploration": "magic"}}, "policy.vw.exploration"),
        ({"kind": "vw", "vw": {"interactions": ["AA"]}}, "policy.vw.interactions"),
        ({"kind": "vw", "vw": {"args": "--quiet -d /etc/passwd"}}, "policy.vw.args"),
        ({"kind": "vw", "vw": {"bits": 40}}, "policy.vw.bits"),
        ({"kind": "vw", "vw": {"learning_rate": float("nan")}}, "policy.vw.learning_rate"),
        ({"extra": 1}, "policy.extra"),
        ({"kind": "vw", "vw": {"cb_type": "ips"}}, "policy.vw.cb_type"),
        ({"kind": "vw", "vw": {"exploration": "cover", "cb_type": "dm"}}, "policy.vw.cb_type"),
        ({"kind": "linear", "linear": {"floor": 2}}, "policy.linear.floor"),
        ({"kind": "linear", "linear": {"alpha": 1}}, "policy.linear.alpha"),
        ({"kind": "linear", "linear": []}, "policy.linear"),
    ],
)
def test_invalid_policy_configs(data: dict, field: str) -> None:
    with pytest.raises(InvalidPolicy) as caught:
        PolicyConfig.from_dict(data)
    assert caught.value.field == field


def test_default_config_is_squarecb_with_interactions_and_round_trips() -> None:
    config = PolicyConfig.from_dict({"kind": "vw"})
    assert config.vw is not None
    args = config.vw.to_args()
    assert "--squarecb" in args and args[args.index("--gamma_scale") + 1] == "1000.0"
    assert args.count("--interactions") == 4 and args.count("--ignore_linear") == 4
    assert PolicyConfig.from_dict(config.to_dict()) == config
    for exploration in ("epsilon", "cover", "bag", "softmax", "regcb", "first"):
        VWPolicy(VWConfig(exploration=exploration)).close()  # every allowed set starts a real workspace


def test_linear_kind_defaults_round_trips_and_builds_its_chooser() -> None:
    config = PolicyConfig.from_dict({"kind": "linear"})
    assert config.linear == LinearConfig() and config.vw is None
    assert PolicyConfig.from_dict(config.to_dict()) == config
    tuned = PolicyConfig.from_dict({"kind": "linear", "linear": {"exploration": "thompson", "half_life": 1000}})
    assert tuned.linear is not None and tuned.linear.exploration == "thompson" and tuned.linear.half_life == 1000
    assert PolicyConfig.from_dict(tuned.to_dict()) == tuned
    chooser = build_chooser(config)
    assert isinstance(chooser, LinearPolicy) and not chooser.trained
    cands = [Candidate("a", {"kind": "x"}), Candidate("b", {"kind": "y"})]
    for _ in range(20):
        chooser.learn(_context("mobile"), cands, 1, 0.0, 0.5)
    restored = build_chooser(config, chooser.save())
    assert restored.trained
    assert restored.pmf(_context("mobile"), cands) == pytest.approx(chooser.pmf(_context("mobile"), cands), abs=1e-12)
    assert not build_chooser(config, chooser.save(), trained=False).trained


def test_cost_encoding_is_optimistic_for_untried() -> None:
    assert cost_from_reward(1.0, 0.0, 1.0) == 0.0
    assert cost_from_reward(0.0, 0.0, 1.0) == 1.0
    assert cost_from_reward(5.0, 0.0, 10.0) == 0.5
    assert cost_from_reward(20.0, 0.0, 10.0) == 0.0  # clipped to the range


def test_sampling_is_reproducible_and_matches_the_pmf() -> None:
    pmf = normalize_pmf([0.1, 0.6, 0.3])
    secret = b"s"
    assert sample_index(pmf, uniform_draw(secret, "e1")) == sample_index(pmf, uniform_draw(secret, "e1"))
    counts = Counter(sample_index(pmf, uniform_draw(secret, f"e{i}")) for i in range(30_000))
    for index, p in enumerate(pmf):
        assert counts[index] / 30_000 == pytest.approx(p, abs=0.01)
    assert uniform_draw(b"a", "e") != uniform_draw(b"b", "e")
    assert sample_index([0.0, 1.0, 0.0], 0.999999) == 1


def test_normalize_pmf_cleans_rounding_and_garbage() -> None:
    assert math.fsum(normalize_pmf([0.33333334, 0.33333334, 0.33333334])) == pytest.approx(1.0, abs=1e-15)
    assert normalize_pmf([math.nan, -1.0, 2.0]) == [0.0, 0.0, 1.0]
    assert normalize_pmf([0.0, 0.0]) == [0.5, 0.5]


def test_uniform_and_fixed() -> None:
    cands = [Candidate("a"), Candidate("b"), Candidate("c"), Candidate("d")]
    assert UniformPolicy().pmf({}, cands) == [0.25] * 4
    assert FixedPolicy("c").pmf({}, cands) == [0, 0, 1, 0]


def _context(device: str) -> dict:
    return {"device": {"type": device}, "time": {"daypart": "evening"}}


def test_vw_policy_learns_saves_loads_and_cached_examples_agree() -> None:
    cands = [Candidate(f"b{i}", {"category": ["video", "news"][i % 2]}) for i in range(6)]
    policy = VWPolicy(VWConfig())
    assert not policy.trained and policy.pmf(_context("mobile"), cands) == [1 / 6] * 6
    for step in range(600):
        device = ["mobile", "desktop"][step % 2]
        chosen = (step // 2) % 6
        best = 1 if device == "mobile" else 4
        policy.learn(_context(device), cands, chosen, 0.0 if chosen == best else 1.0, 1 / 6)
    mobile = policy.pmf(_context("mobile"), cands)
    desktop = policy.pmf(_context("desktop"), cands)
    assert max(range(6), key=mobile.__getitem__) == 1
    assert max(range(6), key=desktop.__getitem__) == 4
    # cached (parsed once) block examples give the same pmf as fresh text, many times over
    for _ in range(50):
        for device, fresh in (("mobile", mobile), ("desktop", desktop)):
            assert policy.pmf(_context(device), cands, catalog_key="k") == pytest.approx(fresh, abs=1e-7)
    # numpy scalars (what analysis code hands in) are learned, not silently dropped
    import numpy as np

    before = policy.pmf(_context("mobile"), cands)
    for _ in range(30):
        policy.learn(_context("mobile"), cands, 1, np.float64(1.0), np.float64(1 / 6))
    assert policy.pmf(_context("mobile"), cands) != before
    mobile = policy.pmf(_context("mobile"), cands)
    restored = VWPolicy(VWConfig(), policy.save())
    assert restored.trained
    assert restored.pmf(_context("mobile"), cands) == pytest.approx(mobile, abs=1e-6)


def test_learning_with_cached_block_examples_equals_text_learning() -> None:
    import random

    cands = [Candidate(f"b{i}", {"category": ["video", "news", "offer"][i % 3], "len": float(i)}) for i in range(8)]
    text, cached = VWPolicy(VWConfig()), VWPolicy(VWConfig())
    rng = random.Random(5)
    for step in range(400):
        context = _context(rng.choice(["mobile", "desktop", "tablet"]))
        chosen = rng.randrange(8)
        cost = float(rng.random() < 0.3)
        text.learn(context, cands, chosen, cost, 1 / 8)
        cached.learn(context, cands, chosen, cost, 1 / 8, catalog_key="c1")
        if step % 50 == 0:  # predictions interleaved with learning share the same cached examples
            assert cached.pmf(context, cands, catalog_key="c1") == pytest.approx(text.pmf(context, cands), abs=1e-7)
    for device in ("mobile", "desktop", "tablet"):
        assert cached.pmf(_context(device), cands) == pytest.approx(text.pmf(_context(device), cands), abs=1e-7)
