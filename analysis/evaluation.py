r"""Offline evaluation: the standard comparison set on one logged decision set, and a recommendation.

:func:`evaluate` answers "what would each of these policies have earned on
this traffic, and should one of them replace the online policy?", the way
Azure Personalizer's offline evaluations did, with the estimators of
:mod:`analysis.estimators` and the paired tests of :mod:`analysis.compare`.

The comparison set (every evaluation has it):

========== =================================================================
name       target policy
========== =================================================================
online     the online policy: its VW snapshot replayed predict-only
           (:func:`analysis.replay.snapshot_target`) when given, else the
           logging policy itself (the logged pmfs)
baseline   the slot's default block, always (:func:`analysis.replay.fixed_target`);
           left out when no default block is known
uniform    every candidate alike
<name>     each candidate VW configuration replayed over the log in time order
           with progressive validation (predict, then learn:
           :func:`analysis.replay.replay`)
========== =================================================================

Each policy gets an :class:`analysis.estimators.Estimate` (value, standard
error, interval, diagnostics) from the same estimator, the same seed (so the
same cross-fitting folds) and the same reward model, and a paired comparison
against ``online`` on the per-event contributions (difference, its interval,
p-value; Holm-adjusted across the whole family, Holm 1979).

**Recommendation rule.** A candidate replaces the online policy only when the
*paired* difference V(candidate) - V(online) is significantly positive: the
lower bound of its ``level`` interval is > 0 **and** its Holm-adjusted
p-value is below 1 - level. Among several such candidates the one with the
largest estimated difference is recommended. This is stricter, and more
honest, than comparing a candidate's own lower bound with the online
policy's point estimate: that rule ignores the online estimate's error
(declaring a win half the time when the two are equal and the candidate's
interval is narrow) and ignores the pairing. A candidate whose estimate is
flagged ``no_overlap``, ``tiny_ess`` or ``mean_weight_far_from_1`` is not
recommended (its estimate is not trustworthy), and nothing is recommended
when the logging-health check flags the log (wrong propensities bias every
estimate; Agarwal et al. 2016, §4).

**Anytime rule** (``rule="anytime"``). The paired rule is valid for one look at a
log. Evaluated again every day on the growing log, "recommend on the first day it
wins" inflates false recommendations (10.0% with 20 looks in an A/A simulation of 500
runs, against 1.2% for the sequences: ``benchmarks/estimators.py --peeking``). The anytime rule compares confidence sequences
(Waudby-Smith et al. 2022; :mod:`analysis.sequences`) instead: valid over every look,
at the price of power at each one.

**Time series.** For every time bucket (UTC day or hour) the value of each
policy on all events *up to the end of that bucket* (an expanding window),
with the normal interval (cheap; whatever interval the main table uses):
for ips/dm/dr/switch_dr the mean of the whole-log contributions of those
events (the cross-fitted reward model never saw the event it predicts, so
this is the same estimator on the prefix with a model fitted on more data),
for snips/replay a re-estimate on the prefix.
Candidate targets at time t are their progressive predictions, which only
depend on events before t, so each point is "what this configuration would
have earned until then". At most ``max_points`` bucket ends are shown
(evenly spaced, always including the last).

**Logs whose pmf is known on the chosen block only** (``meta["logging_pmf"]
== "chosen_only"``, e.g. the Open Bandit Dataset's "bts" policy, or foreign
DSJSON with a partial ``"p"``). IPS, SNIPS, DM and DR need only the chosen
propensity p_i = mu(a_i | x_i): w_i = pi(a_i | x_i) / p_i, and the estimators
take such logs as they are (``EventData.chosen_only``); ``bernstein`` (its
a-priori weight bound) and ``replay`` (its uniform-logging check) need the
whole pmf and are refused. The online policy is then the logging policy and
its value is estimated on-policy (IPS with w_i = 1, the mean logged reward,
which needs no pmf at all) whatever ``method`` says. The logging-health check
is the inverse-propensity (Horvitz-Thompson) form of :mod:`analysis.health`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np

from analysis.compare import Comparison, holm_adjusted, paired_difference
from analysis.errors import EvaluationError
from analysis.estimators import (
    INTERVALS,
    METHODS,
    Estimate,
    Estimator,
    EstimatorError,
    EventData,
    FittedRidge,
    RidgeRewardModel,
    contributions,
    estimate,
    resolve_estimator,
)
from analysis.health import LoggingHealth, check_logging
from analysis.intervals import check_level, normal_interval
from analysis.log import BanditLog
from analysis.replay import (
    FeatureImportance,
    ProgressCallback,
    feature_importance,
    fixed_target,
    logging_target,
    replay,
    snapshot_target,
    uniform_target,
)
from bandits.linear import LinearConfig
from bandits.policies import VWConfig

__all__ = [
    "EvaluatedPolicy",
    "Evaluation",
    "EvaluationError",
    "Recommendation",
    "STANDARD_CANDIDATES",
    "EvaluationPoint",
    "context_matrix",
    "evaluate",
    "recommend",
    "render_table",
]

RESERVED_NAMES: tuple[str, ...] = ("online", "baseline", "uniform")
"""Names of the standard policies; candidates may not use them."""

UNTRUSTED_FLAGS: tuple[str, ...] = ("no_overlap", "tiny_ess", "mean_weight_far_from_1")
"""Estimate flags that disqualify a candidate from being recommended."""

STANDARD_CANDIDATES: Mapping[str, VWConfig] = {
    "squarecb-g1000": VWConfig(exploration="squarecb", gamma_scale=1000.0),
    "squarecb-g100": VWConfig(exploration="squarecb", gamma_scale=100.0),
    "epsilon-0.05": VWConfig(exploration="epsilon", epsilon=0.05),
    "epsilon-0.2": VWConfig(exploration="epsilon", epsilon=0.2),
    "cover-3": VWConfig(exploration="cover", cover=3, epsilon=0.05, cb_type="ips"),
    "squarecb-lr0.1": VWConfig(exploration="squarecb", gamma_scale=1000.0, learning_rate=0.1),
    "no-interactions": VWConfig(exploration="squarecb", gamma_scale=1000.0, interactions=(), ignore_linear_context=False),
}
"""A small built-in set (docs/architecture.md, "Default VW configuration (evidence)"): the default
SquareCB and a less greedy one, epsilon-greedy at two rates, cover, a lower learning rate,
and a control without context x block interactions (which should score like uniform)."""

Bucket = Literal["day", "hour"]
PolicyRole = Literal["online", "logging", "baseline", "uniform", "candidate"]
"""What an evaluated policy is to the comparison."""
_BUCKET_SECONDS = {"day": 86400.0, "hour": 3600.0}


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class EvaluatedPolicy:
    """One policy of the comparison set with its estimate."""

    name: str
    kind: PolicyRole
    """``online`` (a snapshot), ``logging`` (online = the logged pmfs), ``baseline``, ``uniform``, ``candidate``."""
    estimate: Estimate
    config: Mapping[str, Any] | None = None
    """The candidate's VW configuration (``VWConfig.to_dict()``), or the baseline's block."""
    progressive_value: float | None = None
    """For candidates: the replay's own IPS value of its progressive predictions (learnable events)."""
    method: str = ""
    """The estimator actually used (differs from the requested one only for chosen-only logs' online policy)."""


