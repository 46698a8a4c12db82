"""Auto-optimize: on a schedule, evaluate the online policy against its challengers and candidate
configurations on recent traffic, and promote only on a paired lower-bound win.

One run for a slot (:func:`run_auto_optimize`):

1. The decisions of the last ``window_hours`` (at most ``max_decisions``, the newest) must number
   at least ``min_decisions``, else nothing is evaluated.
2. An offline evaluation (``api.offline``: a stored ``evaluations`` row, visible in
   ``GET /v1/evaluations``) of ``online = snapshot`` (the serving policy's newest snapshot,
   predict-only; the logging policy when it has none) against every challenger's configuration and
   every candidate configuration of the setting, each replayed over the window with progressive
   validation (``analysis.evaluation.evaluate``). The online snapshot learned this window, the
   replays start cold: both handicap the challengers, so a promotion is conservative.
3. The recommendation rule of ``analysis.evaluation`` decides: the paired difference with the
   online policy has its lower bound above 0 and a Holm-adjusted p-value below 1 - level, the
   winner's estimate is not flagged untrustworthy, and the logging-health check passes (checked
   again here: no promotion on a log whose propensities disagree with its choices).
4. ``dry-run`` records the recommendation as a ``policy_revisions`` row (action
   ``recommendation``) and changes nothing; ``apply`` promotes (``api.champion.revisions``): a
   challenger with its own snapshot (trained on the whole stream), a candidate configuration with
   a model trained on the slot's log.

Schedule and claim. The auto-optimize job runs in every serving worker every
:data:`POLL_INTERVAL_S`; a slot is run by the worker that takes its ``auto_optimize_state`` row
with one conditional UPDATE (free or expired claim, and ``last_run_at`` at least ``every_hours``
ago), so one worker at a time runs it, once per period.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from api.champion.challengers import serving_policy
from api.champion.revisions import promote, record_recommendation
from api.champion.schemas import AutoOptimizeIn
from api.db.champion_models import AutoOptimizeState
from api.db.engine import write_lock
from api.db.evaluation_models import StoredEvaluation
from api.db.models import Decision, Policy, Slot
from api.errors import ApiError
from api.learner import latest_snapshot
from api.offline import (
    _bind_time,
    candidate_config,
    candidate_configs,
    candidate_options,
    evaluation_dict,
    load_log,
    run_evaluation,
)
from bandits.choosers import MODEL_KINDS
from bandits.linear import LinearConfig
from bandits.policies import PolicyConfig

__all__ = ["ACTOR", "POLL_INTERVAL_S", "claim_slot", "release_slot", "run_auto_optimize", "run_due"]

log = logging.getLogger("slotbandit.champion")

ACTOR = "auto-optimize"
"""The actor of a scheduled run's revisions."""
POLL_INTERVAL_S = 60.0
"""How often each worker's job looks for slots whose auto-optimize is due."""
CLAIM_TTL_S = 3600.0
"""A claim older than this belongs to a worker that died: another may take the slot."""
_HOLDER = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


# --------------------------------------------------------------------------- claim


def claim_slot(engine: Engine, slot: str, *, every_s: float | None, now: datetime | None = None,
               holder: str = _HOLDER) -> bool:
    """Take the slot's claim if it is free (or expired) and, with ``every_s``, its run is due."""
    now = now or datetime.now(UTC)
    state = AutoOptimizeState
    free = state.claimed_until.is_(None) | (state.claimed_until < now)
    conditions = [state.slot_name == slot, free]
    if every_s is not None:
        conditions.append(state.last_run_at.is_(None) | (state.last_run_at <= now - timedelta(seconds=every_s)))
    with write_lock(engine), engine.begin() as connection:
        taken = connection.execute(update(state).where(*conditions).values(
            holder=holder, claimed_until=now + timedelta(seconds=CLAIM_TTL_S))).rowcount
    if taken:
        return True
    try:
        with write_lock(engine), engine.begin() as connection:
            connection.execute(insert(state).values(slot_name=slot, holder=holder,
                                                    claimed_until=now + timedelta(seconds=CLAIM_TTL_S)))
        return True
    except IntegrityError:
        return False  # claimed by another worker, or not due


def release_slot(engine: Engine, slot: str, outcome: Mapping[str, Any], *, holder: str = _HOLDER,
                 now: datetime | None = None) -> None:
    with write_lock(engine), engine.begin() as connection:
        connection.execute(update(AutoOptimizeState).where(
            AutoOptimizeState.slot_name == slot, AutoOptimizeState.holder == holder).values(
            holder=None, claimed_until=None, last_run_at=now or datetime.now(UTC), last_outcome=dict(outcome)))


