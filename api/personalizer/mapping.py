"""Translation between Azure Personalizer's bodies and ours: plain data in, plain data out.

Features (``contextFeatures`` and each action's ``features``)
    Personalizer takes a list of JSON objects whose values may nest. Each list
    is flattened into one feature map of dotted names: ``[{"user": {"tier":
    "gold", "visits": 3}}, {"device": "phone"}]`` becomes ``{"user.tier": "gold",
    "user.visits": 3.0, "device": "phone"}``. Inside arrays, strings become
    set members (``{"tags": ["a", "b"]}`` -> ``tags.a = true, tags.b = true``),
    numbers and booleans are indexed (``{"v": [0.1, 0.2]}`` -> ``v.0 = 0.1,
    v.1 = 0.2``), objects are indexed and flattened (``items.0.kind``).
    ``null`` values are dropped. Context features land in our ``user``
    namespace (``U``), action features in the block namespace (``A``); names
    and values are escaped by ``bandits`` like every other feature, and the
    v1 bounds apply (names up to 64 characters, at most ``max_user_features``
    / ``max_block_features`` per map).

Learning settings (``configurations/policy``)
    :func:`parse_policy_arguments` reads VW-style argument strings into the
    options of ``bandits.policies.VWConfig`` (which validates the values);
    every token it does not know is refused, naming it. The text itself never
    reaches VW.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from api.errors import ApiError

__all__ = [
    "LEARNING_MODES",
    "REWARD_AGGREGATIONS",
    "decide_body",
    "flatten_features",
    "format_duration",
    "parse_duration",
    "parse_policy_arguments",
    "policy_arguments",
    "rank_response",
]

MAX_DEPTH = 8
"""Deepest nesting of a feature object that is flattened (deeper is refused)."""

LEARNING_MODES = {"Online": "online", "Apprentice": "apprentice", "LoggingOnly": "logging-only"}
"""Personalizer's learning modes -> the slot's ``learning_mode``."""

REWARD_AGGREGATIONS = {"Sum": "sum", "Earliest": "first", "Max": "max"}
"""Personalizer's reward aggregations -> the slot's ``reward_aggregation`` (``Average`` has no
counterpart: refused)."""


def _bad(message: str, target: str | None) -> ApiError:
    return ApiError(400, "invalid_request", message, target)


def _add(out: dict[str, Any], name: str, value: Any, field: str, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise _bad(f"features nest deeper than {MAX_DEPTH} levels", field)
    if value is None:
        return
    if isinstance(value, bool | str):
        out[name] = value
    elif isinstance(value, int | float):
        out[name] = float(value)
    elif isinstance(value, Mapping):
        for key, inner in value.items():
            _add(out, f"{name}.{key}" if name else str(key), inner, field, depth + 1)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            if isinstance(item, str):
                out[f"{name}.{item}"] = True
            else:
                _add(out, f"{name}.{index}", item, field, depth + 1)
    else:
        raise _bad(f"unsupported feature value of type {type(value).__name__}", field)


def flatten_features(items: Any, field: str) -> dict[str, Any]:
    """A Personalizer feature list (objects, possibly nested) -> one flat map of dotted names."""
    if items is None:
        return {}
    if isinstance(items, Mapping):
        items = [items]
    if not isinstance(items, list):
        raise _bad(f"{field} must be a list of objects", field)
    out: dict[str, Any] = {}
    for index, item in enumerate(items):
        if item is None:
            continue
        if not isinstance(item, Mapping):
            raise _bad(f"{field}[{index}] must be an object", f"{field}[{index}]")
        _add(out, "", item, f"{field}[{index}]", 0)
    return out


def _ids(values: Any, field: str) -> list[str]:
    if values is None:
        return []
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise _bad(f"{field} must be a list of action ids", field)
    return list(values)


def decide_body(rank: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """A Personalizer rank request -> (our v1 decide body, the excluded action ids in request order).

    Unknown fields are ignored, as Personalizer did. Every action is an inline candidate; the
    excluded ones go to ``exclude`` (our decide path refuses a request that excludes them all)."""
    actions = rank.get("actions")
    if not isinstance(actions, list) or not actions:
        raise _bad("actions must be a non-empty list", "actions")
    candidates = []
    for index, action in enumerate(actions):
        if not isinstance(action, Mapping) or not isinstance(action.get("id"), str) or not action["id"]:
            raise _bad("every action needs a non-empty string id", f"actions[{index}].id")
        candidates.append({"id": action["id"],
                           "features": flatten_features(action.get("features"), f"actions[{index}].features")})
    body: dict[str, Any] = {"candidates": candidates}
    excluded = _ids(rank.get("excludedActions"), "excludedActions")
    if excluded:
        body["exclude"] = excluded
    context = flatten_features(rank.get("contextFeatures"), "contextFeatures")
    if context:
        body["context"] = {"user": context}
    event_id = rank.get("eventId")
    if event_id is not None:
        if not isinstance(event_id, str) or not event_id:
            raise _bad("eventId must be a non-empty string", "eventId")
        body["event_id"] = event_id
    defer = rank.get("deferActivation")
    if defer is not None:
        if not isinstance(defer, bool):
            raise _bad("deferActivation must be true or false", "deferActivation")
        body["defer_activation"] = defer
    return body, excluded


def rank_response(decision: Mapping[str, Any], action_ids: Sequence[str]) -> dict[str, Any]:
    """Our decide response -> Personalizer's: the chosen action first, then the rest by
    probability, then the excluded actions with probability 0."""
    chosen = decision["block"]["id"]
    ranked = [{"id": item["id"], "probability": item["probability"]} for item in decision["ranking"]]
    ranked.sort(key=lambda item: (item["id"] != chosen, -item["probability"]))
    seen = {item["id"] for item in ranked}
    ranked += [{"id": action_id, "probability": 0.0} for action_id in action_ids if action_id not in seen]
    return {"ranking": ranked, "eventId": decision["event_id"], "rewardActionId": chosen}


# -- durations (ISO 8601, as Personalizer's rewardWaitTime and modelExportFrequency) ----------

_ISO = re.compile(r"^P(?:(?P<d>\d+(?:\.\d+)?)D)?(?:T(?:(?P<h>\d+(?:\.\d+)?)H)?(?:(?P<m>\d+(?:\.\d+)?)M)?"
                  r"(?:(?P<s>\d+(?:\.\d+)?)S)?)?$")
_SPAN = re.compile(r"^(?:(?P<d>\d+)\.)?(?P<h>\d{1,2}):(?P<m>\d{2}):(?P<s>\d{2}(?:\.\d+)?)$")


def parse_duration(text: Any, field: str) -> float:
    """``PT5M``, ``P1DT2H`` or a .NET time span ``1.02:00:00`` -> seconds."""
    if isinstance(text, str):
        match = _ISO.match(text.strip().upper()) or _SPAN.match(text.strip())
        if match and any(match.groupdict().values()):
            parts = {k: float(v) if v else 0.0 for k, v in match.groupdict().items()}
            return parts["d"] * 86400 + parts["h"] * 3600 + parts["m"] * 60 + parts["s"]
    raise _bad(f"{field} must be an ISO 8601 duration such as PT10M, got {text!r}", field)


def format_duration(seconds: float) -> str:
    """Seconds -> an ISO 8601 duration (``PT10M``, ``P1DT2H``)."""
    total = int(round(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    text = "P" + (f"{days}D" if days else "")
    clock = (f"{hours}H" if hours else "") + (f"{minutes}M" if minutes else "") + (f"{secs}S" if secs else "")
    if clock or not days:
        text += "T" + (clock or "0S")
    return text


# -- learning settings as VW argument strings ---------------------------------------------------

_CONTEXT_LETTERS = "TDLU"
_EXPLORERS = {"--squarecb": "squarecb", "--regcb": "regcb", "--regcbopt": "regcb", "--cover": "cover",
              "--bag": "bag", "--softmax": "softmax", "--first": "first"}
_VALUED = {"--epsilon": ("epsilon", float), "--gamma_scale": ("gamma_scale", float),
           "--gamma_exponent": ("gamma_exponent", float), "--cover": ("cover", int), "--bag": ("bag", int),
           "--lambda": ("softmax_lambda", float), "--first": ("first", int), "-l": ("learning_rate", float),
           "--learning_rate": ("learning_rate", float), "--power_t": ("power_t", float), "--l2": ("l2", float),
           "--cb_type": ("cb_type", str), "-b": ("bits", int), "--bit_precision": ("bits", int)}
_INTERACTION = {"-q", "--quadratic", "--interactions", "--cubic"}
_IGNORED = {"--cb_explore_adf", "--quiet"}


def parse_policy_arguments(text: Any, field: str = "arguments") -> dict[str, Any]:
    """A VW-style argument string -> ``VWConfig`` options (``VWConfig.from_dict`` validates them).

    Options the string does not mention keep slotbandit's defaults. Namespaces are ours: ``T``
    time, ``D`` device, ``L`` location, ``U`` user (Personalizer's ``contextFeatures``), ``A`` the
    action; ``-q UA`` crosses the context features with the action features. ``--ignore_linear``
    must name all of ``T D L U`` (shared-only linear terms off) or be absent. Anything else is
    refused with a 400 that names the token."""
    if not isinstance(text, str):
        raise _bad(f"{field} must be a string of VW arguments", field)
    tokens: list[str] = []
    for token in text.split():
        if token.startswith("--") and "=" in token:
            tokens += token.split("=", 1)
        else:
            tokens.append(token)
    options: dict[str, Any] = {}
    interactions: list[str] = []
    ignored: set[str] = set()
    explorer: str | None = None
    i = 0

    def value_of(flag: str) -> str:
        if i + 1 >= len(tokens) or tokens[i + 1].startswith("-") and not _is_number(tokens[i + 1]):
            raise _bad(f"VW argument '{flag}' needs a value", f"{field}: {flag}")
        return tokens[i + 1]

    while i < len(tokens):
        flag = tokens[i]
        if flag in _IGNORED:
            i += 1
            continue
        if flag in _EXPLORERS:
            kind = _EXPLORERS[flag]
            if explorer is not None and explorer != kind:
                raise _bad(f"VW argument '{flag}': only one exploration algorithm may be given", f"{field}: {flag}")
            explorer = kind
        if flag in _VALUED:
            name, cast = _VALUED[flag]
            raw = value_of(flag)
            try:
                value = cast(raw)
            except ValueError as error:
                raise _bad(f"VW argument '{flag} {raw}': not a valid {cast.__name__}", f"{field}: {flag}") from error
            if isinstance(value, float) and not math.isfinite(value):
                raise _bad(f"VW argument '{flag} {raw}' must be finite", f"{field}: {flag}")
            options[name] = value
            i += 2
            continue
        if flag in _EXPLORERS:
            i += 1
            continue
        if flag in _INTERACTION:
            interactions.append(value_of(flag))
            i += 2
            continue
        if flag == "--ignore_linear":
            ignored.update(value_of(flag))
            i += 2
            continue
        raise _bad(f"VW argument '{flag}' is not supported (supported: {', '.join(sorted(supported_arguments()))})",
                   f"{field}: {flag}")
    if explorer is None and "epsilon" in options:
        explorer = "epsilon"
    if explorer is not None:
        options["exploration"] = explorer
    if interactions:
        options["interactions"] = interactions
    if ignored:
        if ignored != set(_CONTEXT_LETTERS):
            raise _bad("VW argument '--ignore_linear' must name every context namespace (T D L U)",
                       f"{field}: --ignore_linear")
        options["ignore_linear_context"] = True
    return options


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def supported_arguments() -> set[str]:
    return set(_EXPLORERS) | set(_VALUED) | _INTERACTION | _IGNORED | {"--ignore_linear"}


def policy_arguments(vw_args: Sequence[str]) -> str:
    """``VWConfig.to_args()`` -> the argument string shown to Personalizer clients."""
    return " ".join(arg for arg in vw_args if arg != "--quiet")
