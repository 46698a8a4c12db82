"""The ``rules`` policy kind: an ordered rule list a growth team writes, as validated data.

A rules policy is JSON, never code::

    {
      "rules": [
        {"when": [{"feature": "device.type", "op": "eq", "value": "mobile"},
                  {"feature": "time.daypart", "op": "in", "value": ["morning", "afternoon"]}],
         "block": "short-news"},
        {"when": [{"feature": "location.country", "op": "eq", "value": "DE"}], "block": "offer-de"},
        {"when": [{"feature": "user.age", "op": "between", "value": [18, 30]}], "block": "video"}
      ],
      "fallback": "editor-pick",
      "exploration": 0.1
    }

Semantics
    The first rule whose conditions all hold (an empty ``when`` always holds)
    names the *target* block; when that block is not among the decision's
    candidates the next matching rule is tried, then ``fallback``; when none is
    available the target is undefined. With exploration share ``epsilon`` and
    ``K`` candidates the pmf is epsilon-greedy around the target (Sutton & Barto
    2018, sec. 2.3; Langford & Zhang 2007, epoch-greedy)::

        pi(a | x) = epsilon / K + (1 - epsilon) * 1[a = target(x)]

    and uniform ``1 / K`` when the target is undefined. With ``epsilon > 0`` every
    candidate has probability at least ``epsilon / K``, so the logged decisions of
    a rules arm support off-policy evaluation of any other policy (importance
    weights bounded by ``K / epsilon``).

Features
    ``feature`` is ``namespace.name`` in the words of :mod:`bandits.context`:
    ``time.{hour,daypart,weekday,weekend}``, ``device.{type,os,browser}``,
    ``location.{country,region,city}`` or ``user.<name>`` (any caller feature).
    Shorthands: ``device_type``, ``day_part``/``daypart``, ``country``.
    Countries are upper-case ISO 3166-1 alpha-2 codes as the context derives them.

Operators
    ``eq``, ``ne`` (scalar), ``in``, ``not_in`` (non-empty list of scalars),
    ``lt``, ``lte``, ``gt``, ``gte`` (finite number), ``between`` (``[low, high]``,
    inclusive, ``low <= high``), ``exists`` (``true``/``false``). A numeric
    operator never holds for a missing or non-numeric feature value; ``ne`` and
    ``not_in`` hold for a missing value. Booleans never equal numbers.

Errors: :class:`bandits.errors.InvalidPolicy` with ``field`` the dotted path of
the offending input (``policy.rules.rules.0.when.1.op``). Whether the named
blocks exist is checked by the service when the policy is attached to a slot or
an experiment arm (:meth:`RulesPolicy.check_catalog`), since a policy knows no
catalog.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeGuard

from bandits.errors import InvalidPolicy
from bandits.features import Features
from bandits.policies import Candidate

__all__ = ["OPERATORS", "Condition", "Rule", "RulesPolicy"]

OPERATORS: tuple[str, ...] = ("eq", "ne", "in", "not_in", "lt", "lte", "gt", "gte", "between", "exists")
_NAMESPACES: Mapping[str, frozenset[str] | None] = {
    "time": frozenset({"hour", "daypart", "weekday", "weekend"}),
    "device": frozenset({"type", "os", "browser"}),
    "location": frozenset({"country", "region", "city"}),
    "user": None,  # any caller-supplied feature name
}
_ALIASES: Mapping[str, str] = {
    "device_type": "device.type",
    "day_part": "time.daypart",
    "daypart": "time.daypart",
    "country": "location.country",
}
MAX_RULES = 200
MAX_CONDITIONS = 16
MAX_LIST = 200
MAX_STRING = 256

Scalar = str | int | float | bool


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_scalar(value: object) -> bool:
    if isinstance(value, str):
        return len(value) <= MAX_STRING
    return isinstance(value, bool) or _is_number(value)


def _equal(a: object, b: object) -> bool:
    """Equality that never confuses a boolean with a number (``True != 1`` here)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    return a == b


