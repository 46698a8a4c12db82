"""The holdout: a salted-hash share of units served the slot's baseline and never learned from, and the
lift of personalization against it (:func:`holdout_lift`).

Assignment (sticky, independent of experiments and of sampling)
    ``u = HMAC-SHA256(secret, "holdout" 0x00 slot 0x00 unit)`` as 53 bits in [0, 1)
    (``bandits.sampling.uniform_draw``: the server secret is the salt, the slot name makes slots
    independent); the unit is held out when ``u < holdout_share``. The unit is the request's
    ``unit_id``, else the event id (every decision its own unit). Raising the share keeps every
    held-out unit held out (the draw is fixed, the threshold moves). Only decisions that would be
    personalized are held out: with consent, in ``online`` learning mode; a held-out unit is not
    assigned to a running experiment's arm.

What a held-out decision is
    The slot's baseline: its default block with probability 1, or uniform over the candidates when
    it has none (or the default is not among them). It is logged under the slot's policy with
    ``arm = "holdout"`` (and no experiment), ``policy_kind`` ``default`` or ``uniform`` and its
    exact pmf, so offline evaluation can use it like any logged decision; the learner skips it with
    the reason ``holdout`` (``api.learner``), and the offline log marks it not learnable.

Lift (:func:`holdout_lift`)
    The slot's consented ``online`` decisions whose reward window has closed, split into
    ``holdout`` and ``personalized`` (everything else, experiment arms included), each decision
    with the reward the learner would learn it with (``bandits.rewards.aggregate``: the slot's
    window and rule). Units are the unit of analysis: per (group, unit) the reward total and the
    decision count become ``analysis.experiments.ArmStats``, and
    ``analysis.experiments.analyze_experiment`` gives what an experiment report gives: per group
    the reward per decision with its interval (delta method over units), the lift of
    ``personalized`` against ``holdout`` (absolute and relative) with its interval and p-value, the
    sample-ratio check of the observed share against the setting, and verdict lines.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from bandits.sampling import uniform_draw

__all__ = ["HOLDOUT_ARM", "MAX_HOLDOUT_SHARE", "holdout_draw", "holdout_lift", "in_holdout"]

HOLDOUT_ARM = "holdout"
"""The ``arm`` a held-out decision logs (with ``experiment_id`` NULL)."""
MAX_HOLDOUT_SHARE = 0.5
"""Most of a slot's units that may be held out."""
LIFT_MAX_DECISIONS = 500_000
"""The lift reads at most this many of the slot's newest decisions."""
LIFT_DEFAULT_DAYS = 28.0
"""... of the last this many days, unless the caller says ``since``."""


def holdout_draw(secret: bytes, slot: str, unit: str) -> float:
    """The unit's fixed draw in [0, 1) for the holdout of ``slot``."""
    return uniform_draw(secret, f"holdout\x00{slot}\x00{unit}")


