"""The learner: joins decisions with their rewards, learns each model policy online, writes snapshots.

For each policy of a kind that learns (``vw``, ``linear``: ``bandits.choosers.MODEL_KINDS``) the learner reads the decisions logged under it
in ``seq`` order after its cursor and, for each one that is *ready*,

1. joins its rewards that arrived within the reward window (``created_at <=
   decision.created_at + slot.reward_window_s``) and aggregates them by the
   slot's rule (``bandits.rewards.aggregate``: sum / first / max, clipped to the
   slot's range, the slot's default reward when none came);
2. learns it with the model's ``learn`` (``VWPolicy``, ``LinearPolicy``) on the exact
   candidates of the decision (its catalog version, or its inline candidates)
   and its logged context, with the logged probability, or skips it with a
   counted reason (logging-only, fallback, no consent, not activated, ...).

Readiness. A decision is ready when its window has closed, or earlier when one
reward is final: the first reward under ``first``, a reward at ``reward_max``
under ``max``. Both are judged against ``now - safety_margin_s``:

* PostgreSQL hands out ``seq`` at insert time but several workers commit in
  any order, so a lower ``seq`` can become visible after a higher one. The
  learner never looks at a decision younger than the margin (3 s there, far
  above a group commit of a few milliseconds), so by the time it passes a
  ``seq`` no lower one can still appear. The same margin covers a reward or an
  activation stamped just inside the window whose commit lands just after it.
* On SQLite every writer holds the file's one write lock and ``seq`` is
  assigned inside the writing transaction, so visibility follows ``seq``
  order: a row committed later always has a higher ``seq`` and is simply read
  by a later step. What remains is a reward's or activation's own stamp-to-
  commit time (the rest of its request, the lock wait: milliseconds, tens under
  load, and once more than 250 ms on a machine at load 10 with 2 cores, which cost
  a test a reward), so the default margin there is 0.75 s
  (:meth:`LearnerSettings.margin_for`). A reward that commits later than the
  margin after its stamp is not learned (nor counted late).
* Decisions are taken strictly in order: the first one that is not ready stops
  the step (the cursor is one number). An early-final decision behind one whose
  window is still open waits for it.

Late rewards (stamped after the window) are kept in the log and counted
(``late_rewards`` in the snapshot metrics for those the learner saw, and
:func:`count_late_rewards` for all of them), never learned: what a decision is
learned with does not depend on when the learner ran.

Modes (the decision's own ``learning_mode``): ``online`` learns decisions
served by any policy's pmf (``vw``, ``linear``, ``uniform``, ... : whichever kind the policy had
then, the logged propensity makes it fit to learn from) with the real reward; ``apprentice`` learns to imitate the default
block: reward 1 when the logged choice is the default block, else 0 (plus one
counter-example, a non-default block with reward 0, so the ranking is learned
and not only the default's score). Before each apprentice update the model's
top choice is compared with the default block (``apprentice.match_rate``);
``logging-only`` learns nothing. Decisions of the slot's holdout (``arm = "holdout"`` outside
experiments, ``api.champion.holdout``) are never learned (skip reason ``holdout``).

Challengers (``api.champion``). A policy with a ``source`` is a challenger: its
:class:`PolicyLearner` reads the decisions logged under the *source* policy (the serving one),
with their logged propensities, instead of its own (it never serves, so it has none), and learns
them with the same rules, snapshots, metrics (``pv_loss`` is then the progressive-validation cost
of the challenger on the serving policy's stream), lease and exactly-once cursor as any policy.
Its cursor is a position in the source's decisions, the same space as the source's own cursor.

Freshness. The run loop sleeps until the first waiting decision becomes
learnable by its window (but at least ``batch_wait_s``, so a step learns a
batch), ``poll_interval_s`` when nothing waits or a final reward may come, and
never past the moment unsaved learning is due for its snapshot. So a
decision is learned about ``margin`` after its window closes (or its final
reward), is in a snapshot at most ``snapshot_interval_s`` (1 s) later, and is
served after the next poll of the workers' registries
(``ServiceSettings.model_poll_interval_s``, 0.2 s): under 2 s on SQLite at
1,000 decisions/s (``benchmarks/freshness.py``).

Exactly once. Every ``snapshot_every`` learned decisions or
``snapshot_interval_s`` seconds the model, the cursor (the last ``seq``
processed) and the training metrics are written as a new snapshot version in
ONE transaction. A restarted learner loads the newest snapshot and continues
after its cursor: whatever it learned after that snapshot is learned again
into the restored model, once. With ``ledger`` on, the same transaction
records every learned ``(policy, seq)`` under a primary key, so a decision
learned twice would be an integrity error.

One writer per policy. A lease row per policy (``learner_leases``: holder,
expiry) is taken with one conditional UPDATE, renewed every step, and checked
again inside each snapshot transaction (it fences a learner that stalled past
its expiry). It works the same on SQLite and PostgreSQL, and several learner
processes split the policies between them. A snapshot is also refused when
the newest version is no longer the one the learner started from (an admin
import, reset or rollback happened): the learner then reloads that version and
its cursor, and learns on from there.

Metrics (per snapshot, cumulative, plus ``window`` for the part since the
previous snapshot): ``decisions_learned``, ``average_reward``, ``pv_loss``
(progressive validation, Blum, Kalai & Langford 1999: before each update the
current model's pmf ``pi`` is scored on the decision with the inverse
propensity estimate of its cost, ``c * pi(a) / p(a)`` (Horvitz & Thompson
1952), so the mean is an unbiased estimate of the cost of the policy as it was
learning), ``skipped`` by reason, ``late_rewards`` and ``apprentice``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Any

from sqlalchemy import Connection, Engine, delete, func, insert, select, update
from sqlalchemy.engine import RowMapping
from sqlalchemy.exc import IntegrityError

from api.champion.holdout import HOLDOUT_ARM
from api.db.bulk import append_rows
from api.db.catalog import CatalogCache
from api.db.engine import write_lock
from api.db.learning_models import LearnedDecision, LearnerLease
from api.db.models import Activation, Decision, Policy, Reward, Slot, Snapshot
from api.settings import ServiceSettings, child_environment, settings_from_env
from bandits.choosers import MODEL_KINDS, LearningModel, build_model
from bandits.errors import ModelError
from bandits.policies import PolicyConfig
from bandits.rewards import RewardRule, aggregate, cost_from_reward, is_final

__all__ = [
    "Learner",
    "LearnerSettings",
    "PolicyLearner",
    "SlotRules",
    "StepReport",
    "add_commands",
    "append_snapshot",
    "count_late_rewards",
    "latest_snapshot",
    "shutdown",
    "startup",
]

log = logging.getLogger("slotbandit.learner")

_decisions = Decision.__table__


# --------------------------------------------------------------------------- settings


SQLITE_SAFETY_MARGIN_S = 0.75
"""The default safety margin on SQLite: commits are serialized, so only a reward's own commit is waited for."""
SERVER_SAFETY_MARGIN_S = 3.0
"""The default safety margin on PostgreSQL (and any store whose writers commit concurrently)."""


