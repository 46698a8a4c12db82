"""The report of an experiment (:func:`build_report`): statistics, guardrails and the in-process cache.

Guardrails
    Every arm's fallback rate (decisions that served the slot's default
    because the policy failed) is tested against control's, one-sided,
    at the unit level, Holm-corrected (``analysis.experiments.guardrail_checks``);
    a significant increase adds a verdict line. ``max_fallback_rate`` adds an
    absolute limit per arm; ``max_latency_ms`` compares this worker's
    service-wide p95 decide latency (decisions store no latency, so there is
    no per-arm latency comparison).
"""

from __future__ import annotations

import copy
import json
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
from sqlalchemy import Connection, Engine, func, select, text

from analysis.experiments import (
    analyze_experiment,
    analyze_segments,
    cumulative_series,
    guardrail_checks,
)
from analysis.unit_statistics import ArmUnits, group_totals, stats_by_arm, unit_stats
from api.db.models import Policy, Reward, Snapshot
from api.experiments import analysis_config, read_experiment, slot_row
from api.reports.exposures import SEGMENT_DIMENSIONS, ExperimentData
from api.reports.offline import _offline_inputs, _offline_section
from api.reports.scan import _seq_range, fetch_experiment_data

__all__ = ["REPORT_CACHE_SIZE", "REPORT_CACHE_TTL_S", "build_report", "clear_report_cache", "latency_quantiles"]


TOP_COUNTRIES = 12


REPORT_CACHE_SIZE = 8
REPORT_CACHE_TTL_S = 60.0
"""Reports are cached per (experiment, bucket, offline, data marks) for at most this long. The marks
(decision seq range, last reward id, activation count, experiment and slot settings, arm policy
versions) change with every append to the log; the TTL bounds what they cannot see: a unit erased
in place (``erase_unit``) shows in the report within a minute."""


@dataclass(frozen=True)
class _CachedReport:
    body: dict[str, Any]
    verdicts: tuple[str, ...]
    stored: float
    source: Mapping[str, Any]


_report_cache: OrderedDict[tuple[Any, ...], _CachedReport] = OrderedDict()
_report_cache_lock = threading.Lock()


def clear_report_cache() -> None:
    """Forget every cached report (the next report of each experiment is computed from the log)."""
    with _report_cache_lock:
        _report_cache.clear()


def _data_marks(connection: Connection, experiment: Mapping[str, Any], slot: Mapping[str, Any],
                policies: Mapping[str, Any] | None, offline: bool) -> tuple[Any, ...]:
    """What the report depends on, cheaply: each part changes when the log or the settings change."""
    seqs = _seq_range(connection, experiment["id"])
    last_reward = connection.execute(select(func.max(Reward.id))).scalar()
    if connection.dialect.name == "sqlite":  # activations are append-only; the rowid grows with each
        activations = connection.execute(text("SELECT max(rowid) FROM activations")).scalar()
    else:
        activations = connection.execute(text("SELECT count(*) FROM activations")).scalar()
    versions: tuple[Any, ...] = ()
    if offline:
        names = [a["policy"] for a in experiment["arms"]]
        if policies is not None and all(name in policies for name in names):
            versions = tuple((policies[n].revision, policies[n].model_version) for n in names)
        else:
            versions = tuple(connection.execute(
                select(Policy.name, Policy.revision, select(func.max(Snapshot.version))
                       .where(Snapshot.policy_name == Policy.name).scalar_subquery())
                .where(Policy.name.in_(names)).order_by(Policy.name)).all())
    settings = json.dumps([experiment, dict(slot)], sort_keys=True, default=str)
    return (tuple(seqs), last_reward, activations, versions, settings)


