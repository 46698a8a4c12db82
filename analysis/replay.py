"""Target policies over a logged decision set, and counterfactual replay of VW configurations.

A *target* is an ``(n, A)`` float64 array of action probabilities aligned
with ``BanditLog.action_ids`` (0 on padding, rows sum to 1): what the
estimators in :mod:`analysis.estimators` take. This module builds targets
from

* the logging policy itself (:func:`logging_target`), ``uniform``
  (:func:`uniform_target`), ``fixed`` (:func:`fixed_target`), any
  per-event probabilities (:func:`per_event_target`) and any
  :class:`bandits.policies.Chooser` (:func:`chooser_target`);
* a saved VW model, predict only (:func:`snapshot_target`);
* a candidate :class:`bandits.policies.VWConfig` replayed over the log in
  time order with progressive validation (:func:`replay`): for each event
  the model first predicts the pmf (that row *is* the target), then learns
  from the logged (chosen block, cost, propensity) if the event is
  learnable. The prediction for event t therefore depends only on events
  before t (Blum, Kalai & Langford 1999, "Beating the hold-out: bounds for
  k-fold and progressive cross-validation"; VW's ``-p`` output during
  training is the same quantity).

Cost encoding is the learner's: ``cost = (r_max - r) / (r_max - r_min)``
(:func:`bandits.policies.cost_from_reward`), with the reward range taken
from the arguments, else ``log.meta["reward_min"/"reward_max"]``, else the
observed rewards.

Speed. Parsing is ~90% of a VW text predict (docs/architecture.md, "The flows", Decide).
The replay parses the block examples once per candidate set and reuses
them; per event it parses only the shared example and the labelled copy of
the chosen block, and makes *one* ``learn`` call whose pre-update
prediction (VW predicts before it updates: identical, bit for bit, to a
``predict`` then ``learn`` pair, checked in the tests) is the target row.
``benchmarks/replay.py`` measures it against a raw VW loop.

Feature importance (:func:`feature_importance`): the value lost when a
context group or one feature is removed — the configuration is replayed on
a copy of the log without it, and its target evaluated with
``evaluate(log, target)`` (default: SNIPS, :func:`snips_value`).
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import vowpalwabbit

from analysis.errors import LogError, ReplayError
from analysis.log import BanditLog
from bandits.features import CONTEXT_NAMESPACES, Features, action_line, shared_line
from bandits.linear import LinearConfig, LinearPolicy
from bandits.policies import Candidate, Chooser, VWConfig, cost_from_reward

__all__ = [
    "FeatureImportance",
    "ProgressCallback",
    "ReplayResult",
    "chooser_target",
    "drop_context",
    "feature_importance",
    "fixed_target",
    "logging_target",
    "per_event_target",
    "replay",
    "snapshot_target",
    "snips_value",
    "uniform_target",
]

ProgressCallback = Callable[[int], None]
"""Called with the number of events processed since the last call (``tqdm(...).update`` fits)."""

_PROGRESS_EVERY = 1000
_CACHE_LIMIT = 4096
_CB = vowpalwabbit.LabelType.CONTEXTUAL_BANDIT


# ---------------------------------------------------------------- simple targets


def _normalise(target: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Clip negatives, zero the padding, rescale each row to sum 1 (uniform if a row has no mass)."""
    clean = np.where(mask & np.isfinite(target) & (target > 0), target, 0.0)
    total = clean.sum(axis=1, keepdims=True)
    uniform = mask / mask.sum(axis=1, keepdims=True)
    return np.where(total > 0, clean / np.where(total > 0, total, 1.0), uniform)


def uniform_target(log: BanditLog) -> np.ndarray:
    """Every candidate alike: 1 / n_actions on each row."""
    target: np.ndarray = log.action_mask / log.n_actions[:, None]
    return target


def fixed_target(log: BanditLog, block_id: str) -> np.ndarray:
    """Always ``block_id``; uniform on events where it was not a candidate (like ``FixedPolicy``)."""
    hit = (log.action_ids == block_id) & log.action_mask
    present = hit.any(axis=1, keepdims=True)
    return np.where(present, hit.astype(np.float64), uniform_target(log))


def logging_target(log: BanditLog) -> np.ndarray:
    """The logged pmf itself (its on-policy value is the mean logged reward)."""
    return np.array(log.logging_pmf, dtype=np.float64, copy=True)