@dataclass(frozen=True)
class LearnerSettings:
    """How the learner batches, snapshots and shares work. Env: ``SLOTBANDIT_LEARNER_<FIELD>``.

    The defaults aim to serve a reward's effect within 2 s of its decision becoming learnable on
    SQLite: margin 0.75 s + at most ``batch_wait_s`` + at most ``snapshot_interval_s`` + at most
    the registry's ``model_poll_interval_s``, 2.05 s at worst (about 1.5 s on average) when the
    learner keeps up; on
    PostgreSQL the margin makes it 4.3 s. ``benchmarks/freshness.py`` measures it.
    """

    snapshot_every: int = 10_000
    """Write a snapshot after this many learned decisions (N), even before ``snapshot_interval_s``."""
    snapshot_interval_s: float = 1.0
    """... or when this many seconds passed since the last one and something was learned (T): a
    learned decision waits at most this long for its snapshot (was 30 s). Under the log's write
    lock a snapshot only runs its SQL: the model bytes (40 KB for the default VW options, 1.7 ms to
    save), the metrics and the ledger rows are made before. Each snapshot is a model load in every
    serving worker (8-15 ms holding the GIL for the default VW options)."""
    keep_snapshots: int = 10
    """Snapshots kept per policy (K); older ones are pruned."""
    batch_size: int = 500
    """Decisions read per query."""
    poll_interval_s: float = 0.25
    """Longest sleep between steps when there was nothing to learn (was 1 s)."""
    batch_wait_s: float = 0.1
    """Shortest sleep between steps while read decisions wait for their window: the learner wakes
    when the first of them becomes learnable, but no sooner than this, so that one step learns
    what became ready in that time (100 decisions at 1,000/s) instead of one query per decision."""
    safety_margin_s: float | None = None
    """Decisions, rewards and activations younger than this are not judged yet (commit order, see
    the module doc). None: by the store, ``SQLITE_SAFETY_MARGIN_S`` (0.75 s) on SQLite, where
    writers are serialized, ``SERVER_SAFETY_MARGIN_S`` (3 s) on PostgreSQL, where they are not."""
    lease_ttl_s: float = 30.0
    """A policy's lease expires this long after its last renewal (another learner may then take it)."""
    ledger: bool = False
    """Record every learned (policy, seq) in ``learned_decisions`` (audits exactly-once; one row per decision)."""

    def __post_init__(self) -> None:
        for name in ("snapshot_every", "keep_snapshots", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"learner {name} must be a positive integer")
        for name in ("snapshot_interval_s", "poll_interval_s", "batch_wait_s", "safety_margin_s", "lease_ttl_s"):
            value = getattr(self, name)
            if value is None and name == "safety_margin_s":
                continue
            if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
                raise ValueError(f"learner {name} must be a finite number >= 0")
        if self.lease_ttl_s < 0.5:
            raise ValueError("learner lease_ttl_s must be at least 0.5 s")

    def margin_for(self, dialect: str) -> float:
        """The safety margin in force on a store of this SQLAlchemy dialect name."""
        if self.safety_margin_s is not None:
            return float(self.safety_margin_s)
        return SQLITE_SAFETY_MARGIN_S if dialect == "sqlite" else SERVER_SAFETY_MARGIN_S

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> LearnerSettings:
        return settings_from_env(cls, "SLOTBANDIT_LEARNER_", environ, overrides)


