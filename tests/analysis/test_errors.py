"""The exception tree of ``analysis``: one root, drawn in ``analysis/errors.py``'s docstring and pinned
here; every module raises from it and re-exports the names it always had."""

from __future__ import annotations

import re

import pytest

import analysis
from analysis import errors

TREE = {
    "AnalysisError": ValueError,
    "LogError": errors.AnalysisError,
    "FormatError": errors.LogError,
    "EstimatorError": errors.AnalysisError,
    "EvaluationError": errors.EstimatorError,
    "ReplayError": errors.AnalysisError,
    "ExperimentError": errors.AnalysisError,
    "InvalidStatistics": errors.ExperimentError,
    "InvalidConfig": errors.ExperimentError,
    "InvalidExperiment": errors.ExperimentError,
}


def test_the_tree_is_pinned() -> None:
    assert sorted(errors.__all__) == sorted(TREE)
    for name, parent in TREE.items():
        cls = getattr(errors, name)
        assert cls.__bases__ == (parent,), name


def test_the_docstring_draws_the_tree() -> None:
    doc = errors.__doc__ or ""
    drawn = {}
    stack: list[str] = []
    for line in doc.splitlines():
        match = re.match(r"^((?:│   |    )*)(?:[├└]── )?([A-Z]\w+Error|Invalid\w+)\s", line)
        if not match or not (line.startswith(("AnalysisError", "├", "└", "│", "    "))):
            continue
        depth = len(match.group(1)) // 4 + (1 if "──" in line else 0)
        stack[depth:] = [match.group(2)]
        drawn[match.group(2)] = stack[depth - 1] if depth else None
    assert drawn == {name: (parent.__name__ if parent is not ValueError else None) for name, parent in TREE.items()}


def test_the_modules_raise_from_the_root() -> None:
    from analysis import dsjson, estimators, evaluation, experiments, intervals, log

    assert log.LogError is errors.LogError and dsjson.FormatError is errors.FormatError
    assert intervals.EstimatorError is estimators.EstimatorError is errors.EstimatorError
    assert evaluation.EvaluationError is errors.EvaluationError
    assert experiments.InvalidConfig is errors.InvalidConfig
    assert analysis.AnalysisError is errors.AnalysisError and analysis.ReplayError is errors.ReplayError


@pytest.mark.parametrize(
    ("call", "exc", "field"),
    [
        (lambda: analysis.ArmStats(-1, 0, 0, 0, 0, 0), errors.InvalidStatistics, "units"),
        (lambda: analysis.AnalysisConfig(level=2.0), errors.InvalidConfig, "level"),
        (lambda: analysis.normal_interval([1.0, 2.0], level=1.5), errors.EstimatorError, "level"),
        (lambda: analysis.drop_context(analysis.BanditLog.from_records([]), "nope"), errors.ReplayError, "group"),
    ],
)
def test_errors_name_their_field(call, exc, field) -> None:
    with pytest.raises(exc) as caught:
        call()
    assert isinstance(caught.value, errors.AnalysisError) and caught.value.field == field
