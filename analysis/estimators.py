r"""Off-policy estimators of a target policy's value on a logged decision set.

Notation (per event i of n): context x_i, candidate columns j of the padded
(n, A) arrays, logging pmf mu_ij, target pmf pi_ij, chosen column a_i with
propensity p_i = mu_{i,a_i}, reward r_i, importance weight w_i = pi_{i,a_i} / p_i,
reward model q(x, a) with cross-fitted predictions \hat q_ij.

Every estimator holds only hyper-parameters; it turns the arrays into an (n,)
array of per-event *contributions* whose mean is the estimate (Open Bandit
Pipeline's design). Standard errors, intervals and paired comparisons
(:mod:`analysis.compare`) all come from that one array.

========== ============================================================ ==========================
method     contribution c_i                                             reference
========== ============================================================ ==========================
ips        w_i r_i                                                      Horvitz & Thompson 1952
snips      V + w_i (r_i - V) / mean(w), V = sum w r / sum w             Swaminathan & Joachims 2015
dm         sum_j pi_ij q_ij + c (r_i - rbar) + omega_i (r_i - q_{i,a_i})  plug-in + its influence fn
dr         sum_j pi_ij q_ij + w_i (r_i - q_{i,a_i})  (q cross-fitted)   Dudik, Langford & Li 2011
switch_dr  sum_j pi_ij q_ij + 1[w_i <= tau] w_i (r_i - q_{i,a_i})       Wang, Agarwal & Dudik 2017
dros       sum_j pi_ij q_ij + lam w_i / (w_i^2 + lam) (r_i - q_{i,a_i})  Su et al. 2020 (DRos)
sndr       plug_i + R + w_i (r_i - q_{i,a_i} - R) / mean(w),           Kallus & Uehara 2019
           R = sum w (r - q) / sum w (linearised; mean exactly V)
ips(clip)  min(w_i, clip) r_i                                           Ionides 2008
sg_ips     w_i / (1 - lam + lam w_i) r_i                                Metelli, Russo & Restelli 2021
sg_dr      sum_j pi_ij q_ij + w_i / (1 - lam + lam w_i) (r_i - q_{i,a_i})  Metelli et al. 2021
mips       w(x_i, e_i) r_i, w(x, e) = sum_{e_j = e} pi_ij / sum_{e_j = e} mu_ij  Saito & Joachims 2022
slope      the chosen candidate's c_i (Lepski's rule over a family)     Su, Srinath & Krishnamurthy 2020
replay     V + m_i (r_i - V) / mean(m), m_i = 1[target draw = a_i]      Li, Chu, Langford & Wang 2011
========== ============================================================ ==========================

For the ratio estimators (snips, replay, sndr) the contribution is the linearised
(delta-method) influence value; its mean is exactly V.

**Estimator objects.** Each row is a frozen dataclass holding only its knobs
(:class:`IPS`, :class:`SNIPS`, :class:`DirectMethod`, :class:`DoublyRobust`,
:func:`SwitchDR`, :class:`DRos`, :class:`SNDR`, :class:`Replay`), accepted by
:func:`estimate`, :func:`contributions` and :func:`analysis.compare.compare` in place
of a method name: ``estimate(log, pi, DRos(shrinkage=10.0, n_folds=5))``. The names of
:data:`METHODS` with keyword knobs keep working; knobs beside an object are refused.
DRos, SNDR, sub-Gaussian IPS/DR, clipped IPS and :class:`Slope` are objects only
(their knobs have no default worth a name). ``Diagnostics.details`` carries what is
particular to each (``mean_shrunk_weight``, ``switched_off_share``, ``selected``...).

**Bias for variance, measured** (``benchmarks/estimators.py --robust``, 1000 reps:
softmax regime of ``tests/analysis/test_coverage.py``, weights up to ~8, n = 1000;
coverage of the 95% normal interval / mean bias): IPS 93.9% / +0.000; SNDR 95.2% /
-0.000 (bootstrap 95.0%); DR with an external q_hat 96.1%, with a constant (wrong)
q_hat 94.0%; DM with the true q_hat 95.9%, with the wrong one 0% / -0.069; DRos(5)
62.6% / -0.005, DRos(50) 82.0% / -0.004; sub-Gaussian IPS at lambda = 1/sqrt(n)
62.1% / -0.054; sub-Gaussian DR(0.1) 86.8% / -0.003; SLOPE over switch-DR thresholds
54.0% / -0.006 (it picks tau = 1: the model is right, every candidate agrees); SLOPE
over IPS clipping 5.7% / -0.107. Poor overlap (n = 300, weights up to 95): DR 83.1%,
DRos(5) 10.3% / -0.088, SNDR 59.1% / -0.021. MIPS (40 blocks, 4 categories, no direct
effect) 94.0% / +0.001 at 0.68x IPS's width; with a direct block effect 62.1% / -0.061.
The shrinking estimators buy width with a bias their intervals
do not contain; use them for ranking and point estimates, and the unbiased ones (or
``bernstein``) where a claimed interval matters.

**A fixed external reward model** (``q_hat``: (n, A) predictions for every
candidate, on :class:`EventData` or as ``estimate(..., q_hat=...)``) replaces the
fitted ridge in dm, dr, switch_dr, DRos and SNDR: no cross-fitting, no refit in the
bootstrap, no model influence in DM. Every interval is then **conditional on the
model** (q_hat is treated as a known function). DR-type estimators stay unbiased
for any fixed q_hat that did not see this log (``tests/analysis/test_robust_estimators.py``:
DR with a constant q_hat = 0.5 covers 92%); DM with a wrong q_hat is as wrong as
the model, with an interval that says nothing of it (0% coverage, bias -0.07).
Results agree with obp's, whose estimators take the same array
(``estimated_rewards_by_reg_model``) and always hold it fixed.

**DRos and the fitted model.** With strong shrinkage DRos is mostly DM, whose model
error is first order: its normal interval (the model held fixed) under-covers even
with a well-specified model (softmax regime: 58% for lambda = 5, 78% for 50, bias
< 0.01); ``interval="bootstrap", refit=True`` refits the cross-fitted models in each
resample and restores most of it (89% and 91%). Under poor overlap DRos, like
switch-DR, leans on a model that never saw the target's favourite action.

**DM and the reward model's own uncertainty.** Open Bandit Pipeline computes
DM's interval from the fixed-model contributions sum_j pi_ij q_ij alone. That
ignores the error of q itself, which for DM is first order: with a per-action
mean model and a context-free target every contribution is identical and the
"interval" has width 0. Here the DM contribution adds the influence function of
the fitted ridge model (a linear smoother, so its influence is exact to first
order): omega_i = n G_{a_i}^T M_{a_i}^{-1} phi_i with G_a = (1/n) sum_i pi_ia phi_i and
M_a the ridge Gram matrix of action a, and c the influence of the pooled mean.
For a context-free model omega_i = (target share of a_i) / (logged share of a_i).
The bootstrap instead refits the model on every resample (``refit=True``).
``tests/analysis/test_coverage.py`` shows OBP's fixed-model normal interval
covering far below 95% where ours covers about 95%.

**DR and cross-fitting.** Predictions for events in fold k come from a model
fitted without fold k (Chernozhukov et al. 2018), so the normal interval on DR
contributions is valid: the model's error enters DR only at second order.

**Robust DR.** ``switch_dr`` (Wang et al. 2017) drops the importance-weighted
correction for events whose weight exceeds ``switch_tau`` and trusts the model
there. Biased when the model is wrong on those events, but its variance stays
bounded under poor overlap; ``switch_tau=inf`` is DR.

**Replay.** Li et al.'s method (2011) for uniformly logged data with a fixed
number of candidates: keep the events where the target's (seeded) draw equals
the logged choice and average their rewards. It refuses non-uniform logs.

**Logs that know only the chosen propensity** (``EventData.chosen_only``, from
``meta["logging_pmf"] == "chosen_only"``: the Open Bandit Dataset's "bts"
campaign). Every contribution above except replay's reads mu only through
w_i = pi_{i,a_i} / p_i, so IPS, SNIPS, DM, DR and switch-DR are unchanged.
Refused, with an :class:`EstimatorError` on ``logging_pmf``: ``bernstein``
(its a-priori range needs max_j pi_ij / mu_ij over every candidate) and
``replay`` (it must verify uniform logging). ``unsupported_mass`` then counts
only actions never chosen in the log (mu = 0 elsewhere means "unknown").

**Cost** (``benchmarks/estimators.py``: 1,000,000 events x 20 actions). An
:class:`EventData` computes its derived arrays once (chosen propensities, codes,
the design [1, x]) and keeps, per (model, n_folds, seed), the folds, the
cross-fitted models and q_{i,a_i}, so DR, switch-DR and every target policy on the
same log share one fit, and DM one whole-log fit. For the linear ridge on a log
with one catalog no (n, A) prediction array is made: sum_j pi_ij q_ij =
sum_l phi_il (pi_i^T C_{k(i)})_l is one BLAS product of each block of pi with the
stacked coefficients of every fold model. Passes over (n, A) arrays are blocked
(in cache) and kept small enough for OpenBLAS to run them on one thread: its
threads stall each other on a busy machine. Results equal the unblocked formulas
to rounding (1e-15 relative; ``tests/analysis/test_estimators.py``).

Flags (``Diagnostics.flags``): ``mean_weight_far_from_1`` (|mean w - 1| > 4
standard errors: wrong propensities or unsupported target mass),
``tiny_ess`` (Kish effective sample size below max(10, 1% of n)),
``extreme_weight`` (a weight >= 100 or one event holding > 5% of the total
weight), ``unsupported_mass`` (target mass on actions the logger gave
probability 0 or never chose), ``out_of_reward_range`` (the estimate lies
outside ``reward_range``; it is returned as it is, never clipped),
``reward_outside_declared_range`` and ``no_overlap`` (sum of weights 0).
Extreme weights and out-of-range estimates are also logged at WARNING.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Literal, Protocol, TypeVar, cast

import numpy as np

from analysis.intervals import (
    EstimatorError,
    Interval,
    bernstein_interval,
    bootstrap_interval,
    check_level,
    normal_interval,
    resample_statistic,
)
from analysis.log import BanditLog

__all__ = [
    "DirectMethod",
    "Diagnostics",
    "DoublyRobust",
    "Estimate",
    "Estimator",
    "EstimatorError",
    "EventData",
    "FittedRewardModel",
    "IPS",
    "METHODS",
    "Replay",
    "RewardModel",
    "RidgeRewardModel",
    "DRos",
    "SNDR",
    "MIPS",
    "Slope",
    "SubGaussianDR",
    "SubGaussianIPS",
    "SNIPS",
    "action_codes",
    "block_embedding",
    "SwitchDR",
    "contributions",
    "diagnose",
    "estimate",
    "make_estimator",
    "resolve_estimator",
]

logger = logging.getLogger(__name__)
T = TypeVar("T")

Method = Literal["ips", "snips", "dm", "dr", "switch_dr", "replay"]
IntervalMethod = Literal["normal", "bootstrap", "bernstein"]
METHODS: tuple[str, ...] = ("ips", "snips", "dm", "dr", "switch_dr", "replay")
INTERVALS: tuple[str, ...] = ("normal", "bootstrap", "bernstein")
_PMF_TOLERANCE = 1e-5
# refit the reward model inside the bootstrap when n * n_resamples is below this
_REFIT_BUDGET = 50_000_000


# --------------------------------------------------------------------------- data


@dataclass(frozen=True, eq=False)
class EventData:
    """The log-side arrays every estimator reads, validated once.

    Attributes:
        reward: (n,) float64.
        chosen: (n,) int64, column of the chosen candidate.
        logging_pmf: (n, A) float64, 0 on padding.
        mask: (n, A) bool, True where a candidate exists (may be a read-only
            broadcast view of one row when every candidate exists everywhere).
        codes: (n, A) int64, an integer per distinct action id (-1 on padding);
            reward models are per action id, not per column (may be a read-only
            broadcast view of one row).
        n_codes: number of distinct action ids.
        features: (n, d) float64 numeric context features for reward models (d may be 0).
        chosen_only: the log knows the logging probability of the chosen candidate
            only (``meta["logging_pmf"] == "chosen_only"``: the Open Bandit Dataset's
            "bts" campaign, DSJSON with a partial ``"p"``). ``logging_pmf`` then holds
            p_i = mu(a_i | x_i) at the chosen column and 0 (unknown) or partial mass
            elsewhere; rows need not sum to 1. IPS, SNIPS, DM, DR and switch-DR read
            p_i alone and work; what needs mu on the other candidates refuses: the
            a-priori weight bound max_j pi_ij / mu_ij (so ``bernstein``) and ``replay``
            (its uniform-logging check). Probability 0 elsewhere means "unknown", not
            "unsupported".
        q_hat: (n, A) float64 predictions of a fixed, external reward model for every
            candidate (0 on padding), or None. Given, every estimator with a reward model
            (dm, dr, switch_dr, DRos, SNDR, sub-Gaussian DR) uses it as it is instead of
            fitting one: no cross-fitting, no refit in the bootstrap, no model influence
            in DM's contributions. Its intervals are then *conditional on the model*: they
            treat q_hat as a known function, which is right when it was fitted on other
            data (an earlier week, another slot) and over-confident when it was fitted on
            this log. See :meth:`with_q_hat`.
        embedding: (n, A) int64 action-embedding code of every candidate (-1 on padding),
            or None: what :class:`MIPS` marginalises over (candidates with equal codes
            share an embedding). :func:`block_embedding` makes it from block features.

    The arrays are treated as immutable: derived arrays (the chosen propensities,
    the reward models fitted on this log) are computed once per instance and
    reused by every estimator called with it.
    """

    reward: np.ndarray
    chosen: np.ndarray
    logging_pmf: np.ndarray
    mask: np.ndarray
    codes: np.ndarray
    n_codes: int
    features: np.ndarray
    chosen_only: bool = False
    q_hat: np.ndarray | None = None
    embedding: np.ndarray | None = None

    @property
    def n(self) -> int:
        return int(self.reward.shape[0])

    @cached_property
    def full(self) -> bool:
        """Every row has every column (no padding)."""
        return bool((self.mask[0] if _one_row(self.mask) else self.mask).all())

    @cached_property
    def same_catalog(self) -> bool:
        """Column j is action code j in every row: reward models reduce to matmuls."""
        width = self.codes.shape[1]
        codes = self.codes[0] if _one_row(self.codes) else self.codes
        return self.n_codes == width and self.full and bool((codes == np.arange(width)).all())

    @cached_property
    def unsupported_cells(self) -> np.ndarray:
        """Flat indices of (event, column) cells the logger gave probability 0 or whose
        action was never chosen in the log: target mass there is invisible to IPS.
        For ``chosen_only`` logs only the never-chosen actions (0 means "unknown")."""
        tried = np.bincount(self.chosen_codes, minlength=max(self.n_codes, 1)) > 0
        if self.chosen_only:  # probability 0 off the chosen column means "unknown"
            if tried.all():
                return np.zeros(0, dtype=np.int64)
            return np.flatnonzero(self.mask & ~tried[np.maximum(self.codes, 0)])
        if tried.all() and self.full:
            if self.logging_pmf.min() > 0:  # one reduction, no (n, A) temporaries
                return np.zeros(0, dtype=np.int64)
            return np.flatnonzero(self.logging_pmf <= 0)
        if tried.all():
            cells = self.mask & (self.logging_pmf <= 0)
        else:
            cells = self.mask & ((self.logging_pmf <= 0) | ~tried[np.maximum(self.codes, 0)])
        return np.flatnonzero(cells)

    @cached_property
    def rows(self) -> np.ndarray:
        return np.arange(self.n)

    @cached_property
    def chosen_flat(self) -> np.ndarray:
        """Flat index i * A + a_i of each chosen cell: a gather instead of fancy indexing."""
        return cast(np.ndarray, self.rows * self.logging_pmf.shape[1] + self.chosen)

    def at_chosen(self, values: np.ndarray) -> np.ndarray:
        """(n,) entries of an (n, A) array at the chosen columns."""
        if values.flags.c_contiguous:
            return np.take(values.reshape(-1), self.chosen_flat)
        return cast(np.ndarray, values[self.rows, self.chosen])

    @cached_property
    def propensity(self) -> np.ndarray:
        return self.at_chosen(self.logging_pmf)

    @cached_property
    def chosen_codes(self) -> np.ndarray:
        if _one_row(self.codes):
            return cast(np.ndarray, self.codes[0][self.chosen])
        return self.at_chosen(self.codes)

    @cached_property
    def design(self) -> np.ndarray:
        """(n, 1 + d) float64 phi_i = [1, x_i], the reward models' regressors."""
        phi = np.empty((self.n, 1 + self.features.shape[1]))
        phi[:, 0] = 1.0
        phi[:, 1:] = self.features
        return phi

    @cached_property
    def memo(self) -> dict[object, object]:
        """Per-log cache of fitted reward models and folds, keyed by (kind, model, ...)."""
        return {}

    def with_q_hat(self, q_hat: np.ndarray | None) -> EventData:
        """The same log with the fixed external reward predictions ``q_hat`` (n, A), aligned
        with the candidate columns (values on padding are ignored), or without any (None).
        A new instance: reward models fitted on this one are not carried over."""
        if q_hat is None:
            return replace(self, q_hat=None)
        q = np.asarray(q_hat, dtype=np.float64)
        if q.shape != self.logging_pmf.shape:
            raise EstimatorError(f"q_hat must have the log's shape {self.logging_pmf.shape}, got {q.shape}", field="q_hat")
        q = np.where(self.mask, q, 0.0)
        if not np.isfinite(q).all():
            raise EstimatorError("q_hat contains NaN or infinity", field="q_hat")
        q.setflags(write=False)
        return replace(self, q_hat=q)

    def with_embedding(self, embedding: np.ndarray | None) -> EventData:
        """The same log with action-embedding codes (n, A) (see ``embedding``), or without (None)."""
        if embedding is None:
            return replace(self, embedding=None)
        e = np.asarray(embedding)
        if e.shape != self.logging_pmf.shape or not np.issubdtype(e.dtype, np.integer):
            raise EstimatorError(
                f"embedding must be {self.logging_pmf.shape} integer codes, got {e.shape} {e.dtype}", field="embedding"
            )
        e = np.where(self.mask, e.astype(np.int64), -1)
        if (e[self.mask] < 0).any():
            raise EstimatorError("embedding codes must be >= 0 on existing candidates", field="embedding")
        e.setflags(write=False)
        return replace(self, embedding=e)

    @cached_property
    def q_hat_range(self) -> tuple[float, float]:
        """(min, max) of ``q_hat`` over existing candidates: an a-priori range given the model."""
        if self.q_hat is None:
            raise EstimatorError("no q_hat on this log", field="q_hat")
        values = self.q_hat[self.mask]
        return float(values.min()), float(values.max())

    @classmethod
    def from_log(
        cls, log: BanditLog, features: np.ndarray | None = None, q_hat: np.ndarray | None = None
    ) -> EventData:
        """Arrays of a :class:`BanditLog`; ``features`` an optional (n, d) numeric matrix;
        ``q_hat`` optional fixed reward predictions (see :meth:`with_q_hat`).
        ``chosen_only`` comes from ``log.meta["logging_pmf"] == "chosen_only"``."""
        codes, _ = action_codes(log.action_ids, log.action_mask)
        return cls.from_arrays(
            reward=log.reward,
            chosen=log.chosen,
            logging_pmf=log.logging_pmf,
            mask=log.action_mask,
            codes=codes,
            features=features,
            chosen_only=log.meta.get("logging_pmf") == "chosen_only",
            q_hat=q_hat,
        )

    @classmethod
    def from_arrays(
        cls,
        reward: np.ndarray,
        chosen: np.ndarray,
        logging_pmf: np.ndarray,
        mask: np.ndarray | None = None,
        codes: np.ndarray | None = None,
        features: np.ndarray | None = None,
        chosen_only: bool = False,
        q_hat: np.ndarray | None = None,
    ) -> EventData:
        """Validate plain arrays (no :class:`BanditLog` needed). Without ``codes``,
        column j is action j in every row; without ``mask`` every column exists.
        ``chosen_only``: only the chosen column of ``logging_pmf`` is known (rows
        must then sum to at most 1 instead of exactly 1). ``q_hat``: fixed external
        reward predictions (n, A) (see :meth:`with_q_hat`)."""
        r = np.asarray(reward, dtype=np.float64)
        if r.ndim != 1:
            raise EstimatorError("reward must be one-dimensional", field="reward")
        n = r.shape[0]
        if n == 0:
            raise EstimatorError("the log has no events", field="reward")
        if not np.isfinite(r).all():
            raise EstimatorError("reward contains NaN or infinity", field="reward")
        mu = np.asarray(logging_pmf, dtype=np.float64)
        if mu.ndim != 2 or mu.shape[0] != n:
            raise EstimatorError(f"logging_pmf must be (n={n}, A), got {mu.shape}", field="logging_pmf")
        width = mu.shape[1]
        # no mask: one read-only row of True broadcast over the events (no (n, A) array)
        m = np.broadcast_to(np.ones(width, dtype=bool), mu.shape) if mask is None else np.asarray(mask, dtype=bool)
        if m.shape != mu.shape:
            raise EstimatorError(f"mask must be {mu.shape}, got {m.shape}", field="mask")
        _check_pmf(mu, m, "logging_pmf", partial=chosen_only)
        c = np.asarray(chosen)
        if c.shape != (n,) or not np.issubdtype(c.dtype, np.integer):
            raise EstimatorError(f"chosen must be ({n},) integers", field="chosen")
        c = c.astype(np.int64)
        if c.min() < 0 or c.max() >= width:
            raise EstimatorError("chosen index outside the candidate set", field="chosen")
        chosen_mu = np.take(mu.reshape(-1), np.arange(n) * width + c) if mu.flags.c_contiguous else mu[np.arange(n), c]
        if not (chosen_mu > 0).all():
            raise EstimatorError("a chosen action has logged probability 0", field="logging_pmf")
        if codes is None:
            if mask is None:
                k = np.broadcast_to(np.arange(width, dtype=np.int64), mu.shape)  # column j is action j
            else:
                k = np.where(m, np.arange(width)[None, :], -1).astype(np.int64)
            n_codes = width
        else:
            k = np.asarray(codes, dtype=np.int64)
            if k.shape != mu.shape:
                raise EstimatorError(f"codes must be {mu.shape}, got {k.shape}", field="codes")
            n_codes = int(k.max()) + 1 if k.size else 0
        x = np.zeros((n, 0)) if features is None else np.asarray(features, dtype=np.float64)
        if x.ndim == 1:
            x = x[:, None]
        if x.ndim != 2 or x.shape[0] != n:
            raise EstimatorError(f"features must be (n={n}, d), got {x.shape}", field="features")
        if not np.isfinite(x).all():
            raise EstimatorError("features contain NaN or infinity", field="features")
        data = cls(r, c, mu, m, k, n_codes, x, bool(chosen_only))
        return data if q_hat is None else data.with_q_hat(q_hat)


