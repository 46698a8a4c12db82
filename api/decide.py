"""The decide hot path: request -> context features -> policy pmf -> seeded choice -> log row.

Pure computation apart from two reads of shared state (the registry and the
writer's pending rows); the database write is the caller's (``api.log_writer.LogWriter``).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from api.champion.holdout import HOLDOUT_ARM, in_holdout
from api.errors import ApiError
from api.registry import PolicyState, Registry, SlotState
from api.schemas import DecideRequest
from api.settings import ServiceSettings
from bandits.context import ContextLimits, RequestFacts, derive_context
from bandits.errors import BanditError
from bandits.features import validate_features
from bandits.policies import Candidate, UniformPolicy
from bandits.sampling import normalize_pmf, sample_index, uniform_draw

__all__ = ["ArmAssignment", "Decider", "event_token", "response_from_row", "unit_key"]

log = logging.getLogger("slotbandit.decide")
_UNIFORM = UniformPolicy()


def unit_key(secret: bytes, unit_id: str) -> str:
    """Keyed pseudonym of a unit id (HMAC-SHA256, 128 bits hex): the raw id is never stored."""
    return hmac.new(secret, b"unit\x00" + unit_id.encode("utf-8"), hashlib.sha256).hexdigest()[:32]


def event_token(secret: bytes, event_id: str) -> str:
    """HMAC-SHA256(secret, "beacon" 0x00 event_id), 128 bits hex: authorises the activation and
    reward beacons of this one event (``navigator.sendBeacon`` cannot send an API key)."""
    return hmac.new(secret, b"beacon\x00" + event_id.encode("utf-8"), hashlib.sha256).hexdigest()[:32]


@dataclass(frozen=True)
class ArmAssignment:
    experiment_id: int
    arm: str
    policy_name: str


ArmResolver = Callable[[SlotState, str], ArmAssignment | None]


def response_from_row(row: Mapping[str, Any], features: Mapping[str, Mapping[str, Any]], slot: str,
                      secret: bytes) -> dict[str, Any]:
    """The API response of a logged decision (also used to answer an idempotent repeat)."""
    ids = row["candidate_ids"]
    pmf = row["pmf"]
    ranking = sorted(
        ({"id": block_id, "probability": p} for block_id, p in zip(ids, pmf, strict=True)),
        key=lambda item: -item["probability"],
    )
    chosen = row["chosen_block"]
    return {
        "event_id": row["event_id"],
        "slot": slot,
        "block": {"id": chosen, "features": dict(features.get(chosen, {}))},
        "probability": row["probability"],
        "ranking": ranking,
        "policy": row["policy_name"],
        "model_version": row["model_version"],
        "arm": row["arm"],
        "fallback": row["fallback"],
        "token": event_token(secret, row["event_id"]),
    }


class Decider:
    def __init__(self, settings: ServiceSettings, secret: bytes, registry: Registry,
                 on_fallback: Callable[[str, str], None] | None = None) -> None:
        self.settings = settings
        self.secret = secret
        self.registry = registry
        self.limits = ContextLimits(
            max_user_features=settings.max_user_features,
            max_name_length=64,
            max_value_length=settings.max_string_length,
        )
        self.resolve_arm: ArmResolver | None = None
        self._on_fallback = on_fallback

    def slot(self, name: str) -> SlotState:
        """The slot ``name``, read through to the database when this worker has not seen it yet
        (another worker may have just created it); blocks on a miss: call it off the event loop."""
        slot = self.registry.slots.get(name) or self.registry.read_through(name)
        if slot is None:
            raise ApiError(404, "unknown_slot", f"slot '{name}' does not exist", "slot")
        return slot

    def candidates(self, slot: SlotState, request: DecideRequest) -> tuple[tuple[Candidate, ...], bool]:
        """The candidate set after ``exclude``; second item: inline (True) or the catalog."""
        settings = self.settings
        if request.candidates is not None:
            if len(request.candidates) > settings.max_candidates:
                raise ApiError(422, "invalid_request", f"at most {settings.max_candidates} candidates", "candidates")
            seen: set[str] = set()
            pool = []
            for index, item in enumerate(request.candidates):
                if item.id in seen:
                    raise ApiError(422, "invalid_request", f"duplicate candidate id '{item.id}'", f"candidates.{index}.id")
                seen.add(item.id)
                features = validate_features(
                    item.features, field=f"candidates.{index}.features", max_features=settings.max_block_features,
                    max_name_length=64, max_value_length=settings.max_string_length,
                )
                pool.append(Candidate(item.id, features))
            inline = True
        else:
            pool = list(slot.candidates)
            inline = False
        if not pool:
            raise ApiError(422, "invalid_request", "the candidate set is empty (no active blocks and no inline candidates)", "candidates")
        if request.exclude:
            excluded = set(request.exclude)
            kept = [c for c in pool if c.id not in excluded]
            if not kept:
                raise ApiError(422, "invalid_request", "every candidate is excluded", "exclude")
            if len(kept) != len(pool):
                return tuple(kept), True
        return tuple(pool), inline

    def facts(self, request: DecideRequest, headers: Mapping[str, str], client_ip: str | None) -> RequestFacts:
        context = request.context
        time = context.time if context else None
        geo = {name: headers[name] for name in self.settings.geo_headers if name in headers}
        hints = {name: headers[name] for name in ("sec-ch-ua-mobile", "sec-ch-ua-platform", "sec-ch-ua") if name in headers}
        ip = client_ip
        if self.settings.trust_forwarded_for and "x-forwarded-for" in headers:
            ip = headers["x-forwarded-for"].split(",")[0].strip()
        return RequestFacts(
            timestamp=time.timestamp if time else None,
            timezone=time.timezone if time else None,
            user_agent=headers.get("user-agent"),
            client_hints=hints,
            device=(context.device or {}) if context else {},
            location=(context.location or {}) if context else {},
            geo_headers=geo,
            ip=ip,
            user=(context.user or {}) if context else {},
        )

    def decide(self, slot: SlotState, request: DecideRequest, facts: RequestFacts, now: datetime | None = None) -> dict[str, Any]:
        """Build the log row of a new decision (raises ApiError / BanditError on bad input)."""
        now = now or datetime.now(UTC)
        candidates, inline = self.candidates(slot, request)
        context = derive_context(
            facts, now=now, default_timezone=slot.timezone,
            geo_header_names=self.settings.geo_headers, limits=self.limits,
        )
        event_id = request.event_id or uuid.uuid4().hex
        consent = request.consent
        if not consent:
            context.pop("user", None)
        unit = unit_key(self.secret, request.unit_id) if (request.unit_id and consent) else None

        mode = slot.learning_mode
        # the holdout (api.champion.holdout): units served the baseline, never in an experiment
        held_out = consent and mode == "online" and in_holdout(self.secret, slot.name, request.unit_id or event_id,
                                                               slot.holdout_share)
        assignment = None
        if self.resolve_arm is not None and consent and not held_out:
            assignment = self.resolve_arm(slot, request.unit_id or event_id)
        policy_name = assignment.policy_name if assignment else slot.policy_name
        policy: PolicyState | None = self.registry.policies.get(policy_name)

        ids = [c.id for c in candidates]
        fallback_reason: str | None = None
        trained = False
        policy_kind: str = policy.config.kind if policy else "unknown"
        model_version = policy.model_version if policy else 0
        try:
            if not consent or held_out or mode in ("apprentice", "logging-only"):
                pmf = self._default_pmf(slot, ids)
                if pmf is None:
                    pmf = _UNIFORM.pmf(context, candidates)
                    policy_kind = "uniform"
                else:
                    policy_kind = "default"
            elif policy is None:
                raise LookupError(f"policy '{policy_name}' is missing")
            else:
                chooser = policy.chooser
                trained = chooser.trained
                pmf = chooser.pmf(context, candidates, None if inline else slot.catalog_key)
                if len(pmf) != len(ids):
                    raise ValueError("the policy returned a pmf of the wrong length")
            pmf = normalize_pmf(pmf)
        except BanditError:
            raise
        except Exception as error:  # noqa: BLE001 - any policy failure serves the default block
            fallback_reason = f"{type(error).__name__}: {error}"[:256]
            log.warning("decide fallback on slot %s: %s", slot.name, fallback_reason)
            pmf = self._default_pmf(slot, ids) or [1.0 if i == 0 else 0.0 for i in range(len(ids))]
            policy_kind = "default"
            if self._on_fallback is not None:
                self._on_fallback(slot.name, type(error).__name__)

        index = sample_index(pmf, uniform_draw(self.secret, f"{slot.name}\x00{event_id}"))
        return {
            "event_id": event_id,
            "slot_id": slot.id,
            "policy_name": policy_name,
            "policy_kind": policy_kind,
            "model_version": model_version,
            "trained": trained,
            "learning_mode": mode,
            "catalog_version": None if inline else slot.catalog_version,
            "inline_candidates": [{"id": c.id, "features": dict(c.features)} for c in candidates] if inline else None,
            "candidate_ids": ids,
            "pmf": pmf,
            "chosen_index": index,
            "chosen_block": ids[index],
            "probability": pmf[index],
            "context": context,
            "unit_key": unit,
            "experiment_id": assignment.experiment_id if assignment else None,
            "arm": assignment.arm if assignment else (HOLDOUT_ARM if held_out else None),
            "consent": consent,
            "deferred": request.defer_activation,
            "fallback": fallback_reason is not None,
            "fallback_reason": fallback_reason,
            "created_at": now,
            # report segments as columns (migration 0005), from the derived context
            "device_type": context.get("device", {}).get("type"),
            "country": context.get("location", {}).get("country"),
            "daypart": context.get("time", {}).get("daypart"),
        }

    @staticmethod
    def _default_pmf(slot: SlotState, ids: list[str]) -> list[float] | None:
        if slot.default_block is None or slot.default_block not in ids:
            return None
        return [1.0 if block_id == slot.default_block else 0.0 for block_id in ids]