@dataclass(frozen=True)
class Condition:
    """``feature op value`` on one context feature."""

    namespace: str
    name: str
    op: str
    value: Any

    def holds(self, context: Features) -> bool:
        group = context.get(self.namespace)
        present = isinstance(group, Mapping) and self.name in group
        actual = group[self.name] if isinstance(group, Mapping) and present else None
        op = self.op
        if op == "exists":
            return bool(present) is bool(self.value)
        if op == "ne":
            return not (present and _equal(actual, self.value))
        if op == "not_in":
            return not (present and any(_equal(actual, v) for v in self.value))
        if not present:
            return False
        if op == "eq":
            return _equal(actual, self.value)
        if op == "in":
            return any(_equal(actual, v) for v in self.value)
        if not _is_number(actual):
            return False
        x = float(actual)
        if op == "lt":
            return bool(x < self.value)
        if op == "lte":
            return bool(x <= self.value)
        if op == "gt":
            return bool(x > self.value)
        if op == "gte":
            return bool(x >= self.value)
        low, high = self.value
        return bool(low <= x <= high)  # between, inclusive

    def to_dict(self) -> dict[str, Any]:
        value = list(self.value) if isinstance(self.value, tuple) else self.value
        return {"feature": f"{self.namespace}.{self.name}", "op": self.op, "value": value}


@dataclass(frozen=True)
class Rule:
    """All ``when`` conditions hold -> ``block``."""

    when: tuple[Condition, ...]
    block: str

    def matches(self, context: Features) -> bool:
        return all(c.holds(context) for c in self.when)


def _parse_feature(raw: object, where: str) -> tuple[str, str]:
    if not isinstance(raw, str) or not raw:
        raise InvalidPolicy("feature must be a non-empty string like 'device.type'", field=where)
    path = _ALIASES.get(raw, raw)
    namespace, dot, name = path.partition(".")
    if not dot or not name or namespace not in _NAMESPACES:
        raise InvalidPolicy(
            f"unknown feature {raw!r}: use time.*, device.*, location.* or user.<name> "
            f"(or device_type, day_part, country)",
            field=where,
        )
    allowed = _NAMESPACES[namespace]
    if allowed is not None and name not in allowed:
        raise InvalidPolicy(f"unknown feature {raw!r}: {namespace} has {', '.join(sorted(allowed))}", field=where)
    if len(name) > 64:
        raise InvalidPolicy("feature names are at most 64 characters", field=where)
    return namespace, name


def _parse_value(op: str, value: object, where: str) -> Any:
    if op in ("eq", "ne"):
        if not _is_scalar(value):
            raise InvalidPolicy(f"'{op}' needs a string, number or boolean", field=where)
        return value
    if op in ("in", "not_in"):
        if not isinstance(value, list | tuple) or not value or len(value) > MAX_LIST:
            raise InvalidPolicy(f"'{op}' needs a non-empty list of at most {MAX_LIST} values", field=where)
        for index, item in enumerate(value):
            if not _is_scalar(item):
                raise InvalidPolicy(f"'{op}' values must be strings, numbers or booleans", field=f"{where}.{index}")
        return tuple(value)
    if op in ("lt", "lte", "gt", "gte"):
        if not _is_number(value):
            raise InvalidPolicy(f"'{op}' needs a finite number", field=where)
        return float(value)
    if op == "between":
        if (not isinstance(value, list | tuple) or len(value) != 2
                or not all(_is_number(v) for v in value)):
            raise InvalidPolicy("'between' needs [low, high], two finite numbers", field=where)
        low, high = float(value[0]), float(value[1])
        if low > high:
            raise InvalidPolicy("'between' needs low <= high", field=where)
        return (low, high)
    # exists
    if not isinstance(value, bool):
        raise InvalidPolicy("'exists' needs true or false", field=where)
    return value


def _parse_condition(raw: object, where: str) -> Condition:
    if not isinstance(raw, Mapping):
        raise InvalidPolicy("a condition is an object {feature, op, value}", field=where)
    unknown = set(raw) - {"feature", "op", "value"}
    if unknown:
        name = sorted(unknown)[0]
        raise InvalidPolicy(f"unknown condition field {name!r}", field=f"{where}.{name}")
    namespace, name = _parse_feature(raw.get("feature"), f"{where}.feature")
    op = raw.get("op", "eq")
    if op not in OPERATORS:
        raise InvalidPolicy(f"unknown operator {op!r}; expected one of {', '.join(OPERATORS)}", field=f"{where}.op")
    if "value" not in raw and op != "exists":
        raise InvalidPolicy(f"'{op}' needs a value", field=f"{where}.value")
    value = _parse_value(op, raw.get("value", True), f"{where}.value")
    return Condition(namespace, name, op, value)


def _parse_block(raw: object, where: str) -> str:
    if not isinstance(raw, str) or not 1 <= len(raw) <= 256:
        raise InvalidPolicy("a block id is a string of 1-256 characters", field=where)
    return raw