def build_report(engine: Engine, experiment_id: int, *, policies: Mapping[str, Any] | None = None,
                 bucket: Literal["day", "hour", "auto"] = "auto", offline: bool = True,
                 latency: Mapping[str, float] | None = None, cache: bool = True) -> dict[str, Any]:
    """The experiment's report as JSON-ready data (see the ``api.reports`` docstring).

    ``policies``: the registry's policies (name -> PolicyState) for the offline
    section; without it the policies are loaded from the database.
    ``latency``: service-wide decide latency quantiles in ms (from ``/metrics``) for the latency guardrail.
    ``cache``: reuse this process's report of the same data (see :data:`REPORT_CACHE_TTL_S`);
    ``timing_ms.cached`` says whether it did.
    """
    started = time.perf_counter()
    with engine.connect() as connection:
        experiment = read_experiment(connection, experiment_id)
        slot = slot_row(connection, experiment["slot"])
        if bucket == "auto":  # hourly points for the first three days, daily after
            begun = datetime.fromisoformat(experiment["started_at"] or experiment["created_at"])
            ended = datetime.fromisoformat(experiment["stopped_at"]) if experiment["stopped_at"] else datetime.now(UTC)
            bucket = "hour" if (ended - begun).total_seconds() < 3 * 86400 else "day"
        key = (engine.url.render_as_string(hide_password=True), experiment_id, bucket, offline,
               _data_marks(connection, experiment, slot, policies, offline))
        with _report_cache_lock:
            hit = _report_cache.get(key) if cache else None
            if hit is not None and time.monotonic() - hit.stored > REPORT_CACHE_TTL_S:
                hit = None
        fetched = time.perf_counter()
        if hit is None:
            body, verdicts, fetched, source = _report_body(connection, experiment, slot, policies, bucket, offline)
            hit = _CachedReport(body, verdicts, time.monotonic(), source)
            if cache:
                with _report_cache_lock:
                    _report_cache[key] = hit
                    while len(_report_cache) > REPORT_CACHE_SIZE:
                        _report_cache.popitem(last=False)
            cached = False
        else:
            cached = True
    report = copy.deepcopy(hit.body)
    guardrails = _guardrails(experiment["guardrails"], report["arms"], latency, report.pop("guardrail_tests"))
    report["guardrails"] = guardrails
    report["verdicts"] = list(hit.verdicts) + [g["verdict"] for g in guardrails if g["breached"]]
    report["generated_at"] = datetime.now(UTC).isoformat()
    report["timing_ms"] = {"fetch": round((fetched - started) * 1000, 1),
                           "total": round((time.perf_counter() - started) * 1000, 1), "cached": cached,
                           "source": dict(hit.source)}
    return report


def _report_body(connection: Connection, experiment: Mapping[str, Any], slot: Mapping[str, Any],
                 policies: Mapping[str, Any] | None, bucket: str,
                 offline: bool) -> tuple[dict[str, Any], tuple[str, ...], float, Mapping[str, Any]]:
    """The report from the log, without the parts that change between views (guardrails' limits, time
    stamps); returns it, the statistical verdicts, when the decisions were fetched, and where they came
    from (``ExperimentData.source``)."""
    arms = [a["name"] for a in experiment["arms"]]
    control = experiment["control"]
    # the offline section (its sample, on a connection of its own, and the policies' pmfs) runs beside
    # the scan, its estimates (they need the scan's rewards) beside the statistics
    with ThreadPoolExecutor(max_workers=1) as pool:
        inputs = pool.submit(_offline_inputs, connection.engine, experiment, slot, policies) if offline else None
        data = fetch_experiment_data(connection, experiment["id"], arms, slot, bucket)
        fetched = time.perf_counter()
        estimates = (pool.submit(_offline_section, inputs, data, experiment, slot, control)
                     if inputs is not None else None)
        body, verdicts = _report_statistics(experiment, slot, data, bucket)
        body["offline"] = (estimates.result() if estimates is not None
                           else {"available": False, "reason": "offline section not requested"})
    return body, verdicts, fetched, data.source


