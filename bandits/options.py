"""Bounds checks shared by the validated policy configurations (``VWConfig``, ``LinearConfig``).

Each raises :class:`bandits.errors.InvalidPolicy` naming ``<prefix>.<name>`` (``policy.vw.epsilon``).
"""

from __future__ import annotations

import math

from bandits.errors import InvalidPolicy

__all__ = ["check_int", "check_number"]


def check_number(prefix: str, name: str, value: object, low: float, high: float) -> None:
    """A finite number (not a bool) within ``[low, high]``."""
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise InvalidPolicy(f"{name} must be a finite number", field=f"{prefix}.{name}")
    if not low <= value <= high:
        raise InvalidPolicy(f"{name} must be within [{low}, {high}]", field=f"{prefix}.{name}")


def check_int(prefix: str, name: str, value: object, low: int, high: int) -> None:
    """An integer (not a bool) within ``[low, high]``."""
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise InvalidPolicy(f"{name} must be an integer within [{low}, {high}]", field=f"{prefix}.{name}")