def per_event_target(log: BanditLog, probabilities: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    """Per-event probabilities as a target: an (n, A) array or one list per event (its candidates).

    Raises ``LogError`` when a row is not a pmf over that event's candidates
    (negative, mass on padding, or not summing to 1 within 1e-6).
    """
    if isinstance(probabilities, np.ndarray) and probabilities.ndim == 2:
        if probabilities.shape != log.action_ids.shape:
            raise LogError(f"target must be {log.action_ids.shape}, got {probabilities.shape}", field="target")
        target = np.asarray(probabilities, dtype=np.float64)
    else:
        rows = list(probabilities)
        if len(rows) != log.n:
            raise LogError(f"target has {len(rows)} rows, expected {log.n}", field="target")
        target = np.zeros(log.action_ids.shape, dtype=np.float64)
        for i, row in enumerate(rows):
            values = np.asarray(row, dtype=np.float64)
            if values.shape != (int(log.n_actions[i]),):
                raise LogError(f"event {i}: {values.size} probabilities for {log.n_actions[i]} candidates", field="target")
            target[i, : values.size] = values
    if not np.isfinite(target).all() or (target < 0).any():
        raise LogError("target probabilities must be finite and >= 0", field="target")
    if (target[~log.action_mask] != 0).any():
        raise LogError("target puts mass on padding", field="target")
    bad = np.flatnonzero(np.abs(target.sum(axis=1) - 1.0) > 1e-6)
    if bad.size:
        raise LogError(f"event {bad[0]}: target row sums to {target[bad[0]].sum()}, not 1", field="target")
    return target


def _candidates(log: BanditLog, row: int) -> Sequence[Candidate]:
    if log.candidates:
        return log.candidates[row]
    return tuple(Candidate(str(i)) for i in log.action_ids[row][log.action_mask[row]])


def _context(log: BanditLog, row: int) -> Features:
    return log.contexts[row] if log.contexts else {}


def chooser_target(log: BanditLog, chooser: Chooser) -> np.ndarray:
    """Ask any :class:`bandits.policies.Chooser` (uniform, fixed, rules, a VWPolicy) for each event's pmf."""
    target = np.zeros(log.action_ids.shape, dtype=np.float64)
    for row in range(log.n):
        pmf = chooser.pmf(_context(log, row), _candidates(log, row))
        target[row, : len(pmf)] = pmf
    return _normalise(target, log.action_mask)


def snips_value(log: BanditLog, target: np.ndarray) -> float:
    """Self-normalised IPS value of ``target``: sum(w r) / sum(w), w = pi(a|x) / p(a|x).

    Swaminathan & Joachims 2015, "The self-normalized estimator for
    counterfactual learning", eq. 3. Uses only the chosen propensity, so it
    is valid for logs whose pmf is known on the chosen block only. 0 when no
    event has weight.
    """
    rows = np.arange(log.n)
    weights = target[rows, log.chosen] / log.propensity
    total = float(weights.sum())
    return float((weights * log.reward).sum() / total) if total > 0 else 0.0


# ---------------------------------------------------------------- VW plumbing


_Actions = tuple[list[str], list[str], list[Any]]


class _ActionCache:
    """Parsed block examples per candidate set: by object identity first, then by content.

    The identity key holds a reference to the candidates so that their ids
    cannot be reused while cached. Both levels are cleared past
    ``_CACHE_LIMIT`` entries.
    """

    def __init__(self, ws: vowpalwabbit.Workspace) -> None:
        self.ws = ws
        self.by_identity: dict[tuple[int, ...], tuple[Sequence[Candidate], _Actions]] = {}
        self.by_content: dict[tuple[str, ...], _Actions] = {}

    def get(self, candidates: Sequence[Candidate]) -> _Actions:
        """(block ids, action lines, parsed action examples) of a candidate set."""
        identity = tuple(map(id, candidates))
        hit = self.by_identity.get(identity)
        if hit is not None:
            return hit[1]
        lines = [action_line(c.id, c.features) for c in candidates]
        content = tuple(lines)
        entry = self.by_content.get(content)
        if entry is None:
            if len(self.by_content) >= _CACHE_LIMIT:
                self.by_content.clear()
            entry = ([c.id for c in candidates], lines, [self.ws.example(line, _CB) for line in lines])
            self.by_content[content] = entry
        if len(self.by_identity) >= _CACHE_LIMIT:
            self.by_identity.clear()
        self.by_identity[identity] = (candidates, entry)
        return entry


class _SharedText:
    """``shared_line(context)`` assembled from memoised per-group fragments.

    Contexts repeat their coarse groups (device, location, daypart...), so
    each group's text is built once per distinct content. The result equals
    ``shared_line`` (the replay tests compare it against raw VW on
    ``shared_line`` text).
    """

    def __init__(self) -> None:
        self.fragments: dict[tuple[str, tuple[tuple[str, Any], ...]], str] = {}
        self.empty = shared_line({})

    def __call__(self, context: Features) -> str:
        parts = []
        for group in context:
            if group not in CONTEXT_NAMESPACES:
                return shared_line(context)  # raises the usual InvalidFeature
        for group in CONTEXT_NAMESPACES:
            values = context.get(group)
            if not values:
                continue
            key = (group, tuple(values.items()))
            fragment = self.fragments.get(key)
            if fragment is None:
                if len(self.fragments) >= _CACHE_LIMIT * 4:
                    self.fragments.clear()
                fragment = shared_line({group: values})[len("shared ") :]
                self.fragments[key] = fragment
            parts.append(fragment)
        return "shared " + " ".join(parts) if parts else self.empty


def _workspace(config: VWConfig | None, model: bytes | None) -> vowpalwabbit.Workspace:
    if model is None:
        return vowpalwabbit.Workspace(arg_list=(config or VWConfig()).to_args())
    if not model:
        raise ReplayError("empty VW model", field="model")
    handle, path = tempfile.mkstemp(suffix=".vw")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(model)
        # the model stores its reductions; -i plus --quiet restores them (as bandits.policies does)
        return vowpalwabbit.Workspace(arg_list=["--quiet", "-i", path])
    finally:
        os.unlink(path)


def _save(ws: vowpalwabbit.Workspace) -> bytes:
    handle, path = tempfile.mkstemp(suffix=".vw")
    os.close(handle)
    try:
        ws.save(path)
        with open(path, "rb") as stream:
            return stream.read()
    finally:
        os.unlink(path)


def _reward_range(log: BanditLog, reward_min: float | None, reward_max: float | None) -> tuple[float, float]:
    low = reward_min if reward_min is not None else log.meta.get("reward_min")
    high = reward_max if reward_max is not None else log.meta.get("reward_max")
    if low is None:
        low = float(log.reward.min()) if log.n else 0.0
    if high is None:
        high = float(log.reward.max()) if log.n else 1.0
    if not (math.isfinite(low) and math.isfinite(high)) or high < low:
        raise ReplayError(f"reward range [{low}, {high}] is not a finite interval", field="reward_range")
    return float(low), float(high)


class _Progress:
    def __init__(self, callback: ProgressCallback | None) -> None:
        self.callback = callback
        self.reported = 0

    def tick(self, done: int) -> None:
        if self.callback is not None and done - self.reported >= _PROGRESS_EVERY:
            self.callback(done - self.reported)
            self.reported = done

    def close(self, done: int) -> None:
        if self.callback is not None and done > self.reported:
            self.callback(done - self.reported)
            self.reported = done


# ---------------------------------------------------------------- replay


@dataclass(frozen=True, eq=False)
class ReplayResult:
    """A VW configuration replayed over a log with progressive validation."""

    target_pmf: np.ndarray
    """(n, A) pmf predicted for each event before learning from it (the target policy)."""
    progressive_loss: float
    """IPS estimate of the mean cost in [0, 1] of the progressive predictions over the
    learnable events (those a live learner would have learned from): mean of c_t pi_t(a_t) / p_t (Dudik, Langford & Li 2011, eq. 2);
    VW's own "average loss" for cb_explore_adf. NaN when no event is learnable."""
    progressive_value: float
    """The same IPS estimate in reward units: mean of r_t pi_t(a_t) / p_t."""
    learned: int
    """Number of events learned from."""
    reward_range: tuple[float, float]
    """(r_min, r_max) used for cost = (r_max - r) / (r_max - r_min)."""
    config: VWConfig | LinearConfig | None
    """The replayed configuration (None when continuing a saved VW model)."""
    model: bytes | None = field(default=None, repr=False)
    """The final model, when ``keep_model=True``."""


def replay(
    log: BanditLog,
    config: VWConfig | LinearConfig | None = None,
    *,
    model: bytes | None = None,
    learn: bool = True,
    reward_min: float | None = None,
    reward_max: float | None = None,
    progress: ProgressCallback | None = None,
    keep_model: bool = False,
) -> ReplayResult:
    """Replay ``config`` (default ``VWConfig()``) over ``log`` in log (time) order.

    For each event: predict the pmf over its candidates (the row of the
    target), then, if ``learn`` and the event is learnable, learn from
    ``0:cost:propensity`` on the chosen block. Starting from ``model`` (VW
    model bytes) continues a saved model instead of a fresh ``config``;
    ``learn=False`` makes it predict only. A :class:`bandits.linear.LinearConfig`
    replays the ``linear`` family the same way (its ``model``, when given, is a
    linear snapshot of that configuration).
    """
    low, high = _reward_range(log, reward_min, reward_max)
    if isinstance(config, LinearConfig):
        return _replay_linear(log, config, model, learn, (low, high), progress, keep_model)
    ws = _workspace(config, model)
    cache = _ActionCache(ws)
    prediction_type = ws.get_prediction_type()
    target = np.zeros(log.action_ids.shape, dtype=np.float64)
    learnable = log.learnable if log.learnable is not None else np.ones(log.n, dtype=bool)
    chosen = log.chosen
    propensity = log.propensity
    counter = _Progress(progress)
    learned = 0
    counts = log.n_actions.tolist()
    id_rows = log.action_ids.tolist()
    costs = [cost_from_reward(r, low, high) for r in log.reward.tolist()]
    chosen_list = chosen.tolist()
    propensities = propensity.tolist()
    learn_rows = (learnable & learn).tolist()
    contexts = log.contexts or ({},) * log.n
    text = _SharedText()
    action_probs = prediction_type == vowpalwabbit.PredictionType.ACTION_PROBS
    rows: list[list[float]] = []
    bare: dict[tuple[str, ...], tuple[Candidate, ...]] = {}
    try:
        for row in range(log.n):
            k = counts[row]
            if log.candidates:
                candidates = log.candidates[row]
            else:  # ids only: one shared tuple of featureless candidates per id list
                key = tuple(id_rows[row][:k])
                candidates = bare.setdefault(key, tuple(Candidate(str(i)) for i in key))
            ids, lines, actions = cache.get(candidates)
            if ids != id_rows[row][:k]:
                raise LogError(f"event {row}: candidates disagree with action_ids", field="candidates")
            shared = ws.example(text(contexts[row]), _CB)
            multi = [shared, *actions]
            if learn_rows[row]:
                a = chosen_list[row]
                multi[1 + a] = ws.example(f"0:{costs[row]!r}:{propensities[row]!r} {lines[a]}", _CB)
                ws.learn(multi)  # VW predicts before it updates: the pmf below ignores this label
                pmf = shared.get_action_scores() if action_probs else shared.get_prediction(prediction_type)
                learned += 1
            else:
                pmf = ws.predict(multi)
            rows.append(pmf)
            counter.tick(row + 1)
        counter.close(log.n)
        saved = _save(ws) if keep_model else None
    finally:
        ws.finish()
    for row, pmf in enumerate(rows):
        target[row, : len(pmf)] = pmf
    target = _normalise(target, log.action_mask)
    weights = target[np.arange(log.n), chosen] / propensity
    cost_array = np.array(costs, dtype=np.float64)
    if learnable.any():
        loss = float((cost_array * weights)[learnable].mean())
        value = float((log.reward * weights)[learnable].mean())
    else:
        loss = value = math.nan
    return ReplayResult(
        target_pmf=target,
        progressive_loss=loss,
        progressive_value=value,
        learned=learned,
        reward_range=(low, high),
        config=config if model is None else None,
        model=saved,
    )


def _replay_linear(log: BanditLog, config: LinearConfig, model: bytes | None, learn: bool,
                   reward_range: tuple[float, float], progress: ProgressCallback | None,
                   keep_model: bool) -> ReplayResult:
    """:func:`replay` for the ``linear`` family: the service's own LinearPolicy predicts each event's pmf
    (its exact explorer, seeded from the event's context as at decide time), then learns the event."""
    low, high = reward_range
    policy = LinearPolicy(config, model)
    target = np.zeros(log.action_ids.shape, dtype=np.float64)
    learnable = log.learnable if log.learnable is not None else np.ones(log.n, dtype=bool)
    costs = [cost_from_reward(r, low, high) for r in log.reward.tolist()]
    chosen, propensities, learn_rows = log.chosen.tolist(), log.propensity.tolist(), (learnable & learn).tolist()
    counter = _Progress(progress)
    learned = 0
    for row in range(log.n):
        context, candidates = _context(log, row), _candidates(log, row)
        pmf = policy.pmf(context, candidates)
        target[row, : len(pmf)] = pmf
        if learn_rows[row]:
            policy.learn(context, candidates, chosen[row], costs[row], propensities[row])
            learned += 1
        counter.tick(row + 1)
    counter.close(log.n)
    target = _normalise(target, log.action_mask)
    weights = target[np.arange(log.n), log.chosen] / log.propensity
    if learnable.any():
        loss = float((np.array(costs) * weights)[learnable].mean())
        value = float((log.reward * weights)[learnable].mean())
    else:
        loss = value = math.nan
    return ReplayResult(target_pmf=target, progressive_loss=loss, progressive_value=value, learned=learned,
                        reward_range=(low, high), config=config, model=policy.save() if keep_model else None)


def snapshot_target(log: BanditLog, model: bytes, *, config: LinearConfig | None = None,
                    progress: ProgressCallback | None = None) -> np.ndarray:
    """The pmfs a saved model gives each event; predict only. ``model`` is a VW model
    (``VWPolicy.save()`` / a snapshot's bytes), or with ``config`` a linear snapshot of that configuration."""
    if config is not None:
        return replay(log, config, model=model, learn=False, progress=progress).target_pmf
    return replay(log, model=model, learn=False, progress=progress).target_pmf


# ---------------------------------------------------------------- feature importance


def drop_context(log: BanditLog, group: str, feature: str | None = None) -> BanditLog:
    """A copy of ``log`` without context ``group`` (or only without ``group.feature``)."""
    if group not in CONTEXT_NAMESPACES:
        raise ReplayError(f"unknown context group {group!r}; one of {CONTEXT_NAMESPACES}", field="group")
    contexts: list[Features] = []
    for context in log.contexts:
        if feature is None:
            contexts.append({g: v for g, v in context.items() if g != group})
        else:
            contexts.append(
                {g: ({k: x for k, x in v.items() if k != feature} if g == group else v) for g, v in context.items()}
            )
    return replace(log, contexts=tuple(contexts))


@dataclass(frozen=True)
class FeatureImportance:
    """Value of the replayed configuration with everything, and without each group/feature."""

    baseline: float
    """``evaluate`` of the configuration replayed on the full log."""
    without: Mapping[str, float]
    """``evaluate`` after removing the key: a group ("device") or a feature ("device.type")."""

    @property
    def importance(self) -> dict[str, float]:
        """Value lost by removing each key: baseline - without[key] (positive = the key helps)."""
        return {key: self.baseline - value for key, value in self.without.items()}


def feature_importance(
    log: BanditLog,
    config: VWConfig | LinearConfig | None = None,
    *,
    groups: Iterable[str] = CONTEXT_NAMESPACES,
    features: Iterable[str] = (),
    evaluate: Callable[[BanditLog, np.ndarray], float] = snips_value,
    reward_min: float | None = None,
    reward_max: float | None = None,
    progress: ProgressCallback | None = None,
) -> FeatureImportance:
    """Replay ``config`` on the log and on copies without each group / ``"group.feature"``.

    ``evaluate(log, target)`` turns a target into a value; compose with the
    estimators, e.g. ``lambda log, t: analysis.estimators.estimate(log, t, "dr").value``.
    Each removal costs one full replay. Groups absent from every context are
    skipped.
    """
    if not log.contexts:
        raise LogError("feature importance needs the log's contexts", field="contexts")
    low, high = _reward_range(log, reward_min, reward_max)

    def value(variant: BanditLog) -> float:
        result = replay(variant, config, reward_min=low, reward_max=high, progress=progress)
        return float(evaluate(variant, result.target_pmf))

    present = {g for context in log.contexts for g, values in context.items() if values}
    without: dict[str, float] = {}
    for group in groups:
        if group in present:
            without[group] = value(drop_context(log, group))
    for dotted in features:
        group, _, name = dotted.partition(".")
        if not name:
            raise ReplayError(f"feature {dotted!r} must be 'group.name'", field="features")
        without[dotted] = value(drop_context(log, group, name))
    return FeatureImportance(baseline=value(log), without=without)
