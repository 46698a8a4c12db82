"""``slotbandit report EXPERIMENT --format md|html|json|csv``."""

from __future__ import annotations

import argparse
import json
from typing import Any

from sqlalchemy import Engine, select

from api.db.experiment_models import Experiment
from api.reports.build import build_report
from api.reports.formats import report_csv, report_markdown
from api.reports.html import render_report_page

__all__ = ["add_commands"]


def _report_command(args: argparse.Namespace, settings: Any) -> int:
    import sys

    from api.db.engine import make_engine

    engine = make_engine(settings.database_url, synchronous=settings.sqlite_synchronous)
    try:
        experiment_id = _resolve_experiment(engine, args.experiment)
        if experiment_id is None:
            print(f"no experiment '{args.experiment}'", file=sys.stderr)
            return 2
        report = build_report(engine, experiment_id, bucket=args.bucket, offline=not args.no_offline)
    finally:
        engine.dispose()
    if args.format == "json":
        text = json.dumps(report, indent=2)
    elif args.format == "md":
        text = report_markdown(report)
    elif args.format == "csv":
        text = report_csv(report)
    else:
        text = render_report_page(report, standalone=True)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as stream:
            stream.write(text)
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0


def _resolve_experiment(engine: Engine, ref: str) -> int | None:
    with engine.connect() as connection:
        if ref.isdigit():
            found = connection.execute(select(Experiment.id).where(Experiment.id == int(ref))).scalar_one_or_none()
            if found is not None:
                return int(found)
        found = connection.execute(select(Experiment.id).where(Experiment.name == ref)
                                   .order_by(Experiment.id.desc()).limit(1)).scalar_one_or_none()
        return int(found) if found is not None else None


def add_commands(subparsers: Any, command: Any) -> None:
    report = subparsers.add_parser("report", help="print an experiment's report (md, html, json or csv)")
    report.add_argument("experiment", help="experiment id or name")
    report.add_argument("--format", choices=["md", "html", "json", "csv"], default="md")
    report.add_argument("--bucket", choices=["day", "hour", "auto"], default="auto",
                        help="time-series bucket (auto: hourly for the first three days)")
    report.add_argument("--no-offline", action="store_true", help="skip the offline estimates")
    report.add_argument("--output", "-o", help="write to this file instead of stdout")
    command("report")(_report_command)
