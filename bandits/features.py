"""Structured features and their Vowpal Wabbit text form.

A feature set is a mapping ``namespace -> {name: value}`` where a value is a
string (categorical), a bool (categorical "true"/"false") or a finite number
(a weighted feature). Namespaces are the context groups ``time``, ``device``,
``location``, ``user`` and the action namespace ``block``; each maps to a
one-letter VW namespace so that interactions (``-q TA``) stay short.

Every name and value is escaped before it reaches VW text: anything outside
``[A-Za-z0-9_.-]`` becomes ``%XX`` of its UTF-8 bytes, so no input (``|``,
``:``, spaces, newlines, unicode) can open a namespace, add a weight or forge a
label. Categorical features become one token ``name=value``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

from bandits.errors import InvalidFeature

__all__ = [
    "ACTION_NAMESPACE",
    "CONTEXT_NAMESPACES",
    "FeatureValue",
    "Features",
    "NAMESPACE_LETTERS",
    "action_line",
    "escape_token",
    "shared_line",
    "validate_features",
]

FeatureValue = str | bool | int | float
Features = Mapping[str, Mapping[str, FeatureValue]]

# Context groups and the action namespace, with their VW namespace letters.
NAMESPACE_LETTERS: dict[str, str] = {
    "time": "T",
    "device": "D",
    "location": "L",
    "user": "U",
    "block": "A",
}
CONTEXT_NAMESPACES: tuple[str, ...] = ("time", "device", "location", "user")
ACTION_NAMESPACE = "block"

_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]")


def _percent(match: re.Match[str]) -> str:
    return "".join(f"%{b:02X}" for b in match.group(0).encode("utf-8"))


def escape_token(text: str) -> str:
    """Escape a name or value so it is a single inert VW token part."""
    if not text:
        return "%00"  # an empty name must still be a token
    if _UNSAFE.search(text) is None:
        return text
    return _UNSAFE.sub(_percent, text)


def _format_number(value: float) -> str:
    # repr keeps full precision; VW reads it with strtof
    return repr(float(value))


_TOKEN_CACHE: dict[tuple[str, str | bool], str] = {}
_TOKEN_CACHE_LIMIT = 16_384


def _feature_token(name: str, value: FeatureValue) -> str:
    # Categorical tokens repeat across requests (hour=09, type=mobile...): escape each once.
    if isinstance(value, str | bool):
        key = (name, value)
        token = _TOKEN_CACHE.get(key)
        if token is None:
            token = _categorical_token(name, value)
            if len(_TOKEN_CACHE) >= _TOKEN_CACHE_LIMIT:
                _TOKEN_CACHE.clear()
            _TOKEN_CACHE[key] = token
        return token
    return _numeric_token(name, value)


def _categorical_token(name: str, value: str | bool) -> str:
    if isinstance(value, bool):
        return f"{escape_token(name)}={'true' if value else 'false'}"
    return f"{escape_token(name)}={escape_token(value)}"


def _numeric_token(name: str, value: FeatureValue) -> str:
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise InvalidFeature(f"feature {name!r} is not a finite number", field=name)
        return f"{escape_token(name)}:{_format_number(value)}"
    raise InvalidFeature(f"feature {name!r} has unsupported type {type(value).__name__}", field=name)


def _namespace_text(namespace: str, values: Mapping[str, FeatureValue]) -> str:
    letter = NAMESPACE_LETTERS.get(namespace)
    if letter is None:
        raise InvalidFeature(f"unknown feature namespace {namespace!r}", field=namespace)
    tokens = " ".join(_feature_token(name, values[name]) for name in sorted(values))
    return f"|{letter} {tokens}" if tokens else f"|{letter}"


def shared_line(context: Features) -> str:
    """The ``shared`` example of one decision: one VW namespace per context group."""
    unknown = set(context).difference(CONTEXT_NAMESPACES)
    if unknown:
        name = sorted(unknown)[0]
        raise InvalidFeature(f"unknown context group {name!r}", field=f"context.{name}")
    parts = ["shared"]
    for namespace in CONTEXT_NAMESPACES:
        values = context.get(namespace)
        if values:
            parts.append(_namespace_text(namespace, values))
    if len(parts) == 1:
        parts.append("|T")  # VW needs at least one namespace marker
    return " ".join(parts)


def action_line(block_id: str, features: Mapping[str, FeatureValue]) -> str:
    """The action example of one block: its id plus its features in the action namespace."""
    values: dict[str, FeatureValue] = {"id": block_id}
    values.update({k: v for k, v in features.items() if k != "id"})
    return _namespace_text(ACTION_NAMESPACE, values)


def validate_features(
    values: object,
    *,
    field: str,
    max_features: int,
    max_name_length: int,
    max_value_length: int,
) -> dict[str, FeatureValue]:
    """Check a flat caller-supplied feature mapping and return a plain copy.

    Raises InvalidFeature naming ``field.name`` for the first offence.
    """
    if not isinstance(values, Mapping):
        raise InvalidFeature(f"{field} must be an object of name -> value", field=field)
    if len(values) > max_features:
        raise InvalidFeature(f"{field} has {len(values)} features; at most {max_features}", field=field)
    clean: dict[str, FeatureValue] = {}
    for name, value in values.items():
        where = f"{field}.{name}" if isinstance(name, str) and name else field
        if not isinstance(name, str) or not name or len(name) > max_name_length:
            raise InvalidFeature(
                f"{field} feature names must be 1..{max_name_length} characters", field=where
            )
        if isinstance(value, bool):
            clean[name] = value
        elif isinstance(value, int | float):
            if not math.isfinite(value) or abs(value) > 1e12:
                raise InvalidFeature(f"{where} must be a finite number within ±1e12", field=where)
            clean[name] = float(value)
        elif isinstance(value, str):
            if len(value) > max_value_length:
                raise InvalidFeature(
                    f"{where} is longer than {max_value_length} characters", field=where
                )
            clean[name] = value
        else:
            raise InvalidFeature(f"{where} must be a string, number or bool", field=where)
    return clean
