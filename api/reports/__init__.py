"""Experiment reports: per-arm results, lifts, significance, sample ratio, guardrails, segments, time
series and offline estimates, as JSON (``/v1/experiments/{id}/report``), HTML (the dashboard) and
Markdown/CSV (``slotbandit report``).

One role per file, in the order a report is made. Names with a leading underscore are shared among
the package's modules (and its tests); nothing else imports them.

    sql.py              the SQL text of the scan per dialect, and the packed integer it encodes
    columns.py          numpy decoding of the joined columns into codes (``_Columns``); no SQL
    scan.py             reading the rows: the report copy plus the log past its cursors
    exposures.py        the report's rows (``ExperimentData``): shown decisions, aggregated rewards
    copy.py             the report copy (table ``report_chunks``): cursors, counts, chunks, claims
    keeper.py           the background pass that keeps running experiments' copies up to date
    offline.py          the offline section: each arm's current policy estimated on the log
    build.py            :func:`build_report`: statistics, guardrails, the in-process cache
    formats.py          Markdown and CSV
    html.py             the HTML page and its SVG charts
    routes.py           ``GET /v1/experiments/{id}/report``
    cli.py              ``slotbandit report``
    feature.py          how the feature joins the service (``FEATURE``): route, command, keeper job

Report (:func:`build_report`)
    One scan of the experiment's decisions (the covering index
    ``ix_decisions_experiment_report`` of migration 0005) returns each column
    joined into one string in log order: seq with arm, flags, device type and
    day part packed into one integer (closed vocabularies, encoded by SQL),
    the country, the hour of the timestamp; a second scan the unit keys.
    numpy splits and encodes them (codes numbered by first appearance, as a
    Python dict would) with no Python loop per decision. The activated
    decisions (a walk of ``activations`` when they are fewer than the
    decisions, else a probe per decision) and the rewards received within
    ``reward_window_s`` (rows: seq, reward id, value) come from two more
    queries; the slot's reward rule aggregates them in reward-id order
    (``bandits.rewards.aggregate_many``: the array form of the learner's
    rule, clipped to the reward range, the default reward where none came).
    Then per-unit sufficient statistics (``analysis.experiments.ArmStats``)
    per arm, per (segment, arm) and per first-exposure bucket, summed over
    the (arm, unit) pairs found once (``analysis.unit_statistics``);
    ``analysis.experiments`` does all statistics. Decisions made with ``defer_activation`` and never activated
    were never shown: they are excluded (and counted). The numbers equal
    those of the plain row-by-row computation (``tests/api/test_reports.py``).
    A report is cached in the process per (experiment, bucket, offline, data
    marks); a repeated view with nothing new in the log costs the few index
    lookups of the marks. Measured on 1,000,000 decisions: ``benchmarks/report.py``.
"""

from __future__ import annotations

from api.reports.build import build_report, clear_report_cache, latency_quantiles
from api.reports.cli import add_commands
from api.reports.exposures import ExperimentData
from api.reports.feature import FEATURE
from api.reports.formats import report_csv, report_markdown
from api.reports.html import forest_plot, render_report_page, series_chart
from api.reports.keeper import keep_report_copies
from api.reports.routes import ROUTES, report_for
from api.reports.scan import fetch_experiment_data

__all__ = [
    "FEATURE",
    "ROUTES",
    "ExperimentData",
    "add_commands",
    "build_report",
    "clear_report_cache",
    "fetch_experiment_data",
    "forest_plot",
    "keep_report_copies",
    "latency_quantiles",
    "render_report_page",
    "report_csv",
    "report_for",
    "report_markdown",
    "series_chart",
]
