"""The ``linear`` policy family: an exact Bayesian (ridge) hybrid linear model with an explicit pmf.

Model (Li, Chu, Langford, Schapire 2010, "A contextual-bandit approach to
personalized news article recommendation", Algorithm 2: LinUCB with hybrid
linear models). The expected reward of block ``a`` in context ``x`` is

    E[y | x, a] = z_a(x)' beta + x' theta_a

* ``x`` is the context vector: an intercept plus one coordinate per learned
  context feature (``ns.name=value`` -> 1.0 for strings and bools,
  ``ns.name`` -> value for numbers). Every block has its own ``theta_a``, so
  its own intercept: a block that lacks a feature is "unknown", not "good".
* ``z_a(x)`` is the shared vector (only with ``shared``): the block's features
  (``name=value`` -> 1.0, numbers -> value; not its id, which the intercept of
  ``theta_a`` already is) plus a global bias, each crossed with every
  coordinate of ``x`` (intercept included, so the block features appear
  uncrossed too). Every (block token, context coordinate) cross gets its own
  coordinate of ``z`` the first time it is learned, until ``shared_dim``
  coordinates are taken; crosses first met after that are dropped (counted in
  ``dropped_crosses``), in learning and in prediction. No hashing, so no
  collisions: blocks with the same category or format share exactly what they
  taught, and a new block starts from what blocks with its features taught.
* The reward learned is ``y = 1 - cost`` (the learner's cost in [0, 1]).

Fit: one ridge regression of ``y`` on the joint design ``(z, x placed in the
slot of the chosen block)`` with prior precision ``ridge`` on every weight,
solved exactly after every example (no SGD). In Li et al.'s block elimination:

    A_a = ridge I + sum_{t: a_t = a} w_t x_t x_t'      B_a = sum w_t x_t z_t'     b_a = sum w_t y_t x_t
    A_0 = ridge I + sum_t w_t z_t z_t' - sum_a B_a' A_a^-1 B_a                     (Schur complement)
    b_0 = sum_t w_t y_t z_t - sum_a B_a' A_a^-1 b_a
    beta = A_0^-1 b_0,   theta_a = A_a^-1 (b_a - B_a beta)

with ``w_t = 1`` (or ``gamma ** age`` with forgetting). Tests compare it with
``numpy.linalg.lstsq`` on the stacked design to 1e-8. Without forgetting an
example costs rank-one updates only: the joint precision ``M`` gains
``phi phi'`` (``phi`` = z and x in the chosen block's slot), so with
``v = A_a^-1 x``, ``w = z - Q_a' x`` (``Q_a = A_a^-1 B_a``), ``g = Sigma w``
and ``s = x' v + w' g``: ``Sigma = A_0^-1 <- Sigma - g g' / (1 + s)``
(Sherman-Morrison on ``M^-1``, whose beta block is ``Sigma``),
``beta <- beta + g (y - prediction) / (1 + s)`` (the joint recursive least
squares step), and per block ``A_a^-1``, ``P_a = A_a^-1 b_a`` and ``Q_a``
by Sherman-Morrison: O(d^2 + d k + k^2) per example. ``theta_a = P_a - Q_a beta``
is cached for every block when a snapshot is loaded (the serving copy) and
computed on the active coordinates otherwise. Every 8,192 examples, at a
block's every 512th example and on a load, the model is solved again from the
statistics (Cholesky factorisations; one ``(blocks d) x k`` product for
``A_0``), so rounding in the downdates does not accumulate.

Forgetting (``half_life``): every statistic is multiplied by
``gamma = 0.5 ** (1 / half_life)`` before each new example; the prior
``ridge I`` is added at solve time, so it is never forgotten. Because the
prior does not decay with the data, every block's solution moves at every
step: with forgetting, a learn step solves everything again from the
statistics (batched, O(blocks d^3 + blocks d k^2 + k^3)) instead of the
rank-one updates; affordable without the shared part or with a small
``shared_dim``.

Exploration, with an exact pmf (the logged propensity is the pmf entry):

* ``squarecb`` (Foster & Rakhlin 2020, "Beyond UCB", eq. (4)): with posterior
  means ``m`` (plus ``ucb_alpha * sqrt(x' A_a^-1 x)``, the per-block width,
  when ``ucb_alpha`` > 0), ``best = argmax m`` (first on ties), ``K`` candidates and
  ``gamma_t = gamma_scale * t ** gamma_exponent`` (``t`` = examples learned + 1),
  ``p_a = 1 / (K + gamma_t (m_best - m_a))`` for ``a != best``, the best gets
  the rest.
* ``thompson``: the pmf is the share of ``thompson_draws`` joint posterior
  draws in which each candidate has the highest sampled reward. Draws are
  exact: ``beta ~ N(beta_hat, noise A_0^-1)`` (its marginal), then
  ``theta_a | beta ~ N(A_a^-1 (b_a - B_a beta), noise A_a^-1)``, so the
  prior on each weight is ``N(0, noise / ridge)``. The draws are seeded by the
  caller's ``seed`` or, without one, by a hash of the active context
  coordinates and the candidates' rows (the same request against the same
  model gives the same pmf); the caller then samples the block from that pmf,
  so the logged propensity is the pmf entry, exactly. Candidates that win no
  draw get probability 0 before the floor: keep a floor for offline evaluation.

Then, in this order (``f = min(floor, 1 / K)``):

1. floor: ``q = (1 - K f) p + f``, so every candidate has at least ``f``.
2. new-block share: ``N`` = candidates whose block has fewer than
   ``new_block_min_examples`` learned examples and fewer than a quarter of the
   median count of the candidates. If ``0 < |N| <= K / 2`` (newcomers to a
   trained slot, not a slot learning from scratch) and
   ``sum_N q > S = max(new_block_share, |N| f)``, the mass above the floor is
   rescaled within each group so that ``N`` holds exactly ``S`` and the
   others ``1 - S`` (uniformly above their floors if they had none above it).
   With every candidate new there is nowhere else to put the mass: no cap.
3. the pmf is divided by its ``math.fsum`` (it sums to 1 within 1e-12).

While nothing has been learned the pmf is uniform, like ``VWPolicy``'s.

Bounds and memory. The context vocabulary holds at most ``max_features``
coordinates (the intercept included) and the block-feature vocabulary at most
``max_features`` tokens; features first seen after a vocabulary is full are
ignored, in learning and in prediction, as are features the model has never
learned (a pmf never grows a vocabulary). At most ``max_blocks`` blocks get
their own parameters; examples of further blocks are not learned (they are
predicted from the shared part). With ``d`` the context dimension (grown in
steps of 8 up to ``max_features``) and ``k = shared_dim`` (0 without
``shared``), a block costs ``8 * (2 d^2 + 2 d k + 3 d + 1)`` bytes
(statistics and caches: d = 72 -> 84 kB without the shared part, 674 kB with
k = 512), the shared part ``8 * (3 k^2 + 2 k)`` bytes once (with Thompson's
lazily made root of ``Sigma``) plus ``8 d`` per block token for the cross map.
A snapshot stores only the statistics (upper triangles of ``A_a``, the
non-zero entries of ``B_a`` and of ``sum z z'``) and the vocabularies.

Speed (``benchmarks/linear_quality.py --timeit``; docs/learning.md has the
table): 20 candidates, d = 72, 12 active context coordinates, with a
``catalog_key``, in process CPU time at load average 8-11 on 2 cores: the
default's pmf 77-137 us (34-60 us without the UCB width), a learn step
77-127 us; Thompson (64 draws) 170-185 us per pmf. The rank-one shared part
makes a learn step O(k^2): about 0.6 ms at k = 256 and 1.3-2 ms at k = 512,
so it stays off by default.

Defaults, chosen by evidence (docs/learning.md: tables, commands).
``benchmarks/linear_quality.py``: ``bandits.simulation`` World seeds 0-3,
20,000 decisions served from a snapshot copy replaced every 500 (as the
service does), gap closed over the last quarter; ``benchmarks/linear_sweep.py``:
the bake-off protocol (nine datasets, 3 seeds, normalized 0 = uniform,
1 = online supervised VW). Old defaults (squarecb over the mean, gamma_scale
10000, ridge 3, no floor): simulation 0.679, bake-off 0.856 (letter reward
0.243). ``ucb_alpha`` 0.1 / 0.3 / 1.0: simulation 0.656 / 0.643 / 0.600,
bake-off 0.950 / 0.986 / 0.945 (letter 0.367 / 0.469 / 0.469);
``prior_reward`` 0.5: 0.684, 0.985 (letter 0.393); Thompson noise 0.005 /
0.01 / 0.02: simulation 0.680 / 0.698 / 0.640, bake-off 0.956 / 0.961 at
0.01 / 0.02 (letter 0.440 / 0.432); the exact shared part k = 256 / 512:
0.689 / 0.693. Default: squarecb with ``ucb_alpha`` 0.3 (meets the bake-off's
targets, 0.96 and letter 0.43, and beats the best fixed block on every
simulated seed), ``floor`` 0.001 (the offline evaluation of uniform on the
default's own logs then has an effective sample size of about 1.8% of the
window, above the 1% of ``tiny_ess``; without a floor it is 0.0%), ridge 3,
shared part off.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

from bandits.errors import InvalidPolicy, ModelError
from bandits.features import CONTEXT_NAMESPACES, Features, FeatureValue
from bandits.options import check_int, check_number

if TYPE_CHECKING:  # policies imports this module for PolicyConfig; candidates are duck-typed here
    from bandits.policies import Candidate

__all__ = ["FORMAT_VERSION", "LinearConfig", "LinearPolicy"]

Array = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
LinearExploration = Literal["squarecb", "thompson"]

MAGIC = b"SBLINEAR"
FORMAT_VERSION = 2
_HEADER = len(MAGIC) + 2 + 32
_MAX_VALUE = 1e12  # the bound bandits.features.validate_features puts on numbers
_GROW = 8  # the context dimension grows in steps of this many coordinates
_REFRESH_EVERY = 8192  # learned examples between exact re-solves of the shared part (rounding of the downdates)


def _field(name: str) -> str:
    return f"policy.linear.{name}"


def _check_number(name: str, value: object, low: float, high: float) -> None:
    check_number("policy.linear", name, value, low, high)


def _check_int(name: str, value: object, low: int, high: int) -> None:
    check_int("policy.linear", name, value, low, high)


@dataclass(frozen=True)
class LinearConfig:
    """A validated configuration of the ``linear`` policy (see the module docstring)."""

    exploration: LinearExploration = "squarecb"
    """``squarecb`` (over the posterior mean) or ``thompson`` (pmf from seeded posterior draws)."""
    gamma_scale: float = 10000.0
    """SquareCB greediness: gamma_t = gamma_scale * t ** gamma_exponent, rewards in [0, 1]."""
    gamma_exponent: float = 0.5
    """How fast SquareCB's gamma grows with t = examples learned + 1."""
    floor: float = 0.001
    """Minimum probability of every candidate (at most 1/K is used with K candidates).

    0.001 by evidence: on its own logs (17 blocks, simulated audience) the importance-weighted
    evaluation of uniform then has an effective sample size of ~1.8% of the events (0.0% with no
    floor; ``tiny_ess`` is below 1%); the best fixed block's stays ~0.1% (it would need ~0.01)."""
    ridge: float = 3.0
    """Prior precision lambda of every weight (ridge penalty); keeps every system positive definite."""
    prior_reward: float = 0.0
    """Reward predicted with no data (the prior mean): the model regresses y - prior_reward."""
    ucb_alpha: float = 0.3
    """SquareCB over optimistic means m_a + ucb_alpha * sqrt(x' A_a^-1 x) (0: over the posterior means).

    The width is the block's own (given beta). 0.3 by evidence: bake-off 0.986 mean normalized and
    0.469 on letter against 0.856 / 0.243 at 0; simulated audience 0.643 against 0.679."""
    noise: float = 0.1
    """Thompson: reward noise variance sigma^2; posterior covariance sigma^2 A^-1, prior N(0, sigma^2 / ridge).

    0.01 was the best Thompson setting on the simulated audience (0.698 against 0.679 for the old
    default) and scored 0.956 on the bake-off (letter 0.440)."""
    thompson_draws: int = 64
    """Thompson: number of seeded posterior draws whose argmax frequencies are the pmf."""
    half_life: float | None = None
    """Forgetting: an example's weight halves every ``half_life`` learned examples; None keeps all."""
    max_features: int = 128
    """Bound on the context vocabulary (intercept included) and on the block-feature vocabulary."""
    shared: bool = False
    """Learn the shared part beta on (block features + bias) x context (exact crosses, up to shared_dim)."""
    shared_dim: int = 64
    """Bound k on the shared vocabulary of (block token x context coordinate) crosses, first seen first."""
    max_blocks: int = 256
    """Blocks with their own parameters; examples of further blocks are not learned."""
    new_block_share: float = 0.1
    """Most mass that blocks with fewer than new_block_min_examples examples get together (1: no cap).

    Evidence (``bandits.simulation`` World seeds 0-1, 4,000 decisions on 16 blocks, then a 17th
    block added that is best in 0.5% of contexts; its mean probability over the next 100 / 1,000 /
    last 1,000 of 4,000 decisions): without the cap 0.61 / 0.25 / 0.04 (the UCB width of an
    unseen block is large, so it takes the slot over at first); with 0.1 and 100 examples
    0.07 / 0.03 / 0.01. The default ``vw`` policy gave a block without features 0.59 / 0.33 / 0.31:
    a missing feature looks good to it and it never recovers."""
    new_block_min_examples: int = 100
    """Learned examples below which a block counts as new (0: no block is new)."""

    def __post_init__(self) -> None:
        if self.exploration not in ("squarecb", "thompson"):
            raise InvalidPolicy(f"unknown exploration {self.exploration!r}", field=_field("exploration"))
        _check_number("gamma_scale", self.gamma_scale, 1e-3, 1e7)
        _check_number("gamma_exponent", self.gamma_exponent, 0.0, 1.0)
        _check_number("floor", self.floor, 0.0, 1.0)
        _check_number("ridge", self.ridge, 1e-6, 1e6)
        _check_number("prior_reward", self.prior_reward, 0.0, 1.0)
        _check_number("ucb_alpha", self.ucb_alpha, 0.0, 100.0)
        _check_number("noise", self.noise, 1e-8, 1e4)
        _check_int("thompson_draws", self.thompson_draws, 1, 100_000)
        if self.half_life is not None:
            _check_number("half_life", self.half_life, 1.0, 1e12)
        _check_int("max_features", self.max_features, 1, 2048)
        if not isinstance(self.shared, bool):
            raise InvalidPolicy("shared must be true or false", field=_field("shared"))
        _check_int("shared_dim", self.shared_dim, 1, 1024)
        _check_int("max_blocks", self.max_blocks, 1, 100_000)
        _check_number("new_block_share", self.new_block_share, 0.0, 1.0)
        _check_int("new_block_min_examples", self.new_block_min_examples, 0, 10**9)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LinearConfig:
        if not isinstance(data, Mapping):
            raise InvalidPolicy("policy.linear must be an object", field="policy.linear")
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            name = sorted(unknown)[0]
            raise InvalidPolicy(f"unknown linear option {name!r}", field=_field(name))
        return cls(**dict(data))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def digest(self) -> bytes:
        """SHA-256 of the fields that give stored statistics their meaning (shape and weighting).

        Exploration settings and ``ridge`` (added at solve time) may change between
        ``save`` and a load; these may not."""
        shaping = {k: getattr(self, k) for k in ("half_life", "max_features", "shared", "shared_dim", "max_blocks")}
        return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).digest()


