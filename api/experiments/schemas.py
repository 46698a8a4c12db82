"""The request bodies of the experiments API (msgspec structs, decoded by ``api.schemas.decode_request``)."""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta, Struct

from api import schemas

__all__ = ["MAX_ARMS", "AnalysisIn", "ArmIn", "ExperimentIn", "GuardrailsIn"]


MAX_ARMS = 10


Share = Annotated[float, Meta(gt=0.0, le=1.0)]
Start = Literal["snapshot", "scratch"]


class ArmIn(Struct, forbid_unknown_fields=True):
    name: schemas.Name
    policy: schemas.Name | schemas.PolicyRequest
    share: Share
    start: Start | None = None


class GuardrailsIn(Struct, forbid_unknown_fields=True, omit_defaults=True):
    max_fallback_rate: Annotated[float, Meta(ge=0.0, le=1.0)] | None = None
    max_latency_ms: Annotated[float, Meta(gt=0.0, le=60_000.0)] | None = None


class AnalysisIn(Struct, forbid_unknown_fields=True, omit_defaults=True):
    binary: bool | None = None
    level: float | None = None
    power: float | None = None
    target_relative_lift: float | None = None
    sequential: bool | None = None
    planned_units: int | None = None
    burn_in_units: int | None = None


class ExperimentIn(Struct, forbid_unknown_fields=True):
    slot: schemas.Name
    arms: Annotated[list[ArmIn], Meta(min_length=2, max_length=MAX_ARMS)]
    control: schemas.Name
    name: Annotated[str, Meta(min_length=1, max_length=128)] | None = None
    metric: Literal["reward_per_decision", "reward_per_unit"] = "reward_per_decision"
    learning_start: Start = "scratch"
    analysis: AnalysisIn | None = None
    guardrails: GuardrailsIn | None = None