# --------------------------------------------------------------------------- pure rules


@dataclass(frozen=True)
class SlotRules:
    """The reward rules of a slot, as the learner applies them."""

    window_s: float
    aggregation: str
    default_reward: float
    reward_min: float
    reward_max: float
    require_activation: bool
    default_block: str | None

    @cached_property
    def reward(self) -> RewardRule:
        """The slot's reward rule (``bandits.rewards``): aggregation, default, range."""
        return RewardRule(self.aggregation, self.default_reward, self.reward_min, self.reward_max)

    @classmethod
    def from_row(cls, row: Mapping[str, Any] | RowMapping) -> SlotRules:
        return cls(
            window_s=float(row["reward_window_s"]),
            aggregation=row["reward_aggregation"],
            default_reward=float(row["default_reward"]),
            reward_min=float(row["reward_min"]),
            reward_max=float(row["reward_max"]),
            require_activation=bool(row["require_activation"]),
            default_block=row["default_block"],
        )


def _aware(moment: datetime) -> datetime:
    # SQLite hands DateTime(timezone=True) back naive; everything is stored in UTC
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


# --------------------------------------------------------------------------- snapshots


@dataclass(frozen=True)
class SnapshotRow:
    version: int
    model: bytes
    cursor: int
    metrics: dict[str, Any]


def latest_snapshot(connection: Connection, policy_name: str) -> SnapshotRow | None:
    """The newest snapshot of a policy, or None."""
    row = connection.execute(
        select(Snapshot.version, Snapshot.model, Snapshot.cursor, Snapshot.metrics)
        .where(Snapshot.policy_name == policy_name)
        .order_by(Snapshot.version.desc())
        .limit(1)
    ).first()
    if row is None:
        return None
    return SnapshotRow(row.version, bytes(row.model), int(row.cursor), dict(row.metrics or {}))


def latest_version(connection: Connection, policy_name: str) -> int:
    value = connection.execute(
        select(func.max(Snapshot.version)).where(Snapshot.policy_name == policy_name)
    ).scalar_one()
    return int(value or 0)


def append_snapshot(
    connection: Connection,
    policy_name: str,
    model: bytes,
    cursor: int,
    metrics: Mapping[str, Any],
    *,
    keep: int,
    expected_version: int | None = None,
) -> int | None:
    """Insert the next snapshot version (inside the caller's transaction) and prune to the last ``keep``.

    With ``expected_version`` the insert happens only if that is still the
    newest version (returns None otherwise). A concurrent writer of the same
    version makes the insert fail on the unique (policy, version) key.
    """
    current = latest_version(connection, policy_name)
    if expected_version is not None and current != expected_version:
        return None
    version = current + 1
    connection.execute(
        insert(Snapshot).values(
            policy_name=policy_name, version=version, model=model, cursor=cursor, metrics=dict(metrics)
        )
    )
    connection.execute(
        delete(Snapshot).where(Snapshot.policy_name == policy_name, Snapshot.version <= version - keep)
    )
    return version


def count_late_rewards(connection: Connection, policy_name: str, after_seq: int = 0) -> int:
    """Rewards stamped after their decision's reward window, over a policy's decisions with seq > after_seq."""
    windows = dict(connection.execute(select(Slot.id, Slot.reward_window_s)).all())
    rows = connection.execute(
        select(_decisions.c.slot_id, _decisions.c.created_at, Reward.created_at)
        .join(Reward, Reward.event_id == _decisions.c.event_id)
        .where(_decisions.c.policy_name == policy_name, _decisions.c.seq > after_seq)
    )
    late = 0
    for slot_id, decided, rewarded in rows:
        window = timedelta(seconds=windows.get(slot_id, 0))
        if _aware(rewarded) > _aware(decided) + window:
            late += 1
    return late


# --------------------------------------------------------------------------- leases


def acquire_lease(engine: Engine, policy_name: str, holder: str, ttl_s: float, now: datetime | None = None) -> bool:
    """Take or renew the lease of a policy; True when ``holder`` has it until now + ttl."""
    now = now or datetime.now(UTC)
    expires = now + timedelta(seconds=ttl_s)
    # every write of the learner holds the log's file write lock (api.db.engine.write_lock): a
    # serving worker waiting to commit is woken when it is released, not after SQLite's busy sleeps
    with write_lock(engine), engine.begin() as connection:
        taken = connection.execute(
            update(LearnerLease)
            .where(
                LearnerLease.policy_name == policy_name,
                (LearnerLease.holder == holder) | (LearnerLease.expires_at < now),
            )
            .values(holder=holder, expires_at=expires)
        ).rowcount
    if taken:
        return True
    try:
        with write_lock(engine), engine.begin() as connection:
            connection.execute(
                insert(LearnerLease).values(policy_name=policy_name, holder=holder, expires_at=expires, acquired_at=now)
            )
        return True
    except IntegrityError:
        return False  # someone else holds it


