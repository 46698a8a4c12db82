"""Vowpal Wabbit's decision-service JSON ("DSJSON") for a :class:`BanditLog`.

One JSON object per line, the format ``vw --dsjson --cb_explore_adf`` reads
(reference: VW's ``vowpalwabbit/json_parser/src/parse_example_json.cc``,
``DecisionServiceState``, and the samples in ``test/train-sets/*.dsjson``)::

    {"_label_cost": -1.0, "_label_probability": 0.7, "_label_Action": 2, "_labelIndex": 1,
     "Timestamp": "2024-05-01T09:30:00.000000Z", "Version": "1", "EventId": "e-1",
     "a": [2, 1, 3], "c": {"T": {"daypart=morning": 1, "hour_sin": 0.7},
                          "_multi": [{"A": {"id=b1": 1}}, {"A": {"id=b2": 1}}, {"A": {"id=b3": 1}}]},
     "p": [0.7, 0.2, 0.1], "slotbandit": {"reward": 1.0}}

Rules VW's parser enforces silently (a mistake drops or mislabels the
example without an error), all kept by :func:`write_dsjson`:

* the label keys come before ``"c"``: ``_label_cost`` (cost = -reward by
  default), ``_label_probability`` (logged propensity), ``_label_Action``
  (1-based) and ``_labelIndex`` (0-based index into ``_multi``);
* ``"a"`` is 1-based and non-empty, the chosen action first (the rest by
  decreasing probability), ``"p"`` is aligned with ``"a"``; for logs whose
  pmf is known on the chosen block only (``meta["logging_pmf"] ==
  "chosen_only"``, e.g. the Open Bandit Dataset's "bts") ``"a"`` holds just
  the chosen action;
* events VW must not learn from (deferred and never activated) carry
  ``"_skipLearn": true``.

Feature encoding. VW's JSON parser turns a nested object into a namespace
(the first character of the key is the namespace letter, the whole key is
hashed as the namespace name), a number ``"k": 2.5`` into feature ``k``
with weight 2.5, and a string ``"k": "v"`` into the feature ``kv`` — not
the ``k=v`` token our text examples use. So the writer emits the very
tokens of :func:`bandits.features.shared_line` / ``action_line`` as keys:
``{"T": {"daypart=morning": 1}}`` for categorical features and
``{"T": {"hour_sin": 0.7}}`` for numbers. The tokens are taken from the text
lines themselves, so both parsers hash identical (namespace, name, weight)
triples; ``tests/analysis/test_dsjson.py`` checks this with ``--audit``.
One documented difference: VW's JSON parser ignores (or, for ``_label*``,
``_text``, ``_multi``..., interprets) every key that begins with ``_``,
while the text parser reads ``_seg=a`` as a plain feature. Such tokens are
written with the underscore percent-escaped (``%5Fseg=a``): VW sees the
feature, under a different hash than the text example gives it (a model
trained on the DSJSON export and served on text, or the reverse, does not
share that one feature's weight). Zero-weight numeric features are dropped
by both parsers alike. Numeric weights can land one float32 ulp apart (VW's
JSON reader parses numbers with rapidjson's fast path, the text reader with
``strtof``); names and hashes are identical.

Round trip. :func:`read_dsjson` recovers contexts and candidates from the
tokens (``%XX`` unescaped; ``name=value`` is a string, ``name: x`` a
number). Where the tokens cannot say it exactly (a bool is the token
``name=true``, like the string "true"; a block feature named ``id``; an
empty name) the writer adds the exact structured features under the
top-level key ``"slotbandit"``, which VW ignores (unknown top-level keys are
skipped by ``DecisionServiceState``). That key always holds the exact
reward and, when present, the arm, because ``reward_to_cost`` need not be
invertible.

Foreign DSJSON (written by Azure Personalizer / the decision service or by
hand, without ``"slotbandit"``) is read generically: context namespaces and
top-level features fold into the ``user`` group with names
``"<namespace>.<feature>"``; action features likewise into the block's
features; the action id is ``_tag``, else an ``id`` feature, else its
1-based position. ``"a"`` holding a 0 is read as 0-based (seen in VW's own
test files). The reward is ``cost_to_reward(_label_cost)`` (default
``-cost``), else the sum of the numeric outcome values ``"o": [{"v": ...}]``,
else ``default_reward`` when given. When some event's ``"p"`` covers only
part of its pmf (it sums below 1), ``meta["logging_pmf"] = "chosen_only"``,
as for the Open Bandit Dataset's "bts" logs. ``pdrop`` (the probability the event was
dropped by sampling) is kept in ``meta["pdrop"]`` when any is positive:
estimators should weight such events by ``1 / (1 - pdrop)``.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import IO, Any
from urllib.parse import unquote

import numpy as np

from analysis.errors import FormatError, LogError
from analysis.log import BanditLog
from bandits.features import (
    ACTION_NAMESPACE,
    CONTEXT_NAMESPACES,
    NAMESPACE_LETTERS,
    Features,
    FeatureValue,
    action_line,
    shared_line,
)
from bandits.policies import Candidate

__all__ = [
    "FormatError",
    "action_json",
    "context_json",
    "dsjson_record",
    "read_dsjson",
    "write_dsjson",
]

EXTENSION_KEY = "slotbandit"
"""Top-level key of our exact extras; VW skips unknown top-level keys."""

_GROUP_BY_LETTER = {NAMESPACE_LETTERS[g]: g for g in CONTEXT_NAMESPACES}
_ACTION_LETTER = NAMESPACE_LETTERS[ACTION_NAMESPACE]


# ---------------------------------------------------------------- encoding


def _json_key(token: str) -> str:
    # VW's JSON parser skips or interprets keys starting with "_" (parse_example_json.cc, Key())
    return "%5F" + token[1:] if token.startswith("_") else token


def _line_namespaces(line: str) -> dict[str, dict[str, int | float]]:
    """Split a VW text line made by ``shared_line``/``action_line`` into {letter: {token: weight}}.

    Every name and value in those lines is escaped, so ``|``, spaces and ``:``
    only ever delimit namespaces, tokens and weights.
    """
    namespaces: dict[str, dict[str, int | float]] = {}
    for part in line.split("|")[1:]:
        letter, *tokens = part.split()
        values: dict[str, int | float] = {}
        for token in tokens:
            name, colon, weight = token.partition(":")
            values[_json_key(name)] = float(weight) if colon else 1
        if values:
            namespaces[letter] = values
    return namespaces


def context_json(context: Features) -> dict[str, dict[str, int | float]]:
    """The ``"c"`` namespaces of one context: the tokens of :func:`shared_line` as JSON keys."""
    return _line_namespaces(shared_line(context))


def action_json(candidate: Candidate) -> dict[str, dict[str, int | float]]:
    """One ``"_multi"`` entry: the tokens of :func:`action_line` as JSON keys."""
    return _line_namespaces(action_line(candidate.id, candidate.features))


# ---------------------------------------------------------------- decoding our tokens


def _decode_tokens(values: Mapping[str, Any], *, line: int, field: str) -> dict[str, FeatureValue]:
    features: dict[str, FeatureValue] = {}
    for key, weight in values.items():
        if isinstance(weight, bool) or not isinstance(weight, int | float):
            raise FormatError("feature weights must be numbers", line=line, field=f"{field}.{key}")
        name, equals, value = key.partition("=")
        if equals:
            features[unquote(name)] = unquote(value)
        else:
            features[unquote(name)] = float(weight)
    return features


def _decode_context(c: Mapping[str, Any], *, line: int) -> dict[str, dict[str, FeatureValue]]:
    context: dict[str, dict[str, FeatureValue]] = {}
    for key, values in c.items():
        if key == "_multi":
            continue
        group = _GROUP_BY_LETTER.get(key)
        if group is None or not isinstance(values, Mapping):
            raise FormatError(
                f"unknown context namespace {key!r}; expected one of {sorted(_GROUP_BY_LETTER)}",
                line=line,
                field=f"c.{key}",
            )
        context[group] = _decode_tokens(values, line=line, field=f"c.{key}")
    return context


def _decode_action(entry: Mapping[str, Any], *, line: int, index: int) -> Candidate:
    values = entry.get(_ACTION_LETTER)
    where = f"c._multi[{index}]"
    if not isinstance(values, Mapping):
        raise FormatError(f"action without namespace {_ACTION_LETTER!r}", line=line, field=where)
    features = _decode_tokens(values, line=line, field=f"{where}.{_ACTION_LETTER}")
    block_id = features.pop("id", None)
    if not isinstance(block_id, str):
        raise FormatError("action without an 'id=' token", line=line, field=where)
    return Candidate(block_id, features)


class _Decoder:
    """Memoised decoding of our tokens: repeated groups and candidate sets decode once and are
    shared between events (less memory; one candidate tuple per set keeps the replay's cache hot)."""

    def __init__(self) -> None:
        self.groups: dict[tuple[str, tuple[tuple[str, Any], ...]], dict[str, FeatureValue]] = {}
        self.multis: dict[tuple[tuple[tuple[str, Any], ...], ...], list[Candidate]] = {}

    def context(self, c: Mapping[str, Any], *, line: int) -> dict[str, dict[str, FeatureValue]]:
        context: dict[str, dict[str, FeatureValue]] = {}
        for key, values in c.items():
            if key == "_multi":
                continue
            try:
                cache_key = (key, tuple(values.items()))
                hit = self.groups.get(cache_key)
            except (AttributeError, TypeError):  # not an object of numbers: let the decoder say so
                hit = cache_key = None
            if hit is None:
                hit = _decode_context({key: values}, line=line).get(_GROUP_BY_LETTER[key], {})
                if cache_key is not None and len(self.groups) < 65536:
                    self.groups[cache_key] = hit
            context[_GROUP_BY_LETTER[key]] = hit
        return context

    def multi(self, multi: list[Mapping[str, Any]], *, line: int) -> list[Candidate]:
        try:
            key = tuple(tuple(entry[_ACTION_LETTER].items()) for entry in multi if len(entry) == 1)
            if len(key) != len(multi):
                raise TypeError
            hit = self.multis.get(key)
        except (AttributeError, KeyError, TypeError):
            key, hit = None, None
        if hit is None:
            hit = [_decode_action(entry, line=line, index=i) for i, entry in enumerate(multi)]
            if key is not None and len(self.multis) < 4096:
                self.multis[key] = hit
        return hit


# ---------------------------------------------------------------- decoding foreign JSON


def _flatten(prefix: str, value: Any, out: dict[str, FeatureValue]) -> None:
    if value is None:
        return
    if isinstance(value, bool | str):
        out[prefix] = value
    elif isinstance(value, int | float):
        out[prefix] = float(value)
    elif isinstance(value, Mapping):
        for key, inner in value.items():
            if not key.startswith("_"):  # VW skips "_" keys: metadata such as _tag, _title
                _flatten(f"{prefix}.{key}" if prefix else key, inner, out)
    elif isinstance(value, list):
        for position, inner in enumerate(value):
            if isinstance(inner, Mapping):
                _flatten(prefix, inner, out)
            else:
                _flatten(f"{prefix}.{position}", inner, out)


def _foreign_context(c: Mapping[str, Any]) -> dict[str, dict[str, FeatureValue]]:
    user: dict[str, FeatureValue] = {}
    _flatten("", {k: v for k, v in c.items() if k != "_multi"}, user)
    return {"user": user} if user else {}


def _foreign_action(entry: Mapping[str, Any], index: int) -> Candidate:
    features: dict[str, FeatureValue] = {}
    _flatten("", entry, features)
    tag = entry.get("_tag")
    block_id: str | None = tag if isinstance(tag, str) and tag else None
    if block_id is None:
        for name in sorted(features):
            if (name == "id" or name.endswith(".id")) and isinstance(features[name], str):
                block_id = str(features[name])
                break
    return Candidate(block_id or str(index + 1), features)


# ---------------------------------------------------------------- writing


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _negate(value: float) -> float:
    return -value


class _Encoder:
    """Memoised encoding: contexts repeat their groups and logs repeat their candidate sets."""

    def __init__(self) -> None:
        self.groups: dict[tuple[str, tuple[tuple[str, Any], ...]], tuple[str, dict[str, Any], bool]] = {}
        self.actions: dict[tuple[int, ...], tuple[Sequence[Candidate], list[dict[str, Any]], bool]] = {}

    def context(self, context: Features, *, line: int) -> tuple[dict[str, Any], bool]:
        """The ``"c"`` namespaces, and whether decoding them gives ``context`` back exactly."""
        c: dict[str, Any] = {}
        exact = True
        for group, values in context.items():
            if not values:
                continue  # an empty group has no tokens; dropped on decode
            key = (group, tuple(values.items()))
            entry = self.groups.get(key)
            if entry is None:
                namespaces = context_json({group: values})
                ((letter, tokens),) = namespaces.items()
                decoded = _decode_tokens(tokens, line=line, field=f"c.{letter}")
                entry = (letter, tokens, decoded == dict(values))
                if len(self.groups) < 65536:
                    self.groups[key] = entry
            c[entry[0]] = entry[1]
            exact = exact and entry[2]
        return c, exact

    def multi(self, candidates: Sequence[Candidate], *, line: int) -> tuple[list[dict[str, Any]], bool]:
        """The ``"_multi"`` entries, and whether decoding them gives ``candidates`` back exactly."""
        identity = tuple(map(id, candidates))
        hit = self.actions.get(identity)
        if hit is not None:
            return hit[1], hit[2]
        multi = [action_json(candidate) for candidate in candidates]
        decoded = [_decode_action(entry, line=line, index=i) for i, entry in enumerate(multi)]
        exact = all(
            d.id == o.id and d.features == dict(o.features) for d, o in zip(decoded, candidates, strict=True)
        )
        if len(self.actions) < 4096:
            self.actions[identity] = (candidates, multi, exact)  # holds the candidates: ids stay valid
        return multi, exact


def dsjson_record(
    log: BanditLog,
    row: int,
    *,
    reward_to_cost: Callable[[float], float] = _negate,
    _encoder: _Encoder | None = None,
) -> dict[str, Any]:
    """The DSJSON object of event ``row`` (key order matters: labels before ``"c"``)."""
    encoder = _encoder or _Encoder()
    k = int(log.action_mask[row].sum())
    ids = [str(x) for x in log.action_ids[row, :k]]
    pmf = [float(x) for x in log.logging_pmf[row, :k]]
    chosen = int(log.chosen[row])
    reward = float(log.reward[row])
    cost = float(reward_to_cost(reward))
    if not math.isfinite(cost):
        raise FormatError(f"reward_to_cost({reward!r}) is not finite", line=row + 1, field="_label_cost")
    candidates = tuple(log.candidates[row]) if log.candidates else tuple(Candidate(i) for i in ids)
    if [c.id for c in candidates] != ids:
        raise LogError(f"event {row}: candidates disagree with action_ids", field="candidates")
    context: Features = log.contexts[row] if log.contexts else {}

    order = [chosen, *sorted((i for i in range(k) if i != chosen), key=lambda i: (-pmf[i], i))]
    if log.meta.get("logging_pmf") == "chosen_only":
        order = [chosen]  # only the chosen propensity is known (e.g. OBD "bts"): claim no other
    unknown = set(context).difference(CONTEXT_NAMESPACES)
    if unknown:
        shared_line(context)  # raises InvalidFeature naming the group, as the service does
    c, context_exact = encoder.context(context, line=row + 1)
    multi, candidates_exact = encoder.multi(log.candidates[row] if log.candidates else candidates, line=row + 1)
    c["_multi"] = multi
    extension: dict[str, Any] = {"reward": reward}
    if log.arms[row]:
        extension["arm"] = str(log.arms[row])
    if not context_exact:
        extension["context"] = {group: dict(values) for group, values in context.items()}
    if not candidates_exact:
        extension["candidates"] = [{"id": o.id, "features": dict(o.features)} for o in candidates]

    record: dict[str, Any] = {
        "_label_cost": cost,
        "_label_probability": pmf[chosen],
        "_label_Action": chosen + 1,
        "_labelIndex": chosen,
    }
    if log.learnable is not None and not log.learnable[row]:
        record["_skipLearn"] = True
    timestamp = float(log.timestamps[row])
    if math.isfinite(timestamp):
        record["Timestamp"] = _iso(timestamp)
    record["Version"] = "1"
    record["EventId"] = str(log.event_ids[row])
    record["a"] = [i + 1 for i in order]
    record["c"] = c
    record["p"] = [pmf[i] for i in order]
    record[EXTENSION_KEY] = extension
    return record


def write_dsjson(
    log: BanditLog,
    stream_or_path: str | os.PathLike[str] | IO[str],
    *,
    reward_to_cost: Callable[[float], float] = _negate,
) -> int:
    """Write ``log`` as DSJSON, one event per line, in log order; returns the number of lines.

    ``reward_to_cost`` gives ``_label_cost`` (VW minimises cost; the
    decision-service convention is cost = -reward). For costs in [0, 1] as the
    service's learner uses, pass
    ``lambda r: bandits.policies.cost_from_reward(r, r_min, r_max)``.
    """
    if isinstance(stream_or_path, str | os.PathLike):
        with open(stream_or_path, "w", encoding="utf-8") as stream:
            return write_dsjson(log, stream, reward_to_cost=reward_to_cost)
    encoder = _Encoder()
    for row in range(log.n):
        record = dsjson_record(log, row, reward_to_cost=reward_to_cost, _encoder=encoder)
        stream_or_path.write(json.dumps(record, separators=(",", ":"), allow_nan=False))
        stream_or_path.write("\n")
    return log.n


# ---------------------------------------------------------------- reading

_FRACTION = re.compile(r"(\.\d{6})\d+")


def _parse_timestamp(value: Any, *, line: int) -> float:
    if not isinstance(value, str):
        raise FormatError("Timestamp must be an ISO 8601 string", line=line, field="Timestamp")
    text = _FRACTION.sub(r"\1", value.strip())  # .NET writes 7 fractional digits
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as error:
        raise FormatError(f"Timestamp {value!r} is not ISO 8601", line=line, field="Timestamp") from error
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _int_field(record: Mapping[str, Any], key: str, *, line: int) -> int | None:
    value = record.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise FormatError("must be an integer", line=line, field=key)
    return int(value)


def _float_field(record: Mapping[str, Any], key: str, *, line: int) -> float | None:
    value = record.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise FormatError("must be a finite number", line=line, field=key)
    return float(value)


def _logging_pmf(record: Mapping[str, Any], k: int, *, line: int) -> tuple[list[float], list[int]] | None:
    """The pmf over the ``_multi`` order from ``a``/``p``, and ``a`` as 0-based indices."""
    actions, probabilities = record.get("a"), record.get("p")
    if actions is None and probabilities is None:
        return None
    if not isinstance(actions, list) or not actions:
        raise FormatError("'a' must be a non-empty list of action numbers", line=line, field="a")
    if not isinstance(probabilities, list) or len(probabilities) != len(actions):
        raise FormatError("'p' must be a list as long as 'a'", line=line, field="p")
    if not all(isinstance(a, int) and not isinstance(a, bool) for a in actions):
        raise FormatError("'a' must hold integers", line=line, field="a")
    base = 0 if 0 in actions else 1  # VW's own samples sometimes number from 0
    indices = [a - base for a in actions]
    if min(indices) < 0 or max(indices) >= k or len(set(indices)) != len(indices):
        raise FormatError(
            f"'a' must be distinct action numbers within 1..{k} (the _multi entries)", line=line, field="a"
        )
    pmf = [0.0] * k
    for index, p in zip(indices, probabilities, strict=True):
        if isinstance(p, bool) or not isinstance(p, int | float) or not 0.0 <= p <= 1.0:
            raise FormatError("'p' entries must be probabilities in [0, 1]", line=line, field="p")
        pmf[index] = float(p)
    return pmf, indices


def _reward(
    record: Mapping[str, Any],
    extension: Mapping[str, Any],
    *,
    line: int,
    cost_to_reward: Callable[[float], float],
    default_reward: float | None,
) -> float:
    if "reward" in extension:
        value = extension["reward"]
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise FormatError("must be a finite number", line=line, field=f"{EXTENSION_KEY}.reward")
        return float(value)
    cost = _float_field(record, "_label_cost", line=line)
    if cost is not None:
        return float(cost_to_reward(cost))
    outcomes = record.get("o")
    if isinstance(outcomes, list):
        values = [o["v"] for o in outcomes if isinstance(o, Mapping) and isinstance(o.get("v"), int | float)]
        if values:
            return float(math.fsum(values))
    if default_reward is None:
        raise FormatError(
            "event has no reward (no _label_cost, no outcome 'o' values); pass default_reward",
            line=line,
            field="_label_cost",
        )
    return default_reward


def _record_from_json(
    record: Any,
    *,
    line: int,
    cost_to_reward: Callable[[float], float],
    default_reward: float | None,
    decoder: _Decoder,
) -> dict[str, Any]:
    if not isinstance(record, Mapping):
        raise FormatError("each line must be a JSON object", line=line)
    if "_outcomes" in record or "_slots" in (record.get("c") or {}):
        raise FormatError("CCB/slates DSJSON is not a single-slot bandit log", line=line, field="_outcomes")
    c = record.get("c")
    if not isinstance(c, Mapping):
        raise FormatError("missing context object 'c'", line=line, field="c")
    multi = c.get("_multi")
    if not isinstance(multi, list) or not multi or not all(isinstance(e, Mapping) for e in multi):
        raise FormatError("'c._multi' must be a non-empty list of action objects", line=line, field="c._multi")
    extension = record.get(EXTENSION_KEY)
    ours = isinstance(extension, Mapping)
    extension = extension if isinstance(extension, Mapping) else {}
    k = len(multi)

    if ours:
        candidates = decoder.multi(multi, line=line)
        context: dict[str, dict[str, FeatureValue]] = decoder.context(c, line=line)
        if "candidates" in extension:
            exact = extension["candidates"]
            if (
                not isinstance(exact, list)
                or len(exact) != k
                or not all(isinstance(e, Mapping) and "id" in e for e in exact)
            ):
                raise FormatError(
                    "must list every action as {id, features}", line=line, field=f"{EXTENSION_KEY}.candidates"
                )
            candidates = [Candidate(str(e["id"]), dict(e.get("features", {}))) for e in exact]
        if "context" in extension:
            if not isinstance(extension["context"], Mapping):
                raise FormatError("must be an object", line=line, field=f"{EXTENSION_KEY}.context")
            context = {g: dict(v) for g, v in extension["context"].items()}
    else:
        candidates = [_foreign_action(entry, i) for i, entry in enumerate(multi)]
        context = _foreign_context(c)
    ids = [candidate.id for candidate in candidates]
    if len(set(ids)) != len(ids):
        raise FormatError(f"duplicate action ids {ids}", line=line, field="c._multi")

    label_index = _int_field(record, "_labelIndex", line=line)
    label_action = _int_field(record, "_label_Action", line=line)
    label_probability = _float_field(record, "_label_probability", line=line)
    known = _logging_pmf(record, k, line=line)

    chosen = label_index
    if chosen is None and label_action is not None:
        chosen = label_action - 1
    if chosen is None and known is not None:
        chosen = known[1][0]
    if chosen is None:
        raise FormatError("no chosen action (_labelIndex, _label_Action or 'a')", line=line, field="_labelIndex")
    if not 0 <= chosen < k:
        raise FormatError(f"chosen action {chosen} outside 0..{k - 1}", line=line, field="_labelIndex")
    if label_action is not None and label_action - 1 != chosen:
        raise FormatError(
            f"_label_Action {label_action} disagrees with _labelIndex {chosen} (1-based vs 0-based)",
            line=line,
            field="_label_Action",
        )
    if known is not None:
        pmf, indices = known
        if indices[0] != chosen and label_probability is None:
            # VW learns from the label; "a" listing all actions in order (VW's igl.dsjson) is
            # fine when _label_probability confirms the chosen action's probability
            raise FormatError(
                f"'a' must start with the chosen action (index {chosen}), found index {indices[0]}; "
                "or give _label_probability",
                line=line,
                field="a",
            )
        if label_probability is not None and abs(label_probability - pmf[chosen]) > 1e-5:
            raise FormatError(
                f"_label_probability {label_probability} disagrees with p[0] {pmf[chosen]}",
                line=line,
                field="_label_probability",
            )
    elif label_probability is not None:
        pmf = [0.0] * k
        pmf[chosen] = label_probability  # only the chosen propensity is known
    else:
        raise FormatError("no logged probability ('p' or _label_probability)", line=line, field="p")
    if not 0.0 < pmf[chosen] <= 1.0:
        raise FormatError(f"logged propensity {pmf[chosen]} is not in (0, 1]", line=line, field="p")

    event_id = record.get("EventId", record.get("event_id"))
    pdrop = _float_field(record, "pdrop", line=line)
    return {
        "event_id": str(event_id) if event_id is not None else f"line-{line}",
        "timestamp": _parse_timestamp(record["Timestamp"], line=line) if "Timestamp" in record else math.nan,
        "action_ids": ids,
        "pmf": pmf,
        "chosen": chosen,
        "reward": _reward(record, extension, line=line, cost_to_reward=cost_to_reward, default_reward=default_reward),
        "arm": str(extension.get("arm", "")),
        "context": context,
        "candidates": candidates,
        "learnable": record.get("_skipLearn") is not True,
        "pdrop": pdrop or 0.0,
    }


def read_dsjson(
    path_or_lines: str | os.PathLike[str] | Iterable[str],
    *,
    cost_to_reward: Callable[[float], float] = _negate,
    default_reward: float | None = None,
) -> BanditLog:
    """Read DSJSON (ours or the decision service's) into a :class:`BanditLog`.

    ``path_or_lines`` is a file path or any iterable of lines (an open file, a
    list of strings). Blank lines are skipped. A line that cannot be read
    raises :class:`FormatError` naming its 1-based line number and field.
    See the module docstring for how foreign files map to the log.
    """
    source: str | None = None
    if isinstance(path_or_lines, str | os.PathLike):
        source = os.fspath(path_or_lines)
        with open(source, encoding="utf-8") as stream:
            return _read_lines(stream, source, cost_to_reward, default_reward)
    return _read_lines(path_or_lines, source, cost_to_reward, default_reward)


def _read_lines(
    lines: Iterable[str],
    source: str | None,
    cost_to_reward: Callable[[float], float],
    default_reward: float | None,
) -> BanditLog:
    records: list[dict[str, Any]] = []
    decoder = _Decoder()
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as error:
            raise FormatError(f"not valid JSON: {error.msg} at column {error.colno}", line=number) from error
        records.append(
            _record_from_json(
                parsed, line=number, cost_to_reward=cost_to_reward, default_reward=default_reward, decoder=decoder
            )
        )
    meta: dict[str, Any] = {"format": "dsjson"}
    if source is not None:
        meta["source"] = source
    if any(math.fsum(r["pmf"]) < 1.0 - 1e-4 for r in records):
        meta["logging_pmf"] = "chosen_only"  # some events name only part of their pmf
    pdrop = np.array([r.pop("pdrop") for r in records], dtype=np.float64)
    if (pdrop > 0).any():
        meta["pdrop"] = pdrop
    try:
        return BanditLog.from_records(records, meta=meta)
    except LogError as error:
        raise FormatError(str(error), field=error.field) from error
