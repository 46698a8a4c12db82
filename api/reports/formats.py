"""A report as Markdown and as CSV (``slotbandit report --format md|csv``)."""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["report_csv", "report_markdown"]


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _ci(ci: Sequence[float] | None, digits: int = 4) -> str:
    return f"[{ci[0]:.{digits}g}, {ci[1]:.{digits}g}]" if ci else "—"


def report_markdown(report: Mapping[str, Any]) -> str:
    e = report["experiment"]
    lines = [f"# Experiment {e['id']}: {e['name']}", "",
             f"Slot `{e['slot']}`, status **{e['status']}**, control `{e['control']}`, metric {e['metric']}, "
             f"{report['summary']['decisions']} decisions from {report['summary']['units']} units.", ""]
    lines += [f"- {v}" for v in report["verdicts"]] + [""]
    lines += ["## Arms", "", "| arm | policy | share | units | decisions | activations | mean | 95% CI | fallback rate |",
              "|---|---|---|---|---|---|---|---|---|"]
    for a in report["arms"]:
        lines.append(f"| {a['arm']} | {a['policy']} ({a['kind']}) | {a['share']:g} | {a['units']} | {a['decisions']} | "
                     f"{a['activations']} | {_fmt(a['mean'])} | {_ci(a['ci'])} | {_fmt(a['fallback_rate'])} |")
    lines += ["", "## Against control", "", "| arm | lift | 95% CI | relative | relative CI | p | p (Holm) |",
              "|---|---|---|---|---|---|---|"]
    for c in report["comparisons"]:
        lines.append(f"| {c['arm']} | {_fmt(c['absolute_lift'])} | {_ci(c['absolute_ci'])} | {_fmt(c['relative_lift'])} | "
                     f"{_ci(c['relative_ci'])} | {_fmt(c['p_value'])} | {_fmt(c['p_value_adjusted'])} |")
    srm = report["srm"]
    lines += ["", f"Sample ratio check: p = {_fmt(srm['p_value'])}, mismatch: {srm['mismatch']}", ""]
    for dimension, breakdown in report["segments"].items():
        lines += [f"## By {dimension}", "", "| segment | arm | units | mean | lift | p (Holm) |", "|---|---|---|---|---|---|"]
        for segment, result in breakdown["results"].items():
            comps = {c["arm"]: c for c in result["comparisons"]}
            for arm in result["arms"]:
                c = comps.get(arm["arm"], {})
                lines.append(f"| {segment} | {arm['arm']} | {arm['units']} | {_fmt(arm['mean'])} | "
                             f"{_fmt(c.get('absolute_lift'))} | {_fmt(c.get('p_value_adjusted'))} |")
        lines.append("")
    offline = report["offline"]
    lines += ["## Offline estimates", ""]
    if not offline.get("available"):
        lines.append(offline.get("reason", "offline estimates unavailable"))
    else:
        sample = offline.get("sample", {})
        lines += [f"{offline['events']} decisions evaluated of {sample.get('decisions', offline['events'])} "
                  f"({sample.get('rule', 'every decision')}); {offline['method']}", "", "| arm | SNIPS | CI | DR | CI |", "|---|---|---|---|---|"]
        for est in offline["estimates"]:
            if "error" in est:
                lines.append(f"| {est['arm']} | {est['error']} | | | |")
                continue
            lines.append(f"| {est['arm']} | {_fmt(est['snips']['value'])} | {_ci(est['snips']['ci'])} | "
                         f"{_fmt(est['dr']['value'])} | {_ci(est['dr']['ci'])} |")
    return "\n".join(lines) + "\n"


def report_csv(report: Mapping[str, Any]) -> str:
    """One row per (segment dimension, segment, arm); the whole experiment is dimension 'all'."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["dimension", "segment", "arm", "units", "decisions", "mean", "ci_low", "ci_high",
                     "absolute_lift", "lift_ci_low", "lift_ci_high", "relative_lift", "p_value", "p_value_adjusted"])

    def rows(dimension: str, segment: str, arms: Sequence[Mapping[str, Any]], comparisons: Sequence[Mapping[str, Any]]) -> None:
        comps = {c["arm"]: c for c in comparisons}
        for a in arms:
            c = comps.get(a["arm"], {})
            ci = a.get("ci") or (None, None)
            lci = c.get("absolute_ci") or (None, None)
            writer.writerow([dimension, segment, a["arm"], a["units"], a["decisions"], a["mean"], ci[0], ci[1],
                             c.get("absolute_lift"), lci[0], lci[1], c.get("relative_lift"), c.get("p_value"),
                             c.get("p_value_adjusted")])

    rows("all", "all", report["arms"], report["comparisons"])
    for dimension, breakdown in report["segments"].items():
        for segment, result in breakdown["results"].items():
            rows(dimension, segment, result["arms"], result["comparisons"])
    return out.getvalue()
