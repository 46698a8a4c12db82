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
:mod:`analysis.estimators` (IPS, SNIPS, DM, DR, switch-DR, replay),
:mod:`analysis.intervals`, :mod:`analysis.compare` (paired tests, Holm),
:mod:`analysis.health` (logging-health check), :mod:`analysis.replay` (target
policies, progressive-validation replay of VW configurations, feature
importance), :mod:`analysis.dsjson` and :mod:`analysis.tabular` (interchange),
:mod:`analysis.evaluation` (the standard comparison set and recommendation),
:mod:`analysis.experiments` (online experiment statistics; its
``Comparison`` is exported here as ``ExperimentComparison``).

This package imports numpy, scipy, statsmodels and vowpalwabbit only (pyarrow
when Parquet is used): never litestar, sqlalchemy or ``api``.
"""

from __future__ import annotations

from analysis.compare import Comparison, compare, paired_difference
from analysis.dsjson import FormatError, read_dsjson, write_dsjson
from analysis.estimators import (
    IPS,
    METHODS,
    SNIPS,
    Diagnostics,
    DirectMethod,
    DoublyRobust,
    Estimate,
    EstimatorError,
    EventData,
    Replay,
    RewardModel,
    RidgeRewardModel,
    SwitchDR,
    contributions,
    diagnose,
    estimate,
    make_estimator,
)
from analysis.evaluation import (
    STANDARD_CANDIDATES,
    EvaluatedPolicy,
    Evaluation,
    EvaluationError,
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
    ExperimentError,
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
from analysis.log import BanditLog, LogError
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
from analysis.tabular import read_csv, read_obd_csv, read_parquet, write_csv, write_parquet

__all__ = [
    "IPS",
    "METHODS",
    "SNIPS",
    "STANDARD_CANDIDATES",
    "AnalysisConfig",
    "ArmResult",
    "ArmStats",
    "BanditLog",
    "Comparison",
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
    "ReplayResult",
    "RewardModel",
    "RidgeRewardModel",
    "SampleMeanStatistic",
    "SampleRatioCheck",
    "SegmentBreakdown",
    "SeriesPoint",
    "SwitchDR",
    "TimeSeries",
    "analyze_experiment",
    "analyze_segments",
    "bernstein_interval",
    "bootstrap_interval",
    "check_logging",
    "chooser_target",
    "compare",
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
    "write_csv",
    "write_dsjson",
    "write_parquet",
]
