"""Exceptions raised by ``analysis``: one root, one tree.

AnalysisError               root; ``field`` names the offending input, ``message`` says why
├── LogError                a log whose columns disagree (lengths, probabilities, indices)
│   └── FormatError         a file that cannot be read as a log; names the line (1-based) and field
├── EstimatorError          invalid input to an estimator or interval (shape, NaN, pmf, level, method)
│   └── EvaluationError     invalid input to ``evaluate`` (``candidates.<name>``, ``method``...)
├── ReplayError             a target policy or replay that cannot run (empty model, bad feature name)
└── ExperimentError         invalid input to the experiment statistics (``analysis.experiments``)
    ├── InvalidStatistics   sufficient statistics that no data can produce
    ├── InvalidConfig       an ``AnalysisConfig`` field outside its documented range
    └── InvalidExperiment   arms, shares and control that do not fit together

``AnalysisError`` is a ``ValueError``: every one of them is bad input, never a broken service.
Statistical degeneracy (no units, zero variance) is not an error: results carry a machine-readable
code instead. The service maps the root to a 4xx in one place (``api/errors.py``).
``tests/analysis/test_errors.py`` pins this tree.
"""

from __future__ import annotations

__all__ = [
    "AnalysisError",
    "EstimatorError",
    "EvaluationError",
    "ExperimentError",
    "FormatError",
    "InvalidConfig",
    "InvalidExperiment",
    "InvalidStatistics",
    "LogError",
    "ReplayError",
]


class AnalysisError(ValueError):
    """Root of the exceptions of ``analysis``."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


class LogError(AnalysisError):
    """A log whose columns disagree (lengths, probabilities, indices)."""


class FormatError(LogError):
    """An input file that cannot be read as a log: names the line (1-based) and the field."""

    def __init__(self, message: str, *, line: int | None = None, field: str | None = None) -> None:
        where = []
        if line is not None:
            where.append(f"line {line}")
        if field is not None:
            where.append(f"field {field!r}")
        super().__init__(f"{', '.join(where)}: {message}" if where else message, field=field)
        self.line = line


class EstimatorError(AnalysisError):
    """Invalid input to an estimator or interval (shape, NaN, pmf, level, method...)."""


class EvaluationError(EstimatorError):
    """Invalid input to :func:`analysis.evaluate`; ``field`` names it (``candidates.<name>``, ``method``...)."""


class ReplayError(AnalysisError):
    """A target policy or replay that cannot run: an empty model, a reward range that is not an
    interval, an unknown context group or feature name."""


class ExperimentError(AnalysisError):
    """Invalid input to the experiment statistics (``analysis.experiments``)."""


class InvalidStatistics(ExperimentError):
    """Sufficient statistics that no data can produce (negative, NaN, impossible sums)."""


class InvalidConfig(ExperimentError):
    """An :class:`~analysis.experiments.AnalysisConfig` field outside its documented range."""


class InvalidExperiment(ExperimentError):
    """Arms, shares and control that do not fit together."""
