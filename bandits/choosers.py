"""The chooser of a policy configuration, whatever its kind.

This module sits above every policy family (``policies`` for vw/uniform/fixed,
``linear``, ``rules``) so that none of them imports another to build choosers.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Protocol

from bandits.errors import InvalidPolicy
from bandits.features import Features
from bandits.linear import LinearPolicy
from bandits.policies import Candidate, Chooser, FixedPolicy, PolicyConfig, UniformPolicy, VWPolicy
from bandits.rules import RulesPolicy

__all__ = ["MODEL_KINDS", "LearningModel", "build_chooser", "build_model", "check_against_catalog", "model_suffix"]

MODEL_KINDS: tuple[str, ...] = ("vw", "linear")
"""Policy kinds that learn: the learner trains them, snapshots hold their models."""


class LearningModel(Protocol):
    """A chooser that learns online and saves itself: what the learner, the model admin and replay need."""

    lock: threading.Lock
    learned_examples: int

    @property
    def trained(self) -> bool: ...

    def pmf(self, context: Features, candidates: Sequence[Candidate], catalog_key: str | None = None) -> list[float]: ...

    def learn(self, context: Features, candidates: Sequence[Candidate], chosen_index: int, cost: float,
              probability: float, catalog_key: str | None = None) -> None: ...

    def save(self) -> bytes: ...

    def close(self) -> None: ...


def build_model(config: PolicyConfig, model: bytes | None = None, *, trained: bool | None = None) -> LearningModel:
    """The learning model of a ``vw`` or ``linear`` policy, fresh or from a snapshot's bytes
    (raises ModelError on bytes it cannot load, InvalidPolicy on another kind)."""
    if config.kind == "vw":
        assert config.vw is not None
        return VWPolicy(config.vw, model, trained=trained)
    if config.kind == "linear":
        assert config.linear is not None
        return LinearPolicy(config.linear, model, trained=trained)
    raise InvalidPolicy(f"policy kind {config.kind!r} has no model", field="policy.kind")


def model_suffix(kind: str) -> str:
    """The file suffix of an exported model of ``kind`` (VW's binary format, or our linear format)."""
    return ".vw" if kind == "vw" else f".{kind}"


def check_against_catalog(config: PolicyConfig, catalog: Sequence[str], field: str = "policy") -> None:
    """Raise InvalidPolicy when a ``rules``/``fixed`` policy names a block the catalog lacks
    (or its rules are invalid). ``field`` prefixes the reported field name."""
    if config.kind == "rules":
        RulesPolicy.from_config(config.rules or {}, field=f"{field}.rules").check_catalog(catalog, field=f"{field}.rules")
    elif config.kind == "fixed" and config.block not in catalog:
        raise InvalidPolicy(f"block '{config.block}' is not in the slot's catalog", field=f"{field}.block")


def build_chooser(config: PolicyConfig, model: bytes | None = None, *, trained: bool | None = None) -> Chooser:
    """The chooser for a policy config; ``vw`` and ``linear`` start from ``model`` when given.

    ``trained=False`` marks a model that has learned nothing yet (a reset snapshot): it
    serves uniformly and says so, whatever bytes it holds."""
    if config.kind == "uniform":
        return UniformPolicy()
    if config.kind == "fixed":
        assert config.block is not None
        return FixedPolicy(config.block)
    if config.kind in MODEL_KINDS:
        return build_model(config, model, trained=trained)
    if config.kind == "rules":
        return RulesPolicy.from_config(config.rules or {})
    raise InvalidPolicy(f"unknown policy kind {config.kind!r}", field="policy.kind")
