"""The public surface of ``analysis``: pinned names, a worked example that runs, and no service imports."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import analysis

PINNED = [
    "IPS", "METHODS", "MIPS", "SNDR", "SNIPS", "STANDARD_CANDIDATES", "AnalysisConfig", "AnalysisError",
    "ArmResult", "ArmStats", "ArmUnits", "BanditLog", "Comparison", "ConfidenceSequence", "DRos", "Diagnostics",
    "DirectMethod", "DoublyRobust", "Estimate", "EstimatorError", "EvaluatedPolicy", "Evaluation",
    "EvaluationError", "EvaluationPoint", "EventData", "ExperimentComparison", "ExperimentError",
    "ExperimentResult", "FeatureImportance", "FormatError", "HealthRow", "Interval", "LogError",
    "LoggingHealth", "PowerAnalysis", "RatioStatistic", "Recommendation", "Replay", "ReplayError",
    "ReplayResult", "RewardModel", "RidgeRewardModel", "SampleMeanStatistic", "SampleRatioCheck",
    "SegmentBreakdown", "SeriesPoint", "Slope", "SubGaussianDR", "SubGaussianIPS", "SwitchDR", "TimeSeries",
    "analyze_experiment", "analyze_segments", "arm_stats", "bernstein_interval", "block_embedding",
    "bootstrap_interval", "check_logging", "chooser_target", "confidence_sequence", "contributions",
    "cumulative_series", "diagnose", "drop_context", "estimate", "evaluate", "feature_importance",
    "fixed_target", "logging_target", "make_estimator", "normal_interval", "paired_difference",
    "per_event_target", "power_analysis", "read_csv", "read_dsjson", "read_obd_csv", "read_parquet",
    "recommend", "render_table", "replay", "sample_ratio_check", "snapshot_target", "snips_value",
    "uniform_target", "unit_stats", "write_csv", "write_dsjson", "write_parquet",
]


def test_all_is_pinned_and_every_name_resolves() -> None:
    assert analysis.__all__ == PINNED
    for name in analysis.__all__:
        assert getattr(analysis, name) is not None
    assert set(PINNED) <= set(dir(analysis))
    assert analysis.Comparison.__module__ == "analysis.compare"  # the offline paired comparison
    assert analysis.ExperimentComparison.__module__ == "analysis.experiments"
    # the two names a submodule shares: compare is the module, replay the function
    importlib.import_module("analysis.compare")
    importlib.import_module("analysis.evaluation")  # imports analysis.replay and analysis.compare again

    assert callable(analysis.compare.compare) and analysis.compare.paired_difference is analysis.paired_difference
    assert callable(analysis.replay) and analysis.replay.__module__ == "analysis.replay"
    with pytest.raises(AttributeError):
        analysis.no_such_name  # noqa: B018


def test_the_report_path_does_not_load_statsmodels() -> None:
    """``import analysis.experiments`` (the service's report) stays light: names load on first use."""
    code = "import sys, analysis.experiments; print(any(m.startswith('statsmodels') for m in sys.modules))"
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root,
                            env={**os.environ, "PYTHONPATH": str(root)}, check=True)
    assert result.stdout.strip() == "False"


def test_import_analysis_loads_no_service_code() -> None:
    code = (
        "import sys, analysis; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('litestar', 'sqlalchemy', 'api', 'uvicorn')); "
        "print(','.join(bad))"
    )
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root,
                            env={**os.environ, "PYTHONPATH": str(root)}, check=True)
    assert result.stdout.strip() == ""


def test_the_worked_example_in_the_docstring_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    doc = analysis.__doc__ or ""
    block = doc.split("::\n\n", 1)[1].split("\n\nModules:", 1)[0]
    code = "\n".join(line[4:] if line.startswith("    ") else line for line in block.splitlines())
    assert "analysis.evaluate(" in code
    rng = np.random.default_rng(0)
    records = []
    for i in range(400):
        device = ["mobile", "desktop"][int(rng.integers(2))]
        chosen = int(rng.integers(3))
        best = chosen == (1 if device == "mobile" else 2)
        records.append({
            "event_id": f"e{i}", "timestamp": 1.7e9 + 60 * i, "action_ids": ["b0", "b1", "b2"],
            "pmf": [1 / 3] * 3, "chosen": chosen, "reward": float(rng.random() < (0.7 if best else 0.1)),
            "context": {"device": {"type": device}},
        })
    analysis.write_dsjson(analysis.BanditLog.from_records(records), tmp_path / "decisions.dsjson")
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    exec(compile(code, "analysis-docstring-example", "exec"), namespace)  # noqa: S102
    out = capsys.readouterr().out
    assert "400 events; logging ok" in out
    assert re.search(r"always b1: 0\.\d{4} \[", out)
    assert "recommendation:" in out
    assert isinstance(namespace["summary"], dict)