def release_lease(engine: Engine, policy_name: str, holder: str) -> None:
    with write_lock(engine), engine.begin() as connection:
        connection.execute(
            delete(LearnerLease).where(LearnerLease.policy_name == policy_name, LearnerLease.holder == holder)
        )


def _fence(connection: Connection, policy_name: str, holder: str, now: datetime, ttl_s: float) -> bool:
    """Inside a snapshot transaction: still our lease? (renews it; on PostgreSQL locks the row to commit)."""
    return bool(
        connection.execute(
            update(LearnerLease)
            .where(LearnerLease.policy_name == policy_name, LearnerLease.holder == holder, LearnerLease.expires_at >= now)
            .values(expires_at=now + timedelta(seconds=ttl_s))
        ).rowcount
    )


# --------------------------------------------------------------------------- one policy


@dataclass
class _Totals:
    """Training counters since the policy was created (carried from snapshot to snapshot)."""

    learned: int = 0
    reward_sum: float = 0.0
    pv_sum: float = 0.0
    late: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    apprentice: int = 0
    matches: int = 0

    @classmethod
    def from_metrics(cls, metrics: Mapping[str, Any]) -> _Totals:
        learned = int(metrics.get("decisions_learned", 0))
        apprentice = metrics.get("apprentice") or {}
        return cls(
            learned=learned,
            reward_sum=float(metrics.get("reward_sum", 0.0)),
            pv_sum=float(metrics.get("pv_loss_sum", 0.0)),
            late=int(metrics.get("late_rewards", 0)),
            skipped={str(k): int(v) for k, v in (metrics.get("skipped") or {}).items()},
            apprentice=int(apprentice.get("decisions", 0)),
            matches=int(apprentice.get("matches", 0)),
        )

    def copy(self) -> _Totals:
        return _Totals(self.learned, self.reward_sum, self.pv_sum, self.late, dict(self.skipped),
                       self.apprentice, self.matches)


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


@dataclass(frozen=True)
class StepReport:
    """What one step did for one policy (or summed over policies)."""

    learned: int = 0
    skipped: int = 0
    snapshots: int = 0
    waiting: int = 0
    """Decisions read but not ready yet (window open or younger than the margin)."""
    ready_in_s: float | None = None
    """When decisions wait: seconds from the step's ``now`` until the first of them is learnable
    by its window (a final reward can make it so sooner). The soonest over policies when added."""

    @property
    def processed(self) -> int:
        return self.learned + self.skipped

    def __add__(self, other: StepReport) -> StepReport:
        soonest = min((r for r in (self.ready_in_s, other.ready_in_s) if r is not None), default=None)
        return StepReport(self.learned + other.learned, self.skipped + other.skipped,
                          self.snapshots + other.snapshots, self.waiting + other.waiting, soonest)


