"""Exceptions raised by ``bandits``.

BanditError
├── InvalidFeature      a feature name or value that cannot be encoded (NaN, inf, too long, wrong type)
├── InvalidPolicy       a policy configuration outside the validated set
├── InvalidCandidates   an empty, duplicated or fully excluded candidate set
├── InvalidReward       a reward rule (aggregation, range, default) or reward rows that do not fit it
└── ModelError          a Vowpal Wabbit model that cannot be loaded or used

Each carries ``field``: the dotted name of the offending input, so that the
service can answer with a 4xx that names it.
"""

from __future__ import annotations

__all__ = ["BanditError", "InvalidCandidates", "InvalidFeature", "InvalidPolicy", "InvalidReward", "ModelError"]


class BanditError(Exception):
    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


class InvalidFeature(BanditError):
    pass


class InvalidPolicy(BanditError):
    pass


class InvalidCandidates(BanditError):
    pass


class InvalidReward(BanditError):
    pass


class ModelError(BanditError):
    pass
