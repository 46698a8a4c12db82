"""The report copy keeper: a background pass in every serving worker that writes the missing copies
and extends the lagging ones of running experiments, so that a report seldom builds a copy itself."""

from __future__ import annotations

from sqlalchemy import Engine, select

from api.db.experiment_models import Experiment, ReportChunk
from api.experiments import read_experiment, slot_row
from api.reports.copy import (
    _BEFORE_ALL,
    _claim_copy,
    _count_decisions,
    _Cursor,
    _release_copy,
    _write_threshold,
)
from api.reports.scan import _seq_range, fetch_experiment_data

__all__ = ["REPORT_COPY_KEEP_INTERVAL_S", "keep_report_copies"]


REPORT_COPY_KEEP_INTERVAL_S = 60.0
"""Every serving worker looks this often for running experiments whose report copy is missing or lags
by the write threshold, and brings them up to date (:func:`keep_report_copies`)."""


def keep_report_copies(engine: Engine) -> list[int]:
    """One pass of the report copy keeper: for every running experiment whose copy is missing or lags by
    the write threshold (:data:`REPORT_COPY_MIN_DECISIONS`, :data:`REPORT_COPY_GROWTH`), read it as a
    report would (no statistics, no offline section), which writes the copy. So the first report after
    an upgrade, a purge or an erased unit, and reports of experiments nobody looks at for a while, find
    the copy ready instead of building it. A marker row claims each experiment for one keeper among
    the workers. Returns the experiments whose copy was written."""
    written: list[int] = []
    with engine.connect() as connection:
        running = connection.execute(select(Experiment.id).where(Experiment.status == "running")
                                     .order_by(Experiment.id)).scalars().all()
        for experiment_id in running:
            low, top = _seq_range(connection, experiment_id)
            if top is None:
                continue
            last = connection.execute(select(ReportChunk.meta).where(
                ReportChunk.experiment_id == experiment_id, ReportChunk.position >= 0)
                .order_by(ReportChunk.position.desc()).limit(1)).scalar()
            after = _Cursor.from_dict(last["cursor"]).seq if last else _BEFORE_ALL
            copied = int(last["counts"]["decisions"]) if last else 0
            threshold = _write_threshold(copied)
            if int(top) - max(after, int(low) - 1) < threshold or \
                    _count_decisions(connection, experiment_id, after, int(top)) < threshold:
                continue
            if not _claim_copy(engine, experiment_id):
                continue
            try:
                experiment = read_experiment(connection, experiment_id)
                slot = slot_row(connection, experiment["slot"])
                data = fetch_experiment_data(connection, experiment_id, [a["name"] for a in experiment["arms"]],
                                             slot)
                if data.source.get("copy_written"):
                    written.append(experiment_id)
            finally:
                _release_copy(engine, experiment_id)
    return written
