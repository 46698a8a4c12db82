"""The chooser of a policy configuration, whatever its kind.

This module sits above every policy family (``policies`` for vw/uniform/fixed,
``linear``, ``rules``) so that none of them imports another to build choosers.
"""

from __future__ import annotations

from collections.abc import Sequence

from bandits.errors import InvalidPolicy
from bandits.linear import LinearPolicy
from bandits.policies import Chooser, FixedPolicy, PolicyConfig, UniformPolicy, VWPolicy
from bandits.rules import RulesPolicy

__all__ = ["build_chooser", "check_against_catalog"]


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
    if config.kind == "vw":
        assert config.vw is not None
        return VWPolicy(config.vw, model, trained=trained)
    if config.kind == "linear":
        assert config.linear is not None
        return LinearPolicy(config.linear, model, trained=trained)
    if config.kind == "rules":
        return RulesPolicy.from_config(config.rules or {})
    raise InvalidPolicy(f"unknown policy kind {config.kind!r}", field="policy.kind")