def _one_row(array: np.ndarray) -> bool:
    """A 2-D array that is one row broadcast over the events (stride 0 between rows)."""
    return array.ndim == 2 and array.shape[0] > 0 and array.strides[0] == 0


def _check_pmf(
    pmf: np.ndarray, mask: np.ndarray, name: str, full: bool | None = None, partial: bool = False
) -> None:
    """Finite, non-negative, no mass on padding, rows summing to 1 (to at most 1 when ``partial``)."""
    # row sums (NaN and inf propagate into them; einsum is 3x faster than sum(axis=1) over
    # short rows, and single-threaded unlike a BLAS matvec) and the minimum, both from one
    # block of rows while it is in cache: one pass over memory instead of two
    n = pmf.shape[0]
    sums = np.empty(n)
    low = math.inf
    rows = _ROWS_PER_BLOCK
    for start in range(0, n, rows):
        block = pmf[start : start + rows]
        np.einsum("ij->i", block, out=sums[start : start + rows])
        if block.size:
            low = min(low, float(block.min()))
    if not np.isfinite(sums).all():
        raise EstimatorError(f"{name} contains NaN or infinity", field=name)
    if low < 0:
        raise EstimatorError(f"{name} has negative probabilities (negative weights)", field=name)
    if full is None:
        full = bool((mask[0] if _one_row(mask) else mask).all())
    if not full and (pmf[~mask] != 0).any():
        raise EstimatorError(f"{name} puts mass on padding (no candidate there)", field=name)
    if partial:
        bad = np.flatnonzero(sums > 1.0 + _PMF_TOLERANCE)
        if bad.size:
            raise EstimatorError(
                f"{name} rows must sum to at most 1; row {int(bad[0])} sums to {sums[bad[0]]:.6g}", field=name
            )
        return
    bad = np.flatnonzero(np.abs(sums - 1.0) > _PMF_TOLERANCE)
    if bad.size:
        raise EstimatorError(
            f"{name} rows must sum to 1; row {int(bad[0])} sums to {sums[bad[0]]:.6g}", field=name
        )


