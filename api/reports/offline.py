"""The offline section of a report.

Offline section
    Every arm's current policy (vw: its newest snapshot) estimated with SNIPS
    and DR, and DR paired against control, on the experiment's decisions: all
    of them up to :data:`OFFLINE_SAMPLE_EVENTS` (:data:`OFFLINE_VW_SAMPLE_EVENTS`
    with a ``vw`` arm), else that many evenly spaced in log order; of those,
    the ones the report counts (shown, of an arm), with the report's rewards.
    ``offline.sample`` in the JSON says how many and how.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import Connection, Engine, select

from api.db.catalog import CatalogCache, Logged
from api.db.models import Policy, Snapshot
from api.db.queries import JsonMemo
from api.reports.exposures import ExperimentData
from api.reports.scan import _map_file, _one_row, _rows
from api.reports.sql import _sql_parts
from bandits.choosers import MODEL_KINDS, build_chooser
from bandits.policies import Candidate, PolicyConfig

__all__ = ["OFFLINE_SAMPLE_EVENTS", "OFFLINE_VW_SAMPLE_EVENTS"]


OFFLINE_SAMPLE_EVENTS = 20_000
"""The offline section evaluates every arm's current policy on all of the experiment's decisions when
they are at most this many, else on this many spread evenly over the log (see :func:`_offline_inputs`)."""
OFFLINE_VW_SAMPLE_EVENTS = 5_000
"""The same when an arm is a ``vw`` policy (a VW pmf costs about 30 microseconds per distinct context)."""


@dataclass(frozen=True)
class _OfflineInputs:
    """The offline section's sample of logged decisions with every arm's target pmf (no rewards yet)."""

    seq: np.ndarray            # (n,) decision seqs of the sample, increasing
    chosen: np.ndarray         # (n,) chosen column
    logging_pmf: np.ndarray    # (n, A) the logged pmf, zero-padded
    mask: np.ndarray           # (n, A) the column is a candidate
    codes: np.ndarray          # (n, A) block codes (-1 for padding), so estimators pool actions by block
    targets: Mapping[str, np.ndarray]  # arm -> (n, A) pmf of its current policy
    errors: Mapping[str, str]  # arm -> why its policy could not be evaluated
    total: int                 # the experiment's decisions the sample was drawn from



def _offline_inputs(engine: Engine, experiment: Mapping[str, Any], slot: Mapping[str, Any],
                    policies: Mapping[str, Any] | None) -> _OfflineInputs | str:
    """On a connection of its own: the experiment's decisions, all of them up to :data:`OFFLINE_SAMPLE_EVENTS`
    (:data:`OFFLINE_VW_SAMPLE_EVENTS` when an arm is a ``vw`` policy), else that many spread evenly over
    the log (the decisions at ranks ``floor(i * N / size)`` in seq order), with every arm's current
    policy's pmf on each. Returns why not as a string when there is nothing to evaluate. (The
    section then keeps those the report counts: shown, of an arm.)

    Per decision the JSON columns arrive as text and are decoded once per distinct text (candidate
    lists and pmfs repeat; so do many contexts); a policy's pmf is computed once per distinct
    (context, candidate set): the choosers are deterministic given their model.
    """
    size = OFFLINE_VW_SAMPLE_EVENTS if any(a["kind"] == "vw" for a in experiment["arms"]) else OFFLINE_SAMPLE_EVENTS
    with engine.connect() as connection:
        raw = connection.connection.driver_connection
        sqlite = connection.dialect.name == "sqlite"
        parts = _sql_parts(connection.dialect.name)
        if sqlite:
            _map_file(raw)
        seqs_of = "decisions d INDEXED BY ix_decisions_experiment_seq" if sqlite else "decisions d"
        agg = parts["agg"].format(value=parts["int"].format(value="d.seq"), sep="','")
        total, (joined,) = _one_row(raw, f"SELECT count(*), {agg} FROM {seqs_of} WHERE d.experiment_id = "
                                         f"{parts['ph']}", (experiment["id"],))
        if total < 20:
            return f"offline estimates need at least 20 decisions, have {total}"
        seqs = np.fromstring(joined, dtype=np.int64, sep=",")
        sample = seqs if total <= size else seqs[(np.arange(size, dtype=np.int64) * total) // size]
        columns = "seq, catalog_version, {0}inline_candidates{1}, {0}candidate_ids{1}, {0}pmf{1}, chosen_index, " \
                  "{0}context{1}"
        if sqlite:
            rows = _rows(raw, f"SELECT {columns.format('', '')} FROM decisions WHERE seq IN "
                              "(SELECT value FROM json_each(?)) ORDER BY seq", (json.dumps(sample.tolist()),))
        else:
            rows = _rows(raw, f"SELECT {columns.format('(', ')::text')} FROM decisions WHERE seq = ANY(%s) "
                              "ORDER BY seq", (sample.tolist(),))
        catalogs = CatalogCache()
        catalogs.load(connection, {(slot["id"], r[1]) for r in rows if r[1]})
        choosers = {arm["name"]: _chooser(policies, arm["policy"], connection) for arm in experiment["arms"]}
    decode = JsonMemo()
    n = len(rows)
    # candidate sets: (catalog version, inline text, ids text) -> index; their candidates, ids and VW cache key
    set_index: dict[tuple[Any, ...], int] = {}
    sets: list[tuple[tuple[Candidate, ...], list[str], str | None]] = []
    pmf_index: dict[str, int] = {}
    row_set = np.empty(n, dtype=np.int64)
    row_pmf = np.empty(n, dtype=np.int64)
    for i, row in enumerate(rows):
        key = (row[1], row[2], row[3])
        k = set_index.get(key)
        if k is None:
            ids = [str(v) for v in decode(row[3])]
            inline = decode(row[2])
            logged = Logged(slot["id"], row[1], inline, ids)
            # a decision whose candidates cannot be rebuilt is evaluated on bare ids (as api.offline.load_log)
            candidates = catalogs.candidates(logged) or tuple(Candidate(b) for b in ids)
            cache_key = None if inline else f"report:{row[1]}:{row[3]}"
            k = set_index[key] = len(sets)
            sets.append((candidates, ids, cache_key))
        row_set[i] = k
        row_pmf[i] = pmf_index.setdefault(row[4], len(pmf_index))
    width = max(len(ids) for _, ids, _ in sets)
    block_code: dict[str, int] = {}
    set_codes = np.full((len(sets), width), -1, dtype=np.int64)
    for k, (_, ids, _) in enumerate(sets):
        set_codes[k, :len(ids)] = [block_code.setdefault(b, len(block_code)) for b in ids]
    pmf_table = np.zeros((len(pmf_index), width))
    for text_, k in pmf_index.items():
        values = decode(text_)
        pmf_table[k, :len(values)] = values
    codes = set_codes[row_set]
    mask = codes >= 0
    logging_pmf = pmf_table[row_pmf]
    chosen = np.array([r[5] for r in rows], dtype=np.int64)
    targets: dict[str, np.ndarray] = {}
    errors: dict[str, str] = {}
    contexts: dict[str, int] = {}
    row_context = np.array([contexts.setdefault(r[6] or "{}", len(contexts)) for r in rows], dtype=np.int64)
    context_values = [decode(t) or {} for t in contexts]
    pair = row_context * len(sets) + row_set  # a (context, candidate set) code per decision
    pairs, first, inverse = np.unique(pair, return_index=True, return_inverse=True)
    for arm in experiment["arms"]:
        chooser = choosers[arm["name"]]
        if chooser is None:
            errors[arm["name"]] = "policy not loadable"
            continue
        lock = getattr(chooser, "lock", None)
        table = np.zeros((pairs.size, width))
        for j, row_at in enumerate(first):
            candidates, _, cache_key = sets[int(row_set[row_at])]
            context = context_values[int(row_context[row_at])]
            if lock is not None:
                with lock:
                    p = chooser.pmf(context, candidates, cache_key)
            else:
                p = chooser.pmf(context, candidates, cache_key)
            table[j, :len(p)] = p
        pi = table[inverse.reshape(-1)]
        targets[arm["name"]] = pi / pi.sum(1, keepdims=True)
    return _OfflineInputs(np.array([r[0] for r in rows], dtype=np.int64), chosen, logging_pmf, mask, codes,
                          targets, errors, int(total))


def _offline_section(pending: Future[_OfflineInputs | str], data: ExperimentData, experiment: Mapping[str, Any],
                     slot: Mapping[str, Any], control: str) -> dict[str, Any]:
    """Every arm's current policy evaluated on the sampled decisions that the report counts (shown,
    of an arm), with the report's rewards: SNIPS and DR per arm, DR paired against control. ``events``
    is how many were evaluated; ``sample`` says of how many and how they were drawn."""
    inputs = pending.result()
    if isinstance(inputs, str):
        return {"available": False, "reason": inputs}
    from analysis.estimators import EstimatorError, EventData, estimate

    position = np.searchsorted(data.seq, inputs.seq)
    found = position < data.seq.size
    found[found] = data.seq[position[found]] == inputs.seq[found]
    n = int(found.sum())
    if n < 20:
        return {"available": False, "reason": f"offline estimates need at least 20 shown decisions in the sample, "
                                              f"have {n}"}
    reward = data.reward[position[found]]
    logging_pmf = inputs.logging_pmf[found]
    try:
        events = EventData.from_arrays(reward=reward, chosen=inputs.chosen[found],
                                       logging_pmf=logging_pmf / logging_pmf.sum(1, keepdims=True),
                                       mask=inputs.mask[found], codes=inputs.codes[found])
    except EstimatorError as error:
        return {"available": False, "reason": f"the logged decisions cannot be evaluated: {error} ({error.field})"}
    reward_range = (float(slot["reward_min"]), float(slot["reward_max"]))
    targets = {arm: pi[found] for arm, pi in inputs.targets.items()}
    out: list[dict[str, Any]] = []
    for arm in experiment["arms"]:
        if arm["name"] in inputs.errors:
            out.append({"arm": arm["name"], "policy": arm["policy"], "error": inputs.errors[arm["name"]]})
            continue
        entry: dict[str, Any] = {"arm": arm["name"], "policy": arm["policy"], "kind": arm["kind"]}
        for method in ("snips", "dr"):
            est = estimate(events, targets[arm["name"]], method, "normal", reward_range=reward_range)
            entry[method] = {"value": est.value, "ci": [est.ci_low, est.ci_high], "stderr": est.stderr,
                             "ess": est.diagnostics.ess, "flags": list(est.flags)}
        out.append(entry)
    comparisons: list[dict[str, Any]] = []
    if control in targets and len(targets) > 1:
        from analysis.compare import compare

        others = {k: v for k, v in targets.items() if k != control}
        for c in compare(events, others, targets[control], baseline_name=control, method="dr",
                         reward_range=reward_range):
            comparisons.append({"arm": c.candidate, "control": c.baseline, "difference": c.difference,
                                "ci": [c.ci_low, c.ci_high], "p_value": c.p_value,
                                "p_value_adjusted": c.p_adjusted, "significant": c.significant, "note": c.note})
    limit = OFFLINE_VW_SAMPLE_EVENTS if any(a["kind"] == "vw" for a in experiment["arms"]) else OFFLINE_SAMPLE_EVENTS
    return {
        "available": True, "events": n,
        "sample": {"decisions": inputs.total, "sampled": int(inputs.seq.size), "evaluated": n, "limit": limit,
                   "rule": (f"1 in {inputs.total / inputs.seq.size:.3g} decisions, evenly spaced in log order"
                            if inputs.seq.size < inputs.total else "every decision")},
        "method": "snips and dr (normal 95% intervals) on the sampled decisions that the report counts (shown, of "
                  "an arm), with the report's rewards; each arm's current policy (vw: its latest snapshot)",
        "estimates": out, "paired_dr_vs_control": comparisons,
    }


def _chooser(policies: Mapping[str, Any] | None, name: str, connection: Connection) -> Any:
    if policies is not None and name in policies:
        return policies[name].chooser
    row = connection.execute(select(Policy.config).where(Policy.name == name)).first()
    if row is None:
        return None
    config = PolicyConfig.from_dict(row.config)
    model = None
    if config.kind in MODEL_KINDS:
        model = connection.execute(select(Snapshot.model).where(Snapshot.policy_name == name)
                                   .order_by(Snapshot.version.desc()).limit(1)).scalar_one_or_none()
    return build_chooser(config, model)
