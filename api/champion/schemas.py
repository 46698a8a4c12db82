"""Request bodies and the stored setting of champion and challenger (msgspec structs, bounded)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from msgspec import Meta, Struct

__all__ = ["AutoOptimizeIn", "RunIn"]

MAX_SETTING_CANDIDATES = 10
"""Most candidate configurations an auto-optimize setting names (each is a replay per run)."""


class AutoOptimizeIn(Struct, forbid_unknown_fields=True):
    """A slot's ``auto_optimize`` setting (``PUT /v1/slots/{slot}``)."""

    mode: Literal["off", "dry-run", "apply"] = "off"
    """``off`` (default); ``dry-run`` records the recommendation only; ``apply`` promotes."""
    every_hours: Annotated[float, Meta(ge=0.01, le=24 * 30)] = 24.0
    """The schedule: one run per this many hours (by any worker; ``auto_optimize_state``)."""
    window_hours: Annotated[float, Meta(ge=0.01, le=24 * 90)] = 168.0
    """Recent traffic: the decisions of the last this many hours are evaluated."""
    max_decisions: Annotated[int, Meta(ge=20, le=1_000_000)] = 50_000
    """... at most this many of the newest."""
    min_decisions: Annotated[int, Meta(ge=20, le=1_000_000)] = 1_000
    """Fewer decisions in the window: no evaluation, no change."""
    candidates: Annotated[dict[str, dict[str, Any]], Meta(max_length=MAX_SETTING_CANDIDATES)] = {}
    """Candidate configurations replayed beside the challengers (``{"kind": "linear", ...}`` or VW options)."""
    standard_candidates: bool = False
    """Also replay ``analysis.evaluation.STANDARD_CANDIDATES``."""
    method: Literal["ips", "snips", "dm", "dr", "switch_dr"] = "dr"
    level: Annotated[float, Meta(ge=0.5, le=0.999)] = 0.95
    """Confidence level of the paired lower bound (and 1 - level the Holm-adjusted p threshold)."""


class RunIn(Struct, forbid_unknown_fields=True):
    """``POST /v1/slots/{slot}/auto-optimize/run``: run now, whatever the schedule."""

    mode: Literal["dry-run", "apply"] | None = None
    """Default: the setting's mode (``dry-run`` when the setting is off)."""
