"""The rules policy kind: matching, pmf, validation table, and offline evaluability."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from bandits.choosers import build_chooser
from bandits.context import RequestFacts, derive_context
from bandits.errors import InvalidPolicy
from bandits.policies import Candidate, PolicyConfig
from bandits.rules import RulesPolicy
from bandits.sampling import sample_index

CANDIDATES = tuple(Candidate(b) for b in ("news", "video", "offer-de", "pick"))
CONFIG = {
    "rules": [
        {"when": [{"feature": "device_type", "op": "eq", "value": "mobile"},
                  {"feature": "day_part", "op": "in", "value": ["morning", "afternoon"]}], "block": "news"},
        {"when": [{"feature": "country", "value": "DE"}], "block": "offer-de"},
        {"when": [{"feature": "user.age", "op": "between", "value": [18, 30]}], "block": "video"},
    ],
    "fallback": "pick",
    "exploration": 0.2,
}


def ctx(device: str = "desktop", daypart: str = "evening", country: str = "FR", **user: object) -> dict:
    return {"time": {"daypart": daypart}, "device": {"type": device}, "location": {"country": country}, "user": user}


@pytest.mark.parametrize(
    ("context", "target"),
    [
        (ctx("mobile", "morning"), "news"),
        (ctx("mobile", "evening"), "pick"),
        (ctx("mobile", "afternoon", "DE"), "news"),  # first matching rule wins
        (ctx("desktop", "morning", "DE"), "offer-de"),
        (ctx(age=18), "video"),
        (ctx(age=30.0), "video"),
        (ctx(age=31), "pick"),
        (ctx(age="25"), "pick"),  # a string is not a number
        (ctx(age=True), "pick"),  # a boolean is not a number
        ({}, "pick"),
    ],
)
def test_first_matching_rule_names_the_target(context: dict, target: str) -> None:
    policy = RulesPolicy.from_config(CONFIG)
    pmf = policy.pmf(context, CANDIDATES)
    k = len(CANDIDATES)
    expected = [0.2 / k + (0.8 if c.id == target else 0.0) for c in CANDIDATES]
    assert pmf == pytest.approx(expected)
    assert sum(pmf) == pytest.approx(1.0)


def test_unavailable_target_falls_through_then_uniform() -> None:
    policy = RulesPolicy.from_config(CONFIG)
    without_news = tuple(c for c in CANDIDATES if c.id != "news")
    pmf = policy.pmf(ctx("mobile", "morning", "DE"), without_news)
    assert pmf[[c.id for c in without_news].index("offer-de")] == pytest.approx(0.2 / 3 + 0.8)
    bare = (Candidate("x"), Candidate("y"))
    assert policy.pmf(ctx(), bare) == [0.5, 0.5]


def test_operators_and_missing_values() -> None:
    def target(condition: dict, context: dict) -> str:
        policy = RulesPolicy.from_config({"rules": [{"when": [condition], "block": "a"}], "fallback": "b"})
        return policy.target(context, {"a", "b"}) or ""

    assert target({"feature": "user.plan", "op": "ne", "value": "pro"}, ctx()) == "a"  # missing -> ne holds
    assert target({"feature": "user.plan", "op": "ne", "value": "pro"}, ctx(plan="pro")) == "b"
    assert target({"feature": "user.plan", "op": "not_in", "value": ["pro", "team"]}, ctx(plan="free")) == "a"
    assert target({"feature": "user.plan", "op": "exists", "value": True}, ctx()) == "b"
    assert target({"feature": "user.plan", "op": "exists", "value": False}, ctx()) == "a"
    assert target({"feature": "user.visits", "op": "gte", "value": 3}, ctx(visits=3)) == "a"
    assert target({"feature": "user.visits", "op": "gt", "value": 3}, ctx(visits=3)) == "b"
    assert target({"feature": "user.visits", "op": "lt", "value": 3}, ctx()) == "b"  # missing -> numeric fails
    assert target({"feature": "user.returning", "op": "eq", "value": True}, ctx(returning=True)) == "a"
    assert target({"feature": "user.returning", "op": "eq", "value": 1}, ctx(returning=True)) == "b"
    assert target({"feature": "time.weekend", "op": "eq", "value": True}, {"time": {"weekend": True}}) == "a"


def test_derived_context_drives_the_rules() -> None:
    iphone = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 "
              "(KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1")
    facts = RequestFacts(timestamp=datetime(2026, 3, 4, 8, 30, tzinfo=UTC), timezone="UTC", user_agent=iphone)
    context = derive_context(facts, now=datetime(2026, 3, 4, 8, 30, tzinfo=UTC))
    assert RulesPolicy.from_config(CONFIG).target(context, {c.id for c in CANDIDATES}) == "news"


def test_built_through_policy_config_and_round_trips() -> None:
    chooser = build_chooser(PolicyConfig(kind="rules", rules=CONFIG))
    assert isinstance(chooser, RulesPolicy) and chooser.trained
    again = RulesPolicy.from_config(chooser.to_config())
    assert again.to_config() == chooser.to_config()
    assert chooser.blocks == ("news", "offer-de", "video", "pick")


def test_catalog_check_names_the_rule() -> None:
    policy = RulesPolicy.from_config(CONFIG)
    policy.check_catalog({"news", "video", "offer-de", "pick"})
    with pytest.raises(InvalidPolicy) as error:
        policy.check_catalog({"news", "video", "pick"}, field="arms.1.policy.rules")
    assert error.value.field == "arms.1.policy.rules.rules.1.block"
    with pytest.raises(InvalidPolicy) as error:
        policy.check_catalog({"news", "video", "offer-de"})
    assert error.value.field == "policy.rules.fallback"


def rule(**condition: object) -> dict:
    return {"rules": [{"when": [condition], "block": "a"}]}


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ([], "policy.rules"),
        ({"rules": [], "fallback": None}, "policy.rules.rules"),
        ({"rules": "x"}, "policy.rules.rules"),
        ({"rule": []}, "policy.rules.rule"),
        ({"rules": [{"when": [], "block": ""}]}, "policy.rules.rules.0.block"),
        ({"rules": [{"when": [], "block": "a", "then": 1}]}, "policy.rules.rules.0.then"),
        ({"rules": [{"when": {}, "block": "a"}]}, "policy.rules.rules.0.when"),
        ({"rules": [{"when": ["device.type"], "block": "a"}]}, "policy.rules.rules.0.when.0"),
        (rule(feature="device.model", op="eq", value="x"), "policy.rules.rules.0.when.0.feature"),
        (rule(feature="weather.rain", op="eq", value="x"), "policy.rules.rules.0.when.0.feature"),
        (rule(feature="user.age", op="approx", value=3), "policy.rules.rules.0.when.0.op"),
        (rule(feature="user.age", op="between", value=[3]), "policy.rules.rules.0.when.0.value"),
        (rule(feature="user.age", op="between", value=[5, 3]), "policy.rules.rules.0.when.0.value"),
        (rule(feature="user.age", op="gte", value="18"), "policy.rules.rules.0.when.0.value"),
        (rule(feature="user.age", op="gte", value=float("nan")), "policy.rules.rules.0.when.0.value"),
        (rule(feature="user.age", op="gte"), "policy.rules.rules.0.when.0.value"),
        (rule(feature="country", op="in", value=[]), "policy.rules.rules.0.when.0.value"),
        (rule(feature="country", op="in", value=["DE", {"x": 1}]), "policy.rules.rules.0.when.0.value.1"),
        (rule(feature="country", op="eq", value=["DE"]), "policy.rules.rules.0.when.0.value"),
        (rule(feature="country", op="exists", value="yes"), "policy.rules.rules.0.when.0.value"),
        (rule(feature="country", op="eq", value="DE", weight=2), "policy.rules.rules.0.when.0.weight"),
        ({"fallback": "a", "exploration": 1.5}, "policy.rules.exploration"),
        ({"fallback": "a", "exploration": True}, "policy.rules.exploration"),
        ({"fallback": 3}, "policy.rules.fallback"),
    ],
)
def test_invalid_rules_name_the_field(config: object, field: str) -> None:
    with pytest.raises(InvalidPolicy) as error:
        RulesPolicy.from_config(config)  # type: ignore[arg-type]
    assert error.value.field == field


def test_exploration_makes_the_arm_evaluable_offline() -> None:
    """IPS on a rules arm's own logged choices recovers the value of another policy (seeded truth)."""
    rng = np.random.default_rng(7)
    policy = RulesPolicy.from_config(CONFIG)
    truth = {"news": 0.10, "video": 0.30, "offer-de": 0.05, "pick": 0.15}
    ids = [c.id for c in CANDIDATES]
    n = 20_000
    weights_times_reward = np.empty(n)
    for i in range(n):
        context = ctx(["mobile", "desktop"][i % 2], ["morning", "evening"][(i // 2) % 2], ["DE", "FR"][(i // 4) % 2])
        pmf = policy.pmf(context, CANDIDATES)
        chosen = sample_index(pmf, float(rng.random()))
        reward = float(rng.random() < truth[ids[chosen]])
        target = 1.0 if ids[chosen] == "video" else 0.0  # evaluate "always video"
        weights_times_reward[i] = target / pmf[chosen] * reward
    estimate = weights_times_reward.mean()
    stderr = weights_times_reward.std(ddof=1) / np.sqrt(n)
    assert abs(estimate - truth["video"]) < 4 * stderr
    assert stderr < 0.03