def action_codes(action_ids: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, list[object]]:
    """(n, A) integer code per distinct action id (-1 on padding) and the ids by code."""
    n, width = action_ids.shape
    codes = np.full((n, width), -1, dtype=np.int64)
    if n == 0:
        return codes, []
    first = action_ids[0]
    if mask.all() and len(set(first.tolist())) == width and (action_ids == first).all():
        # fast path: one fixed catalog in one order (the usual slot log)
        codes[:] = np.arange(width)
        return codes, first.tolist()
    index: dict[object, int] = {}
    flat = action_ids[mask].tolist()
    codes[mask] = [index.setdefault(a, len(index)) for a in flat]
    return codes, list(index)


def _check_target(data: EventData, target_pmf: np.ndarray) -> np.ndarray:
    pi = np.asarray(target_pmf, dtype=np.float64)
    if pi.shape != data.logging_pmf.shape:
        raise EstimatorError(
            f"target_pmf must have the log's shape {data.logging_pmf.shape}, got {pi.shape}",
            field="target_pmf",
        )
    _check_pmf(pi, data.mask, "target_pmf", data.full)
    return pi


def _check_reward_range(reward_range: tuple[float, float]) -> tuple[float, float]:
    lo, hi = (float(v) for v in reward_range)
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise EstimatorError(f"reward_range must be finite with low < high, got {reward_range!r}", field="reward_range")
    return lo, hi


def _weights(data: EventData, pi: np.ndarray) -> np.ndarray:
    # w_i = pi(a_i | x_i) / mu(a_i | x_i)
    return cast(np.ndarray, data.at_chosen(pi) / data.propensity)


def _max_weight_bound(data: EventData, pi: np.ndarray) -> float:
    """max over events and candidates of pi / mu: an a-priori bound on w."""
    if data.chosen_only:
        raise EstimatorError(
            "an a-priori weight bound (max pi / mu over every candidate, which bernstein needs) requires the "
            "whole logging pmf, and this log knows only the chosen propensity (EventData.chosen_only): "
            "use interval='normal' or 'bootstrap'",
            field="logging_pmf",
        )
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(data.logging_pmf > 0, pi / np.where(data.logging_pmf > 0, data.logging_pmf, 1.0), 0.0)
    return float(ratio.max())


# --------------------------------------------------------------------------- reward models