def _report_statistics(experiment: Mapping[str, Any], slot: Mapping[str, Any], data: ExperimentData,
                       bucket: str) -> tuple[dict[str, Any], tuple[str, ...]]:
    arms = [a["name"] for a in experiment["arms"]]
    shares = {a["name"]: a["share"] for a in experiment["arms"]}
    control = experiment["control"]
    binary = bool(data.reward.size) and bool(np.all((data.reward == 0.0) | (data.reward == 1.0)))
    config = analysis_config(experiment["metric"], experiment["analysis"], binary)
    n_arms = len(arms)
    pairs = ArmUnits(data.arm, data.unit, n_arms)
    y = pairs.sums(data.reward)
    arm_stats = stats_by_arm(group_totals(pairs.arm, y, pairs.x, n_arms), arms)
    result = analyze_experiment(arm_stats, control=control, shares=shares, config=config)
    # guardrail: each arm's fallback rate (per decision, unit-clustered) against control's, one-sided
    fallbacks = stats_by_arm(group_totals(pairs.arm, pairs.sums(data.fallback.astype(np.float64)), pairs.x, n_arms), arms)
    sorted_units: list[np.ndarray] = []

    def by_unit() -> np.ndarray:  # made once, if a segment that varies within a unit needs it
        if not sorted_units:
            sorted_units.append(np.argsort(data.unit, kind="stable"))
        return sorted_units[0]
    guardrail_tests, guardrail_verdicts = guardrail_checks(fallbacks, metric="fallback_rate", control=control,
                                                           shares=shares, config=config)

    counts = {
        "decisions": np.bincount(data.arm, minlength=n_arms),
        "activations": np.bincount(data.arm, weights=data.activated, minlength=n_arms),
        "rewarded_decisions": np.bincount(data.arm, weights=data.rewarded, minlength=n_arms),
        "fallbacks": np.bincount(data.arm, weights=data.fallback, minlength=n_arms),
        "reward_sum": np.bincount(data.arm, weights=data.reward, minlength=n_arms),
    }
    arm_rows = []
    for i, arm in enumerate(experiment["arms"]):
        r = result.arm(arm["name"]).__dict__
        decisions = int(counts["decisions"][i])
        arm_rows.append({
            "arm": arm["name"], "policy": arm["policy"], "kind": arm["kind"], "share": arm["share"],
            "units": r["units"], "decisions": decisions, "activations": int(counts["activations"][i]),
            "rewarded_decisions": int(counts["rewarded_decisions"][i]),
            "reward_sum": float(counts["reward_sum"][i]),
            "fallback_rate": float(counts["fallbacks"][i] / decisions) if decisions else None,
            "mean": r["mean"], "ci": list(r["ci"]) if r["ci"] else None, "stderr": r["stderr"],
            "codes": list(r["codes"]),
        })

    segments: dict[str, Any] = {}
    for dimension in SEGMENT_DIMENSIONS:
        codes, labels = data.segments[dimension]
        if dimension == "country" and len(labels) > TOP_COUNTRIES:
            counts_by = np.bincount(codes, minlength=len(labels))
            top = np.argsort(-counts_by)[:TOP_COUNTRIES - 1]
            remap = np.full(len(labels), TOP_COUNTRIES - 1)
            remap[top] = np.arange(len(top))
            codes = remap[codes]
            labels = tuple(labels[t] for t in top) + ("other",)
        owner = pairs.owner(codes, n_arms)
        varying = pairs.segment_stats(codes, len(labels), data.reward, n_arms) if owner is None else None
        if owner is not None:
            stats = group_totals(owner, y, pairs.x, len(labels) * n_arms)
        elif varying is not None:
            stats = varying
        else:
            stats = unit_stats(codes * n_arms + data.arm, data.unit, data.reward, len(labels) * n_arms, by_unit)
        by_segment = {label: stats_by_arm(stats[s * n_arms:(s + 1) * n_arms], arms) for s, label in enumerate(labels)}
        segments[dimension] = analyze_segments(by_segment, dimension=dimension, control=control, shares=shares,
                                               config=config).to_dict()

    # time series: each unit counted in the bucket of its first exposure (exact cumulative sums)
    n_buckets = len(data.bucket_labels)
    series_stats = group_totals(data.bucket[pairs.first] * n_arms + pairs.arm, y, pairs.x, n_buckets * n_arms)
    buckets = [(data.bucket_labels[b], stats_by_arm(series_stats[b * n_arms:(b + 1) * n_arms], arms))
               for b in range(n_buckets)]
    series = cumulative_series(buckets, control=control, shares=shares, config=config).to_dict()
    series["bucket"] = bucket

    analysis = result.to_dict()
    body = {
        "experiment": experiment,
        "generated_at": None,
        "summary": {"decisions": int(data.arm.size), "units": int(sum(r["units"] for r in arm_rows)),
                    "excluded_never_activated": data.excluded, "binary": config.binary,
                    "sequential": config.sequential, "metric": config.metric, "level": config.level,
                    "reward_aggregation": slot["reward_aggregation"],
                    "reward_range": [slot["reward_min"], slot["reward_max"]]},
        "verdicts": [],
        "arms": arm_rows,
        "comparisons": analysis["comparisons"],
        "srm": analysis["srm"],
        "guardrails": [],
        "guardrail_tests": [g.to_dict() for g in guardrail_tests],
        "segments": segments,
        "time_series": series,
        "offline": None,
        "timing_ms": {},
    }
    lines = list(result.verdicts)
    srm = 1 if result.srm.mismatch else 0  # the sample-ratio line stays first; worsened guardrails come next
    return body, tuple(lines[:srm] + list(guardrail_verdicts) + lines[srm:])


