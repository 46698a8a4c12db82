"""Experiment report at scale: 1,000,000 decisions in a SQLite file, the full report timed.

    .venv/bin/python benchmarks/report.py [--decisions 1000000] [--db var/bench-report.db] [--keep]

Builds a three-arm experiment (two fixed policies and a rules arm) on one slot,
bulk-inserts the decisions (about 300,000 units, several decisions each, four
devices, ten countries, four day parts, 14 days) with ~10% clicks as rewards and
~60% activations through sqlite3 ``executemany`` in one transaction, then times
only :func:`api.experiments.build_report` (warm: one untimed call first, then the
median of three). It also times the alternative of aggregating per unit in SQL
(``GROUP BY arm, unit``) for the main table, for comparison with the numpy path.
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import statistics
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from api.db.engine import make_engine, migrate
from api.experiments import build_report


def populate(path: Path, decisions: int, seed: int = 1) -> int:
    url = f"sqlite:///{path}"
    migrate(url)
    rng = random.Random(seed)
    connection = sqlite3.connect(path)
    cur = connection.cursor()
    now = datetime.now(UTC).replace(tzinfo=None)
    cur.execute("INSERT INTO slots (name, default_block, timezone, reward_window_s, default_reward, reward_aggregation,"
                " reward_min, reward_max, learning_mode, require_activation, policy_name, catalog_version, revision,"
                " created_at, updated_at) VALUES ('bench.hero','b0','UTC',3600,0.0,'sum',0.0,1.0,'online',0,"
                "'bench.hero',1,1,?,?)", (now, now))
    slot_id = cur.lastrowid
    blocks = [{"id": f"b{i}", "features": {"category": f"c{i % 3}"}} for i in range(5)]
    cur.execute("INSERT INTO catalog_versions (slot_id, version, blocks, created_at) VALUES (?,?,?,?)",
                (slot_id, 1, json.dumps(blocks), now))
    policies = {"bench.hero": {"kind": "uniform"}, "bench.editor": {"kind": "fixed", "block": "b0"},
                "bench.b1": {"kind": "fixed", "block": "b1"},
                "bench.rules": {"kind": "rules", "rules": {"rules": [{"when": [{"feature": "device.type", "value": "mobile"}],
                                                                      "block": "b2"}], "fallback": "b1", "exploration": 0.2}}}
    for name, config in policies.items():
        cur.execute("INSERT INTO policies (name, kind, config, revision, created_at, updated_at) VALUES (?,?,?,1,?,?)",
                    (name, config["kind"], json.dumps(config), now, now))
    cur.execute("INSERT INTO experiments (name, slot_id, status, control_arm, metric, learning_start, analysis,"
                " guardrails, salt, revision, created_at, started_at) VALUES ('bench',?, 'running','editor',"
                "'reward_per_decision','scratch','{}','{\"max_fallback_rate\": 0.01}','00',1,?,?)",
                (slot_id, now - timedelta(days=14), now - timedelta(days=14)))
    experiment_id = cur.lastrowid
    arms = [("editor", "bench.editor", 0.34), ("b1", "bench.b1", 0.33), ("rules", "bench.rules", 0.33)]
    for position, (name, policy, share) in enumerate(arms):
        cur.execute("INSERT INTO experiment_arms (experiment_id, position, name, policy_name, share) VALUES (?,?,?,?,?)",
                    (experiment_id, position, name, policy, share))
    devices = ["mobile", "desktop", "tablet", "unknown"]
    countries = ["DE", "FR", "US", "GB", "ES", "IT", "NL", "PL", "SE", "BR"]
    dayparts = ["night", "morning", "afternoon", "evening"]
    ctr = {"editor": 0.10, "b1": 0.11, "rules": 0.105}
    units = max(1, decisions // 3)
    unit_arm = [rng.choices(arms, weights=[a[2] for a in arms])[0] for _ in range(units)]
    ids = ["b0", "b1", "b2", "b3", "b4"]
    PMF = {name: json.dumps([0.84 if i == j else 0.04 for i in range(5)]) for j, name in enumerate(("editor", "b1", "rules"))}  # noqa: N806
    rows, rewards, activations = [], [], []
    start = now - timedelta(days=14)
    for seq in range(decisions):
        u = rng.randrange(units)
        arm, policy, _ = unit_arm[u]
        event_id = f"e{seq:08d}"
        created = start + timedelta(seconds=seq * 14 * 86400 / decisions)
        chosen = {"editor": 0, "b1": 1, "rules": 2}[arm] if rng.random() < 0.84 else rng.randrange(5)
        context = {"time": {"daypart": dayparts[seq % 4]}, "device": {"type": devices[u % 4]},
                   "location": {"country": countries[u % 10]}}
        rows.append((event_id, slot_id, policy, "fixed", 0, 1, "online", 1, json.dumps(ids), PMF[arm], chosen,
                     ids[chosen], 0.84 if chosen == {"editor": 0, "b1": 1, "rules": 2}[arm] else 0.04, json.dumps(context), f"{u:032x}", experiment_id, arm, 1, 0, 0, created))
        if rng.random() < ctr[arm]:
            rewards.append((event_id, None, 1.0, created + timedelta(seconds=5)))
        if rng.random() < 0.6:
            activations.append((event_id, created))
    cur.executemany(
        "INSERT INTO decisions (event_id, slot_id, policy_name, policy_kind, model_version, trained, learning_mode,"
        " catalog_version, candidate_ids, pmf, chosen_index, chosen_block, probability, context, unit_key,"
        " experiment_id, arm, consent, deferred, fallback, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        rows)
    cur.executemany("INSERT INTO rewards (event_id, reward_id, value, created_at) VALUES (?,?,?,?)", rewards)
    cur.executemany("INSERT INTO activations (event_id, created_at) VALUES (?,?)", activations)
    connection.commit()
    connection.close()
    return int(experiment_id)  # type: ignore[arg-type]


def sql_group_by(path: Path, experiment_id: int) -> float:
    """The alternative: per-unit totals by GROUP BY in SQLite (main table only, no segments)."""
    connection = sqlite3.connect(path)
    started = time.perf_counter()
    connection.execute(
        "WITH r AS (SELECT event_id, SUM(value) s FROM rewards GROUP BY event_id) "
        "SELECT arm, COUNT(*), SUM(y), SUM(y*y), SUM(x), SUM(x*x), SUM(x*y) FROM ("
        " SELECT d.arm, d.unit_key, COUNT(*) x, SUM(COALESCE(MIN(MAX(r.s, 0), 1), 0)) y FROM decisions d"
        " LEFT JOIN r ON r.event_id = d.event_id WHERE d.experiment_id = ? GROUP BY d.arm, d.unit_key) GROUP BY arm",
        (experiment_id,)).fetchall()
    elapsed = time.perf_counter() - started
    connection.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--decisions", type=int, default=1_000_000)
    parser.add_argument("--db", default="var/bench-report.db")
    parser.add_argument("--keep", action="store_true", help="reuse an existing database file")
    args = parser.parse_args()
    path = Path(args.db)
    if path.exists() and not args.keep:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or not args.keep:
        t = time.perf_counter()
        experiment_id = populate(path, args.decisions)
        print(f"inserted {args.decisions:,} decisions in {time.perf_counter() - t:.1f} s")
    else:
        experiment_id = 1
    engine = make_engine(f"sqlite:///{path}")
    try:
        build_report(engine, experiment_id)  # warm-up: imports, page cache
        times, fetch = [], []
        for _ in range(3):
            t = time.perf_counter()
            report = build_report(engine, experiment_id)
            times.append(time.perf_counter() - t)
            fetch.append(report["timing_ms"]["fetch"] / 1000)
    finally:
        engine.dispose()
    print(f"full report (with offline section on {report['offline'].get('events', 0)} events): "
          f"median {statistics.median(times):.2f} s (runs {', '.join(f'{x:.2f}' for x in times)}); "
          f"of which SQL fetch + numpy encoding median {statistics.median(fetch):.2f} s")
    print(f"SQL GROUP BY per unit (main table only): {sql_group_by(path, experiment_id):.2f} s")
    print("verdicts:", *report["verdicts"], sep="\n  ")
    print(f"units {report['summary']['units']:,}, decisions {report['summary']['decisions']:,}")


if __name__ == "__main__":
    main()