class PolicyLearner:
    """The learning state of one ``vw`` or ``linear`` policy: model, cursor, counters since the last snapshot.

    ``source``: for a challenger, the policy whose decisions it learns (its own name otherwise).
    """

    def __init__(self, engine: Engine, name: str, config: PolicyConfig, settings: LearnerSettings, holder: str,
                 *, clock: Callable[[], float] = time.monotonic, source: str | None = None) -> None:
        assert config.kind in MODEL_KINDS
        self.engine = engine
        self.name = name
        self.source = source
        self.stream = source or name
        """The policy name whose logged decisions this learner reads."""
        self.config = config
        self.settings = settings
        self.holder = holder
        self.clock = clock
        """Seconds, monotonic: when snapshots are due (tests pass a controlled one)."""
        self.margin_s = settings.margin_for(engine.dialect.name)
        self.model: LearningModel = build_model(config)
        self.version = 0
        self.cursor = 0
        self.snapshot_cursor = 0
        self.totals = _Totals()
        self._saved = _Totals()
        self._learned_seqs: list[tuple[int, float]] = []
        self._last_snapshot = self.clock()
        self.loaded = False

    # -- state

    def load(self) -> None:
        """(Re)load the newest snapshot: model, cursor, counters. Unsaved progress is dropped."""
        with self.engine.connect() as connection:
            snap = latest_snapshot(connection, self.name)
        old = self.model
        if snap is None:
            self.model, self.version, self.cursor, self.totals = build_model(self.config), 0, 0, _Totals()
        else:
            trained = bool(snap.metrics.get("trained", True)) and bool(snap.model)
            loaded: LearningModel | None = None
            if trained:
                try:
                    loaded = build_model(self.config, snap.model)
                except ModelError as error:  # e.g. the policy changed kind: the old bytes are another model's
                    log.warning("policy %s: snapshot v%d does not load as a %s model (%s); learning on from a "
                                "fresh model", self.name, snap.version, self.config.kind, error)
            self.model = loaded if loaded is not None else build_model(self.config)
            self.version, self.cursor, self.totals = snap.version, snap.cursor, _Totals.from_metrics(snap.metrics)
        old.close()
        self.snapshot_cursor = self.cursor
        self._saved = self.totals.copy()
        self._learned_seqs = []
        self._last_snapshot = self.clock()
        self.loaded = True

    @property
    def unsaved(self) -> int:
        return self.totals.learned - self._saved.learned

    @property
    def dirty(self) -> bool:
        """Something to snapshot: decisions learned, or the cursor moved over skipped ones."""
        return self.unsaved > 0 or self.cursor != self.snapshot_cursor

    # -- learning

    def step(self, now: datetime, slots: Mapping[int, SlotRules], catalogs: CatalogCache) -> StepReport:
        """Learn the ready decisions of one batch after the cursor; snapshot when due."""
        if not self.loaded:
            self.load()
        with self.engine.connect() as connection:
            if latest_version(connection, self.name) != self.version:
                self.load()  # an import, reset or rollback (or another learner) wrote a newer version
            rows = connection.execute(
                select(
                    _decisions.c.seq, _decisions.c.event_id, _decisions.c.slot_id, _decisions.c.policy_kind,
                    _decisions.c.learning_mode, _decisions.c.catalog_version, _decisions.c.inline_candidates,
                    _decisions.c.candidate_ids, _decisions.c.chosen_index, _decisions.c.chosen_block,
                    _decisions.c.probability, _decisions.c.context, _decisions.c.consent, _decisions.c.deferred,
                    _decisions.c.fallback, _decisions.c.created_at, _decisions.c.arm, _decisions.c.experiment_id,
                )
                .where(_decisions.c.policy_name == self.stream, _decisions.c.seq > self.cursor)
                .order_by(_decisions.c.seq)
                .limit(min(self.settings.batch_size, max(1, self.settings.snapshot_every - self.unsaved)))
            ).all()
            if not rows:
                return self._maybe_snapshot(now, StepReport())
            ids = [r.event_id for r in rows]
            rewards: dict[str, list[tuple[float, datetime]]] = {}
            for event_id, value, created in connection.execute(
                select(Reward.event_id, Reward.value, Reward.created_at)
                .where(Reward.event_id.in_(ids))
                .order_by(Reward.created_at, Reward.id)
            ):
                rewards.setdefault(event_id, []).append((float(value), _aware(created)))
            activations = {
                event_id: _aware(created)
                for event_id, created in connection.execute(
                    select(Activation.event_id, Activation.created_at).where(Activation.event_id.in_(ids))
                )
            }
            catalogs.load(connection, {(r.slot_id, r.catalog_version) for r in rows if r.catalog_version is not None})

        margin = timedelta(seconds=self.margin_s)
        horizon = now - margin
        learned = skipped = waiting = 0
        ready_in: float | None = None
        for row in rows:
            rules = slots.get(row.slot_id)
            created = _aware(row.created_at)
            if created > horizon:
                waiting = len(rows) - learned - skipped
                window = timedelta(seconds=rules.window_s if rules is not None else 0)
                ready_in = (created + window + margin - now).total_seconds()
                break
            if rules is None:  # the slot is gone: nothing to learn with
                self._skip("no_slot")
                skipped += 1
                self.cursor = row.seq
                continue
            window_end = created + timedelta(seconds=rules.window_s)
            received = rewards.get(row.event_id, [])
            in_window = [value for value, at in received if at <= window_end]
            activated_at = activations.get(row.event_id)
            needs_activation = rules.require_activation or row.deferred
            activated = activated_at is not None and activated_at <= window_end
            closed = horizon >= window_end
            if not closed:
                early = is_final([v for v, at in received if at <= horizon], rules.reward) and (
                    not needs_activation or (activated_at is not None and activated_at <= horizon)
                )
                if not early:
                    waiting = len(rows) - learned - skipped
                    ready_in = (window_end + margin - now).total_seconds()
                    break
                in_window = [value for value, at in received if at <= horizon]
            else:
                self.totals.late += sum(1 for _, at in received if at > window_end)
            reason = self._learn(row, rules, in_window, needs_activation and not activated, catalogs)
            if reason is None:
                learned += 1
            else:
                self._skip(reason)
                skipped += 1
            self.cursor = row.seq
        return self._maybe_snapshot(now, StepReport(learned=learned, skipped=skipped, waiting=waiting,
                                                    ready_in_s=ready_in))

    def _skip(self, reason: str) -> None:
        self.totals.skipped[reason] = self.totals.skipped.get(reason, 0) + 1

    def _learn(self, row: Any, rules: SlotRules, values: list[float], not_activated: bool,
               catalogs: CatalogCache) -> str | None:
        """Learn one ready decision; returns the reason it was skipped, or None when learned."""
        mode = row.learning_mode
        if mode == "logging-only":
            return "logging_only"
        if row.fallback:
            return "fallback"
        if not row.consent:
            return "no_consent"
        if row.arm == HOLDOUT_ARM and row.experiment_id is None:
            return "holdout"  # served the baseline to measure personalization: never learned
        if not_activated:
            return "not_activated"
        if mode == "online" and row.policy_kind in ("default", "unknown"):
            return "no_policy"  # the default block served without a policy's pmf
        if mode not in ("online", "apprentice"):
            return "unknown_mode"
        candidates = catalogs.candidates(row)
        if candidates is None:
            return "no_candidates"
        chosen = int(row.chosen_index)
        probability = float(row.probability)
        if not 0 <= chosen < len(candidates) or not 0.0 < probability <= 1.0:
            return "invalid"
        context = row.context or {}
        # Parsed block examples are reused only for an exact catalog version in catalog order.
        exact = row.catalog_version is not None and not row.inline_candidates and \
            list(row.candidate_ids) == [c.id for c in candidates]
        key = f"{row.slot_id}:{row.catalog_version}" if exact else None
        pmf = self.model.pmf(context, candidates, key)
        reward = aggregate(values, rules.reward)
        if mode == "apprentice":
            default = rules.default_block
            ids = [c.id for c in candidates]
            if default is None or default not in ids:
                return "no_default"
            target = ids.index(default)
            imitation = 1.0 if chosen == target else 0.0
            cost = 1.0 - imitation
            self.totals.apprentice += 1
            top = max(range(len(pmf)), key=pmf.__getitem__)
            if self.model.trained and top == target and all(pmf[target] > p for i, p in enumerate(pmf) if i != target):
                self.totals.matches += 1
            self.model.learn(context, candidates, chosen, cost, probability, key)
            if chosen == target and len(candidates) > 1:
                other = (target + 1 + int(row.seq) % (len(candidates) - 1)) % len(candidates)
                self.model.learn(context, candidates, other, 1.0, 1.0, key)  # the imitation reward is known for every block
            learned_reward = imitation
        else:
            cost = cost_from_reward(reward, rules.reward_min, rules.reward_max)
            self.model.learn(context, candidates, chosen, cost, probability, key)
            learned_reward = reward
        self.totals.pv_sum += cost * pmf[chosen] / probability  # IPS cost of the model before the update
        self.totals.learned += 1
        self.totals.reward_sum += learned_reward
        if self.settings.ledger:
            self._learned_seqs.append((int(row.seq), learned_reward))
        return None

    # -- snapshots

    def metrics(self) -> dict[str, Any]:
        t, s = self.totals, self._saved
        window = t.learned - s.learned
        return {
            "trained": self.model.trained,
            "source": "learner",
            "decisions_learned": t.learned,
            "average_reward": _ratio(t.reward_sum, t.learned),
            "pv_loss": _ratio(t.pv_sum, t.learned),
            "reward_sum": t.reward_sum,
            "pv_loss_sum": t.pv_sum,
            "late_rewards": t.late,
            "skipped": dict(t.skipped),
            **({"learns_from": self.source} if self.source else {}),
            "window": {
                "decisions_learned": window,
                "average_reward": _ratio(t.reward_sum - s.reward_sum, window),
                "pv_loss": _ratio(t.pv_sum - s.pv_sum, window),
            },
            "apprentice": {
                "decisions": t.apprentice,
                "matches": t.matches,
                "match_rate": _ratio(t.matches, t.apprentice),
                "recent_match_rate": _ratio(t.matches - s.matches, t.apprentice - s.apprentice),
            },
        }

    def snapshot_due_in(self) -> float | None:
        """Seconds until unsaved learning is due for its snapshot by time (0: now); None when clean."""
        if not self.dirty:
            return None
        return max(0.0, self.settings.snapshot_interval_s - (self.clock() - self._last_snapshot))

    def _maybe_snapshot(self, now: datetime, report: StepReport) -> StepReport:
        due = self.unsaved >= self.settings.snapshot_every or self.snapshot_due_in() == 0.0
        if due and self.snapshot(now) is not None:
            return dataclasses.replace(report, snapshots=report.snapshots + 1)
        return report

    def snapshot(self, now: datetime | None = None) -> int | None:
        """Write model + cursor + metrics as the next version in one transaction; None if refused
        (or when nothing changed: neither learned decisions nor a cursor moved over skipped ones)."""
        if not self.dirty:
            return None
        # everything but the SQL is made before the log's write lock is taken: serving workers wait for it
        model = self.model.save()
        metrics = self.metrics()
        ledger = [{"policy_name": self.name, "seq": seq, "reward": reward, "snapshot_version": self.version + 1}
                  for seq, reward in self._learned_seqs]
        now = datetime.now(UTC)  # leases run on the wall clock, whatever clock the step judged readiness by
        try:
            with write_lock(self.engine), self.engine.begin() as connection:
                if not _fence(connection, self.name, self.holder, now, self.settings.lease_ttl_s):
                    raise _Refused("lease lost")
                version = append_snapshot(
                    connection, self.name, model, self.cursor, metrics,
                    keep=self.settings.keep_snapshots, expected_version=self.version,
                )
                if version is None:
                    raise _Refused("a newer snapshot exists")
                # the ledger rows go in through the DBAPI cursor on SQLite: the log's write lock is held
                append_rows(connection, LearnedDecision.__table__, ledger)
        except (_Refused, IntegrityError) as error:
            log.warning("snapshot of %s refused (%s); reloading the newest version", self.name, error)
            self.load()
            return None
        self.version = version
        self.snapshot_cursor = self.cursor
        self._saved = self.totals.copy()
        self._learned_seqs = []
        self._last_snapshot = self.clock()
        log.info("policy %s: snapshot v%d at seq %d (%d learned)", self.name, version, self.cursor, self.totals.learned)
        return version

    def close(self) -> None:
        self.model.close()


