"""Offline evaluation and statistics for logged contextual-bandit decisions: no server, no database.

What a data scientist imports to answer "what would policy X have earned on
last week's traffic?" from an exported decision log (DSJSON, CSV, Parquet, or
the Open Bandit Dataset's CSV)::

    import analysis
    from bandits.policies import VWConfig

    log = analysis.read_dsjson("decisions.dsjson")     # slotbandit export --format dsjson
    print(log.n, "events;", "logging ok" if analysis.check_logging(log).ok else "CHECK PROPENSITIES")

    # one target policy, one estimator: always show block "b1"
    est = analysis.estimate(log, analysis.fixed_target(log, "b1"), "dr", "bootstrap", level=0.95)
    print(f"always b1: {est.value:.4f} [{est.ci_low:.4f}, {est.ci_high:.4f}] ess={est.diagnostics.ess:.0f}")

    # the standard comparison set plus two VW configurations replayed over the log
    evaluation = analysis.evaluate(
        log,
        {"greedier": VWConfig(gamma_scale=1000.0), "epsilon": VWConfig(exploration="epsilon", epsilon=0.1)},
        online_model=None,          # or a snapshot's bytes (slotbandit model export)
        default_block="b0",         # the slot's default block: the baseline
    )
    print(evaluation.table())       # values, intervals, paired differences vs online, the recommendation
    summary = evaluation.to_dict()  # JSON-ready

Modules: :mod:`analysis.log` (the columnar :class:`BanditLog`),
:mod:`analysis.estimators` (IPS, SNIPS, DM, DR, switch-DR, DRos, SNDR, replay;
estimator objects carry their knobs; ``q_hat`` for a fixed external reward model),
:mod:`analysis.intervals`, :mod:`analysis.sequences` (anytime-valid confidence
sequences: look daily without inflating false wins), :mod:`analysis.compare` (paired tests, Holm),
:mod:`analysis.health` (logging-health check), :mod:`analysis.replay` (target
policies, progressive-validation replay of VW configurations, feature
importance), :mod:`analysis.dsjson` and :mod:`analysis.tabular` (interchange),
:mod:`analysis.evaluation` (the standard comparison set and recommendation),
:mod:`analysis.experiments` (online experiment statistics; its
``Comparison`` is exported here as ``ExperimentComparison``),
:mod:`analysis.unit_statistics` (per-unit ``ArmStats`` from numpy columns),
:mod:`analysis.errors` (the exception tree: one root, :class:`AnalysisError`).

This package imports numpy, scipy, statsmodels and vowpalwabbit only (pyarrow
when Parquet is used): never litestar, sqlalchemy or ``api``. The names are
loaded on first use (PEP 562), so that ``import analysis.experiments`` (the
service's report path) does not pay for statsmodels. ``analysis.compare`` is
the module (paired comparisons: ``analysis.compare.compare(...)``,
``analysis.paired_difference``); ``analysis.replay`` is the function (the
module shares its name; ``from analysis.replay import ...`` still works).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from analysis.errors import AnalysisError, LogError
from analysis.log import BanditLog
from analysis.replay import (
    FeatureImportance,
    ReplayResult,
    chooser_target,
    drop_context,
    feature_importance,
    fixed_target,
    logging_target,
    per_event_target,
    replay,
    snapshot_target,
    snips_value,
    uniform_target,
)

if TYPE_CHECKING:
    from analysis.compare import Comparison, paired_difference
    from analysis.dsjson import read_dsjson, write_dsjson
    from analysis.errors import (
        EstimatorError,
        EvaluationError,
        ExperimentError,
        FormatError,
        ReplayError,
    )
    from analysis.estimators import (
        IPS,
        METHODS,
        MIPS,
        SNDR,
        SNIPS,
        Diagnostics,
        DirectMethod,
        DoublyRobust,
        DRos,
        Estimate,
        EventData,
        Replay,
        RewardModel,
        RidgeRewardModel,
        Slope,
        SubGaussianDR,
        SubGaussianIPS,
        SwitchDR,
        block_embedding,
        contributions,
        diagnose,
        estimate,
        make_estimator,
    )
    from analysis.evaluation import (
        STANDARD_CANDIDATES,
        EvaluatedPolicy,
        Evaluation,
        EvaluationPoint,
        Recommendation,
        evaluate,
        recommend,
        render_table,
    )
    from analysis.experiments import (
        AnalysisConfig,
        ArmResult,
        ArmStats,
        ExperimentResult,
        PowerAnalysis,
        RatioStatistic,
        SampleMeanStatistic,
        SampleRatioCheck,
        SegmentBreakdown,
        SeriesPoint,
        TimeSeries,
        analyze_experiment,
        analyze_segments,
        cumulative_series,
        power_analysis,
        sample_ratio_check,
    )
    from analysis.experiments import Comparison as ExperimentComparison
    from analysis.health import HealthRow, LoggingHealth, check_logging
    from analysis.intervals import Interval, bernstein_interval, bootstrap_interval, normal_interval
    from analysis.sequences import ConfidenceSequence, confidence_sequence
    from analysis.tabular import read_csv, read_obd_csv, read_parquet, write_csv, write_parquet
    from analysis.unit_statistics import ArmUnits, arm_stats, unit_stats

_LAZY: dict[str, tuple[str, str]] = {
    "AnalysisConfig": ("analysis.experiments", "AnalysisConfig"),
    "ArmResult": ("analysis.experiments", "ArmResult"),
    "ArmStats": ("analysis.experiments", "ArmStats"),
    "ArmUnits": ("analysis.unit_statistics", "ArmUnits"),
    "Comparison": ("analysis.compare", "Comparison"),
    "ConfidenceSequence": ("analysis.sequences", "ConfidenceSequence"),
    "Diagnostics": ("analysis.estimators", "Diagnostics"),
    "DirectMethod": ("analysis.estimators", "DirectMethod"),
    "DoublyRobust": ("analysis.estimators", "DoublyRobust"),
    "DRos": ("analysis.estimators", "DRos"),
    "Estimate": ("analysis.estimators", "Estimate"),
    "EstimatorError": ("analysis.errors", "EstimatorError"),
    "EvaluatedPolicy": ("analysis.evaluation", "EvaluatedPolicy"),
    "Evaluation": ("analysis.evaluation", "Evaluation"),
    "EvaluationError": ("analysis.errors", "EvaluationError"),
    "EvaluationPoint": ("analysis.evaluation", "EvaluationPoint"),
    "EventData": ("analysis.estimators", "EventData"),
    "ExperimentComparison": ("analysis.experiments", "Comparison"),
    "ExperimentError": ("analysis.errors", "ExperimentError"),
    "ExperimentResult": ("analysis.experiments", "ExperimentResult"),
    "FormatError": ("analysis.errors", "FormatError"),
    "HealthRow": ("analysis.health", "HealthRow"),
    "IPS": ("analysis.estimators", "IPS"),
    "Interval": ("analysis.intervals", "Interval"),
    "LoggingHealth": ("analysis.health", "LoggingHealth"),
    "MIPS": ("analysis.estimators", "MIPS"),
    "METHODS": ("analysis.estimators", "METHODS"),
    "PowerAnalysis": ("analysis.experiments", "PowerAnalysis"),
    "RatioStatistic": ("analysis.experiments", "RatioStatistic"),
    "Recommendation": ("analysis.evaluation", "Recommendation"),
    "Replay": ("analysis.estimators", "Replay"),
    "ReplayError": ("analysis.errors", "ReplayError"),
    "RewardModel": ("analysis.estimators", "RewardModel"),
    "RidgeRewardModel": ("analysis.estimators", "RidgeRewardModel"),
    "SNDR": ("analysis.estimators", "SNDR"),
    "SNIPS": ("analysis.estimators", "SNIPS"),
    "STANDARD_CANDIDATES": ("analysis.evaluation", "STANDARD_CANDIDATES"),
    "SampleMeanStatistic": ("analysis.experiments", "SampleMeanStatistic"),
    "SampleRatioCheck": ("analysis.experiments", "SampleRatioCheck"),
    "SegmentBreakdown": ("analysis.experiments", "SegmentBreakdown"),
    "SeriesPoint": ("analysis.experiments", "SeriesPoint"),
    "Slope": ("analysis.estimators", "Slope"),
    "SubGaussianDR": ("analysis.estimators", "SubGaussianDR"),
    "SubGaussianIPS": ("analysis.estimators", "SubGaussianIPS"),
    "SwitchDR": ("analysis.estimators", "SwitchDR"),
    "TimeSeries": ("analysis.experiments", "TimeSeries"),
    "analyze_experiment": ("analysis.experiments", "analyze_experiment"),
    "analyze_segments": ("analysis.experiments", "analyze_segments"),
    "arm_stats": ("analysis.unit_statistics", "arm_stats"),
    "bernstein_interval": ("analysis.intervals", "bernstein_interval"),
    "block_embedding": ("analysis.estimators", "block_embedding"),
    "bootstrap_interval": ("analysis.intervals", "bootstrap_interval"),
    "check_logging": ("analysis.health", "check_logging"),
    "confidence_sequence": ("analysis.sequences", "confidence_sequence"),
    "contributions": ("analysis.estimators", "contributions"),
    "cumulative_series": ("analysis.experiments", "cumulative_series"),
    "diagnose": ("analysis.estimators", "diagnose"),
    "estimate": ("analysis.estimators", "estimate"),
    "evaluate": ("analysis.evaluation", "evaluate"),
    "make_estimator": ("analysis.estimators", "make_estimator"),
    "normal_interval": ("analysis.intervals", "normal_interval"),
    "paired_difference": ("analysis.compare", "paired_difference"),
    "power_analysis": ("analysis.experiments", "power_analysis"),
    "read_csv": ("analysis.tabular", "read_csv"),
    "read_dsjson": ("analysis.dsjson", "read_dsjson"),
    "read_obd_csv": ("analysis.tabular", "read_obd_csv"),
    "read_parquet": ("analysis.tabular", "read_parquet"),
    "recommend": ("analysis.evaluation", "recommend"),
    "render_table": ("analysis.evaluation", "render_table"),
    "sample_ratio_check": ("analysis.experiments", "sample_ratio_check"),
    "unit_stats": ("analysis.unit_statistics", "unit_stats"),
    "write_csv": ("analysis.tabular", "write_csv"),
    "write_dsjson": ("analysis.dsjson", "write_dsjson"),
    "write_parquet": ("analysis.tabular", "write_parquet"),
}
"""Public name -> (module, attribute), imported on first access."""


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        if name == "compare":
            return importlib.import_module("analysis.compare")
        raise AttributeError(f"module 'analysis' has no attribute {name!r}")
    value = getattr(importlib.import_module(target[0]), target[1])
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "IPS",
    "METHODS",
    "MIPS",
    "SNDR",
    "SNIPS",
    "STANDARD_CANDIDATES",
    "AnalysisConfig",
    "AnalysisError",
    "ArmResult",
    "ArmStats",
    "ArmUnits",
    "BanditLog",
    "Comparison",
    "ConfidenceSequence",
    "DRos",
    "Diagnostics",
    "DirectMethod",
    "DoublyRobust",
    "Estimate",
    "EstimatorError",
    "EvaluatedPolicy",
    "Evaluation",
    "EvaluationError",
    "EvaluationPoint",
    "EventData",
    "ExperimentComparison",
    "ExperimentError",
    "ExperimentResult",
    "FeatureImportance",
    "FormatError",
    "HealthRow",
    "Interval",
    "LogError",
    "LoggingHealth",
    "PowerAnalysis",
    "RatioStatistic",
    "Recommendation",
    "Replay",
    "ReplayError",
    "ReplayResult",
    "RewardModel",
    "RidgeRewardModel",
    "SampleMeanStatistic",
    "SampleRatioCheck",
    "SegmentBreakdown",
    "SeriesPoint",
    "Slope",
    "SubGaussianDR",
    "SubGaussianIPS",
    "SwitchDR",
    "TimeSeries",
    "analyze_experiment",
    "analyze_segments",
    "arm_stats",
    "bernstein_interval",
    "block_embedding",
    "bootstrap_interval",
    "check_logging",
    "chooser_target",
    "confidence_sequence",
    "contributions",
    "cumulative_series",
    "diagnose",
    "drop_context",
    "estimate",
    "evaluate",
    "feature_importance",
    "fixed_target",
    "logging_target",
    "make_estimator",
    "normal_interval",
    "paired_difference",
    "per_event_target",
    "power_analysis",
    "read_csv",
    "read_dsjson",
    "read_obd_csv",
    "read_parquet",
    "recommend",
    "render_table",
    "replay",
    "sample_ratio_check",
    "snapshot_target",
    "snips_value",
    "uniform_target",
    "unit_stats",
    "write_csv",
    "write_dsjson",
    "write_parquet",
]