def _spd_root(matrix: Array) -> Array:
    """R with R' R = matrix (symmetric positive semi-definite): the transposed Cholesky factor, or a
    clipped eigendecomposition when rounding has made the matrix numerically indefinite."""
    sym = 0.5 * (matrix + matrix.T)
    try:
        root: Array = np.asarray(np.linalg.cholesky(sym).T, dtype=np.float64)
        return root
    except np.linalg.LinAlgError:
        values, vectors = np.linalg.eigh(sym)
        scaled: Array = (vectors * np.sqrt(np.maximum(values, 0.0))).T
        return scaled


def _spd_inverse(matrix: Array, ridge: float) -> tuple[Array, Array]:
    """(inverse, inverse Cholesky factor L^-1) of a symmetric positive definite matrix.

    Falls back to a clipped eigendecomposition when rounding (huge feature values)
    has made the matrix numerically indefinite, so that the result is always finite."""
    sym = 0.5 * (matrix + matrix.T)
    try:
        chol = np.linalg.cholesky(sym)
        inv_chol: Array = np.linalg.inv(chol)
        inverse: Array = inv_chol.T @ inv_chol
        if np.all(np.isfinite(inverse)):
            return inverse, inv_chol
    except np.linalg.LinAlgError:
        pass
    values, vectors = np.linalg.eigh(sym)
    values = np.maximum(values, ridge)
    inv_sqrt = vectors / np.sqrt(values)  # columns scaled: V diag(1/sqrt(v))
    inverse = inv_sqrt @ inv_sqrt.T
    if not np.all(np.isfinite(inverse)):
        raise ModelError("the linear model's statistics are not finite", field="model")
    return inverse, inv_sqrt.T