def in_holdout(secret: bytes, slot: str, unit: str, share: float) -> bool:
    """Is ``unit`` in the holdout of ``slot`` at ``share``? (module docstring)."""
    return share > 0.0 and holdout_draw(secret, slot, unit) < share


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def holdout_lift(engine: Any, slot: str, *, since: datetime | None = None, now: datetime | None = None,
                 level: float = 0.95, max_decisions: int = LIFT_MAX_DECISIONS) -> dict[str, Any]:
    """The lift of personalization against the holdout of ``slot`` (module docstring), JSON-ready.

    ``since`` defaults to :data:`LIFT_DEFAULT_DAYS` ago; at most ``max_decisions`` newest decisions.
    Raises ``ApiError(404)`` for an unknown slot.
    """
    import numpy as np
    from sqlalchemy import select

    from analysis.experiments import AnalysisConfig, ArmStats, analyze_experiment
    from api.db.models import Decision, Reward, Slot
    from api.errors import ApiError
    from bandits.rewards import RewardRule, aggregate

    now = now or datetime.now(UTC)
    since = since or now - timedelta(days=LIFT_DEFAULT_DAYS)
    d = Decision.__table__
    with engine.connect() as connection:
        slot_row = connection.execute(select(Slot.__table__).where(Slot.name == slot)).mappings().first()
        if slot_row is None:
            raise ApiError(404, "unknown_slot", f"slot '{slot}' does not exist", "slot")
        rule = RewardRule(slot_row["reward_aggregation"], float(slot_row["default_reward"]),
                          float(slot_row["reward_min"]), float(slot_row["reward_max"]))
        bound = since if engine.dialect.name != "sqlite" else since.astimezone(UTC).replace(tzinfo=None)
        rows = connection.execute(
            select(d.c.seq, d.c.event_id, d.c.unit_key, d.c.arm, d.c.experiment_id, d.c.created_at)
            .where(d.c.slot_id == slot_row["id"], d.c.created_at >= bound, d.c.consent.is_(True),
                   d.c.learning_mode == "online")
            .order_by(d.c.seq.desc()).limit(max_decisions)
        ).all()
        rewards: dict[str, list[tuple[float, datetime]]] = {}
        if rows:
            low, high = rows[-1].seq, rows[0].seq
            for event_id, value, created in connection.execute(
                select(Reward.event_id, Reward.value, Reward.created_at).join(d, d.c.event_id == Reward.event_id)
                .where(d.c.slot_id == slot_row["id"], d.c.seq >= low, d.c.seq <= high)
                .order_by(Reward.created_at, Reward.id)
            ):
                rewards.setdefault(event_id, []).append((float(value), _aware(created)))
    share = float(slot_row["holdout_share"] or 0.0)
    window = timedelta(seconds=float(slot_row["reward_window_s"]))
    groups: dict[str, tuple[list[str], list[float]]] = {HOLDOUT_ARM: ([], []), "personalized": ([], [])}
    open_windows = 0
    for row in rows:
        window_end = _aware(row.created_at) + window
        if window_end > now:
            open_windows += 1
            continue
        value = aggregate([v for v, at in rewards.get(row.event_id, ()) if at <= window_end], rule)
        held = row.arm == HOLDOUT_ARM and row.experiment_id is None
        units, values = groups[HOLDOUT_ARM if held else "personalized"]
        units.append(row.unit_key or f"event:{row.event_id}")
        values.append(value)

    stats: dict[str, ArmStats] = {}
    counts: dict[str, int] = {}
    binary = True
    for name, (units, values) in groups.items():
        counts[name] = len(values)
        if not units:
            stats[name] = ArmStats.empty()
            continue
        _, inverse = np.unique(np.array(units), return_inverse=True)
        reward_array = np.asarray(values, dtype=np.float64)
        binary = binary and bool(np.isin(reward_array, (0.0, 1.0)).all())
        stats[name] = ArmStats.from_unit_totals(np.bincount(inverse, weights=reward_array),
                                                np.bincount(inverse).astype(np.float64))
    result: dict[str, Any] = {
        "slot": slot, "holdout_share": share, "since": since.isoformat(), "until": now.isoformat(),
        "decisions": counts, "open_windows": open_windows, "analysis": None, "codes": [],
    }
    if share <= 0.0:
        result["codes"].append("no_holdout")
        if counts[HOLDOUT_ARM] == 0:
            return result
        share = counts[HOLDOUT_ARM] / max(1, sum(counts.values()))  # a past holdout: its observed share
        result["codes"].append("holdout_share_observed")
    analysis = analyze_experiment(
        stats, control=HOLDOUT_ARM, shares=_shares(share),
        config=AnalysisConfig(metric="reward_per_decision", binary=binary, level=level),
    )
    result["analysis"] = analysis.to_dict()
    comparison = analysis.comparison("personalized")
    result["lift"] = {
        "absolute": comparison.absolute_lift, "absolute_ci": comparison.absolute_ci,
        "relative": comparison.relative_lift, "relative_ci": comparison.relative_ci,
        "p_value": comparison.p_value, "significant": comparison.significant,
    }
    result["verdicts"] = list(analysis.verdicts)
    plain: dict[str, Any] = _plain(result)
    return plain


def _shares(share: float) -> dict[str, float]:
    share = min(max(share, 1e-6), 1.0 - 1e-6)
    return {HOLDOUT_ARM: share, "personalized": 1.0 - share}


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, float) and value != value:
        return None
    return value