class FittedRewardModel(Protocol):
    """A reward model after ``fit``."""

    def predict(self, features: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """(n, A) predicted rewards of the candidates ``codes`` (n, A), 0 where code is -1."""
        ...


class RewardModel(Protocol):
    """Hyper-parameters of a reward model; ``fit`` returns an immutable fitted model."""

    def fit(
        self,
        features: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray,
        n_codes: int,
        sample_weight: np.ndarray | None = None,
    ) -> FittedRewardModel: ...


@dataclass(frozen=True)
class RidgeRewardModel:
    """Per-action ridge regression on [1, features], shrunk towards the pooled mean.

    q(x, a) = rbar + phi(x)^T beta_a, phi(x) = [1, x],
    beta_a = (Phi_a^T S_a Phi_a + alpha I)^{-1} Phi_a^T S_a (r_a - rbar)
    (S the sample weights). With no features this is the per-action mean
    shrunk towards the pooled mean by ``alpha`` pseudo-events; with one-hot
    context buckets as features it is a per-(action, bucket) model. Actions
    never chosen get rbar.
    """

    alpha: float = 1.0
    """Ridge penalty, in units of pseudo-events; 0 gives least squares."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.alpha) and self.alpha >= 0):
            raise EstimatorError("alpha must be finite and >= 0", field="alpha")

    def fit(
        self,
        features: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray,
        n_codes: int,
        sample_weight: np.ndarray | None = None,
    ) -> FittedRidge:
        groups = np.zeros(rewards.shape[0], dtype=np.int64)
        return self._solve(*_ridge_stats(features, actions, rewards, n_codes, groups, 1, sample_weight), 0)

    def fit_folds(
        self,
        features: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray,
        n_codes: int,
        fold: np.ndarray,
        n_folds: int,
        sample_weight: np.ndarray | None = None,
    ) -> list[FittedRidge]:
        """One model per fold k, fitted without fold k: sufficient statistics are
        summed per fold once and each model uses total - fold k (cross-fitting in one pass)."""
        stats = _ridge_stats(features, actions, rewards, n_codes, fold, n_folds, sample_weight)
        return [self._solve(*stats, k) for k in range(n_folds)]

    def _solve(
        self, total_s: np.ndarray, total_sr: np.ndarray, s_phi: np.ndarray, s_phir: np.ndarray,
        s_phiphi: np.ndarray, leave_out: int,
    ) -> FittedRidge:
        # statistics of everything except group ``leave_out`` (no group is left out when there is one)
        def out(x: np.ndarray) -> np.ndarray:
            return cast(np.ndarray, x.sum(axis=0) - x[leave_out] if x.shape[0] > 1 else x[0])

        total, sr, sphi, sphir, gram = out(total_s), out(total_sr), out(s_phi), out(s_phir), out(s_phiphi)
        n_codes, p = sphi.shape
        base = float(sr / total) if total > 0 else 0.0
        rhs = sphir - base * sphi  # Phi_a^T S (r - rbar)
        gram = gram + self.alpha * np.eye(p)
        empty = gram.reshape(n_codes, -1).max(axis=1) <= 0  # alpha = 0 and never chosen
        gram[empty] = np.eye(p)
        try:
            coef = np.linalg.solve(gram, rhs[:, :, None])[:, :, 0]
        except np.linalg.LinAlgError:
            coef = np.einsum("kij,kj->ki", np.linalg.pinv(gram), rhs)
        return FittedRidge(base=base, coef=coef, gram=gram)


def _ridge_stats(
    features: np.ndarray, actions: np.ndarray, rewards: np.ndarray, n_codes: int,
    groups: np.ndarray, n_groups: int, sample_weight: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Weighted sufficient statistics per (group, action): sum s, sum s r (per group),
    Phi^T S 1, Phi^T S r, Phi^T S Phi, with phi = [1, x]."""
    n = rewards.shape[0]
    s = np.ones(n) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    p = features.shape[1] + 1
    # s * phi_j (phi_j itself without sample weights: 1.0 * x == x exactly)
    cols = [s] + [features[:, j] if sample_weight is None else s * features[:, j] for j in range(p - 1)]
    key = groups * n_codes + actions
    size = n_groups * n_codes
    sphi = np.empty((size, p))
    sphir = np.empty((size, p))
    gram = np.empty((size, p, p))
    phi = [None] + [features[:, j] for j in range(p - 1)]
    for j in range(p):
        sphi[:, j] = np.bincount(key, weights=cols[j], minlength=size)
        sphir[:, j] = np.bincount(key, weights=cols[j] * rewards, minlength=size)
        for k in range(j, p):
            gram[:, j, k] = gram[:, k, j] = (
                sphi[:, j] if k == 0 else np.bincount(key, weights=cols[j] * phi[k], minlength=size)
            )
    total_s = np.bincount(groups, weights=s, minlength=n_groups)
    total_sr = np.bincount(groups, weights=s * rewards, minlength=n_groups)
    return (
        total_s, total_sr, sphi.reshape(n_groups, n_codes, p), sphir.reshape(n_groups, n_codes, p),
        gram.reshape(n_groups, n_codes, p, p),
    )


@dataclass(frozen=True, eq=False)
class FittedRidge:
    """A fitted :class:`RidgeRewardModel`: pooled mean, (K, p) coefficients, (K, p, p) Gram."""

    base: float
    coef: np.ndarray
    gram: np.ndarray

    @cached_property
    def linear(self) -> np.ndarray:
        """(K, p) C with q(x, a) = phi(x)^T C_a: the pooled mean folded into the intercepts."""
        c = self.coef.copy()
        c[:, 0] += self.base
        return c

    def predict(self, features: np.ndarray, codes: np.ndarray) -> np.ndarray:
        n = features.shape[0]
        k = self.coef.shape[0]
        by_code = self.base + self.coef[:, 0][None, :]  # (1, K): intercepts
        if features.shape[1]:
            by_code = by_code + features @ self.coef[:, 1:].T  # (n, K)
        same_rows = codes.strides[0] == 0 or bool((codes == codes[:1]).all())
        if codes.shape[1] == k and (codes[:1] == np.arange(k)).all() and same_rows:
            return np.broadcast_to(by_code, codes.shape).copy()  # same catalog in every row
        valid = codes >= 0
        pred = np.take_along_axis(np.broadcast_to(by_code, (n, k)), np.where(valid, codes, 0), axis=1)
        return np.where(valid, pred, 0.0)

    def influence(
        self, data: EventData, pi: np.ndarray, q_chosen: np.ndarray, g: np.ndarray | None = None
    ) -> np.ndarray:
        """First-order influence of the model fit on DM = mean_i sum_j pi_ij q_ij.

        DM = rbar + sum_a G_a^T beta_a with G_a = (1/n) sum_i pi_ia phi_i. Perturbing
        event i (action a_i) moves beta_{a_i} by n M^{-1} phi_i (r_i - q_i) and rbar by
        (r_i - rbar), which moves every beta_a by -M_a^{-1} Phi_a^T 1 (r_i - rbar).
        Returns c (r_i - rbar) + omega_i (r_i - q_i) with omega_i = n phi_i^T M_{a_i}^{-1} G_{a_i}
        and c = 1 - sum_a G_a^T M_a^{-1} Phi_a^T 1 (0 for least squares with an intercept).
        ``g``: n G (K, p) when already computed (same catalog: pi^T Phi).
        """
        n = data.n
        k = self.coef.shape[0]
        phi = data.design
        p = phi.shape[1]
        a = data.chosen_codes
        if g is not None:
            g = g / n
        elif data.same_catalog:
            g = (pi.T @ phi) / n  # G_a = (1/n) sum_i pi_ia phi_i
        else:
            valid = data.codes >= 0
            flat_codes = data.codes[valid]
            g = np.empty((k, p))
            for j in range(p):
                g[:, j] = np.bincount(flat_codes, weights=(pi * phi[:, j : j + 1])[valid], minlength=k) / n
        col_sum = np.empty((k, p))  # Phi_a^T 1
        for j in range(p):
            col_sum[:, j] = np.bincount(a, weights=phi[:, j], minlength=k)
        h = np.linalg.solve(self.gram, g[:, :, None])[:, :, 0]  # M_a^{-1} G_a (M symmetric)
        omega = n * np.einsum("np,np->n", phi, h[a])
        c = 1.0 - float(np.einsum("kp,kp->", h, col_sum))
        return cast(np.ndarray, c * (data.reward - self.base) + omega * (data.reward - q_chosen))


# --------------------------------------------------------------------------- estimators


@dataclass(frozen=True, eq=False)
class Contributions:
    """Per-event contributions (mean = estimate) and what the intervals need.

    Attributes:
        values: (n,) contributions.
        bounds: a-priori range of every contribution (for Bernstein), or None.
        ratio: for ratio estimators, (numerator, denominator) columns with
            V = mean(num) / mean(den), and their a-priori ranges.
    """

    values: np.ndarray
    bounds: tuple[float, float] | None = None
    ratio: tuple[np.ndarray, np.ndarray, tuple[float, float], tuple[float, float]] | None = None
    weights: np.ndarray | None = None
    """The importance weights w_i when the estimator computed them (saves diagnose a pass)."""
    details: tuple[tuple[str, float | str], ...] = ()
    """Estimator-specific diagnostics (the chosen threshold, the mean shrunk weight...)."""


class Estimator(Protocol):
    @property
    def name(self) -> str: ...

    def contributions(
        self, data: EventData, pi: np.ndarray, reward_range: tuple[float, float], seed: int, bounds: bool = False
    ) -> Contributions: ...

    def refit_replicates(
        self, data: EventData, pi: np.ndarray, n_resamples: int, seed: int
    ) -> np.ndarray | None:
        """Bootstrap replicates with the reward model refitted, or None if no model."""
        ...


class _NoModel:
    def refit_replicates(
        self, data: EventData, pi: np.ndarray, n_resamples: int, seed: int
    ) -> np.ndarray | None:
        return None


@dataclass(frozen=True)
class IPS(_NoModel):
    """Inverse propensity scoring: c_i = w_i r_i (Horvitz & Thompson 1952). Unbiased
    when the logger gives positive probability wherever the target does.

    ``clip`` < inf gives clipped IPS, c_i = min(w_i, clip) r_i (Ionides 2008; obp's
    ``InverseProbabilityWeighting(lambda_=...)``): bounded variance, biased towards 0
    by E[(w - clip)^+ r]. :class:`Slope` chooses ``clip`` from the data."""

    clip: float = math.inf
    """Largest weight kept (> 0); inf: plain IPS."""
    name: str = "ips"

    def __post_init__(self) -> None:
        if not float(self.clip) > 0:
            raise EstimatorError(f"clip must be > 0, got {self.clip!r}", field="clip")

    def contributions(
        self, data: EventData, pi: np.ndarray, reward_range: tuple[float, float], seed: int, bounds: bool = False
    ) -> Contributions:
        w = _weights(data, pi)
        kept = w if math.isinf(self.clip) else np.minimum(w, self.clip)
        if not bounds:
            return Contributions(kept * data.reward, weights=w)
        w_max = min(_max_weight_bound(data, pi), float(self.clip))
        lo, hi = reward_range
        return Contributions(kept * data.reward, (min(0.0, w_max * lo), max(0.0, w_max * hi)), weights=w)


@dataclass(frozen=True)
class SubGaussianIPS(_NoModel):
    r"""Sub-Gaussian IPS (Metelli, Russo & Restelli 2021, "Subgaussian and differentiable
    importance sampling for off-policy evaluation and learning", NeurIPS; obp's
    ``SubGaussianInverseProbabilityWeighting``): the weight replaced by its harmonic
    smoothing with 1,

        c_i = w_i / (1 - lambda + lambda w_i) r_i,        lambda in [0, 1]

    (0: IPS; 1: every weight 1, the logged mean). The smoothed weight is at most
    1 / lambda, so for lambda > 0 the estimator has sub-Gaussian tails with a proxy
    that shrinks as lambda ~ 1/sqrt(n) (their Theorem 4.1 picks lambda from the
    2-Renyi divergence of target and logger and the confidence wanted). Biased for
    lambda > 0: weights above 1 are pulled down and weights below 1 pulled up. The
    intervals here (normal, bootstrap, bernstein with the range [0, w_max / (1 - lambda
    + lambda w_max)] x rewards) are centred on the smoothed estimate and do not
    include that bias (``tests/analysis/test_robust_estimators.py`` measures it).
    """

    smoothing: float
    """lambda in [0, 1]."""
    name: str = "sg_ips"

    def __post_init__(self) -> None:
        lam = float(self.smoothing)
        if not 0.0 <= lam <= 1.0:
            raise EstimatorError(f"smoothing must be in [0, 1], got {self.smoothing!r}", field="smoothing")

    def contributions(
        self, data: EventData, pi: np.ndarray, reward_range: tuple[float, float], seed: int, bounds: bool = False
    ) -> Contributions:
        w = _weights(data, pi)
        smoothed = _harmonic(w, float(self.smoothing))
        details = (("mean_smoothed_weight", float(smoothed.mean())),)
        if not bounds:
            return Contributions(smoothed * data.reward, weights=w, details=details)
        h_max = float(_harmonic(np.array([_max_weight_bound(data, pi)]), float(self.smoothing))[0])
        lo, hi = reward_range
        return Contributions(smoothed * data.reward, (min(0.0, h_max * lo), max(0.0, h_max * hi)), weights=w,
                             details=details)


def _harmonic(w: np.ndarray, lam: float) -> np.ndarray:
    # eq. (6) in Metelli et al. 2021: w_lambda = w / ((1 - lambda) + lambda w), increasing in w
    return cast(np.ndarray, w / ((1.0 - lam) + lam * w))


@dataclass(frozen=True)
class SNIPS(_NoModel):
    """Self-normalised IPS: V = sum w r / sum w (Swaminathan & Joachims 2015).
    Biased by O(1/n), always inside the reward range, lower variance than IPS."""

    name: str = "snips"

    def contributions(
        self, data: EventData, pi: np.ndarray, reward_range: tuple[float, float], seed: int, bounds: bool = False
    ) -> Contributions:
        w = _weights(data, pi)
        w_max = _max_weight_bound(data, pi) if bounds else math.nan
        return _ratio_contributions(w, data.reward, w_max, reward_range, weights=w)


def _ratio_contributions(
    den: np.ndarray, reward: np.ndarray, den_max: float, reward_range: tuple[float, float],
    weights: np.ndarray | None = None,
) -> Contributions:
    lo, hi = reward_range
    mean_den = float(den.mean())
    num = den * reward
    if mean_den <= 0:
        values = np.full(den.shape, np.nan)
    else:
        value = float(num.sum() / den.sum())
        # delta method: V + den_i (r_i - V) / mean(den); mean is exactly V
        values = value + den * (reward - value) / mean_den
    num_bounds = (min(0.0, den_max * lo), max(0.0, den_max * hi))
    return Contributions(values, None, (num, den, num_bounds, (0.0, den_max)), weights)


@dataclass(frozen=True)
class Replay(_NoModel):
    """Li et al.'s replay (2011): on uniformly logged data with a fixed number of
    candidates, keep events where the target's draw equals the logged choice and
    average their rewards. The draw is seeded; a one-hot target is deterministic."""

    name: str = "replay"

    def contributions(
        self, data: EventData, pi: np.ndarray, reward_range: tuple[float, float], seed: int, bounds: bool = False
    ) -> Contributions:
        if data.chosen_only:
            raise EstimatorError(
                "replay needs the whole (uniform) logging pmf; this log knows only the chosen propensity "
                "(EventData.chosen_only): use ips, snips or dr",
                field="logging_pmf",
            )
        mu = data.logging_pmf
        width = mu.shape[1]
        if data.full:  # max |mu - 1/A| from two reductions, no (n, A) temporary
            share = 1.0 / width
            off = max(float(mu.max()) - share, share - float(mu.min()))
        else:
            k = data.mask.sum(axis=1)
            if (k != k[0]).any():
                raise EstimatorError("replay needs the same number of candidates in every event", field="logging_pmf")
            off = float(np.abs(mu[data.mask] - 1.0 / k[0]).max())
        if off > _PMF_TOLERANCE:
            raise EstimatorError("replay needs uniformly logged data; use ips/snips/dr", field="logging_pmf")
        rng = np.random.default_rng(seed)
        u = rng.random(data.n)
        # The target's draw is the first column whose cumulative target mass exceeds
        # u_i sum_j pi_ij (clamped to the last column); it equals a_i exactly when
        # cdf_{a_i - 1} <= u < cdf_{a_i} (or a_i is the last column). Only those two
        # cdf entries per event are kept: cumsum in row blocks, no (n, A) array.
        below = np.full(data.n, -np.inf)
        at = np.empty(data.n)
        chosen = data.chosen
        for start in range(0, data.n, _ROWS_PER_BLOCK):
            stop = min(data.n, start + _ROWS_PER_BLOCK)
            cdf = np.cumsum(pi[start:stop], axis=1)
            rows = np.arange(stop - start)
            a = chosen[start:stop]
            u[start:stop] *= cdf[:, -1]
            at[start:stop] = cdf[rows, a]
            inner = a > 0
            below[start:stop][inner] = cdf[rows[inner], a[inner] - 1]
        match = ((below <= u) & ((u < at) | (chosen == width - 1))).astype(np.float64)
        if match.sum() == 0:
            raise EstimatorError("replay matched no event: the target never agrees with the log", field="target_pmf")
        return _ratio_contributions(match, data.reward, 1.0, reward_range)


def _check_model(model: RewardModel) -> None:
    if not callable(getattr(model, "fit", None)):
        raise EstimatorError("reward_model must have fit(features, actions, rewards, n_codes, sample_weight)", field="reward_model")


def _model_of(reward_model: RewardModel | None, data: EventData) -> RewardModel:
    """The reward model to fit (the ridge by default); refused beside a fixed ``q_hat``."""
    if data.q_hat is not None and reward_model is not None:
        raise EstimatorError(
            "both a reward model and q_hat were given: q_hat is the (fixed) reward model; pass one",
            field="q_hat",
        )
    model = RidgeRewardModel() if reward_model is None else reward_model
    _check_model(model)
    return model


def _fixed_terms(data: EventData, pi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """sum_j pi_ij q_ij and q_{i,a_i} with the fixed external predictions ``data.q_hat``."""
    q = cast(np.ndarray, data.q_hat)
    return cast(np.ndarray, np.einsum("ij,ij->i", pi, q)), data.at_chosen(q)


@dataclass(frozen=True)
class DirectMethod:
    """DM: V = mean_i sum_j pi_ij q(x_i, j) with q fitted on the whole log.

    Contributions add the model's influence function (see the module docstring)
    so that the normal interval includes the model's own uncertainty; needs a
    fitted model with ``influence`` (the built-in ridge has it). The bootstrap
    refits the model on each resample.

    With a fixed external model (``EventData.q_hat``) the contributions are the
    plug-in values sum_j pi_ij q_ij alone, and every interval is conditional on
    the model (it has no error to propagate: it is taken as known); the
    contributions then lie a priori in [min q, max q], so ``bernstein`` applies.
    """

    reward_model: RewardModel | None = None
    """None: :class:`RidgeRewardModel` () (or the log's ``q_hat`` when it has one)."""
    name: str = "dm"

    def contributions(
        self, data: EventData, pi: np.ndarray, reward_range: tuple[float, float], seed: int, bounds: bool = False
    ) -> Contributions:
        model = _model_of(self.reward_model, data)
        if data.q_hat is not None:
            return Contributions(_fixed_terms(data, pi)[0], data.q_hat_range if bounds else None)
        fitted = _fit_whole(model, data)
        influence = getattr(fitted, "influence", None)
        if influence is None:
            raise EstimatorError(
                "this reward model has no influence(); DM's normal interval would ignore its "
                "uncertainty: use interval='bootstrap'",
                field="reward_model",
            )
        plug, q_chosen, g = _model_terms(data, pi, [fitted], None, with_g=True, key=("fit", model))
        if g is not None:
            return Contributions(plug + influence(data, pi, q_chosen, g), None)
        return Contributions(plug + influence(data, pi, q_chosen), None)

    def plug_in(self, data: EventData, pi: np.ndarray) -> np.ndarray:
        """OBP's DM contributions: sum_j pi_ij q_ij with the model held fixed."""
        if data.q_hat is not None:
            return _fixed_terms(data, pi)[0]
        return _model_terms(data, pi, [_fit_whole(_model_of(self.reward_model, data), data)], None)[0]

    def refit_replicates(
        self, data: EventData, pi: np.ndarray, n_resamples: int, seed: int
    ) -> np.ndarray | None:
        model = _model_of(self.reward_model, data)
        if data.q_hat is not None:
            return None  # a fixed model: nothing to refit
        rng = np.random.default_rng(seed)
        out = np.empty(n_resamples)
        actions = data.chosen_codes
        for b in range(n_resamples):
            s = rng.poisson(1.0, data.n).astype(np.float64)
            fitted = model.fit(data.features, actions, data.reward, data.n_codes, s)
            plug = _model_terms(data, pi, [fitted], None)[0]
            out[b] = (s @ plug) / max(s.sum(), 1.0)
        return out


def _folds(n: int, n_folds: int, seed: int) -> np.ndarray:
    if n_folds < 2:
        raise EstimatorError("n_folds must be at least 2 (cross-fitting)", field="n_folds")
    if n < n_folds:
        raise EstimatorError(f"cross-fitting needs at least n_folds={n_folds} events", field="n_folds")
    return np.random.default_rng(seed).permutation(n) % n_folds


def _memoised(data: EventData, key: tuple[object, ...], make: Callable[[], T]) -> T:
    """``make()`` once per (log, key); unhashable keys (a model without __hash__) are not cached."""
    try:
        hit = data.memo.get(key)
    except TypeError:
        return make()
    if hit is None:
        hit = data.memo[key] = make()
    return cast(T, hit)


def _fit_whole(model: RewardModel, data: EventData) -> FittedRewardModel:
    """The model fitted on the whole log, once per (log, model)."""
    return _memoised(
        data, ("fit", model), lambda: model.fit(data.features, data.chosen_codes, data.reward, data.n_codes)
    )


def _fit_folds(
    model: RewardModel, data: EventData, fold: np.ndarray, n_folds: int, s: np.ndarray | None = None
) -> list[FittedRewardModel]:
    """Model k fitted without fold k."""
    actions = data.chosen_codes
    fit_folds = getattr(model, "fit_folds", None)
    if fit_folds is not None:
        return cast(list[FittedRewardModel], fit_folds(data.features, actions, data.reward, data.n_codes, fold, n_folds, s))
    base = np.ones(data.n) if s is None else s
    return [
        model.fit(data.features, actions, data.reward, data.n_codes, np.where(fold == k, 0.0, base))
        for k in range(n_folds)
    ]


def _cross_fitted(
    model: RewardModel, data: EventData, n_folds: int, seed: int
) -> tuple[np.ndarray, list[FittedRewardModel]]:
    """Folds and the cross-fitted models, once per (log, model, n_folds, seed): DR and
    switch-DR (and every target policy evaluated on the same log) share them."""
    fold = _memoised(data, ("folds", n_folds, seed), lambda: _folds(data.n, n_folds, seed))
    models = _memoised(data, ("cross_fit", model, n_folds, seed), lambda: _fit_folds(model, data, fold, n_folds))
    return fold, models


_ROWS_PER_BLOCK = 8192  # events per block: a (block, A) slice of pi stays in cache
# OpenBLAS runs a product on one thread when m * n * k < 65536 * 4 (interface/gemm.c). Products
# in a loop are kept below that: on a loaded machine its threads wait for each other at every
# call (measured: DR 0.22 s single-threaded, 0.5 to 1.3 s threaded, on 2 busy cores).
_ONE_THREAD_FLOPS = 262_143


def _block_rows(columns: int) -> int:
    """Rows per block for products of (rows, columns) work: in cache, and on one BLAS thread."""
    return max(64, min(_ROWS_PER_BLOCK, _ONE_THREAD_FLOPS // max(columns, 1)))


def _model_terms(
    data: EventData, pi: np.ndarray, models: Sequence[FittedRewardModel], fold: np.ndarray | None,
    with_g: bool = False, key: tuple[object, ...] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """sum_j pi_ij q_ij and q_{i,a_i} (n,) with q of event i from ``models[fold[i]]``
    (``models[0]`` when ``fold`` is None), and pi^T Phi (A, p) when ``with_g`` and the log
    has one catalog.

    Linear models on one catalog (the ridge: q_ij = phi_i^T C_j) need no (n, A)
    prediction array: sum_j pi_ij q_ij = sum_l phi_il (pi_i^T C_{k(i)})_l, so one BLAS
    product of each block of pi with the stacked (A, K p) coefficients of every fold
    model gives every event's value for every fold; each event keeps its own fold's.
    Otherwise the models' ``predict`` fills (n, A) predictions. ``key``: the memo key of
    ``models`` on ``data``; q_{i,a_i} does not depend on pi and is then computed once.
    """
    k = len(models)
    which = np.zeros(data.n, dtype=np.int64) if fold is None else fold
    linear = [getattr(m, "linear", None) for m in models]
    if data.same_catalog and all(isinstance(c, np.ndarray) for c in linear):
        coefs = np.stack(cast(list[np.ndarray], linear))  # (K, A, p)
        width, p = coefs.shape[1], coefs.shape[2]
        stacked = coefs.transpose(1, 0, 2).reshape(width, k * p)  # (A, K p)
        phi = data.design
        plug = np.empty(data.n)
        g = np.zeros((width, p)) if with_g else None
        rows = _block_rows(width * k * p)
        pick = data.rows * k + which  # row i * K + fold of i in the flat (rows K, p) products
        for start in range(0, data.n, rows):
            stop = min(data.n, start + rows)
            block = pi[start:stop]
            by_fold = (block @ stacked).reshape(-1, p)  # pi_i^T C_k for every k: rows (i, k)
            mine = by_fold if k == 1 else np.take(by_fold, pick[start:stop] - start * k, axis=0)
            plug[start:stop] = np.einsum("np,np->n", mine, phi[start:stop])
            if g is not None:
                g += block.T @ phi[start:stop]  # sum_i pi_ia phi_i
        def chosen_terms() -> np.ndarray:  # q_{i,a_i} = phi_i^T C_{k(i), a_i}
            at = np.take(coefs.reshape(k * width, p), which * width + data.chosen_codes, axis=0)
            return cast(np.ndarray, np.einsum("np,np->n", at, phi))
        q_chosen = chosen_terms() if key is None else _memoised(data, ("q_chosen", *key), chosen_terms)
        return plug, q_chosen, g
    q = _predictions(data, models, which)
    return cast(np.ndarray, (pi * q).sum(axis=1)), data.at_chosen(q), None


def _predictions(data: EventData, models: Sequence[FittedRewardModel], fold: np.ndarray) -> np.ndarray:
    """(n, A) predictions; events in fold k predicted by ``models[k]``."""
    if len(models) == 1:
        return models[0].predict(data.features, data.codes)
    q = np.empty(data.logging_pmf.shape)
    for k, fitted in enumerate(models):
        inside = np.flatnonzero(fold == k)
        codes = (
            np.broadcast_to(data.codes[0], (inside.size, data.codes.shape[1]))
            if data.same_catalog
            else data.codes[inside]
        )
        q[inside] = fitted.predict(data.features[inside], codes)
    return q


@dataclass(frozen=True, eq=False)
class _ModelTerms:
    """What every model-corrected estimator reads: the plug-in sum_j pi_ij q_ij, q_{i,a_i},
    the importance weights w_i, and (when bounds are wanted) the a-priori range of q."""

    plug: np.ndarray
    q_chosen: np.ndarray
    w: np.ndarray
    q_range: tuple[float, float] | None = None


class _Corrected:
    """The doubly robust family: c_i = sum_j pi_ij q_ij + h(w_i) (r_i - q_{i,a_i}) with a
    weight transform h (identity for DR, a cut for switch-DR, a shrinkage for DRos and
    sub-Gaussian DR), q cross-fitted (``n_folds``) or the log's fixed ``q_hat``.

    A subclass is a frozen dataclass with ``reward_model``, ``n_folds`` and ``name``,
    and defines ``_shrunk(w)`` = h(w) and ``_shrunk_max(w_max)`` = max of h on [0, w_max]
    (for the a-priori contribution range of ``bernstein``).
    """

    reward_model: RewardModel | None
    n_folds: int
    name: str

    def _shrunk(self, w: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _shrunk_max(self, w_max: float) -> float:
        raise NotImplementedError

    def _terms(self, data: EventData, pi: np.ndarray, seed: int, bounds: bool) -> _ModelTerms:
        model = _model_of(self.reward_model, data)
        w = _weights(data, pi)
        if data.q_hat is not None:
            plug, q_chosen = _fixed_terms(data, pi)
            return _ModelTerms(plug, q_chosen, w, data.q_hat_range if bounds else None)
        fold, models = _cross_fitted(model, data, self.n_folds, seed)
        plug, q_chosen, _ = _model_terms(data, pi, models, fold, key=("cross_fit", model, self.n_folds, seed))
        q_range = None
        if bounds:
            qv = _predictions(data, models, fold)[data.mask]
            q_range = (float(qv.min()), float(qv.max()))
        return _ModelTerms(plug, q_chosen, w, q_range)

    def _combine(self, data: EventData, t: _ModelTerms) -> np.ndarray:
        """(n,) contributions from the terms."""
        return cast(np.ndarray, t.plug + self._shrunk(t.w) * (data.reward - t.q_chosen))

    def _replicate(self, data: EventData, t: _ModelTerms, s: np.ndarray) -> float:
        """The estimate on a Poisson(1)-weighted resample ``s`` (models refitted on it)."""
        return float((s @ self._combine(data, t)) / max(s.sum(), 1.0))

    def contributions(
        self, data: EventData, pi: np.ndarray, reward_range: tuple[float, float], seed: int, bounds: bool = False
    ) -> Contributions:
        t = self._terms(data, pi, seed, bounds)
        values = self._combine(data, t)
        details = self._details(t)
        if not bounds or t.q_range is None:
            return Contributions(values, weights=t.w, details=details)
        lo, hi = reward_range
        q_lo, q_hi = t.q_range
        h_max = self._shrunk_max(_max_weight_bound(data, pi))
        # c_i = plug_i + h_i (r_i - q_i), plug_i in [q_lo, q_hi], h_i in [0, h_max], r_i in [lo, hi]
        span = (q_lo + min(0.0, h_max * (lo - q_hi)), q_hi + max(0.0, h_max * (hi - q_lo)))
        return Contributions(values, span, weights=t.w, details=details)

    def _details(self, t: _ModelTerms) -> tuple[tuple[str, float | str], ...]:
        return (("mean_shrunk_weight", float(self._shrunk(t.w).mean())),)

    def refit_replicates(
        self, data: EventData, pi: np.ndarray, n_resamples: int, seed: int
    ) -> np.ndarray | None:
        model = _model_of(self.reward_model, data)
        if data.q_hat is not None:
            return None  # a fixed model: nothing to refit
        rng = np.random.default_rng(seed)
        fold = _folds(data.n, self.n_folds, seed)
        w = _weights(data, pi)
        out = np.empty(n_resamples)
        for b in range(n_resamples):
            s = rng.poisson(1.0, data.n).astype(np.float64)
            models = _fit_folds(model, data, fold, self.n_folds, s)
            plug, q_chosen, _ = _model_terms(data, pi, models, fold)
            out[b] = self._replicate(data, _ModelTerms(plug, q_chosen, w), s)
        return out


def _check_folds(n_folds: int) -> None:
    if not isinstance(n_folds, int | np.integer) or n_folds < 2:
        raise EstimatorError("n_folds must be at least 2 (cross-fitting)", field="n_folds")


def _check_model_field(reward_model: RewardModel | None) -> None:
    if reward_model is not None:
        _check_model(reward_model)


@dataclass(frozen=True)
class DoublyRobust(_Corrected):
    """DR (Dudik, Langford & Li 2011) with a cross-fitted reward model:
    c_i = sum_j pi_ij q_ij + w_i (r_i - q_{i,a_i}). ``switch_tau`` < inf gives
    switch-DR (Wang, Agarwal & Dudik 2017): the correction is dropped where w_i > tau."""

    reward_model: RewardModel | None = None
    """None: :class:`RidgeRewardModel` () (or the log's ``q_hat`` when it has one)."""
    n_folds: int = 5
    switch_tau: float = math.inf
    name: str = "dr"

    def __post_init__(self) -> None:
        if not self.switch_tau > 0:
            raise EstimatorError("switch_tau must be > 0", field="switch_tau")
        _check_folds(self.n_folds)
        _check_model_field(self.reward_model)

    def _shrunk(self, w: np.ndarray) -> np.ndarray:
        return np.where(w <= self.switch_tau, w, 0.0)  # eq 5 in Wang et al. 2017: 1[w <= tau] w

    def _shrunk_max(self, w_max: float) -> float:
        return min(w_max, self.switch_tau)

    def _details(self, t: _ModelTerms) -> tuple[tuple[str, float | str], ...]:
        if math.isinf(self.switch_tau):
            return ()
        return (("switched_off_share", float((t.w > self.switch_tau).mean())),)


def SwitchDR(reward_model: RewardModel | None = None, n_folds: int = 5, switch_tau: float = 20.0) -> DoublyRobust:
    """Switch-DR (Wang, Agarwal & Dudik 2017) with threshold ``switch_tau`` on w."""
    return DoublyRobust(reward_model, n_folds, switch_tau, "switch_dr")


@dataclass(frozen=True)
class DRos(_Corrected):
    r"""DR with optimistic shrinkage (Su, Dimakopoulou, Krishnamurthy & Dudik 2020, "Doubly
    robust off-policy evaluation with shrinkage", ICML; obp's ``DoublyRobustWithShrinkage``):

        c_i = sum_j pi_ij q_ij + h_lambda(w_i) (r_i - q_{i,a_i}),
        h_lambda(w) = lambda w / (w^2 + lambda)                     (their eq. 10)

    the weight that minimises a bound on the squared error of the correction term
    when the model's error is bounded; h <= w, h <= sqrt(lambda) / 2 (at w = sqrt(lambda)),
    so the correction's variance is bounded whatever the overlap. ``shrinkage`` = lambda:
    ``inf`` is DR, 0 is the plug-in DM with the model held fixed (obp's DM, without our
    DM's model-influence term). Biased for finite lambda when the model is wrong (towards
    DM's bias); the normal interval is centred on the shrunk estimate and does not
    include that bias. Chosen by the data when ``shrinkage`` comes from a tuner (none
    here yet: pass a number; Su et al. tune it by their MSE bound, SLOPE by Lepski's rule).
    """

    shrinkage: float
    """lambda >= 0 (``inf`` allowed: DR)."""
    reward_model: RewardModel | None = None
    """None: :class:`RidgeRewardModel` () (or the log's ``q_hat`` when it has one)."""
    n_folds: int = 5
    name: str = "dros"

    def __post_init__(self) -> None:
        lam = float(self.shrinkage)
        if math.isnan(lam) or lam < 0:
            raise EstimatorError(f"shrinkage must be >= 0 (inf for DR), got {self.shrinkage!r}", field="shrinkage")
        _check_folds(self.n_folds)
        _check_model_field(self.reward_model)

    def _shrunk(self, w: np.ndarray) -> np.ndarray:
        lam = float(self.shrinkage)
        if math.isinf(lam):
            return w
        if lam == 0:
            return np.zeros_like(w)
        return cast(np.ndarray, lam * w / (w * w + lam))  # eq. 10 in Su et al. 2020

    def _shrunk_max(self, w_max: float) -> float:
        lam = float(self.shrinkage)
        if math.isinf(lam):
            return w_max
        top = min(w_max, math.sqrt(lam))  # h increases on [0, sqrt(lambda)], then decreases
        return lam * top / (top * top + lam) if lam > 0 else 0.0


@dataclass(frozen=True)
class SNDR(_Corrected):
    r"""Self-normalised DR (Kallus & Uehara 2019; obp's ``SelfNormalizedDoublyRobust``):

        V = mean_i sum_j pi_ij q_ij + sum_i w_i (r_i - q_{i,a_i}) / sum_i w_i

    the DR correction self-normalised as SNIPS normalises IPS: always finite,
    bounded by the model's range plus the reward range, O(1/n) bias. obp's per-round
    values, plug_i + w_i (r_i - q_i) / mean(w), have this mean; the contributions here are
    its linearisation (delta method, as for SNIPS),

        c_i = plug_i + R + w_i (r_i - q_{i,a_i} - R) / mean(w),   R = sum w (r - q) / sum w,

    whose mean is exactly V and whose sample variance is the delta-method variance
    (obp's array counts the variation of mean(w) as none). No a-priori range
    (``bernstein`` is refused); ``normal`` and ``bootstrap`` work.
    """

    reward_model: RewardModel | None = None
    """None: :class:`RidgeRewardModel` () (or the log's ``q_hat`` when it has one)."""
    n_folds: int = 5
    name: str = "sndr"

    def __post_init__(self) -> None:
        _check_folds(self.n_folds)
        _check_model_field(self.reward_model)

    def _shrunk(self, w: np.ndarray) -> np.ndarray:
        return w

    def _shrunk_max(self, w_max: float) -> float:
        return w_max

    def _combine(self, data: EventData, t: _ModelTerms) -> np.ndarray:
        residual = data.reward - t.q_chosen
        mean_w = float(t.w.mean())
        if mean_w <= 0:
            return np.full(data.n, np.nan)  # no overlap: undefined (flagged no_overlap)
        ratio = float(t.w @ residual) / float(t.w.sum())
        return cast(np.ndarray, t.plug + ratio + t.w * (residual - ratio) / mean_w)

    def _replicate(self, data: EventData, t: _ModelTerms, s: np.ndarray) -> float:
        sw = s @ t.w
        if sw <= 0:
            return math.nan
        return float((s @ t.plug) / max(s.sum(), 1.0) + (s @ (t.w * (data.reward - t.q_chosen))) / sw)

    def contributions(
        self, data: EventData, pi: np.ndarray, reward_range: tuple[float, float], seed: int, bounds: bool = False
    ) -> Contributions:
        t = self._terms(data, pi, seed, False)
        return Contributions(self._combine(data, t), weights=t.w)


@dataclass(frozen=True)
class SubGaussianDR(_Corrected):
    r"""Sub-Gaussian DR (Metelli, Russo & Restelli 2021; obp's ``SubGaussianDoublyRobust``):
    DR with the harmonically smoothed weight of :class:`SubGaussianIPS`,

        c_i = sum_j pi_ij q_ij + w_i / (1 - lambda + lambda w_i) (r_i - q_{i,a_i}).

    0 is DR; biased for lambda > 0 where the model is wrong.
    """

    smoothing: float
    """lambda in [0, 1]."""
    reward_model: RewardModel | None = None
    """None: :class:`RidgeRewardModel` () (or the log's ``q_hat`` when it has one)."""
    n_folds: int = 5
    name: str = "sg_dr"

    def __post_init__(self) -> None:
        lam = float(self.smoothing)
        if not 0.0 <= lam <= 1.0:
            raise EstimatorError(f"smoothing must be in [0, 1], got {self.smoothing!r}", field="smoothing")
        _check_folds(self.n_folds)
        _check_model_field(self.reward_model)

    def _shrunk(self, w: np.ndarray) -> np.ndarray:
        return _harmonic(w, float(self.smoothing))

    def _shrunk_max(self, w_max: float) -> float:
        return float(_harmonic(np.array([w_max]), float(self.smoothing))[0])


def block_embedding(log: BanditLog, features: Sequence[str] | None = None) -> np.ndarray:
    """(n, A) int64 embedding codes from the candidates' block features: equal codes for
    candidates whose ``features`` (all of them when None) have equal values; -1 on padding.
    A block without a feature counts as its own value (None). Needs ``log.candidates``."""
    if not log.candidates:
        raise EstimatorError("block_embedding needs the log's candidates with their features", field="log")
    n, width = log.action_ids.shape
    codes = np.full((n, width), -1, dtype=np.int64)
    index: dict[tuple[object, ...], int] = {}
    for i, row in enumerate(log.candidates):
        for j, candidate in enumerate(row[:width]):
            values = candidate.features
            names = sorted(values) if features is None else list(features)
            key = tuple((name, values.get(name)) for name in names)
            codes[i, j] = index.setdefault(key, len(index))
    return np.where(log.action_mask, codes, -1)


@dataclass(frozen=True)
class MIPS(_NoModel):
    r"""Marginalised IPS over action embeddings (Saito & Joachims 2022, "Off-policy
    evaluation for large action spaces via embeddings", ICML):

        w(x, e) = p(e | x, pi) / p(e | x, mu) = sum_{j: e_j = e} pi_ij / sum_{j: e_j = e} mu_ij,
        c_i = w(x_i, e_{i,a_i}) r_i

    with the embedding a deterministic function of the block (``EventData.embedding``:
    :func:`block_embedding` of block features such as ``category``), so p(e | x, a) is
    exact and the marginal weights need no model. Unbiased when every embedding the
    target reaches has logged mass (common embedding support: weaker than common action
    support) and the reward depends on the block only through its embedding ("no direct
    effect", their Assumption 2.2); biased otherwise, by the direct effect. Its weights
    are never larger than the action weights' maximum and usually far more even: the
    variance of IPS falls with the number of blocks per embedding. ``Diagnostics`` are
    those of the marginal weights; ``details`` adds the action-level ESS
    (``action_ess``) and the number of distinct embeddings. Needs the whole logging pmf.
    """

    name: str = "mips"

    def contributions(
        self, data: EventData, pi: np.ndarray, reward_range: tuple[float, float], seed: int, bounds: bool = False
    ) -> Contributions:
        if data.embedding is None:
            raise EstimatorError(
                "mips needs action embeddings: EventData.with_embedding(block_embedding(log, [...])) "
                "or estimate(..., embedding=...)",
                field="embedding",
            )
        if data.chosen_only:
            raise EstimatorError(
                "mips sums the logging pmf over the blocks sharing the chosen block's embedding; this log "
                "knows only the chosen propensity (EventData.chosen_only)",
                field="logging_pmf",
            )
        emb = data.embedding
        same = (emb == data.at_chosen(emb)[:, None]) & data.mask  # candidates sharing e_{i,a_i}
        num = np.einsum("ij,ij->i", pi, same)  # p(e_i | x_i, pi), eq. 4 in Saito & Joachims 2022
        den = np.einsum("ij,ij->i", data.logging_pmf, same)  # p(e_i | x_i, mu) >= mu(a_i | x_i) > 0
        w_e = num / den
        w = _weights(data, pi)
        sq = float(np.einsum("i,i->", w, w))
        details: tuple[tuple[str, float | str], ...] = (
            ("action_ess", float(w.sum()) ** 2 / sq if sq > 0 else 0.0),
            ("n_embeddings", float(np.unique(emb[data.mask]).size)),
        )
        if not bounds:
            return Contributions(w_e * data.reward, weights=w_e, details=details)
        # sum pi / sum mu <= max pi / mu over the group (a mediant): the action bound holds
        w_max = _max_weight_bound(data, pi)
        lo, hi = reward_range
        return Contributions(w_e * data.reward, (min(0.0, w_max * lo), max(0.0, w_max * hi)), weights=w_e,
                             details=details)


@dataclass(frozen=True)
class Slope:
    r"""SLOPE (Su, Srinath & Krishnamurthy 2020, "Adaptive estimator selection for
    off-policy evaluation", ICML): choose among ``candidates`` that trade bias for
    variance (switch-DR thresholds, clipping levels, shrinkages) by Lepski's principle.

    Each candidate i gives V_i and a confidence width c_i = t_{1-delta, n-1} s_i / sqrt(n)
    (the one-sided Student-t deviation of its contributions, as obp computes it). With
    the candidates sorted by decreasing width (the least biased, noisiest first; their
    Assumption 1: bias grows as width shrinks), SLOPE keeps going while the intervals
    [V_j - 2 c_j, V_j + 2 c_j] of every candidate so far still intersect, and returns the
    last one that kept them intersecting (their Algorithm 1): it stops as soon as a
    less noisy candidate disagrees with the noisier ones by more than their widths,
    i.e. as soon as its bias shows. Their Theorem 1: the chosen estimator's error is
    within a constant of the best bias-variance trade-off in the set (an oracle bound).

    The contributions are those of the chosen candidate (so comparisons pair on them;
    a paired comparison of two targets may choose differently for each); its interval
    ignores the selection (post-selection; ``tests/analysis/test_robust_estimators.py``
    measures its coverage). ``Diagnostics.details`` names the choice: ``selected`` (its
    name and knob), ``selected_index`` (in ``candidates``).
    """

    candidates: tuple[Estimator, ...]
    """At least two estimators (their own knobs: ``SwitchDR(switch_tau=t)`` for several t...)."""
    delta: float = 0.05
    """One-sided confidence of each width."""
    name: str = "slope"

    def __post_init__(self) -> None:
        if len(self.candidates) < 2:
            raise EstimatorError("slope needs at least two candidate estimators", field="candidates")
        for c in self.candidates:
            if not callable(getattr(c, "contributions", None)):
                raise EstimatorError(f"slope candidate {c!r} is not an estimator", field="candidates")
        if not 0.0 < float(self.delta) < 1.0:
            raise EstimatorError(f"delta must be in (0, 1), got {self.delta!r}", field="delta")

    @classmethod
    def switch_dr(
        cls, thresholds: Sequence[float] = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, math.inf),
        reward_model: RewardModel | None = None, n_folds: int = 5, delta: float = 0.05,
    ) -> Slope:
        """SLOPE over switch-DR thresholds (inf: DR)."""
        return cls(tuple(DoublyRobust(reward_model, n_folds, float(t), "switch_dr") for t in thresholds), delta,
                   "slope_switch_dr")

    @classmethod
    def dros(
        cls, shrinkages: Sequence[float] = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0, math.inf),
        reward_model: RewardModel | None = None, n_folds: int = 5, delta: float = 0.05,
    ) -> Slope:
        """SLOPE over DRos shrinkages (inf: DR); Su et al. 2020 tune lambda by an MSE bound
        instead, SLOPE (same authors, same year) needs no bias bound."""
        return cls(tuple(DRos(float(lam), reward_model, n_folds) for lam in shrinkages), delta, "slope_dros")

    @classmethod
    def clipped_ips(
        cls, clips: Sequence[float] = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, math.inf), delta: float = 0.05,
    ) -> Slope:
        """SLOPE over IPS clipping levels (inf: IPS)."""
        return cls(tuple(IPS(float(c)) for c in clips), delta, "slope_clipped_ips")

    def select(
        self, data: EventData, pi: np.ndarray, reward_range: tuple[float, float], seed: int
    ) -> tuple[int, list[Contributions]]:
        """Index of the chosen candidate, and every candidate's contributions."""
        from scipy import stats  # light enough, but only needed here

        results = [c.contributions(data, pi, reward_range, seed) for c in self.candidates]
        n = data.n
        t = float(stats.t.ppf(1.0 - float(self.delta), max(n - 1, 1)))
        values = np.array([float(r.values.mean()) for r in results])
        widths = np.array([t * float(np.std(r.values, ddof=1)) / math.sqrt(n) if n > 1 else math.inf
                           for r in results])
        order = np.argsort(-widths, kind="stable")  # noisiest (least biased) first
        low, high = -math.inf, math.inf
        chosen = int(order[0])
        for k in order:
            low = max(low, values[k] - 2.0 * widths[k])  # Algorithm 1 in Su, Srinath & Krishnamurthy 2020
            high = min(high, values[k] + 2.0 * widths[k])
            if low > high or not math.isfinite(values[k]):
                break
            chosen = int(k)
        return chosen, results

    def contributions(
        self, data: EventData, pi: np.ndarray, reward_range: tuple[float, float], seed: int, bounds: bool = False
    ) -> Contributions:
        chosen, results = self.select(data, pi, reward_range, seed)
        picked = self.candidates[chosen]
        out = picked.contributions(data, pi, reward_range, seed, bounds) if bounds else results[chosen]
        label = _describe(picked)
        return Contributions(out.values, out.bounds, out.ratio, out.weights,
                             (("selected", label), ("selected_index", float(chosen)), *out.details))

    def refit_replicates(
        self, data: EventData, pi: np.ndarray, n_resamples: int, seed: int
    ) -> np.ndarray | None:
        return None  # the bootstrap resamples the chosen candidate's contributions


def _describe(estimator: Estimator) -> str:
    """``switch_dr(switch_tau=5)``: the estimator's name and the knob that tells candidates apart."""
    for knob in ("switch_tau", "clip", "shrinkage", "smoothing"):
        value = getattr(estimator, knob, None)
        if isinstance(value, int | float):
            return f"{estimator.name}({knob}={value:g})"
    return estimator.name


def make_estimator(
    method: str,
    reward_model: RewardModel | None = None,
    n_folds: int = 5,
    switch_tau: float = 20.0,
) -> Estimator:
    """The estimator named ``method`` (one of :data:`METHODS`)."""
    if method == "ips":
        return IPS()
    if method == "snips":
        return SNIPS()
    if method == "replay":
        return Replay()
    if method == "dm":
        return DirectMethod(reward_model)
    if method == "dr":
        return DoublyRobust(reward_model, n_folds)
    if method == "switch_dr":
        return SwitchDR(reward_model, n_folds, switch_tau)
    raise EstimatorError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}", field="method")


def resolve_estimator(
    method: str | Estimator,
    reward_model: RewardModel | None = None,
    n_folds: int | None = None,
    switch_tau: float | None = None,
) -> Estimator:
    """``method`` as an estimator: a name of :data:`METHODS` with the keyword knobs
    (defaults ``n_folds=5``, ``switch_tau=20``), or an estimator object (``IPS()``,
    ``DoublyRobust(reward_model=..., n_folds=5)``, ``DRos(shrinkage=10.0)``, ...) that
    carries its own knobs; knobs given beside an object are refused (which would win?)."""
    if isinstance(method, str):
        return make_estimator(method, reward_model, 5 if n_folds is None else n_folds,
                              20.0 if switch_tau is None else switch_tau)
    if not (callable(getattr(method, "contributions", None)) and isinstance(getattr(method, "name", None), str)):
        raise EstimatorError(
            f"method must be one of {', '.join(METHODS)} or an estimator object, got {type(method).__name__}",
            field="method",
        )
    beside = [k for k, v in (("reward_model", reward_model), ("n_folds", n_folds), ("switch_tau", switch_tau))
              if v is not None]
    if beside:
        raise EstimatorError(
            f"{', '.join(beside)} given beside the estimator object {method.name!r}: set it on the object",
            field=beside[0],
        )
    return method


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Diagnostics:
    """Overlap diagnostics of a target policy on a log.

    Attributes:
        ess: Kish effective sample size (sum w)^2 / sum w^2 of the importance weights.
        mean_weight: mean w; 1 in expectation when propensities are right and the
            target is supported.
        max_weight: largest w.
        unsupported_mass: mean over events of the target mass on candidates the
            logger gave probability 0 or that were never chosen in the log.
        flags: machine-readable warnings (see the module docstring).
    """

    ess: float
    mean_weight: float
    max_weight: float
    unsupported_mass: float
    flags: tuple[str, ...] = ()
    details: tuple[tuple[str, float | str], ...] = ()
    """Estimator-specific diagnostics as (name, value) pairs: ``mean_shrunk_weight`` (DRos,
    sub-Gaussian), ``selected`` and ``selected_index`` (:class:`Slope`)..."""


@dataclass(frozen=True)
class Estimate:
    """A policy value estimate with its interval; ``value`` is never clipped."""

    value: float
    stderr: float
    ci_low: float
    ci_high: float
    level: float
    n: int
    method: str
    interval: str
    diagnostics: Diagnostics

    @property
    def flags(self) -> tuple[str, ...]:
        return self.diagnostics.flags


def diagnose(
    data: EventData, pi: np.ndarray, reward_range: tuple[float, float] = (0.0, 1.0), weights: np.ndarray | None = None
) -> Diagnostics:
    """Weight and support diagnostics of target ``pi`` (n, A) on ``data``
    (``weights``: w_i when already computed)."""
    w = _weights(data, pi) if weights is None else weights
    n = data.n
    total = float(w.sum())
    sq = float(np.einsum("i,i->", w, w))  # not BLAS ddot: no OpenBLAS threads woken (see _ONE_THREAD_FLOPS)
    ess = total * total / sq if sq > 0 else 0.0
    mean_w = total / n
    max_w = float(w.max())
    cells = data.unsupported_cells
    unsupported = float(pi.ravel()[cells].sum() / n) if cells.size else 0.0
    flags: list[str] = []
    se_w = float(np.std(w, ddof=1) / math.sqrt(n)) if n > 1 else 0.0
    if abs(mean_w - 1.0) > max(4.0 * se_w, 1e-9):
        flags.append("mean_weight_far_from_1")
    if ess < max(10.0, 0.01 * n):
        flags.append("tiny_ess")
    if total <= 0:
        flags.append("no_overlap")
    elif max_w >= 100.0 or max_w / total > 0.05:
        flags.append("extreme_weight")
    if unsupported > 1e-12:
        flags.append("unsupported_mass")
    lo, hi = reward_range
    if data.reward.min() < lo or data.reward.max() > hi:
        flags.append("reward_outside_declared_range")
    return Diagnostics(ess, mean_w, max_w, unsupported, tuple(flags))


def _as_data(
    log: BanditLog | EventData, features: np.ndarray | None, q_hat: np.ndarray | None = None,
    embedding: np.ndarray | None = None,
) -> EventData:
    if isinstance(log, EventData):
        if features is not None:
            raise EstimatorError("pass features to EventData.from_log, not with EventData", field="features")
        data = log if q_hat is None else log.with_q_hat(q_hat)
        return data if embedding is None else data.with_embedding(embedding)
    if isinstance(log, BanditLog):
        data = EventData.from_log(log, features, q_hat)
        return data if embedding is None else data.with_embedding(embedding)
    raise EstimatorError(f"expected a BanditLog or EventData, got {type(log).__name__}", field="log")


def contributions(
    log: BanditLog | EventData,
    target_pmf: np.ndarray,
    method: str | Estimator = "dr",
    *,
    reward_model: RewardModel | None = None,
    features: np.ndarray | None = None,
    q_hat: np.ndarray | None = None,
    embedding: np.ndarray | None = None,
    seed: int = 0,
    reward_range: tuple[float, float] = (0.0, 1.0),
    n_folds: int | None = None,
    switch_tau: float | None = None,
) -> np.ndarray:
    """(n,) per-event contributions of ``method`` (a name or an estimator object, see
    :func:`estimate`); their mean is the estimate. Same events and seed give paired
    arrays for two targets (see :mod:`analysis.compare`)."""
    data = _as_data(log, features, q_hat, embedding)
    pi = _check_target(data, target_pmf)
    rr = _check_reward_range(reward_range)
    estimator = resolve_estimator(method, reward_model, n_folds, switch_tau)
    return estimator.contributions(data, pi, rr, seed).values


def estimate(
    log: BanditLog | EventData,
    target_pmf: np.ndarray,
    method: str | Estimator = "dr",
    interval: str = "normal",
    level: float = 0.95,
    *,
    reward_model: RewardModel | None = None,
    features: np.ndarray | None = None,
    q_hat: np.ndarray | None = None,
    embedding: np.ndarray | None = None,
    seed: int = 0,
    reward_range: tuple[float, float] = (0.0, 1.0),
    n_resamples: int = 1000,
    n_folds: int | None = None,
    switch_tau: float | None = None,
    refit: bool | None = None,
) -> Estimate:
    """Estimate the value of ``target_pmf`` (n, A; aligned with the log's candidate
    columns, 0 on padding) on ``log``.

    Args:
        method: one of ``ips, snips, dm, dr, switch_dr, replay`` (knobs as keywords), or an
            estimator object carrying its knobs: ``IPS()``, ``SNIPS()``, ``DirectMethod(model)``,
            ``DoublyRobust(reward_model=..., n_folds=5)``, ``SwitchDR(...)``, ``DRos(shrinkage=...)``,
            ``SNDR()``, ``Replay()``... (then ``reward_model``, ``n_folds`` and ``switch_tau``
            must not be given here).
        interval: ``normal`` | ``bootstrap`` (percentile, Poisson weights, seeded) |
            ``bernstein`` (finite-sample, needs rewards in ``reward_range``; not for dm).
        reward_model: for dm/dr/switch_dr; default :class:`RidgeRewardModel` ().
        features: (n, d) numeric context matrix for the reward model.
        q_hat: (n, A) fixed external reward predictions for every candidate (see
            :attr:`EventData.q_hat`): used instead of a fitted model; intervals are then
            conditional on the model.
        embedding: (n, A) action-embedding codes for :class:`MIPS` (see :func:`block_embedding`).
        seed: fixes cross-fitting folds, replay draws and bootstrap weights.
        reward_range: a-priori reward bounds, for flags and the Bernstein interval.
        refit: bootstrap refits the reward model on each resample (exact, slow);
            False bootstraps the contributions (first-order equivalent: DR's model
            error is second order, DM's contributions carry the model's influence);
            None refits when n * n_resamples <= 5e7.
    """
    level = check_level(level)
    if interval not in INTERVALS:
        raise EstimatorError(f"unknown interval {interval!r}; expected one of {', '.join(INTERVALS)}", field="interval")
    data = _as_data(log, features, q_hat, embedding)
    pi = _check_target(data, target_pmf)
    rr = _check_reward_range(reward_range)
    estimator = resolve_estimator(method, reward_model, n_folds, switch_tau)
    method = estimator.name
    contrib = estimator.contributions(data, pi, rr, seed, bounds=interval == "bernstein")
    values = contrib.values
    value = float(values.mean())
    label = interval
    if interval == "normal":
        ci = normal_interval(values, level)
    elif interval == "bootstrap":
        se = normal_interval(values, level).stderr
        do_refit = data.n * n_resamples <= _REFIT_BUDGET if refit is None else refit
        replicates = estimator.refit_replicates(data, pi, n_resamples, seed) if do_refit else None
        if replicates is not None:
            label = "bootstrap-refit"
        elif contrib.ratio is not None:
            num, den = contrib.ratio[0], contrib.ratio[1]
            replicates = resample_statistic(np.column_stack([num, den]), _ratio, n_resamples, seed)
        else:
            replicates = resample_statistic(values, _first, n_resamples, seed)
        ci = bootstrap_interval(replicates, value, se, level, label)
    else:
        if reward_range[0] > data.reward.min() or reward_range[1] < data.reward.max():
            raise EstimatorError("bernstein needs every reward inside reward_range", field="reward_range")
        ci = _bernstein(contrib, rr, level, method)
    diagnostics = diagnose(data, pi, rr, contrib.weights)
    flags = diagnostics.flags
    if math.isfinite(value) and not (rr[0] - 1e-12 <= value <= rr[1] + 1e-12):
        flags = (*flags, "out_of_reward_range")
    diagnostics = Diagnostics(diagnostics.ess, diagnostics.mean_weight, diagnostics.max_weight,
                              diagnostics.unsupported_mass, flags, contrib.details)
    loud = [f for f in flags if f in ("extreme_weight", "out_of_reward_range", "mean_weight_far_from_1", "no_overlap")]
    if loud:
        logger.warning("%s estimate %.6g on %d events: %s", method, value, data.n, ", ".join(loud))
    return Estimate(value, ci.stderr, ci.low, ci.high, level, data.n, method, label, diagnostics)


def _first(means: np.ndarray) -> np.ndarray:
    return means[:, 0]


def _ratio(means: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return cast(np.ndarray, means[:, 0] / means[:, 1])


def _bernstein(contrib: Contributions, reward_range: tuple[float, float], level: float, method: str) -> Interval:
    if contrib.ratio is not None:
        return _ratio_bernstein(contrib, reward_range, level)
    if contrib.bounds is None:
        raise EstimatorError(
            f"bernstein needs a-priori bounded contributions, which {method} has not; use normal or bootstrap",
            field="interval",
        )
    return bernstein_interval(contrib.values, contrib.bounds, level)


def _ratio_bernstein(contrib: Contributions, reward_range: tuple[float, float], level: float) -> Interval:
    """V = N / D with D > 0: Bernstein intervals for N' = mean(den (r - lo)) and D at
    level 1 - (1 - level)/2 each (union bound), then V - lo in [N'_lo / D_hi, N'_hi / D_lo]."""
    assert contrib.ratio is not None
    num, den, _, den_bounds = contrib.ratio
    lo, hi = reward_range
    shifted = num - den * lo
    inner = 1.0 - (1.0 - level) / 2.0
    n_ci = bernstein_interval(shifted, (0.0, den_bounds[1] * (hi - lo)), inner)
    d_ci = bernstein_interval(den, den_bounds, inner)
    low = lo + max(0.0, n_ci.low) / d_ci.high if d_ci.high > 0 else lo
    high = min(hi, lo + n_ci.high / d_ci.low) if d_ci.low > 0 else hi
    return Interval(max(lo, low), high, normal_interval(contrib.values, level).stderr if np.isfinite(contrib.values).all() else float("nan"), level, "bernstein")

