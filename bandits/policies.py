"""Policies: validated configurations and the choosers built from them.

A policy turns (context features, candidate blocks) into a pmf over the
candidates. Kinds:

- ``vw``: a Vowpal Wabbit ``--cb_explore_adf`` learner. Its arguments are built
  from :class:`VWConfig`, a closed set of validated options; no raw argument
  string from a client ever reaches VW.
- ``linear``: an exact Bayesian hybrid linear model (``bandits.linear``,
  configured by :class:`bandits.linear.LinearConfig`).
- ``uniform``: every candidate alike.
- ``fixed``: always one block (uniform over the rest only if it is absent).
- ``rules``: an ordered rule list (``bandits.rules``).

The chooser of a config is made by ``bandits.choosers.build_chooser``, which
imports every kind's module; this module imports none of ``rules``.

Default VW configuration (docs/architecture.md, "Default VW configuration (evidence)"):
SquareCB with ``--gamma_scale 1000``, context x action interactions and no
linear terms for the shared (context) namespaces, costs in [0, 1]. In a
bake-off on nine public datasets it scored 0.877 normalized against 0.729
for epsilon-greedy 0.05.
"""

from __future__ import annotations

import math
import os
import tempfile
import threading
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

import vowpalwabbit

from bandits.errors import InvalidPolicy, ModelError
from bandits.features import Features, FeatureValue, action_line, shared_line
from bandits.linear import LinearConfig
from bandits.options import check_int, check_number
from bandits.rewards import cost_from_reward

__all__ = [
    "Candidate",
    "Chooser",
    "FixedPolicy",
    "PolicyConfig",
    "UniformPolicy",
    "VWConfig",
    "VWPolicy",
    "cost_from_reward",
]

Exploration = Literal["squarecb", "epsilon", "cover", "bag", "softmax", "regcb", "first"]
CbType = Literal["mtr", "ips", "dr", "dm"]
PolicyKind = Literal["vw", "linear", "uniform", "fixed", "rules"]

_CONTEXT_LETTERS = "TDLU"
_ALLOWED_INTERACTIONS = frozenset(
    {f"{c}A" for c in _CONTEXT_LETTERS} | {f"{a}{b}A" for a in _CONTEXT_LETTERS for b in _CONTEXT_LETTERS}
)


@dataclass(frozen=True)
class Candidate:
    """One block offered to a decision."""

    id: str
    features: Mapping[str, FeatureValue] = field(default_factory=dict)


def _check_range(name: str, value: float, low: float, high: float) -> None:
    check_number("policy.vw", name, value, low, high)


