"""Reproducible sampling from a pmf.

The seed is derived from the event id and a server secret (HMAC-SHA256), so the
same event id reproduces the same choice while a caller who does not know the
secret cannot predict or steer it. The probability that is logged is exactly
the probability with which the index was drawn: the normalised pmf entry.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Sequence

from bandits.errors import InvalidCandidates

__all__ = ["normalize_pmf", "sample_index", "uniform_draw"]


def uniform_draw(secret: bytes, event_id: str) -> float:
    """A number in [0, 1) fixed by (secret, event id): 53 bits of an HMAC-SHA256."""
    digest = hmac.new(secret, event_id.encode("utf-8"), hashlib.sha256).digest()
    return (int.from_bytes(digest[:8], "big") >> 11) / float(1 << 53)


def normalize_pmf(pmf: Sequence[float]) -> list[float]:
    """Clean a model's pmf: negatives and non-finite entries become 0, the rest sums to 1.

    VW's float32 pmfs sum to 1 only up to rounding; a pmf with no mass left
    becomes uniform (the honest fallback for a model that says nothing).
    """
    clean = [p if math.isfinite(p) and p > 0.0 else 0.0 for p in pmf]
    total = math.fsum(clean)
    if not clean:
        raise InvalidCandidates("cannot sample from an empty pmf", field="candidates")
    if total <= 0.0:
        return [1.0 / len(clean)] * len(clean)
    return [p / total for p in clean]


def sample_index(pmf: Sequence[float], draw: float) -> int:
    """Index chosen by inverse-CDF sampling of a normalised pmf at ``draw`` in [0, 1)."""
    cumulative = 0.0
    last_positive = 0
    for index, probability in enumerate(pmf):
        if probability <= 0.0:
            continue
        last_positive = index
        cumulative += probability
        if draw < cumulative:
            return index
    return last_positive  # rounding left draw above the final cumulative sum