class RulesPolicy:
    """Ordered rules -> target block, epsilon-greedy around it (see the module docstring)."""

    trained = True

    def __init__(self, rules: Sequence[Rule], fallback: str | None, exploration: float = 0.0) -> None:
        self.rules = tuple(rules)
        self.fallback = fallback
        self.exploration = exploration

    @classmethod
    def from_config(cls, config: Mapping[str, Any], *, field: str = "policy.rules") -> RulesPolicy:
        """Validate a rules mapping ``{rules, fallback, exploration}``; raises InvalidPolicy."""
        if not isinstance(config, Mapping):
            raise InvalidPolicy("rules must be an object {rules, fallback, exploration}", field=field)
        unknown = set(config) - {"rules", "fallback", "exploration"}
        if unknown:
            name = sorted(unknown)[0]
            raise InvalidPolicy(f"unknown rules field {name!r}", field=f"{field}.{name}")
        raw_rules = config.get("rules", [])
        if not isinstance(raw_rules, list | tuple) or len(raw_rules) > MAX_RULES:
            raise InvalidPolicy(f"rules must be a list of at most {MAX_RULES} rules", field=f"{field}.rules")
        rules: list[Rule] = []
        for index, raw in enumerate(raw_rules):
            where = f"{field}.rules.{index}"
            if not isinstance(raw, Mapping):
                raise InvalidPolicy("a rule is an object {when, block}", field=where)
            extra = set(raw) - {"when", "block"}
            if extra:
                name = sorted(extra)[0]
                raise InvalidPolicy(f"unknown rule field {name!r}", field=f"{where}.{name}")
            when = raw.get("when", [])
            if not isinstance(when, list | tuple) or len(when) > MAX_CONDITIONS:
                raise InvalidPolicy(f"when must be a list of at most {MAX_CONDITIONS} conditions", field=f"{where}.when")
            conditions = tuple(_parse_condition(c, f"{where}.when.{i}") for i, c in enumerate(when))
            rules.append(Rule(conditions, _parse_block(raw.get("block"), f"{where}.block")))
        fallback = config.get("fallback")
        if fallback is not None:
            fallback = _parse_block(fallback, f"{field}.fallback")
        if not rules and fallback is None:
            raise InvalidPolicy("a rules policy needs at least one rule or a fallback block", field=f"{field}.rules")
        exploration = config.get("exploration", 0.0)
        if not _is_number(exploration) or not 0.0 <= exploration <= 1.0:
            raise InvalidPolicy("exploration must be a number within [0, 1]", field=f"{field}.exploration")
        return cls(rules, fallback, float(exploration))

    @property
    def blocks(self) -> tuple[str, ...]:
        """Every block the policy names, in rule order, fallback last (no repeats)."""
        named = [r.block for r in self.rules] + ([self.fallback] if self.fallback else [])
        return tuple(dict.fromkeys(named))

    def check_catalog(self, block_ids: Collection[str], *, field: str = "policy.rules") -> None:
        """Raise InvalidPolicy naming the first rule (or the fallback) whose block is not in ``block_ids``."""
        known = set(block_ids)
        for index, rule in enumerate(self.rules):
            if rule.block not in known:
                raise InvalidPolicy(f"rule {index} names block {rule.block!r}, which the slot's catalog lacks",
                                    field=f"{field}.rules.{index}.block")
        if self.fallback is not None and self.fallback not in known:
            raise InvalidPolicy(f"fallback block {self.fallback!r} is not in the slot's catalog",
                                field=f"{field}.fallback")

    def target(self, context: Features, available: Collection[str]) -> str | None:
        """The block the rules pick among ``available`` (None: no rule and no fallback applies)."""
        for rule in self.rules:
            if rule.block in available and rule.matches(context):
                return rule.block
        if self.fallback is not None and self.fallback in available:
            return self.fallback
        return None

    def pmf(self, context: Features, candidates: Sequence[Candidate], catalog_key: str | None = None) -> list[float]:
        """``epsilon / K + (1 - epsilon) 1[a = target]``; uniform when no target applies."""
        k = len(candidates)
        ids = [c.id for c in candidates]
        target = self.target(context, set(ids))
        if target is None:
            return [1.0 / k] * k
        floor = self.exploration / k
        return [floor + (1.0 - self.exploration) if block == target else floor for block in ids]

    def to_config(self) -> dict[str, Any]:
        """The normalised mapping (``from_config(to_config())`` is the same policy)."""
        return {
            "rules": [{"when": [c.to_dict() for c in r.when], "block": r.block} for r in self.rules],
            "fallback": self.fallback,
            "exploration": self.exploration,
        }