@dataclass(frozen=True)
class VWConfig:
    """A validated ``--cb_explore_adf`` configuration."""

    exploration: Exploration = "squarecb"
    """Exploration algorithm."""
    epsilon: float = 0.05
    """Exploration share for ``epsilon`` (and the floor of ``cover``/``bag``)."""
    gamma_scale: float = 1000.0
    """SquareCB / RegCB greediness: larger exploits sooner."""
    gamma_exponent: float = 0.5
    """SquareCB gamma grows as gamma_scale * t ** gamma_exponent."""
    cover: int = 3
    """Number of policies for ``cover``."""
    bag: int = 5
    """Number of bootstrapped policies for ``bag``."""
    softmax_lambda: float = 10.0
    """Inverse temperature for ``softmax``."""
    first: int = 100
    """Explore-first: number of uniformly explored decisions."""
    learning_rate: float = 0.5
    """VW ``-l``."""
    power_t: float = 0.5
    """VW ``--power_t``: learning-rate decay exponent."""
    l2: float = 0.0
    """L2 regularisation."""
    cb_type: CbType = "mtr"
    """How costs are estimated for learning."""
    interactions: tuple[str, ...] = ("TA", "DA", "LA", "UA")
    """Context x action interactions (T time, D device, L location, U user, A block)."""
    ignore_linear_context: bool = True
    """Drop shared-only linear terms: they shift every action alike."""
    bits: int = 18
    """Hash table size in bits."""

    def __post_init__(self) -> None:
        if self.exploration not in ("squarecb", "epsilon", "cover", "bag", "softmax", "regcb", "first"):
            raise InvalidPolicy(f"unknown exploration {self.exploration!r}", field="policy.vw.exploration")
        if self.cb_type not in ("mtr", "ips", "dr", "dm"):
            raise InvalidPolicy(f"unknown cb_type {self.cb_type!r}", field="policy.vw.cb_type")
        # VW refuses these pairs at start-up; say so here, naming the field.
        if self.exploration == "squarecb" and self.cb_type != "mtr":
            raise InvalidPolicy("squarecb works only with cb_type 'mtr'", field="policy.vw.cb_type")
        if self.exploration == "cover" and self.cb_type == "dm":
            raise InvalidPolicy("cover does not work with cb_type 'dm'", field="policy.vw.cb_type")
        _check_range("epsilon", self.epsilon, 0.0, 1.0)
        _check_range("gamma_scale", self.gamma_scale, 1e-3, 1e6)
        _check_range("gamma_exponent", self.gamma_exponent, 0.0, 1.0)
        _check_range("softmax_lambda", self.softmax_lambda, 0.0, 1e4)
        _check_range("learning_rate", self.learning_rate, 1e-6, 100.0)
        _check_range("power_t", self.power_t, 0.0, 1.0)
        _check_range("l2", self.l2, 0.0, 1.0)
        for name, value, high in (("cover", self.cover, 64), ("bag", self.bag, 64), ("first", self.first, 10**7), ("bits", self.bits, 28)):
            check_int("policy.vw", name, value, 1, high)
        if self.bits < 10:
            raise InvalidPolicy("bits must be at least 10", field="policy.vw.bits")
        if not isinstance(self.interactions, tuple) or len(self.interactions) > 20:
            raise InvalidPolicy("interactions must be a list of at most 20 items", field="policy.vw.interactions")
        for item in self.interactions:
            if item not in _ALLOWED_INTERACTIONS:
                raise InvalidPolicy(
                    f"interaction {item!r} is not one of the context x action pairs "
                    f"(e.g. 'TA', 'DA', 'LA', 'UA', 'TDA')",
                    field="policy.vw.interactions",
                )

    def to_args(self) -> list[str]:
        """The VW command line, token by token."""
        args = ["--cb_explore_adf", "--quiet", "--cb_type", self.cb_type, "-b", str(self.bits)]
        args += ["-l", repr(self.learning_rate), "--power_t", repr(self.power_t)]
        if self.l2 > 0:
            args += ["--l2", repr(self.l2)]
        if self.exploration == "squarecb":
            args += ["--squarecb", "--gamma_scale", repr(self.gamma_scale), "--gamma_exponent", repr(self.gamma_exponent)]
        elif self.exploration == "regcb":
            args += ["--regcbopt"]
        elif self.exploration == "epsilon":
            args += ["--epsilon", repr(self.epsilon)]
        elif self.exploration == "cover":
            args += ["--cover", str(self.cover), "--epsilon", repr(self.epsilon)]
        elif self.exploration == "bag":
            args += ["--bag", str(self.bag), "--epsilon", repr(self.epsilon)]
        elif self.exploration == "softmax":
            args += ["--softmax", "--lambda", repr(self.softmax_lambda)]
        elif self.exploration == "first":
            args += ["--first", str(self.first)]
        for interaction in self.interactions:
            args += ["--interactions", interaction]
        if self.ignore_linear_context:
            for letter in _CONTEXT_LETTERS:
                args += ["--ignore_linear", letter]
        return args

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VWConfig:
        if not isinstance(data, Mapping):
            raise InvalidPolicy("policy.vw must be an object", field="policy.vw")
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            name = sorted(unknown)[0]
            raise InvalidPolicy(f"unknown VW option {name!r}", field=f"policy.vw.{name}")
        values = dict(data)
        if "interactions" in values:
            if not isinstance(values["interactions"], list | tuple):
                raise InvalidPolicy("interactions must be a list", field="policy.vw.interactions")
            values["interactions"] = tuple(values["interactions"])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["interactions"] = list(self.interactions)
        return data