def run_due(engine: Engine, now: datetime | None = None) -> list[dict[str, Any]]:
    """One pass of the job: run every slot whose auto-optimize is on and due (and claimable here)."""
    with engine.connect() as connection:
        slots = connection.execute(select(Slot.name, Slot.auto_optimize).where(Slot.auto_optimize.is_not(None))).all()
    outcomes = []
    for name, setting in slots:
        if not setting or setting.get("mode", "off") == "off":
            continue
        if not claim_slot(engine, name, every_s=float(setting["every_hours"]) * 3600.0, now=now):
            continue
        outcome: dict[str, Any] = {"outcome": "failed"}
        try:
            outcome = run_auto_optimize(engine, name, actor=ACTOR, now=now)
        except Exception as error:  # noqa: BLE001 - one slot's failure must not stop the others
            log.exception("auto-optimize of slot %s failed", name)
            outcome = {"slot": name, "outcome": "failed", "reason": str(getattr(error, "detail", error))[:500]}
        finally:
            release_slot(engine, name, outcome, now=now)
        outcomes.append(outcome)
    return outcomes


# --------------------------------------------------------------------------- one run


def _setting(slot_row: Mapping[str, Any]) -> dict[str, Any]:
    from api.champion.schemas import AutoOptimizeIn

    return auto_optimize_setting(AutoOptimizeIn(**(slot_row.get("auto_optimize") or {})))


def run_auto_optimize(engine: Engine, slot: str, *, actor: str, mode: str | None = None,
                      now: datetime | None = None) -> dict[str, Any]:
    """Evaluate and (in ``apply`` mode) promote, once (module docstring); returns the outcome.

    ``mode`` overrides the setting's (``dry-run`` when it is off). The caller holds the slot's claim.
    """
    now = now or datetime.now(UTC)
    with engine.connect() as connection:
        slot_row, policy = serving_policy(connection, slot)
        setting = _setting(slot_row)
        mode = mode or (setting["mode"] if setting["mode"] != "off" else "dry-run")
        challengers = {row.name: row.config for row in connection.execute(
            select(Policy.name, Policy.config).where(Policy.source == policy).order_by(Policy.name))}
        since = now - timedelta(hours=float(setting["window_hours"]))
        count = connection.execute(select(func.count()).select_from(Decision).where(
            Decision.slot_id == slot_row["id"], Decision.created_at >= _bind_time(engine, since))).scalar_one()
    outcome: dict[str, Any] = {"slot": slot, "policy": policy, "mode": mode, "at": now.isoformat(),
                               "challengers": sorted(challengers), "evaluation_id": None}
    if count < setting["min_decisions"]:
        return {**outcome, "outcome": "too_few_decisions",
                "reason": f"{count} decisions in the window, fewer than min_decisions = {setting['min_decisions']}"}
    raw = {name: _as_candidate(config) for name, config in challengers.items()}
    for name, options in setting["candidates"].items():
        if name in raw:
            return {**outcome, "outcome": "failed",
                    "reason": f"candidate '{name}' has the name of a challenger", "field": f"auto_optimize.candidates.{name}"}
        raw[name] = options
    configs = candidate_configs(raw, standard=bool(setting["standard_candidates"]), field="auto_optimize.candidates")
    if not configs:
        return {**outcome, "outcome": "nothing_to_evaluate", "reason": "no challengers and no candidate configurations"}
    request = {
        "slot": slot, "since": since.isoformat(), "until": None,
        "candidates": {name: candidate_options(config) for name, config in configs.items()},
        "method": setting["method"], "interval": "normal", "level": setting["level"],
        "limit": setting["max_decisions"], "online": "snapshot", "feature_importance": False, "time_buckets": None,
        "auto_optimize": {"mode": mode, "challengers": sorted(challengers), "actor": actor},
    }
    with engine.begin() as connection:
        started = datetime.now(UTC)
        evaluation_id = int(connection.execute(insert(StoredEvaluation).values(
            slot_name=slot, status="running", progress=0.0, request=request, started_at=started,
            heartbeat_at=started)).inserted_primary_key[0])  # type: ignore[index]
    outcome["evaluation_id"] = evaluation_id
    run_evaluation(engine, evaluation_id)
    stored = evaluation_dict(engine, evaluation_id)
    if stored["status"] != "done":
        return {**outcome, "outcome": "failed", "reason": stored.get("error") or stored["status"]}
    result = stored["result"]
    evidence = _evidence(result, evaluation_id)
    outcome["evidence"] = evidence
    winner = evidence["candidate"]
    if winner is None or not evidence["health_ok"]:
        why = evidence["reason"] if evidence["health_ok"] else "the logging-health check failed"
        return {**outcome, "outcome": "keep", "reason": why}
    challenger = winner if winner in challengers else None
    new_config = (dict(challengers[winner]) if challenger is not None
                  else _policy_config(candidate_config(request["candidates"][winner])))
    if mode == "dry-run":
        revision = record_recommendation(engine, slot, policy, new_config=new_config, challenger=challenger,
                                         evidence=evidence, actor=actor)
        return {**outcome, "outcome": "recommended", "revision": revision["id"], "winner": winner}
    if challenger is not None:
        with engine.connect() as connection:
            snap = latest_snapshot(connection, challenger)
        if snap is None or not snap.model or not snap.metrics.get("trained", True):
            return {**outcome, "outcome": "keep", "winner": winner,
                    "reason": f"challenger '{winner}' won but has no trained snapshot yet"}
        model, cursor, metrics = snap.model, snap.cursor, snap.metrics
    else:
        model, cursor, metrics = _train_on_log(engine, slot_row, candidate_config(request["candidates"][winner]),
                                               since, now)
    revision = promote(engine, slot, policy, new_config=new_config, new_model=model, new_cursor=cursor,
                       new_metrics=metrics, challenger=challenger, evidence=evidence, actor=actor)
    with engine.begin() as connection:
        connection.execute(update(StoredEvaluation).where(StoredEvaluation.id == evaluation_id).values(
            applied={"candidate": winner, "policy": policy, "revision": revision["id"],
                     "policy_revision": revision["policy_revision"], "snapshot_version": revision["snapshot_version"],
                     "actor": actor, "at": datetime.now(UTC).isoformat()}))
    log.info("auto-optimize promoted %s on slot %s (revision %d)", winner, slot, revision["id"])
    return {**outcome, "outcome": "promoted", "revision": revision["id"], "winner": winner}