class _Vocabulary:
    """Token -> coordinate, grown by learning up to a bound."""

    def __init__(self, limit: int, tokens: Sequence[str] = ()) -> None:
        self.limit = limit
        self.index: dict[str, int] = {}
        self.tokens: list[str] = []
        for token in tokens:
            self.add(token)

    def add(self, token: str) -> int:
        found = self.index.get(token)
        if found is not None:
            return found
        if len(self.tokens) >= self.limit:
            return -1
        self.index[token] = len(self.tokens)
        self.tokens.append(token)
        return len(self.tokens) - 1


def _number(where: str, value: float) -> float:
    number = float(value)
    if not math.isfinite(number) or abs(number) > _MAX_VALUE:
        raise ModelError(f"feature {where} must be a finite number within ±1e12", field=where)
    return number


def _token(prefix: str, name: str, value: FeatureValue) -> tuple[str, float]:
    """(token, value) of one feature: strings and bools are indicators, numbers weights."""
    if isinstance(value, bool):
        return f"{prefix}{name}={'true' if value else 'false'}", 1.0
    if isinstance(value, str):
        return f"{prefix}{name}={value}", 1.0
    if isinstance(value, int | float):
        return f"{prefix}{name}", _number(f"{prefix}{name}", value)
    raise ModelError(f"feature {prefix}{name} has unsupported type {type(value).__name__}", field=f"{prefix}{name}")