@dataclass(frozen=True)
class PolicyConfig:
    """What a policy is: its kind plus the settings of that kind."""

    kind: PolicyKind = "vw"
    vw: VWConfig | None = None
    """Only for ``vw``; ``None`` means the default configuration."""
    linear: LinearConfig | None = None
    """Only for ``linear`` (see ``bandits.linear``); ``None`` means the default configuration."""
    block: str | None = None
    """Only for ``fixed``: the block it always chooses."""
    rules: Mapping[str, Any] | None = None
    """Only for ``rules``: the validated rule list (see ``bandits.rules``)."""

    def __post_init__(self) -> None:
        if self.kind not in ("vw", "linear", "uniform", "fixed", "rules"):
            raise InvalidPolicy(f"unknown policy kind {self.kind!r}", field="policy.kind")
        if self.kind == "vw" and self.vw is None:
            object.__setattr__(self, "vw", VWConfig())
        if self.kind == "linear" and self.linear is None:
            object.__setattr__(self, "linear", LinearConfig())
        if self.kind == "fixed" and (not isinstance(self.block, str) or not self.block):
            raise InvalidPolicy("a fixed policy needs 'block'", field="policy.block")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PolicyConfig:
        if not isinstance(data, Mapping):
            raise InvalidPolicy("policy must be an object", field="policy")
        unknown = set(data) - {"kind", "vw", "linear", "block", "rules"}
        if unknown:
            name = sorted(unknown)[0]
            raise InvalidPolicy(f"unknown policy field {name!r}", field=f"policy.{name}")
        kind = data.get("kind", "vw")
        vw = VWConfig.from_dict(data["vw"]) if data.get("vw") is not None else None
        linear = LinearConfig.from_dict(data["linear"]) if data.get("linear") is not None else None
        return cls(kind=kind, vw=vw, linear=linear, block=data.get("block"), rules=data.get("rules"))

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"kind": self.kind}
        if self.vw is not None:
            data["vw"] = self.vw.to_dict()
        if self.linear is not None:
            data["linear"] = self.linear.to_dict()
        if self.block is not None:
            data["block"] = self.block
        if self.rules is not None:
            data["rules"] = dict(self.rules)
        return data


class Chooser(Protocol):
    """Anything that gives a pmf over candidates for a context."""

    @property
    def trained(self) -> bool: ...

    def pmf(self, context: Features, candidates: Sequence[Candidate], catalog_key: str | None = None) -> list[float]: ...


class UniformPolicy:
    trained = True

    def pmf(self, context: Features, candidates: Sequence[Candidate], catalog_key: str | None = None) -> list[float]:
        return [1.0 / len(candidates)] * len(candidates)


class FixedPolicy:
    trained = True

    def __init__(self, block: str) -> None:
        self.block = block

    def pmf(self, context: Features, candidates: Sequence[Candidate], catalog_key: str | None = None) -> list[float]:
        ids = [c.id for c in candidates]
        if self.block in ids:
            return [1.0 if i == self.block else 0.0 for i in ids]
        return [1.0 / len(ids)] * len(ids)


