"""Experiment report at scale: 1,000,000 decisions in a SQLite file, the full report timed cold and warm.

    .venv/bin/python benchmarks/report.py [--decisions 1000000] [--db var/bench-report.db] [--keep] [--profile]

Builds a three-arm experiment (two fixed policies and a rules arm) on one slot,
bulk-inserts the decisions (about 300,000 units, several decisions each, four
devices, ten countries, four day parts, 14 days) with ~10% clicks as rewards and
~60% activations through sqlite3 ``executemany`` in one transaction, the segment
columns filled as the decide path fills them, then times
:func:`api.experiments.build_report` with the offline section:

- cold: the report computed from the log (the process's report cache cleared
  before each run; the file is in the OS page cache, as on a server that runs);
  median of three after one untimed run that pays imports;
- warm: the same report again with nothing new in the log (a cache hit).

The machine is shared: the load average is printed with the timings.
``--profile`` prints a pyinstrument profile of one cold report (main thread only;
``py-spy record --threads`` sees the overlapping queries too).

Measured on this machine (2 shared cores, load average 2.0-2.3 during the runs):
before (row fetch with ``json_extract``): median 28.4 s; now cold 2.2-2.5 s
(single runs 1.8-3.1 s), warm 0.005 s. Per cold report, from py-spy: the main
decision scan 1.2-1.8 s (the critical path), the unit-key scan and its encoding
about 1.2 s, the rewards and activations about 1.2 s, the offline section about
0.8 s, all overlapping on their own connections; then 0.8 s of numpy encoding
and per-unit statistics on the main thread.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import statistics
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from api.db.engine import make_engine, migrate
from api.experiments import build_report, clear_report_cache


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
                     ids[chosen], 0.84 if chosen == {"editor": 0, "b1": 1, "rules": 2}[arm] else 0.04, json.dumps(context), f"{u:032x}", experiment_id, arm, 1, 0, 0, created,
                     context["device"]["type"], context["location"]["country"], context["time"]["daypart"]))
        if rng.random() < ctr[arm]:
            rewards.append((event_id, None, 1.0, created + timedelta(seconds=5)))
        if rng.random() < 0.6:
            activations.append((event_id, created))
    cur.executemany(
        "INSERT INTO decisions (event_id, slot_id, policy_name, policy_kind, model_version, trained, learning_mode,"
        " catalog_version, candidate_ids, pmf, chosen_index, chosen_block, probability, context, unit_key,"
        " experiment_id, arm, consent, deferred, fallback, created_at, device_type, country, daypart)"
        " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        rows)
    cur.executemany("INSERT INTO rewards (event_id, reward_id, value, created_at) VALUES (?,?,?,?)", rewards)
    cur.executemany("INSERT INTO activations (event_id, created_at) VALUES (?,?)", activations)
    connection.commit()
    connection.close()
    return int(experiment_id)  # type: ignore[arg-type]


def load() -> str:
    return "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def timed(engine: Engine, experiment_id: int, cold: bool, runs: int = 3) -> tuple[list[float], dict[str, Any]]:
    times, report = [], {}
    for _ in range(runs):
        if cold:
            clear_report_cache()
        t = time.perf_counter()
        report = build_report(engine, experiment_id)
        times.append(time.perf_counter() - t)
        assert report["timing_ms"]["cached"] is not cold
    return times, report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--decisions", type=int, default=1_000_000)
    parser.add_argument("--db", default="var/bench-report.db")
    parser.add_argument("--keep", action="store_true", help="reuse an existing database file")
    parser.add_argument("--profile", action="store_true", help="print a pyinstrument profile of one cold report")
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
        migrate(f"sqlite:///{path}")
        experiment_id = 1
    engine = make_engine(f"sqlite:///{path}")
    try:
        build_report(engine, experiment_id)  # untimed: imports, first page reads
        print(f"before: {load()}")
        cold, report = timed(engine, experiment_id, cold=True)
        warm, _ = timed(engine, experiment_id, cold=False)
        print(f"after:  {load()}")
        if args.profile:
            from pyinstrument import Profiler

            clear_report_cache()
            profiler = Profiler(interval=0.002)
            with profiler:
                build_report(engine, experiment_id)
            print(profiler.output_text(color=False, show_all=False))
    finally:
        engine.dispose()
    target = "met" if statistics.median(cold) < 2.0 else "NOT met"
    print(f"cold full report (offline section on {report['offline'].get('events', 0)} events): median "
          f"{statistics.median(cold):.2f} s (runs {', '.join(f'{x:.2f}' for x in cold)}); 2 s target {target}; "
          f"of which decisions fetched and encoded by {report['timing_ms']['fetch'] / 1000:.2f} s in the last run")
    print(f"warm (cache hit, nothing new in the log): median {statistics.median(warm):.3f} s "
          f"(runs {', '.join(f'{x:.3f}' for x in warm)})")
    print("verdicts:", *report["verdicts"], sep="\n  ")
    print(f"units {report['summary']['units']:,}, decisions {report['summary']['decisions']:,}")


if __name__ == "__main__":
    main()