def _as_candidate(config: Mapping[str, Any]) -> dict[str, Any]:
    """A challenger's stored policy configuration as candidate options (``api.offline.candidate_config``)."""
    policy = PolicyConfig.from_dict(config)
    assert policy.kind in MODEL_KINDS
    if policy.kind == "linear":
        assert policy.linear is not None
        return candidate_options(policy.linear)
    assert policy.vw is not None
    return candidate_options(policy.vw)


def _policy_config(config: Any) -> dict[str, Any]:
    policy = (PolicyConfig(kind="linear", linear=config) if isinstance(config, LinearConfig)
              else PolicyConfig(kind="vw", vw=config))
    return policy.to_dict()


def _evidence(result: Mapping[str, Any], evaluation_id: int) -> dict[str, Any]:
    recommendation = result.get("recommendation") or {}
    health = result.get("health")
    policies = {p["name"]: p for p in result.get("policies", [])}
    winner = recommendation.get("candidate")
    return {
        "evaluation_id": evaluation_id, "candidate": winner, "difference": recommendation.get("difference"),
        "ci": recommendation.get("ci"), "p_adjusted": recommendation.get("p_adjusted"),
        "level": result.get("level"), "method": result.get("method"), "n": result.get("n"),
        "health_ok": bool(health["ok"]) if health is not None else False,
        "online_value": (policies.get("online") or {}).get("value"),
        "winner_value": (policies.get(winner) or {}).get("value") if winner else None,
        "reason": recommendation.get("reason"),
    }


def _train_on_log(engine: Engine, slot_row: Mapping[str, Any], config: Any, since: datetime,
                  now: datetime) -> tuple[bytes, int, dict[str, Any]]:
    """A candidate configuration trained on the slot's decisions since ``since`` whose window closed."""
    from analysis.replay import replay

    closed = now - timedelta(seconds=float(slot_row["reward_window_s"]))
    bandit_log = load_log(engine, slot_row["name"], since=since, until=closed)
    if bandit_log.n == 0:
        raise ApiError(409, "no_decisions", "no decisions with a closed reward window to train on", "slot")
    trained = replay(bandit_log, config, reward_min=float(slot_row["reward_min"]),
                     reward_max=float(slot_row["reward_max"]), keep_model=True)
    assert trained.model is not None
    loss = None if math.isnan(trained.progressive_loss) else trained.progressive_loss
    metrics: dict[str, Any] = {"decisions_learned": trained.learned, "pv_loss": loss,
               "pv_loss_sum": (loss or 0.0) * trained.learned, "late_rewards": 0, "skipped": {}}
    return trained.model, int(bandit_log.meta["last_seq"]), metrics


def auto_optimize_setting(setting: AutoOptimizeIn) -> dict[str, Any]:
    """The stored form of a validated setting; its candidate configurations are checked (422 naming
    ``auto_optimize.candidates.<name>.<option>``). Here, not in ``api.champion.schemas``: it needs
    ``api.offline``, which needs ``api.schemas``, which holds ``AutoOptimizeIn`` (no import circle)."""
    import msgspec

    from api.offline import candidate_configs, candidate_options

    configs = candidate_configs(setting.candidates, field="auto_optimize.candidates")
    stored: dict[str, Any] = msgspec.structs.asdict(setting)
    stored["candidates"] = {name: candidate_options(config) for name, config in configs.items()}
    return stored