def _guardrails(limits: Mapping[str, float], arm_rows: Sequence[Mapping[str, Any]],
                latency: Mapping[str, float] | None, tests: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The guardrail rows: per arm its fallback rate with the one-sided test against control
    (``analysis.experiments.guardrail_checks``: ``worsened``) and, when the experiment sets
    ``max_fallback_rate``, the limit (``breached``); the service-wide decide latency against
    ``max_latency_ms``. Decisions do not store their latency, so latency has no per-arm test."""
    out: list[dict[str, Any]] = []
    limit = limits.get("max_fallback_rate")
    by_arm = {t["arm"]: t for t in tests}
    for row in arm_rows:
        rate = row["fallback_rate"]
        test = by_arm.get(row["arm"], {})
        breached = limit is not None and rate is not None and rate > limit
        out.append({"arm": row["arm"], "name": "fallback_rate", "value": rate, "limit": limit, "breached": breached,
                    "control_value": test.get("control_value"), "difference": test.get("difference"),
                    "ci": test.get("ci"), "method": test.get("method"), "p_value": test.get("p_value"),
                    "p_value_adjusted": test.get("p_value_adjusted"), "worsened": bool(test.get("worsened")),
                    "codes": test.get("codes", []),
                    "verdict": f"guardrail: arm {row['arm']} serves the fallback on {rate:.2%} of decisions "
                               f"(limit {limit:.2%})" if breached else ""})
    limit = limits.get("max_latency_ms")
    if limit is not None:
        p95 = latency.get("p95") if latency else None
        breached = p95 is not None and p95 > limit
        out.append({"arm": None, "name": "latency_p95_ms", "value": p95, "limit": limit, "breached": breached,
                    "worsened": False,
                    "scope": "service-wide decide latency of this worker (decisions do not store their latency, "
                             "so there is no per-arm comparison)",
                    "verdict": f"guardrail: decide latency p95 {p95:.1f} ms exceeds {limit:g} ms" if breached else ""})
    return out


def latency_quantiles(metrics: Any) -> dict[str, float] | None:
    """p50/p95 of this worker's decide latency (ms) from its Prometheus histogram (bucket upper bounds)."""
    try:
        samples = [s for m in metrics.decide_latency.collect() for s in m.samples if s.name.endswith("_bucket")]
    except AttributeError:
        return None
    buckets = sorted((float(s.labels["le"]), s.value) for s in samples)
    total = buckets[-1][1] if buckets else 0.0
    if not total:
        return None
    out: dict[str, float] = {}
    for name, q in (("p50", 0.5), ("p95", 0.95)):
        bound = next(le for le, count in buckets if count >= q * total)
        out[name] = bound * 1000.0 if math.isfinite(bound) else float("inf")
    return out