class _Refused(Exception):
    pass


# --------------------------------------------------------------------------- all policies


class Learner:
    """Learns every ``vw`` and ``linear`` policy whose lease it can take. ``step()`` is synchronous; ``run()`` loops."""

    def __init__(self, engine: Engine, settings: LearnerSettings | None = None, *,
                 policies: Sequence[str] | None = None, holder: str | None = None,
                 on_snapshot: Callable[[str, int], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.engine = engine
        self.clock = clock
        self.settings = settings or LearnerSettings()
        self.only = set(policies) if policies else None
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.on_snapshot = on_snapshot
        self.policies: dict[str, PolicyLearner] = {}
        self._catalogs = CatalogCache()
        self._lock = threading.Lock()
        self._renewed: dict[str, float] = {}

    def _policy_configs(self) -> dict[str, tuple[PolicyConfig, str | None]]:
        """name -> (configuration, source: the policy a challenger learns from, else None)."""
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(Policy.name, Policy.config, Policy.source).where(Policy.kind.in_(MODEL_KINDS))).all()
        configs = {}
        for name, config, source in rows:
            if self.only is not None and name not in self.only:
                continue
            try:
                configs[name] = (PolicyConfig.from_dict(config), source)
            except Exception:  # noqa: BLE001 - one broken policy must not stop the others
                log.exception("policy %s has an invalid config; not learning it", name)
        return configs

    def _slots(self) -> dict[int, SlotRules]:
        with self.engine.connect() as connection:
            rows = connection.execute(select(Slot.__table__)).mappings().all()
        return {row["id"]: SlotRules.from_row(row) for row in rows}

    def step(self, now: datetime | None = None) -> StepReport:
        """One batch for every policy this learner holds (takes free leases, renews held ones)."""
        with self._lock:
            now = now or datetime.now(UTC)
            configs = self._policy_configs()
            slots = self._slots()
            total = StepReport()
            for name in list(self.policies):
                if name not in configs or configs[name] != (self.policies[name].config, self.policies[name].source):
                    self._drop(name)  # deleted, or its options (or source) changed: start over from its snapshot
            for name, (config, source) in configs.items():
                renewed = self._renewed.get(name)
                # renew a third of the way into the lease (each renewal is a durable write)
                if renewed is None or time.monotonic() - renewed > self.settings.lease_ttl_s / 3:
                    if not acquire_lease(self.engine, name, self.holder, self.settings.lease_ttl_s):
                        self._renewed.pop(name, None)
                        if name in self.policies:
                            log.warning("lease of policy %s lost to another learner", name)
                            self.policies.pop(name).close()
                        continue
                    self._renewed[name] = time.monotonic()
                learner = self.policies.get(name)
                if learner is None:
                    learner = self.policies[name] = PolicyLearner(self.engine, name, config, self.settings, self.holder,
                                                                  clock=self.clock, source=source)
                before = learner.version
                report = learner.step(now, slots, self._catalogs)
                if report.snapshots and self.on_snapshot is not None and learner.version != before:
                    self.on_snapshot(name, learner.version)
                total = total + report
            return total

    def run_until_idle(self, now: datetime | None = None, max_steps: int = 100_000) -> StepReport:
        """Step until a step processes nothing, then snapshot what is unsaved (for tests, benchmarks, ``--once``)."""
        total = StepReport()
        for _ in range(max_steps):
            report = self.step(now)
            total = total + report
            if report.processed == 0:
                break
        return total + self.flush(now)

    def flush(self, now: datetime | None = None) -> StepReport:
        """Snapshot every policy with unsaved learning."""
        with self._lock:
            written = 0
            for name, learner in self.policies.items():
                version = learner.snapshot(now)
                if version is not None:
                    written += 1
                    if self.on_snapshot is not None:
                        self.on_snapshot(name, version)
            return StepReport(snapshots=written)

    def wait_after(self, report: StepReport) -> float:
        """How long ``run`` sleeps after a step that reported ``report``.

        None after a step that learned and found nothing waiting (a backlog: go on). While
        decisions wait for their window, until the first is learnable, but at least
        ``batch_wait_s`` (one step then takes all that became ready meanwhile); with nothing to
        read, ``poll_interval_s``. Never past the moment unsaved learning is due for a snapshot.
        """
        s = self.settings
        if report.processed and not report.waiting:
            return 0.0
        if report.waiting and report.ready_in_s is not None:
            wait = min(s.poll_interval_s, max(s.batch_wait_s, report.ready_in_s))
        else:
            wait = s.poll_interval_s
        with self._lock:
            due = [d for d in (p.snapshot_due_in() for p in self.policies.values()) if d is not None]
        return min([wait, *due])

    def run(self, stop: threading.Event) -> None:
        """Step until ``stop`` is set; then write the last snapshots and release the leases."""
        while not stop.is_set():
            try:
                report = self.step()
            except Exception:  # noqa: BLE001 - a database hiccup must not end the learner
                log.exception("learner step failed")
                report = StepReport()
            wait = self.wait_after(report)
            if wait > 0:
                stop.wait(wait)
        self.close()

    def _drop(self, name: str) -> None:
        self._renewed.pop(name, None)
        learner = self.policies.pop(name)
        learner.close()

    def close(self) -> None:
        """Write unsaved learning and release every lease (graceful stop)."""
        try:
            self.flush()
        except Exception:  # noqa: BLE001
            log.exception("final snapshot failed")
        with self._lock:
            for name in list(self.policies):
                try:
                    release_lease(self.engine, name, self.holder)
                except Exception:  # noqa: BLE001
                    log.exception("cannot release the lease of %s", name)
                self._drop(name)


# --------------------------------------------------------------------------- embedded + CLI


async def startup(app: Any) -> None:
    """Start the embedded learner when ``settings.embedded_learner``: ``slotbandit learn`` as a
    child process of this worker.

    A process, not a thread: VW holds the GIL while it learns, and a learner thread put the
    p99 of a decision at 84 ms at 1,000 decisions/s (``benchmarks/decide.py --learner``).
    Serving workers load its snapshots through their registry poll. The child leaves when this
    process does, even after a SIGKILL (``--exit-with-parent``); leases keep one learner per
    policy when several workers each start one. It runs at nice 10: when the cores are busy the
    decisions go first and learning catches up after.
    """
    settings: ServiceSettings = app.state.settings
    if not settings.embedded_learner:
        return
    env = child_environment(SLOTBANDIT_DATABASE_URL=settings.database_url, SLOTBANDIT_AUTO_MIGRATE="0",
                            SLOTBANDIT_SQLITE_SYNCHRONOUS=settings.sqlite_synchronous)
    process = subprocess.Popen(
        [sys.executable, "-m", "api.cli", "learn", "--exit-with-parent", str(os.getpid()), "--nice", "10",
         "--log-level", "warning"],
        env=env,
    )
    app.state.update(learner_process=process)


async def shutdown(app: Any) -> None:
    import asyncio

    process: subprocess.Popen[bytes] | None = getattr(app.state, "learner_process", None)
    if process is None or process.poll() is not None:
        return
    process.terminate()  # the learner finishes its step, writes its snapshots, releases its leases
    try:
        await asyncio.to_thread(process.wait, 60.0)
    except subprocess.TimeoutExpired:
        process.kill()
        await asyncio.to_thread(process.wait, 10.0)


def _watch_parent(parent: int, stop: threading.Event) -> None:
    while not stop.wait(0.5):
        if os.getppid() != parent:
            log.warning("the server process %d is gone: the embedded learner stops", parent)
            stop.set()


def _learn_command(args: argparse.Namespace, settings: ServiceSettings) -> int:
    from api.db.engine import make_engine, migrate

    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.nice:
        os.nice(args.nice)
    if settings.auto_migrate:
        migrate(settings.database_url)
    engine = make_engine(settings.database_url, synchronous=settings.sqlite_synchronous)
    learner = Learner(engine, LearnerSettings.from_env(), policies=args.policy)
    try:
        if args.once:
            report = learner.run_until_idle()
            learner.close()
            print(f"learned {report.learned}, skipped {report.skipped}, snapshots {report.snapshots}")
            return 0
        stop = threading.Event()
        if args.exit_with_parent:
            threading.Thread(target=_watch_parent, args=(args.exit_with_parent, stop), name="parent-watch",
                             daemon=True).start()

        def on_signal(signum: int, _frame: object) -> None:
            log.info("signal %d: finishing the current step", signum)
            stop.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        log.info("learner %s started", learner.holder)
        learner.run(stop)
        return 0
    finally:
        engine.dispose()


def add_commands(subparsers: Any, command: Callable[[str], Callable[[Any], Any]]) -> None:
    """``slotbandit learn``: the learner as its own process (one per deployment; SIGTERM stops it cleanly)."""
    learn = subparsers.add_parser("learn", help="run the learner as its own process (multi-worker deployments)")
    learn.add_argument("--policy", action="append", help="learn only this policy (repeatable)")
    learn.add_argument("--once", action="store_true", help="learn what is ready, snapshot, and exit")
    learn.add_argument("--log-level", default="info")
    learn.add_argument("--nice", type=int, default=0, choices=range(0, 20), metavar="0-19",
                       help="lower this process's CPU priority (the embedded learner uses 10)")
    learn.add_argument("--exit-with-parent", type=int, metavar="PID",
                       help="stop when process PID is gone (the server that started this learner)")
    command("learn")(_learn_command)