def _context_tokens(context: Features) -> list[tuple[str, float]]:
    tokens: list[tuple[str, float]] = []
    for namespace in CONTEXT_NAMESPACES:
        values = context.get(namespace)
        if values:
            prefix = namespace + "."
            for name in sorted(values):
                tokens.append(_token(prefix, name, values[name]))
    unknown = set(context).difference(CONTEXT_NAMESPACES)
    if unknown:
        name = sorted(unknown)[0]
        raise ModelError(f"unknown context group {name!r}", field=f"context.{name}")
    return tokens


def _block_tokens(features: Mapping[str, FeatureValue]) -> list[tuple[str, float]]:
    return [_token("", name, features[name]) for name in sorted(features) if name != "id"]


class LinearPolicy:
    """The ``linear`` chooser: same surface as ``VWPolicy`` (pmf, learn, save, close, lock).

    ``model`` is a snapshot from :meth:`save`; ``trained`` overrides whether it serves
    from the model (default: it has learned at least one example). Not thread-safe:
    hold ``lock``."""

    def __init__(self, config: LinearConfig, model: bytes | None = None, *, trained: bool | None = None) -> None:
        self.config = config
        self.lock = threading.Lock()
        self._k = config.shared_dim if config.shared else 0
        self._ctx = _Vocabulary(config.max_features, ["(intercept)"])
        self._blk = _Vocabulary(config.max_features, ["(bias)"])
        self._rows: dict[str, int] = {}  # block id -> row; row 0 is the never-learned block
        self._ids: list[str] = []
        self._cache: dict[tuple[str, int, int], tuple[IntArray, IntArray, IntArray, Array]] = {}
        # the shared vocabulary: (block token, context coordinate) -> coordinate of z, first seen first
        self._crosses: list[tuple[int, int]] = []
        self.dropped_crosses = 0
        """Crosses met in learning after the shared vocabulary was full (not learned)."""
        self.learned_examples = 0
        self._allocate(min(_GROW, config.max_features), 4)
        if model is not None:
            self._load(model)
        self._trained = self.learned_examples > 0 if trained is None else trained

    # ------------------------------------------------------------------ storage

    def _allocate(self, d: int, rows: int) -> None:
        k, lam = self._k, self.config.ridge
        self._d = d
        self._A: Array = np.zeros((rows, d, d))
        self._B: Array = np.zeros((rows, d, k))
        self._b: Array = np.zeros((rows, d))
        self._n: IntArray = np.zeros(rows, dtype=np.int64)
        self._cov: Array = np.broadcast_to(np.eye(d) / lam, (rows, d, d)).copy()
        self._P: Array = np.zeros((rows, d))
        self._Q: Array = np.zeros((rows, d, k))
        self._theta: Array = np.zeros((rows, d))
        self._theta_fresh = True  # theta_a = P_a - Q_a beta for every row (else computed where needed)
        self._Z: Array = np.zeros((k, k))
        self._zy: Array = np.zeros(k)
        self._beta: Array = np.zeros(k)
        self._sigma: Array = np.eye(k) / lam  # A_0^-1, the marginal posterior covariance of beta (/ noise)
        self._sigma_root: Array | None = None  # R with R' R = Sigma, made lazily for Thompson
        self._cross_map: IntArray = np.full((_GROW if k else 0, d), -1, dtype=np.int64)
        self._since_refresh = 0

    def _grow(self, d: int, rows: int) -> None:
        """Pad every array to context dimension ``d`` and ``rows`` rows (exact: new coordinates are inert)."""
        old_d, old_rows = self._d, self._A.shape[0]
        if d <= old_d and rows <= old_rows:
            return
        d, rows = max(d, old_d), max(rows, old_rows)
        lam = self.config.ridge

        def pad(array: Array, shape: tuple[int, ...]) -> Array:
            out = np.zeros(shape)
            out[tuple(slice(0, s) for s in array.shape)] = array
            return out

        k = self._k
        self._A = pad(self._A, (rows, d, d))
        self._B = pad(self._B, (rows, d, k))
        self._b = pad(self._b, (rows, d))
        self._n = np.concatenate([self._n, np.zeros(rows - old_rows, dtype=np.int64)])
        cov = pad(self._cov, (rows, d, d))
        for i in range(old_d, d):
            cov[:, i, i] = 1.0 / lam
        cov[old_rows:] = np.eye(d) / lam
        self._cov = cov
        self._P = pad(self._P, (rows, d))
        self._Q = pad(self._Q, (rows, d, k))
        self._theta = pad(self._theta, (rows, d))
        if k:
            cross = np.full((self._cross_map.shape[0], d), -1, dtype=np.int64)
            cross[:, :old_d] = self._cross_map
            self._cross_map = cross
        self._d = d

    # ------------------------------------------------------------------ features

    def _context_vector(self, context: Features, grow: bool) -> tuple[IntArray, Array]:
        """(coordinates, values) of the context vector, intercept first; unknown tokens skipped."""
        index = [0]
        values = [1.0]
        for token, value in _context_tokens(context):
            i = self._ctx.add(token) if grow else self._ctx.index.get(token, -1)
            if i > 0:
                index.append(i)
                values.append(value)
        return np.array(index, dtype=np.int64), np.array(values)

    def _block_vector(self, features: Mapping[str, FeatureValue], grow: bool) -> tuple[list[int], list[float]]:
        index, values = [0], [1.0]
        for token, value in _block_tokens(features):
            i = self._blk.add(token) if grow else self._blk.index.get(token, -1)
            if i > 0:
                index.append(i)
                values.append(value)
        return index, values

    def _candidates(
        self, candidates: Sequence[Candidate], catalog_key: str | None
    ) -> tuple[IntArray, IntArray, IntArray, Array]:
        """(row of each candidate, candidate of each block token, block token, its value)."""
        key = None
        if catalog_key is not None:
            key = (catalog_key, len(self._blk.tokens), len(self._ids))
            cached = self._cache.get(key)
            if cached is not None:
                return cached
        rows = np.array([self._rows.get(c.id, 0) for c in candidates], dtype=np.int64)
        owner: list[int] = []
        tokens: list[int] = []
        values: list[float] = []
        if self._k:
            for position, candidate in enumerate(candidates):
                index, vals = self._block_vector(candidate.features, grow=False)
                owner += [position] * len(index)
                tokens += index
                values += vals
        result = (rows, np.array(owner, dtype=np.int64), np.array(tokens, dtype=np.int64), np.array(values))
        if key is not None:
            if len(self._cache) > 256:
                self._cache.clear()
            self._cache[key] = result
        return result

    def _add_crosses(self, tokens: list[int], coords: IntArray) -> None:
        """Give every new (block token, context coordinate) pair a shared coordinate while there is room."""
        if max(tokens) >= self._cross_map.shape[0]:
            rows = max(tokens) + _GROW
            cross = np.full((rows, self._d), -1, dtype=np.int64)
            cross[:self._cross_map.shape[0]] = self._cross_map
            self._cross_map = cross
        block = self._cross_map[np.ix_(np.array(tokens, dtype=np.int64), coords)]
        if np.all(block >= 0):
            return
        for i, j in zip(*np.nonzero(block < 0), strict=True):
            if len(self._crosses) >= self._k:
                self.dropped_crosses += 1
                continue
            self._cross_map[tokens[i], coords[j]] = len(self._crosses)
            self._crosses.append((tokens[i], int(coords[j])))

    def _shared_sparse(
        self, owner: IntArray, tokens: IntArray, tvalues: Array, coords: IntArray, cvalues: Array
    ) -> tuple[IntArray, IntArray, Array]:
        """Non-zero entries of z of every candidate: (candidate, shared coordinate, value)."""
        index = self._cross_map[tokens[:, None], coords[None, :]]
        keep = index >= 0
        values = (tvalues[:, None] * cvalues[None, :])[keep]
        rows = np.broadcast_to(owner[:, None], index.shape)[keep]
        return rows, index[keep], values

    def _shared_dense(self, count: int, sparse: tuple[IntArray, IntArray, Array]) -> Array:
        rows, index, values = sparse
        z = np.zeros((count, self._k))
        np.add.at(z, (rows, index), values)
        return z

    def _shared_of(self, features: Mapping[str, FeatureValue], coords: IntArray, cvalues: Array) -> tuple[IntArray, Array]:
        index, vals = self._block_vector(features, grow=False)
        _, columns, values = self._shared_sparse(np.zeros(len(index), dtype=np.int64), np.array(index, dtype=np.int64),
                                                 np.array(vals), coords, cvalues)
        return columns, values

    def design(self, context: Features, candidate: Candidate) -> tuple[Array, Array]:
        """(z, x) of one candidate under the current vocabularies: the rows of the joint design."""
        coords, cvalues = self._context_vector(context, grow=False)
        x = np.zeros(self._d)
        x[coords] = cvalues
        z = np.zeros(self._k)
        if self._k:
            columns, values = self._shared_of(candidate.features, coords, cvalues)
            np.add.at(z, columns, values)
        return z, x

    # ------------------------------------------------------------------ prediction

    @property
    def trained(self) -> bool:
        return self._trained

    def _means(
        self, context: Features, candidates: Sequence[Candidate], catalog_key: str | None
    ) -> tuple[Array, IntArray, IntArray, Array, tuple[IntArray, IntArray, Array] | None]:
        coords, cvalues = self._context_vector(context, grow=False)
        rows, owner, tokens, tvalues = self._candidates(candidates, catalog_key)
        if self._theta_fresh:
            means: Array = self._theta[rows[:, None], coords[None, :]] @ cvalues
        else:  # x' theta_a = x' P_a - (Q_a' x)' beta, on the active coordinates only
            means = self._P[rows[:, None], coords[None, :]] @ cvalues
            means = means - (cvalues @ self._Q[rows[:, None], coords[None, :], :]) @ self._beta
        means = means + self.config.prior_reward
        sparse = None
        if self._k:
            sparse = self._shared_sparse(owner, tokens, tvalues, coords, cvalues)
            which, index, values = sparse
            means = means + np.bincount(which, weights=values * self._beta[index], minlength=len(candidates))
        return means, rows, coords, cvalues, sparse

    def scores(self, context: Features, candidates: Sequence[Candidate], catalog_key: str | None = None) -> list[float]:
        """Posterior mean reward (1 - cost) of every candidate: the greedy view, for replay."""
        if not candidates:
            return []
        return [float(m) for m in self._means(context, candidates, catalog_key)[0]]

    def pmf(
        self,
        context: Features,
        candidates: Sequence[Candidate],
        catalog_key: str | None = None,
        *,
        seed: int | None = None,
    ) -> list[float]:
        """The exact pmf (see the module docstring); uniform while untrained.

        ``seed`` seeds Thompson's posterior draws (default: a hash of the context
        and the candidate ids); SquareCB ignores it."""
        count = len(candidates)
        if count == 0:
            return []
        if not self._trained:
            return [1.0 / count] * count
        means, rows, coords, cvalues, sparse = self._means(context, candidates, catalog_key)
        if self.config.exploration == "squarecb":
            if self.config.ucb_alpha > 0.0:
                means = means + self.config.ucb_alpha * np.sqrt(self._block_variance(rows, coords, cvalues))
            p = self._squarecb(means)
        else:
            p = self._thompson(context, candidates, means, rows, coords, cvalues, sparse, seed)
        return self._shape(p, rows)

    def _block_variance(self, rows: IntArray, coords: IntArray, cvalues: Array) -> Array:
        """x' A_a^-1 x of every candidate (the posterior variance of x' theta_a given beta, / noise)."""
        flat = (coords[:, None] * self._d + coords[None, :]).ravel()
        cov = self._cov.reshape(len(self._cov), -1)[rows[:, None], flat[None, :]]  # one 2-d gather
        variance: Array = np.maximum(cov @ np.outer(cvalues, cvalues).ravel(), 0.0)
        return variance

    def _squarecb(self, means: Array) -> Array:
        # eq. (4) of Foster & Rakhlin 2020 with rewards: p_a = 1 / (K + gamma (m_best - m_a))
        count = len(means)
        gamma = self.config.gamma_scale * float(self.learned_examples + 1) ** self.config.gamma_exponent
        best = int(np.argmax(means))
        p: Array = 1.0 / (count + gamma * (means[best] - means))
        p[best] = 0.0
        p[best] = max(0.0, 1.0 - float(p.sum()))
        return p

    def _thompson(
        self,
        context: Features,
        candidates: Sequence[Candidate],
        means: Array,
        rows: IntArray,
        coords: IntArray,
        cvalues: Array,
        sparse: tuple[IntArray, IntArray, Array] | None,
        seed: int | None,
    ) -> Array:
        count, draws = len(means), self.config.thompson_draws
        if seed is None:  # the same active context and candidate rows against the same model: the same draws
            key = rows.tobytes() + coords.tobytes() + cvalues.tobytes()
            seed = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big")
        rng = np.random.Generator(np.random.Philox(key=seed % 2**64))  # keyed directly: no SeedSequence per pmf
        scale = math.sqrt(self.config.noise)
        variance = self._block_variance(rows, coords, cvalues)
        sampled = means[None, :] + scale * np.sqrt(variance)[None, :] * rng.standard_normal((draws, count))
        if sparse is not None:
            # s_a(beta) = x' theta_a(beta_hat) + (z_a - Q_a' x)' (beta - beta_hat) + noise of theta_a | beta
            g = self._shared_dense(count, sparse) - np.einsum("i,kij->kj", cvalues, self._Q[rows[:, None], coords[None, :], :])
            if self._sigma_root is None:
                self._sigma_root = _spd_root(self._sigma)
            delta = scale * rng.standard_normal((draws, self._k)) @ self._sigma_root  # rows ~ N(0, noise Sigma)
            sampled = sampled + delta @ g.T
        winners = np.argmax(sampled, axis=1)
        p: Array = np.bincount(winners, minlength=count).astype(np.float64) / draws
        return p

    def _shape(self, p: Array, rows: IntArray) -> list[float]:
        """Floor, then the new-block share, then normalisation (module docstring, steps 1-3)."""
        count = len(p)
        p = np.where(np.isfinite(p) & (p > 0.0), p, 0.0)
        total = float(p.sum())
        p = p / total if total > 0 else np.full(count, 1.0 / count)
        floor = min(self.config.floor, 1.0 / count)
        q = (1.0 - count * floor) * p + floor
        minimum = self.config.new_block_min_examples
        if minimum > 0:
            counts = self._n[rows]
            # new: below the minimum AND far behind the slot's typical block (a quarter of the median),
            # so blocks that merely have few examples in a young slot are not held back
            new = (counts < minimum) & (counts < 0.25 * float(np.median(counts)))
            new_count = int(new.sum())
            # Only newcomers to a trained slot are capped: while new blocks are at least half of the
            # candidates (a slot learning from scratch) the explorer is left alone.
            if 0 < new_count and 2 * new_count <= count:
                share = max(self.config.new_block_share, new_count * floor)
                mass = float(q[new].sum())
                if mass > share:
                    old = ~new
                    excess_new = mass - new_count * floor
                    excess_old = (1.0 - mass) - (count - new_count) * floor
                    target_old = 1.0 - share - (count - new_count) * floor
                    q[new] = floor + (q[new] - floor) * ((share - new_count * floor) / excess_new)
                    if excess_old > 1e-15:
                        q[old] = floor + (q[old] - floor) * (target_old / excess_old)
                    else:
                        q[old] = floor + target_old / (count - new_count)
        q = np.maximum(q, 0.0)
        total = math.fsum(q.tolist())
        return [float(v) / total for v in q]

    # ------------------------------------------------------------------ learning

    def learn(
        self,
        context: Features,
        candidates: Sequence[Candidate],
        chosen_index: int,
        cost: float,
        probability: float,
        catalog_key: str | None = None,
    ) -> None:
        """One exact ridge update with reward ``1 - cost`` for the chosen block.

        ``probability`` is checked but not used: the model regresses the observed
        reward of the chosen block (direct method, as LinUCB does)."""
        if not 0 <= chosen_index < len(candidates):
            raise ModelError("chosen index outside the candidate set", field="chosen_index")
        cost, probability = float(cost), float(probability)
        if not (0.0 < probability <= 1.0) or not math.isfinite(cost):
            raise ModelError("learning needs 0 < probability <= 1 and a finite cost", field="probability")
        chosen = candidates[chosen_index]
        row = self._rows.get(chosen.id)
        if row is None:
            if len(self._ids) >= self.config.max_blocks:
                return  # the block table is full: further blocks are not learned
            row = len(self._ids) + 1
            self._rows[chosen.id] = row
            self._ids.append(chosen.id)
        coords, cvalues = self._context_vector(context, grow=True)
        needed = min(-(-len(self._ctx.tokens) // _GROW) * _GROW, max(self.config.max_features, 1))
        needed = max(needed, len(self._ctx.tokens))
        rows = self._A.shape[0] if row < self._A.shape[0] else max(2 * self._A.shape[0], row + 1)
        self._grow(needed, rows)
        zi, zv = np.zeros(0, dtype=np.int64), np.zeros(0)
        if self._k:
            index, vals = self._block_vector(chosen.features, grow=True)
            self._add_crosses(index, coords)
            zi, zv = self._shared_of(chosen.features, coords, cvalues)
        y = 1.0 - cost - self.config.prior_reward
        if self.config.half_life is not None:
            keep = 0.5 ** (1.0 / self.config.half_life)
            used = len(self._ids) + 1
            for array in (self._A[:used], self._B[:used], self._b[:used], self._Z, self._zy):
                array *= keep
        exact = self.config.half_life is None
        if exact:
            u = self._cov[row][:, coords] @ cvalues  # v = A_a^-1 x (before the update)
            xv = float(cvalues @ u[coords])
            if self._k:
                self._shared_step(row, coords, cvalues, zi, zv, u, xv, y)
        self._A[row][np.ix_(coords, coords)] += np.outer(cvalues, cvalues)
        self._b[row, coords] += y * cvalues
        if self._k:
            self._B[row][np.ix_(coords, zi)] += np.outer(cvalues, zv)
            self._Z[np.ix_(zi, zi)] += np.outer(zv, zv)
            self._zy[zi] += y * zv
        self._n[row] += 1
        self.learned_examples += 1
        self._trained = True
        self._since_refresh += 1
        if not exact or (self._k and self._since_refresh >= _REFRESH_EVERY):
            self._refresh_all()  # forgetting moves every block; or the periodic exact re-solve
            return
        den = 1.0 + xv
        if not math.isfinite(den) or den > 1e6 or self._n[row] % 512 == 0:
            self._refresh_block(row)  # a dominant example or a periodic exact refactorisation
        else:
            # Sherman-Morrison: (A + x x')^-1 = A^-1 - u u' / (1 + x' u); recursive least squares
            # for P = A^-1 b and Q = A^-1 B (Li et al. 2010, Algorithm 2, lines 19-21, without inverting)
            gain = u / den
            self._cov[row] -= np.outer(u, gain)
            self._P[row] += gain * (y - float(self._P[row][coords] @ cvalues))
            if self._k:
                w = self._last_w
                self._Q[row] += np.outer(gain, w)
        if self._k:
            self._theta_fresh = False
        else:
            self._theta[row] = self._P[row]
        if not np.all(np.isfinite(self._P[row])) or not np.all(np.isfinite(self._beta)):
            self._refresh_all()

    def _shared_step(self, row: int, coords: IntArray, cvalues: Array, zi: IntArray, zv: Array,
                     v: Array, xv: float, y: float) -> None:
        """Rank-one update of the shared part's posterior for one example (before block ``row`` moves).

        The joint precision M gains phi phi' with phi = (z, x in the block's slot); by
        Sherman-Morrison its inverse loses (M^-1 phi)(M^-1 phi)' / (1 + phi' M^-1 phi). The beta
        part of M^-1 phi is g = Sigma w with w = z - B_a' A_a^-1 x = z - Q_a' x, and
        phi' M^-1 phi = x' A_a^-1 x + w' g, so Sigma <- Sigma - g g' / (1 + s) and the joint
        recursive-least-squares step moves beta by g (y - prediction) / (1 + s)."""
        qx = cvalues @ self._Q[row][coords, :]  # Q_a' x = B_a' A_a^-1 x
        w = -qx
        np.add.at(w, zi, zv)
        g = self._sigma @ w
        s = xv + float(w @ g)
        prediction = float(self._P[row][coords] @ cvalues) - float(qx @ self._beta) + float(zv @ self._beta[zi])
        self._beta += g * ((y - prediction) / (1.0 + s))
        self._sigma -= np.outer(g, g / (1.0 + s))
        self._sigma_root = None
        self._last_w = w

    def _refresh_block(self, row: int) -> None:
        lam = self.config.ridge
        cov, _ = _spd_inverse(self._A[row] + lam * np.eye(self._d), lam)
        self._cov[row] = cov
        self._P[row] = cov @ self._b[row]
        if self._k:
            self._Q[row] = cov @ self._B[row]
        else:
            self._theta[row] = self._P[row]

    def _refresh_all(self) -> None:
        """Solve everything again from the statistics (Algorithm 2's block elimination)."""
        used = len(self._ids) + 1
        lam = self.config.ridge
        eye = np.eye(self._d)
        try:
            chol = np.linalg.cholesky(self._A[:used] + lam * eye)
            inv_chol = np.linalg.inv(chol)
            cov = np.swapaxes(inv_chol, 1, 2) @ inv_chol
            if not np.all(np.isfinite(cov)):
                raise np.linalg.LinAlgError("not finite")
            self._cov[:used] = cov
            self._P[:used] = np.einsum("rij,rj->ri", cov, self._b[:used])
            if self._k:
                self._Q[:used] = cov @ self._B[:used]
        except np.linalg.LinAlgError:
            for row in range(used):
                self._refresh_block(row)
        if self._k:
            k = self._k
            # A_0 = ridge I + Z - sum_a B_a' A_a^-1 B_a,  b_0 = zy - sum_a B_a' A_a^-1 b_a  (Schur complement)
            stacked_b = self._B[:used].reshape(-1, k)
            a0 = lam * np.eye(k) + self._Z - stacked_b.T @ self._Q[:used].reshape(-1, k)
            b0 = self._zy - np.einsum("rij,ri->j", self._B[:used], self._P[:used])
            self._sigma = _spd_inverse(a0, lam)[0]
            self._beta = self._sigma @ b0
            self._sigma_root = None
        self._theta[:used] = self._P[:used] - (self._Q[:used] @ self._beta if self._k else 0.0)
        self._theta_fresh = True
        self._since_refresh = 0
        if not np.all(np.isfinite(self._theta[:used])):
            raise ModelError("the linear model's solution is not finite", field="model")

    def _fresh_theta(self) -> None:
        if not self._theta_fresh:
            used = len(self._ids) + 1
            self._theta[:used] = self._P[:used] - self._Q[:used] @ self._beta
            self._theta_fresh = True

    # ------------------------------------------------------------------ inspection

    def posterior_mean(self) -> tuple[Array, dict[str, Array]]:
        """(beta, {block id: theta_a}): the current ridge solution, for checks and replay."""
        self._fresh_theta()
        thetas = {block: self._theta[row].copy() for block, row in self._rows.items()}
        return self._beta.copy(), thetas

    def block_examples(self, block_id: str) -> int:
        """Number of learned examples of a block (0 if unknown)."""
        row = self._rows.get(block_id)
        return 0 if row is None else int(self._n[row])

    # ------------------------------------------------------------------ snapshots

    def save(self) -> bytes:
        """Magic, format version, config digest, then an ``np.savez`` of the statistics.

        ``B`` and ``Z`` are stored by their non-zero entries (a block's crosses touch few columns)."""
        used = len(self._ids) + 1
        upper = np.triu_indices(self._d)
        vocabulary = {"context": self._ctx.tokens, "block": self._blk.tokens, "ids": self._ids,
                      "learned_examples": self.learned_examples, "crosses": self._crosses,
                      "dropped_crosses": self.dropped_crosses}
        b_flat = self._B[:used].ravel()
        b_index = np.flatnonzero(b_flat)
        z_flat = self._Z.ravel()
        z_index = np.flatnonzero(z_flat)
        stream = io.BytesIO()
        np.savez(
            stream,
            vocabulary=np.frombuffer(json.dumps(vocabulary).encode(), dtype=np.uint8),
            A=self._A[:used][:, upper[0], upper[1]],
            B_index=b_index,
            B_value=b_flat[b_index],
            b=self._b[:used],
            n=self._n[:used],
            Z_index=z_index,
            Z_value=z_flat[z_index],
            zy=self._zy,
        )
        header = MAGIC + FORMAT_VERSION.to_bytes(2, "big") + self.config.digest()
        return header + stream.getvalue()

    def _load(self, model: bytes) -> None:
        if len(model) < _HEADER or not model.startswith(MAGIC):
            raise ModelError("not a linear model snapshot", field="model")
        version = int.from_bytes(model[len(MAGIC):len(MAGIC) + 2], "big")
        if version != FORMAT_VERSION:
            raise ModelError(f"linear model format {version} is not {FORMAT_VERSION}", field="model")
        if model[len(MAGIC) + 2:_HEADER] != self.config.digest():
            raise ModelError("the model was trained with another linear configuration", field="model")
        k = self._k
        try:
            with np.load(io.BytesIO(model[_HEADER:]), allow_pickle=False) as data:
                vocabulary = json.loads(data["vocabulary"].tobytes().decode())
                arrays = {name: np.array(data[name])
                          for name in ("A", "B_index", "B_value", "b", "n", "Z_index", "Z_value", "zy")}
            ids = [str(i) for i in vocabulary["ids"]]
            self._ctx = _Vocabulary(self.config.max_features, [str(t) for t in vocabulary["context"]])
            self._blk = _Vocabulary(self.config.max_features, [str(t) for t in vocabulary["block"]])
            crosses = [(int(t), int(c)) for t, c in vocabulary["crosses"]]
            if len(crosses) > k:
                raise ModelError("the shared vocabulary is larger than shared_dim", field="model")
            used = len(ids) + 1
            d = arrays["b"].shape[1]
            self._allocate(d, max(used, 4))
            upper = np.triu_indices(d)
            self._A[:used, upper[0], upper[1]] = arrays["A"]
            self._A[:used] = self._A[:used] + np.triu(self._A[:used], 1).swapaxes(1, 2)
            self._B[:used].reshape(-1)[arrays["B_index"]] = arrays["B_value"]
            self._b[:used] = arrays["b"]
            self._n[:used] = arrays["n"]
            self._Z.reshape(-1)[arrays["Z_index"]] = arrays["Z_value"]
            self._zy[...] = arrays["zy"]
            self._ids = ids
            self._rows = {block: i + 1 for i, block in enumerate(ids)}
            self.learned_examples = int(vocabulary["learned_examples"])
            self.dropped_crosses = int(vocabulary["dropped_crosses"])
            if k:
                self._cross_map = np.full((len(self._blk.tokens) + _GROW, d), -1, dtype=np.int64)
                for position, (token, coordinate) in enumerate(crosses):
                    self._cross_map[token, coordinate] = position
            self._crosses = crosses
        except ModelError:
            raise
        except Exception as error:  # a truncated or altered payload
            raise ModelError(f"cannot load linear model: {error}", field="model") from error
        if not all(np.all(np.isfinite(a)) for a in arrays.values() if a.dtype.kind == "f"):
            raise ModelError("the linear model's statistics are not finite", field="model")
        self._refresh_all()

    def close(self) -> None:
        self._cache.clear()