class VWPolicy:
    """A ``cb_explore_adf`` workspace: predict pmfs, learn from costs, save and load.

    Block examples are parsed once per catalog key and reused across requests
    (parsing is ~90% of a text predict). Not thread-safe: one VWPolicy per
    thread, or hold ``lock``.
    """

    def __init__(self, config: VWConfig, model: bytes | None = None, *, trained: bool | None = None) -> None:
        self.config = config
        self.lock = threading.Lock()
        self._action_cache: dict[str, list[vowpalwabbit.Example]] = {}
        self.learned_examples = 0
        if model is None:
            self._ws = vowpalwabbit.Workspace(arg_list=config.to_args())
        else:
            self._ws = _workspace_from_bytes(config, model)
        self._trained = bool(model) if trained is None else trained

    @property
    def trained(self) -> bool:
        return self._trained

    def _actions(self, candidates: Sequence[Candidate], catalog_key: str | None) -> list[vowpalwabbit.Example]:
        if catalog_key is not None:
            cached = self._action_cache.get(catalog_key)
            if cached is not None:
                return cached
        examples = [
            self._ws.example(action_line(c.id, c.features), vowpalwabbit.LabelType.CONTEXTUAL_BANDIT)
            for c in candidates
        ]
        if catalog_key is not None:
            if len(self._action_cache) > 256:
                self._action_cache.clear()
            self._action_cache[catalog_key] = examples
        return examples

    def pmf(self, context: Features, candidates: Sequence[Candidate], catalog_key: str | None = None) -> list[float]:
        """The model's pmf; uniform while untrained (logged honestly as such by the caller)."""
        if not self._trained:
            return [1.0 / len(candidates)] * len(candidates)
        shared = self._ws.example(shared_line(context), vowpalwabbit.LabelType.CONTEXTUAL_BANDIT)
        actions = self._actions(candidates, catalog_key)
        multi = [shared, *actions]
        try:
            pmf = self._ws.predict(multi)
        finally:
            self._ws.finish_example(multi)
        return [float(p) for p in pmf]

    def scores(self, context: Features, candidates: Sequence[Candidate]) -> list[float]:
        """Greedy view: the pmf of the current model (for replay and imitation checks)."""
        return self.pmf(context, candidates)

    def learn(
        self,
        context: Features,
        candidates: Sequence[Candidate],
        chosen_index: int,
        cost: float,
        probability: float,
        catalog_key: str | None = None,
    ) -> None:
        """One cb_explore_adf update with the label ``0:cost:probability`` on the chosen block.

        With ``catalog_key`` the unchosen blocks reuse parsed examples (as ``pmf`` does);
        only the shared example and the labelled block are parsed.
        """
        if not 0 <= chosen_index < len(candidates):
            raise ModelError("chosen index outside the candidate set", field="chosen_index")
        # plain floats: a numpy float would print as np.float64(...), which VW silently ignores
        cost, probability = float(cost), float(probability)
        if not (0.0 < probability <= 1.0) or not math.isfinite(cost):
            raise ModelError("learning needs 0 < probability <= 1 and a finite cost", field="probability")
        chosen = candidates[chosen_index]
        label = f"0:{cost!r}:{probability!r} {action_line(chosen.id, chosen.features)}"
        if catalog_key is None:
            lines = [shared_line(context)]
            lines += [label if i == chosen_index else action_line(c.id, c.features) for i, c in enumerate(candidates)]
            self._ws.learn(lines)
        else:
            kind = vowpalwabbit.LabelType.CONTEXTUAL_BANDIT
            actions = list(self._actions(candidates, catalog_key))
            actions[chosen_index] = self._ws.example(label, kind)
            multi = [self._ws.example(shared_line(context), kind), *actions]
            try:
                self._ws.learn(multi)
            finally:
                self._ws.finish_example(multi)
        self.learned_examples += 1
        self._trained = True

    def save(self) -> bytes:
        """The model as bytes (VW's binary model format)."""
        handle, path = tempfile.mkstemp(suffix=".vw")
        os.close(handle)
        try:
            self._ws.save(path)
            with open(path, "rb") as stream:
                return stream.read()
        finally:
            os.unlink(path)

    def close(self) -> None:
        self._action_cache.clear()
        self._ws.finish()


def _workspace_from_bytes(config: VWConfig, model: bytes) -> vowpalwabbit.Workspace:
    if not model:
        raise ModelError("empty model", field="model")
    handle, path = tempfile.mkstemp(suffix=".vw")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(model)
        try:
            # VW keeps the reductions stored in the model; -i plus --quiet is enough.
            return vowpalwabbit.Workspace(arg_list=["--quiet", "-i", path])
        except Exception as error:  # VW raises plain RuntimeError on a bad model
            raise ModelError(f"cannot load VW model: {error}", field="model") from error
    finally:
        os.unlink(path)