@dataclass(frozen=True)
class EvaluationPoint:
    """Expanding-window values of every policy at the end of one time bucket."""

    bucket_start: float
    """Start of the bucket, seconds since the epoch (UTC)."""
    label: str
    """The bucket as ISO text (``2024-03-04`` or ``2024-03-04T09:00Z``)."""
    n: int
    """Events up to the end of the bucket."""
    values: Mapping[str, tuple[float, float, float]]
    """Policy name -> (value, ci_low, ci_high) on those events (normal interval)."""


@dataclass(frozen=True)
class Recommendation:
    """The outcome of the recommendation rule (module docstring)."""

    candidate: str | None
    """The candidate to apply, or None (keep the online policy)."""
    reason: str
    """Why, in plain words."""
    rule: str
    """The rule applied, in plain words."""
    difference: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    p_adjusted: float | None = None


@dataclass(frozen=True, eq=False)
class Evaluation:
    """The result of :func:`evaluate`."""

    n: int
    method: str
    interval: str
    level: float
    reward_range: tuple[float, float]
    policies: tuple[EvaluatedPolicy, ...]
    comparisons: tuple[Comparison, ...]
    """Every other policy minus ``online``, paired, Holm-adjusted across the family."""
    recommendation: Recommendation
    health: LoggingHealth | None
    """The logging-health check (None for chosen-only logs; see ``notes``)."""
    series: tuple[EvaluationPoint, ...] = ()
    bucket: str | None = None
    importance: FeatureImportance | None = None
    """Feature importance of the best candidate (when requested)."""
    importance_of: str | None = None
    notes: tuple[str, ...] = ()
    meta: Mapping[str, Any] = field(default_factory=dict)

    def policy(self, name: str) -> EvaluatedPolicy:
        for item in self.policies:
            if item.name == name:
                return item
        raise KeyError(name)

    def comparison(self, name: str) -> Comparison:
        for item in self.comparisons:
            if item.candidate == name:
                return item
        raise KeyError(name)

    @property
    def best_candidate(self) -> str | None:
        """The candidate with the highest estimated value (recommended or not)."""
        candidates = [p for p in self.policies if p.kind == "candidate"]
        return max(candidates, key=lambda p: p.estimate.value).name if candidates else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (no NaN or infinity: they become null)."""
        policies = []
        for p in self.policies:
            e = p.estimate
            policies.append({
                "name": p.name, "kind": p.kind, "method": p.method or e.method, "value": e.value,
                "stderr": e.stderr, "ci": [e.ci_low, e.ci_high], "interval": e.interval, "n": e.n,
                "diagnostics": {
                    "ess": e.diagnostics.ess, "mean_weight": e.diagnostics.mean_weight,
                    "max_weight": e.diagnostics.max_weight, "unsupported_mass": e.diagnostics.unsupported_mass,
                    **dict(e.diagnostics.details),
                },
                "flags": list(e.flags), "config": dict(p.config) if p.config is not None else None,
                "progressive_value": p.progressive_value,
            })
        comparisons = [
            {"policy": c.candidate, "versus": c.baseline, "difference": c.difference, "stderr": c.stderr,
             "ci": [c.ci_low, c.ci_high], "p_value": c.p_value, "p_adjusted": c.p_adjusted,
             "significant": c.significant, "test": c.test, "note": c.note}
            for c in self.comparisons
        ]
        r = self.recommendation
        health = None
        if self.health is not None:
            health = {
                "ok": self.health.ok, "threshold": self.health.threshold, "max_abs_z": self.health.max_abs_z,
                "rows": [{"arm": h.arm, "action": h.action, "observed": h.observed, "expected": h.expected,
                          "z": h.z, "flagged": h.flagged} for h in self.health.rows],
            }
        importance = None
        if self.importance is not None:
            importance = {"candidate": self.importance_of, "baseline": self.importance.baseline,
                          "without": dict(self.importance.without), "importance": self.importance.importance}
        data = {
            "n": self.n, "method": self.method, "interval": self.interval, "level": self.level,
            "reward_range": list(self.reward_range), "policies": policies, "comparisons": comparisons,
            "recommendation": {"candidate": r.candidate, "reason": r.reason, "rule": r.rule,
                               "difference": r.difference, "ci": [r.ci_low, r.ci_high], "p_adjusted": r.p_adjusted},
            "health": health, "bucket": self.bucket,
            "series": [{"bucket_start": s.bucket_start, "label": s.label, "n": s.n,
                        "values": {k: {"value": v[0], "ci": [v[1], v[2]]} for k, v in s.values.items()}}
                       for s in self.series],
            "feature_importance": importance, "notes": list(self.notes), "meta": dict(self.meta),
        }
        cleaned: dict[str, Any] = _jsonable(data)
        return cleaned

    def table(self) -> str:
        """The readable text table (:func:`render_table`)."""
        return render_table(self)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        number = float(value)
        return number if math.isfinite(number) else None
    if value is None or isinstance(value, str):
        return value
    return str(value)


# --------------------------------------------------------------------------- the rule


def _rule_text(level: float) -> str:
    return (
        f"a candidate replaces the online policy only when the lower bound of the {level:.0%} interval of "
        f"its paired difference with the online policy is above 0 and its Holm-adjusted p-value is below "
        f"{1 - level:.3g}; among several, the largest difference wins"
    )


def recommend(
    comparisons: Sequence[Comparison],
    estimates: Mapping[str, Estimate],
    candidates: Sequence[str],
    *,
    level: float,
    health_ok: bool = True,
) -> Recommendation:
    """Apply the recommendation rule (module docstring) to paired comparisons against ``online``.

    Args:
        comparisons: policy minus online, Holm-adjusted (``Comparison.p_adjusted``).
        estimates: each policy's estimate (for its flags).
        candidates: the names eligible for a recommendation (VW candidates only).
        health_ok: False when the logging-health check flagged the log.
    """
    rule = _rule_text(level)
    if not candidates:
        return Recommendation(None, "no candidate configurations were evaluated", rule)
    by_name = {c.candidate: c for c in comparisons}
    alpha = 1.0 - level
    winners: list[Comparison] = []
    reasons: list[str] = []
    for name in candidates:
        c = by_name.get(name)
        if c is None:
            continue
        flags = [f for f in estimates[name].flags if f in UNTRUSTED_FLAGS]
        if flags:
            reasons.append(f"{name}: its estimate is not trustworthy ({', '.join(flags)})")
        elif c.ci_low > 0 and c.p_adjusted < alpha:
            winners.append(c)
        elif c.difference > 0:
            reasons.append(
                f"{name} is estimated {c.difference:+.4g} better, but not significantly "
                f"(interval [{c.ci_low:.4g}, {c.ci_high:.4g}] includes 0 or Holm-adjusted p = {c.p_adjusted:.3g})"
            )
        else:
            reasons.append(f"{name} is estimated {c.difference:+.4g} against the online policy")
    if winners and not health_ok:
        return Recommendation(
            None,
            "the logging-health check flagged the log (logged propensities disagree with the observed "
            "choices), so no estimate can be trusted enough to replace the online policy",
            rule,
        )
    if not winners:
        return Recommendation(None, "keep the online policy: " + "; ".join(reasons), rule)
    best = max(winners, key=lambda c: c.difference)
    others = [c.candidate for c in winners if c is not best]
    reason = (
        f"{best.candidate} earns {best.difference:+.4g} per decision over the online policy "
        f"({level:.0%} interval [{best.ci_low:.4g}, {best.ci_high:.4g}], Holm-adjusted p = {best.p_adjusted:.3g})"
    )
    if others:
        reason += f"; also significantly better but by less: {', '.join(others)}"
    return Recommendation(best.candidate, reason, rule, best.difference, best.ci_low, best.ci_high, best.p_adjusted)


# --------------------------------------------------------------------------- data preparation


def context_matrix(log: BanditLog, max_columns: int = 16, min_share: float = 0.01) -> np.ndarray:
    """(n, d) one-hot indicators of the most frequent categorical context features, for reward models.

    A feature ``group.name`` with a string or bool value gives the indicator of
    ``group.name=value``; the ``max_columns`` most frequent indicators present in
    between ``min_share`` and ``1 - min_share`` of the events are kept (numeric
    features are left out: a ridge model that is linear in, say, the hour is
    worse than none). With no contexts the matrix has 0 columns.
    """
    if not log.contexts:
        return np.zeros((log.n, 0))
    tokens_by_event: list[list[str]] = []
    counts: dict[str, int] = {}
    memo: dict[tuple[str, tuple[tuple[str, Any], ...]], list[str]] = {}  # contexts repeat their groups
    for context in log.contexts:
        tokens: list[str] = []
        for group, values in context.items():
            if not values:
                continue
            key = (group, tuple(values.items()))
            part = memo.get(key)
            if part is None:
                part = [f"{group}.{name}={value}" for name, value in values.items() if isinstance(value, str | bool)]
                if len(memo) < 100_000:
                    memo[key] = part
            tokens += part
        tokens_by_event.append(tokens)
        for token in tokens:
            counts[token] = counts.get(token, 0) + 1
    low, high = min_share * log.n, (1.0 - min_share) * log.n
    kept = sorted((t for t, c in counts.items() if low <= c <= high), key=lambda t: (-counts[t], t))[:max_columns]
    column = {t: j for j, t in enumerate(kept)}
    matrix = np.zeros((log.n, len(kept)))
    for i, tokens in enumerate(tokens_by_event):
        for token in tokens:
            j = column.get(token)
            if j is not None:
                matrix[i, j] = 1.0
    return matrix


class _MemoRidge:
    """:class:`RidgeRewardModel` whose unweighted fits are remembered.

    The cross-fitted reward model depends on the events, the folds (the seed)
    and the rewards, never on the target policy; every policy of the
    comparison set, and both ``estimate`` and ``contributions``, would refit
    the same models. Keys are content hashes of the arrays; weighted fits
    (bootstrap refits) are not cached.
    """

    def __init__(self, model: RidgeRewardModel, size: int = 8) -> None:
        self.model = model
        self.size = size
        self.cache: dict[tuple[Any, ...], Any] = {}

    @staticmethod
    def _key(*arrays: np.ndarray) -> tuple[Any, ...]:
        return tuple((a.shape, str(a.dtype), hash(np.ascontiguousarray(a).tobytes())) for a in arrays)

    def _remember(self, key: tuple[Any, ...], make: Any) -> Any:
        hit = self.cache.get(key)
        if hit is None:
            if len(self.cache) >= self.size:
                self.cache.pop(next(iter(self.cache)))
            hit = self.cache[key] = make()
        return hit

    def fit(self, features: np.ndarray, actions: np.ndarray, rewards: np.ndarray, n_codes: int,
            sample_weight: np.ndarray | None = None) -> FittedRidge:
        if sample_weight is not None:
            return self.model.fit(features, actions, rewards, n_codes, sample_weight)
        key = ("fit", n_codes, *self._key(features, actions, rewards))
        fitted: FittedRidge = self._remember(key, lambda: self.model.fit(features, actions, rewards, n_codes))
        return fitted

    def fit_folds(self, features: np.ndarray, actions: np.ndarray, rewards: np.ndarray, n_codes: int,
                  fold: np.ndarray, n_folds: int, sample_weight: np.ndarray | None = None) -> list[FittedRidge]:
        if sample_weight is not None:
            return self.model.fit_folds(features, actions, rewards, n_codes, fold, n_folds, sample_weight)
        key = ("folds", n_codes, n_folds, *self._key(features, actions, rewards, fold))
        fitted: list[FittedRidge] = self._remember(
            key, lambda: self.model.fit_folds(features, actions, rewards, n_codes, fold, n_folds)
        )
        return fitted


def _chosen_only(log: BanditLog) -> bool:
    return log.meta.get("logging_pmf") == "chosen_only"


def _on_policy_target(log: BanditLog) -> np.ndarray:
    """The logging policy as a target on a chosen-only log, for IPS only: pi(a_i) = p_i, so
    w_i = 1 (the on-policy mean reward); the rest of each row, 1 - p_i, is spread evenly only to
    make it a pmf, and IPS never reads it."""
    rows = np.arange(log.n)
    p = log.propensity
    others = log.n_actions - 1
    rest = np.where(others > 0, (1.0 - p) / np.maximum(others, 1), 0.0)
    pmf = np.where(log.action_mask, rest[:, None], 0.0)
    pmf[rows, log.chosen] = p
    return pmf


def _reward_range(log: BanditLog, reward_range: tuple[float, float] | None) -> tuple[float, float]:
    if reward_range is not None:
        low, high = (float(v) for v in reward_range)
    else:
        declared_low, declared_high = log.meta.get("reward_min"), log.meta.get("reward_max")
        low = float(log.reward.min()) if declared_low is None else float(declared_low)
        high = float(log.reward.max()) if declared_high is None else float(declared_high)
        low, high = min(low, float(log.reward.min())), max(high, float(log.reward.max()))
        if high <= low:
            high = low + 1.0
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise EvaluationError(f"reward_range must be finite with low < high, got ({low}, {high})", field="reward_range")
    return low, high


def _check_candidates(candidates: Mapping[str, VWConfig | LinearConfig]) -> None:
    for name, config in candidates.items():
        if not isinstance(name, str) or not name:
            raise EvaluationError("candidate names must be non-empty strings", field="candidates")
        if name in RESERVED_NAMES:
            raise EvaluationError(
                f"candidate name {name!r} is reserved for the standard comparison set", field=f"candidates.{name}"
            )
        if not isinstance(config, VWConfig | LinearConfig):
            raise EvaluationError(f"candidate {name!r} must be a VWConfig or a LinearConfig", field=f"candidates.{name}")


def _bucket_label(start: float, bucket: Bucket) -> str:
    moment = datetime.fromtimestamp(start, UTC)
    return moment.strftime("%Y-%m-%d") if bucket == "day" else moment.strftime("%Y-%m-%dT%H:00Z")


# --------------------------------------------------------------------------- evaluate


def evaluate(
    log: BanditLog,
    candidates: Mapping[str, VWConfig | LinearConfig],
    *,
    online_model: bytes | None,
    default_block: str | None,
    online_config: LinearConfig | None = None,
    method: str | Estimator = "dr",
    interval: str = "normal",
    level: float = 0.95,
    seed: int = 0,
    q_hat: np.ndarray | None = None,
    embedding: np.ndarray | None = None,
    progress: ProgressCallback | None = None,
    time_buckets: Bucket | None = "day",
    reward_range: tuple[float, float] | None = None,
    with_feature_importance: bool = False,
    max_points: int = 60,
    n_resamples: int = 1000,
    rule: Literal["paired", "anytime"] = "paired",
) -> Evaluation:
    """Evaluate the standard comparison set plus ``candidates`` on ``log`` (module docstring).

    Args:
        log: the logged decisions, in time order. Candidate replays need its
            contexts and candidate features (a log without them replays on ids only).
        candidates: name -> VW or linear configuration to replay with progressive validation.
        online_model: the online policy's snapshot bytes (VW's, or with ``online_config`` a linear
            snapshot of that configuration), or None (online = logging policy).
        online_config: the online policy's LinearConfig when it is a ``linear`` policy.
        default_block: the slot's default block (the ``baseline``); None leaves it out.
        method: estimator, one of :data:`analysis.estimators.METHODS`, or an estimator object
            carrying its knobs (``DRos(shrinkage=10.0)``, ``SNDR()``, ``Slope.switch_dr()``...); the
            same object evaluates every policy (same folds, same model: paired).
        q_hat: (n, A) predictions of a fixed external reward model for every candidate, used by
            the model-based estimators instead of the fitted ridge (intervals conditional on it).
        embedding: (n, A) action-embedding codes for ``MIPS()`` (:func:`analysis.block_embedding`).
        interval: ``normal`` | ``bootstrap`` | ``bernstein`` for the per-policy intervals.
            Paired comparisons are t-tests on the contribution differences whatever this is.
        level: confidence level of every interval and of the rule.
        seed: fixes cross-fitting folds (the same for every policy: paired) and resamples.
        progress: called with the number of events replayed (one call per ~1000 events, every replay).
        time_buckets: ``day`` | ``hour`` for the expanding-window series, None for none.
        reward_range: a-priori reward bounds; default ``log.meta`` reward_min/max, else the observed range.
        with_feature_importance: also replay the best candidate without each context group
            (one replay per group present).
        max_points: most series points (evenly spaced bucket ends).
        n_resamples: bootstrap resamples.
        rule: ``paired`` (the recommendation rule of the module docstring) or ``anytime``: a
            candidate wins only when the lower bound of its anytime-valid confidence sequence
            (:func:`analysis.confidence_sequence`, IPW betting) is above the online policy's
            upper bound, each at level 1 - (1 - level) / (2 m) for m candidates (Bonferroni),
            so that evaluating the same growing log every day and acting on the first win
            keeps the chance of any false recommendation below 1 - level. Needs rewards inside
            ``reward_range``; much less powerful than ``paired`` at any one look.
    """
    level = check_level(level)
    if isinstance(method, str):
        if method not in METHODS:
            raise EvaluationError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}", field="method")
    else:
        try:
            method = resolve_estimator(method)
        except EstimatorError as error:
            raise EvaluationError(error.message, field="method") from error
    method_name = method if isinstance(method, str) else method.name
    if interval not in INTERVALS:
        raise EvaluationError(f"unknown interval {interval!r}; expected one of {', '.join(INTERVALS)}", field="interval")
    if time_buckets is not None and time_buckets not in _BUCKET_SECONDS:
        raise EvaluationError(f"time_buckets must be 'day', 'hour' or None, got {time_buckets!r}", field="time_buckets")
    if rule not in ("paired", "anytime"):
        raise EvaluationError(f"rule must be 'paired' or 'anytime', got {rule!r}", field="rule")
    if log.n < 2:
        raise EvaluationError(f"the log has {log.n} events; an evaluation needs at least 2", field="log")
    _check_candidates(candidates)
    chosen_only = _chosen_only(log)
    notes: list[str] = []
    if chosen_only and method_name == "replay":
        raise EvaluationError("replay needs the full (uniform) logging pmf; this log knows only the chosen "
                              "propensity: use ips, snips or dr", field="method")
    if chosen_only and interval == "bernstein":
        raise EvaluationError("bernstein needs the full logging pmf (its weight bound); this log knows only the "
                              "chosen propensity: use normal or bootstrap", field="interval")
    rr = _reward_range(log, reward_range)
    data = EventData.from_log(log, context_matrix(log), q_hat)
    if embedding is not None:
        data = data.with_embedding(embedding)

    model = _MemoRidge(RidgeRewardModel())  # one cross-fit serves every policy (same events, same folds)

    # targets: name -> (kind, pmf, config, progressive value, method)
    targets: dict[str, tuple[PolicyRole, np.ndarray, Mapping[str, Any] | None, float | None, str | Estimator]] = {}
    if online_model is not None:
        online_target = snapshot_target(log, online_model, config=online_config, progress=progress)
        targets["online"] = ("online", online_target, None, None, method)
    else:
        online_method: str | Estimator = "ips" if chosen_only else method
        if chosen_only and method_name != "ips":
            notes.append("online = the logging policy, whose pmf is known on the chosen block only: its value "
                         "is the on-policy mean reward (ips with weight 1), not " + method_name)
        online_target = _on_policy_target(log) if chosen_only else logging_target(log)
        targets["online"] = ("logging", online_target, None, None, online_method)
    if default_block is not None:
        if not ((log.action_ids == default_block) & log.action_mask).any():
            notes.append(f"the default block {default_block!r} is never a candidate in this log; "
                         "the baseline is then uniform on every event")
        targets["baseline"] = ("baseline", fixed_target(log, default_block), {"block": default_block}, None, method)
    else:
        notes.append("no default block known: the baseline is left out")
    targets["uniform"] = ("uniform", uniform_target(log), None, None, method)
    for name, config in candidates.items():
        result = replay(log, config, reward_min=rr[0], reward_max=rr[1], progress=progress)
        described = config.to_dict() if isinstance(config, VWConfig) else {"kind": "linear", **config.to_dict()}
        targets[name] = ("candidate", result.target_pmf, described, result.progressive_value, method)

    estimates: dict[str, Estimate] = {}
    values: dict[str, np.ndarray] = {}
    def model_of(used: str | Estimator) -> _MemoRidge | None:
        # the shared ridge for named methods; an object carries its own model, q_hat replaces it
        return model if isinstance(used, str) and q_hat is None else None

    for name, (_, pmf, _, _, used) in targets.items():
        estimates[name] = estimate(data, pmf, used, interval, level, seed=seed, reward_range=rr,
                                   n_resamples=n_resamples, reward_model=model_of(used))
        values[name] = contributions(data, pmf, used, seed=seed, reward_range=rr, reward_model=model_of(used))

    comparisons = _paired(values, level, method_name)
    health = check_logging(log)
    if chosen_only:
        notes.append("the log knows only the chosen propensity: the logging-health check is the "
                     "inverse-propensity (Horvitz-Thompson) check")
    if not health.ok:
        worst = max(health.flagged, key=lambda h: abs(h.z))
        notes.append(
            f"logging-health check FAILED: {len(health.flagged)} action rows disagree with their logged "
            f"probabilities (worst {worst.action!r}{' in arm ' + worst.arm if worst.arm else ''}: "
            f"{worst.observed} chosen, {worst.expected:.1f} expected, z = {worst.z:.1f})"
        )
    names = [n for n, t in targets.items() if t[0] == "candidate"]
    if rule == "anytime":
        recommendation = _anytime_recommendation(data, {n: t[1] for n, t in targets.items()}, names, estimates,
                                                 level, rr, health.ok)
    else:
        recommendation = recommend(comparisons, estimates, names, level=level, health_ok=health.ok)

    series: tuple[EvaluationPoint, ...] = ()
    if time_buckets is not None:
        series = _series(log, data, {n: (t[1], t[4]) for n, t in targets.items()}, values, time_buckets, level,
                         seed, rr, max_points)

    importance = None
    best = max(names, key=lambda n: estimates[n].value) if names else None
    if with_feature_importance and best is not None:
        if not log.contexts:
            notes.append("feature importance needs the log's contexts; skipped")
        else:
            def value_of(variant: BanditLog, target: np.ndarray) -> float:
                return estimate(data, target, method, "normal", level, seed=seed, reward_range=rr,
                                reward_model=model_of(method)).value

            importance = feature_importance(log, candidates[best], evaluate=value_of, reward_min=rr[0],
                                            reward_max=rr[1], progress=progress)

    policies = tuple(
        EvaluatedPolicy(name, kind, estimates[name], config, pv, _name(used))
        for name, (kind, _, config, pv, used) in targets.items()
    )
    meta = {k: v for k, v in log.meta.items() if isinstance(v, str | int | float | bool) or v is None}
    return Evaluation(
        n=log.n, method=method_name, interval=interval, level=level, reward_range=rr, policies=policies,
        comparisons=comparisons, recommendation=recommendation, health=health, series=series,
        bucket=time_buckets, importance=importance, importance_of=best if importance is not None else None,
        notes=tuple(notes), meta=meta,
    )


def _anytime_recommendation(
    data: EventData, pmfs: Mapping[str, np.ndarray], candidates: Sequence[str], estimates: Mapping[str, Estimate],
    level: float, reward_range: tuple[float, float], health_ok: bool,
) -> Recommendation:
    """The ``anytime`` rule (see :func:`evaluate`): confidence sequences, Bonferroni over candidates."""
    from analysis.sequences import confidence_sequence

    m = max(len(candidates), 1)
    inner = 1.0 - (1.0 - level) / m  # each sequence two-sided at this level: one side each
    rule = (f"anytime: a candidate replaces the online policy only when the lower bound of its {inner:.4g} "
            f"confidence sequence is above the online policy's upper bound (false recommendations over any "
            f"number of looks below {1 - level:.3g})")
    if not candidates:
        return Recommendation(None, "no candidate configurations were evaluated", rule)
    online = confidence_sequence(data, pmfs["online"], inner, reward_range=reward_range, grid=500)
    top = float(online.upper[-1])
    winners: list[tuple[str, float, float, float]] = []
    reasons: list[str] = []
    for name in candidates:
        flags = [f for f in estimates[name].flags if f in UNTRUSTED_FLAGS]
        if flags:
            reasons.append(f"{name}: its estimate is not trustworthy ({', '.join(flags)})")
            continue
        cs = confidence_sequence(data, pmfs[name], inner, reward_range=reward_range, grid=500)
        low, high = float(cs.lower[-1]), float(cs.upper[-1])
        if low > top:
            winners.append((name, low - top, high - float(online.lower[-1]), estimates[name].value))
        else:
            reasons.append(f"{name}: its sequence's lower bound {low:.4g} is not above the online policy's "
                           f"upper bound {top:.4g}")
    if winners and not health_ok:
        return Recommendation(None, "the logging-health check flagged the log, so no estimate can be trusted "
                                    "enough to replace the online policy", rule)
    if not winners:
        return Recommendation(None, "keep the online policy: " + "; ".join(reasons), rule)
    best = max(winners, key=lambda w: w[3])
    difference = best[3] - estimates["online"].value
    return Recommendation(best[0], f"{best[0]} is above the online policy at every level the sequences allow "
                                   f"(difference at least {best[1]:.4g})", rule, difference, best[1], best[2])


def _paired(values: Mapping[str, np.ndarray], level: float, method: str) -> tuple[Comparison, ...]:
    """Every policy minus ``online`` on the same events; Holm across the family (Holm 1979)."""
    base = values["online"]
    return holm_adjusted([
        paired_difference(c, base, level, candidate_name=name, baseline_name="online", method=method)
        for name, c in values.items()
        if name != "online"
    ], level)


_RATIO_METHODS = ("snips", "replay", "sndr")


def _name(method: str | Estimator) -> str:
    return method if isinstance(method, str) else method.name


def _series(
    log: BanditLog,
    data: EventData,
    targets: Mapping[str, tuple[np.ndarray, str | Estimator]],
    contributions_of: Mapping[str, np.ndarray],
    bucket: Bucket,
    level: float,
    seed: int,
    reward_range: tuple[float, float],
    max_points: int,
) -> tuple[EvaluationPoint, ...]:
    """Expanding-window values. For the additive estimators (ips, dm, dr, switch_dr) a point is the
    mean of the whole-log contributions of the events so far, with the normal interval: their
    cross-fitted reward model never saw the event it predicts, so a prefix mean is the same
    estimator on the prefix (only the model had more data). Ratio estimators (snips, replay) are
    re-estimated on the prefix (they fit no model)."""
    ts = log.timestamps
    if not np.isfinite(ts).all():
        return ()
    width = _BUCKET_SECONDS[bucket]
    starts = np.floor(ts / width) * width
    distinct = np.unique(starts)
    if distinct.size > max_points:
        keep = np.unique(np.linspace(0, distinct.size - 1, max_points).round().astype(int))
        distinct = distinct[keep]
    points = []
    for start in distinct.tolist():
        rows = np.flatnonzero(ts < start + width)
        if rows.size < 20:
            continue
        sub: EventData | None = None
        values: dict[str, tuple[float, float, float]] = {}
        for name, (pmf, used) in targets.items():
            if _name(used) not in _RATIO_METHODS:
                ci = normal_interval(contributions_of[name][rows], level)
                values[name] = (float(contributions_of[name][rows].mean()), ci.low, ci.high)
                continue
            if sub is None:
                sub = EventData.from_arrays(
                    reward=data.reward[rows], chosen=data.chosen[rows], logging_pmf=data.logging_pmf[rows],
                    mask=data.mask[rows], codes=data.codes[rows], features=data.features[rows],
                    chosen_only=data.chosen_only, q_hat=None if data.q_hat is None else data.q_hat[rows],
                )
                if data.embedding is not None:
                    sub = sub.with_embedding(data.embedding[rows])
            try:
                e = estimate(sub, pmf[rows], used, "normal", level, seed=seed, reward_range=reward_range)
            except EstimatorError:
                continue
            values[name] = (e.value, e.ci_low, e.ci_high)
        points.append(EvaluationPoint(float(start), _bucket_label(start, bucket), int(rows.size), values))
    return tuple(points)


# --------------------------------------------------------------------------- rendering


def _num(value: float | None, digits: int = 4) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:.{digits}f}"


def render_table(evaluation: Evaluation, *, digits: int = 4) -> str:
    """A plain-text report: one row per policy, the paired comparisons, the recommendation."""
    e = evaluation
    by_name: dict[str, Comparison] = {c.candidate: c for c in e.comparisons}
    header = ["policy", "kind", "value", f"{e.level:.0%} CI", "ESS", "vs online", "diff CI", "p (Holm)", "flags"]
    rows = [header]
    for p in e.policies:
        est = p.estimate
        c = by_name.get(p.name)
        rows.append([
            p.name, p.kind, _num(est.value, digits), f"[{_num(est.ci_low, digits)}, {_num(est.ci_high, digits)}]",
            f"{est.diagnostics.ess:.0f}",
            "" if c is None else f"{c.difference:+.{digits}f}",
            "" if c is None else f"[{_num(c.ci_low, digits)}, {_num(c.ci_high, digits)}]",
            "" if c is None else f"{c.p_adjusted:.3g}",
            ",".join(est.flags),
        ])
    widths = [max(len(r[j]) for r in rows) for j in range(len(header))]
    lines = [
        f"offline evaluation: {e.n} events, estimator {e.method}, {e.interval} intervals at {e.level:.0%}, "
        f"rewards in [{e.reward_range[0]:g}, {e.reward_range[1]:g}]",
        "",
    ]
    for i, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(widths[j]) for j, cell in enumerate(row)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append("")
    r = e.recommendation
    lines.append(f"recommendation: {r.candidate if r.candidate else 'keep the online policy'}")
    lines.append(f"  why: {r.reason}")
    lines.append(f"  rule: {r.rule}")
    if e.health is not None:
        lines.append(f"logging health: {'ok' if e.health.ok else 'FLAGGED'} (max |z| {e.health.max_abs_z:.2f} "
                     f"over {len(e.health.rows)} rows)")
    if e.importance is not None:
        lines.append(f"feature importance of {e.importance_of} (value lost without each group):")
        for key, lost in sorted(e.importance.importance.items(), key=lambda kv: -kv[1]):
            lines.append(f"  {key:<12} {lost:+.{digits}f}")
    if e.series:
        last = e.series[-1]
        lines.append(f"time series: {len(e.series)} {e.bucket} points (expanding window), last {last.label} "
                     f"on {last.n} events")
    for note in e.notes:
        lines.append(f"note: {note}")
    return "\n".join(lines) + "\n"

