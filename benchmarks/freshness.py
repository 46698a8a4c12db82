"""Freshness benchmark: how soon a reward's effect is served, at a paced 1,000 decisions/s.

    .venv/bin/python benchmarks/freshness.py [--seconds 25] [--rounds 2] [--window 1] [--aggregation sum]
                                             [--baseline-code PATH]

Runs the real server (``slotbandit serve``, one worker, the embedded learner
as its child process, as ``make demo`` has it) on a fresh SQLite file, with a
slot of ``--candidates`` blocks and a trained VW snapshot, twice per round:
once with the learner and registry settings of before this work (the
baseline: 30 s snapshot interval, 10,000 decisions per snapshot, 3 s safety
margin, 1 s idle poll, 1 s registry reload) and once with the current
defaults (nothing set). ``--baseline-code PATH`` runs the baseline server
from another source tree (e.g. ``git archive main | tar -x -C PATH``) so the
baseline is the old code too, not only the old settings.

Load, for ``--seconds``:

* wrk A: decides only, paced (exponential think times) to about
  ``rate - rewarded - probe`` decisions/s; its p50/p99 are the decide
  latencies reported;
* wrk B: decide, then a reward (value 1) for the decision it made 32
  requests earlier, alternating: ``--rewarded`` decisions/s and as many
  rewards/s;
* the prober (this process): a decide every ``--probe-ms`` with its own event
  id, remembering each response's ``model_version``; every fifth probe is a
  *sample* and gets a reward of 1 right away. A watcher thread reads the
  snapshot rows (version, cursor) from the database as they appear.

Freshness of a sample = the first moment a decide response of the serving
worker carries a model version whose snapshot cursor is at or past the
sample's ``seq``, minus the moment the sample became learnable: its window's
close (``created_at + reward_window_s``) under ``sum``, its final reward
under ``first`` and ``max`` (reward_max is 1). Split into the learner's part
(to the snapshot's ``created_at``) and the registry's part (from there to a
served response). After the load the prober keeps probing for ``--tail``
seconds; a sample not served by then is counted as censored (and as
infinitely late in the percentiles).

The load average is printed before each run: the run itself adds about 2 on
2 cores (server, learner, two wrk, the prober); more means another job
shared the cores.
"""

from __future__ import annotations

import argparse
import bisect
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import httpx  # noqa: E402
from decide import SLOT, free_port, make_blocks, train_model  # noqa: E402
from sqlalchemy import insert, select  # noqa: E402

from api.auth import create_key  # noqa: E402
from api.client import Client, ClientError  # noqa: E402
from api.db.engine import make_engine, migrate  # noqa: E402
from api.db.models import Decision, Reward, Snapshot  # noqa: E402
from bandits.simulation import World  # noqa: E402

BASELINE_ENV = {
    # the learner and registry defaults before the freshness work (issue 15)
    "SLOTBANDIT_LEARNER_SNAPSHOT_INTERVAL_S": "30",
    "SLOTBANDIT_LEARNER_SNAPSHOT_EVERY": "10000",
    "SLOTBANDIT_LEARNER_SAFETY_MARGIN_S": "3",
    "SLOTBANDIT_LEARNER_POLL_INTERVAL_S": "1",
    "SLOTBANDIT_RELOAD_INTERVAL_S": "1",
}

_RESULT = re.compile(r"RESULT (\d+) (\d+) (\d+) (\d+) ([\d.]+) ([\d.]+) ([\d.]+) ([\d.]+)")


def _lua_str(text: str) -> str:
    return "[==[" + text + "]==]"


def _lua(path: Path, bodies: list[str], agents: list[str], key: str, pace_ms: float, *, prefix: str | None) -> None:
    """wrk script: decides (``prefix`` None), or decide/reward alternating with event ids ``prefix..n``."""
    head = (
        "local bodies = {" + ",".join(_lua_str(b) for b in bodies) + "}\n"
        + "local agents = {" + ",".join(_lua_str(a) for a in agents) + "}\n"
        + "local i = 0\nlocal n = 0\n"
    )
    headers = f"{{['Content-Type'] = 'application/json', ['Authorization'] = 'Bearer {key}', ['User-Agent'] = agents[k]}}"
    if prefix is None:
        body = (
            "request = function()\n  i = i + 1\n  local k = (i % #bodies) + 1\n"
            f"  return wrk.format('POST', '/v1/slots/{SLOT}/decide', {headers}, bodies[k])\nend\n"
        )
    else:
        # the reward goes to the decision made 32 requests earlier: answered and committed by then
        body = (
            "request = function()\n  i = i + 1\n  local k = (i % #bodies) + 1\n"
            "  if i % 2 == 0 and n > 32 then\n"
            f"    return wrk.format('POST', '/v1/events/{prefix}' .. (n - 32) .. '/reward', {headers}, '{{\"value\": 1}}')\n"
            "  end\n  n = n + 1\n"
            f"  local b = '{{\"event_id\": \"{prefix}' .. n .. '\", ' .. string.sub(bodies[k], 2)\n"
            f"  return wrk.format('POST', '/v1/slots/{SLOT}/decide', {headers}, b)\nend\n"
        )
    done = (
        "done = function(summary, latency, requests)\n"
        "  io.write(string.format('RESULT %d %d %d %d %.1f %.1f %.1f %.1f\\n', summary.requests, summary.errors.status,"
        " summary.errors.connect + summary.errors.read + summary.errors.write, summary.errors.timeout, "
        "latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))\nend\n"
    )
    delay = f"delay = function() return math.floor(-math.log(1 - math.random()) * {pace_ms}) end\n"
    path.write_text(head + body + delay + done)


def _wrk(url: str, script: Path, connections: int, seconds: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "5s", "-s", str(script), url],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _wrk_result(process: subprocess.Popen[str], seconds: float) -> dict[str, float]:
    out, err = process.communicate(timeout=seconds + 60)
    fields = _RESULT.search(out)
    assert fields, out + err
    requests, status_errors, socket_errors, timeouts = (int(fields.group(i)) for i in range(1, 5))
    p50, p90, p99, pmax = (float(fields.group(i)) / 1000.0 for i in range(5, 9))
    return {"requests": requests, "rate": requests / max(1, round(seconds)), "non_2xx": status_errors,
            "socket_errors": socket_errors + timeouts, "p50_ms": p50, "p90_ms": p90, "p99_ms": p99, "max_ms": pmax}


@dataclass
class Probe:
    """Decides of its own every ``interval_s``; remembers (wall time, model_version) of each response."""

    base: str
    key: str
    interval_s: float
    served: list[tuple[float, int]] = field(default_factory=list)
    samples: list[str] = field(default_factory=list)
    errors: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    sampling: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        prefix = f"p{uuid.uuid4().hex[:6]}-"
        n = 0
        with httpx.Client(base_url=self.base, headers={"Authorization": f"Bearer {self.key}"}, timeout=10) as http:
            next_at = time.monotonic()
            while not self.stop.is_set():
                n += 1
                event_id = f"{prefix}{n}"
                try:
                    response = http.post(f"/v1/slots/{SLOT}/decide", json={"event_id": event_id})
                    response.raise_for_status()
                    self.served.append((time.time(), int(response.json()["model_version"])))
                    if self.sampling.is_set() and n % 5 == 0:
                        http.post(f"/v1/events/{event_id}/reward", json={"value": 1.0}).raise_for_status()
                        self.samples.append(event_id)
                except httpx.HTTPError:
                    self.errors += 1
                next_at += self.interval_s
                self.stop.wait(max(0.0, next_at - time.monotonic()))


def _watch_snapshots(url: str, stop: threading.Event, seen: dict[int, tuple[int, float]]) -> None:
    """version -> (cursor, created_at as a wall time), read as the rows appear (older ones are pruned)."""
    engine = make_engine(url)
    try:
        while not stop.wait(0.05):
            with engine.connect() as connection:
                for version, cursor, created in connection.execute(
                    select(Snapshot.version, Snapshot.cursor, Snapshot.created_at).where(Snapshot.policy_name == SLOT)
                ):
                    if version not in seen:
                        moment = created if created.tzinfo else created.replace(tzinfo=UTC)
                        seen[version] = (int(cursor), moment.timestamp())
    finally:
        engine.dispose()


def _profile(server_pid: int, args: argparse.Namespace, workdir: Path) -> subprocess.Popen[bytes] | None:
    """py-spy the embedded learner (the child of the server whose command line says ``learn``)."""
    for child in Path("/proc").iterdir():
        try:
            stat = (child / "stat").read_text()
            cmdline = (child / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if stat.rsplit(")", 1)[1].split()[1] == str(server_pid) and b"learn" in cmdline:
            return subprocess.Popen(
                [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", child.name, "--duration",
                 str(max(1, round(args.seconds) - 2)), "--format", "raw", "--output", str(workdir / "learner.txt"),
                 "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print("  (no learner process found to profile)")
    return None


def _print_profile(path: Path, keep: str) -> None:
    if not path.exists():
        print("  (py-spy wrote no samples)")
        return
    shutil.copy(path, keep)
    leaves: dict[str, int] = {}
    lines = path.read_text().splitlines()
    for line in lines:
        stack, _, count = line.rpartition(" ")
        leaf = stack.split(";")[-1]
        leaves[leaf] = leaves.get(leaf, 0) + int(count)
    whole = sum(leaves.values()) or 1
    print(f"  learner profile ({whole} samples, raw in {keep}), top self time:")
    for leaf, count in sorted(leaves.items(), key=lambda kv: -kv[1])[:12]:
        print(f"    {100 * count / whole:5.1f}%  {leaf}")
    layers = {"idle (stop.wait)": "wait (threading.py", "step: read (SQL + rows)": "connection.execute",
              "VW learn": "learn (bandits/policies.py", "VW pmf": "pmf (bandits/policies.py",
              "snapshot": "snapshot (api/learner.py", "model save": "save (bandits/policies.py"}
    hits = dict.fromkeys(layers, 0)
    for line in lines:
        stack, _, count = line.rpartition(" ")
        for name, marker in layers.items():
            if marker in stack:
                hits[name] += int(count)
    print("  inclusive share:", ", ".join(f"{name} {100 * n / whole:.0f}%" for name, n in hits.items()))


def _audit(connection: Any, window: int) -> tuple[int, int]:
    """(learned decisions, those learned without a reward the log has inside their window): the
    rewards whose commit came later than the safety margin after their stamp (``sum``, value 1)."""
    from api.db.learning_models import LearnedDecision

    learned = dict(connection.execute(select(LearnedDecision.seq, LearnedDecision.reward)).all())
    span = timedelta(seconds=window)
    in_window = {seq for seq, decided, rewarded in connection.execute(
        select(Decision.seq, Decision.created_at, Reward.created_at).join(Reward, Reward.event_id == Decision.event_id))
        if seq in learned and rewarded <= decided + span}
    return len(learned), sum(1 for seq in in_window if learned[seq] < 1.0)


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def run_once(args: argparse.Namespace, label: str, env_extra: dict[str, str], code: Path, model: bytes,
             bodies: list[str], agents: list[str], blocks: list[Any]) -> dict[str, Any]:
    load_before = os.getloadavg()
    workdir = Path(tempfile.mkdtemp(prefix="sb-fresh-"))
    url = f"sqlite:///{workdir / 'bench.db'}"
    migrate(url)
    engine = make_engine(url)
    admin_key = create_key(engine, "admin")
    decide_key = create_key(engine, "decide")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("SLOTBANDIT_LEARNER_") and key != "SLOTBANDIT_RELOAD_INTERVAL_S"}
    if args.audit:
        env["SLOTBANDIT_LEARNER_LEDGER"] = "1"
    env.update(SLOTBANDIT_DATABASE_URL=url, SLOTBANDIT_SECRET="bench", SLOTBANDIT_SECRET_FILE=str(workdir / "secret"),
               PYTHONPATH=str(code), **env_extra)
    server = subprocess.Popen([sys.executable, "-m", "api.cli", "serve", "--port", str(port), "--workers", "1"],
                              env=env, cwd=workdir, stdout=subprocess.DEVNULL, stderr=open(workdir / "server.log", "wb"))  # noqa: SIM115
    try:
        for _ in range(300):
            try:
                httpx.get(base + "/health", timeout=1).raise_for_status()
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        with Client(base, admin_key) as admin:
            admin.put_slot(SLOT, default_block=blocks[0].id, reward_range=[0, 1], reward_window_s=args.window,
                           reward_aggregation=args.aggregation)
            for block in blocks:
                admin.put_block(SLOT, block.id, dict(block.features))
        with engine.begin() as connection:
            connection.execute(insert(Snapshot).values(policy_name=SLOT, version=1, model=model, cursor=0, metrics={}))
        with Client(base, decide_key) as client:
            deadline = time.monotonic() + 20
            while True:
                try:
                    if int(client.decide(SLOT)["model_version"]) >= 1:
                        break
                except ClientError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("the server did not load the snapshot")
                time.sleep(0.1)

        probe_rate = 1000.0 / args.probe_ms
        rate_a = max(50.0, args.rate - args.rewarded - probe_rate)
        conns_a, conns_b = 64, 16
        script_a, script_b = workdir / "a.lua", workdir / "b.lua"
        pace_a = conns_a * 1000.0 / rate_a
        pace_b = conns_b * 1000.0 / (2 * args.rewarded)
        prefix = f"w{uuid.uuid4().hex[:6]}-"
        # one short trial corrects the think times (wrk is closed-loop: a cycle is latency + think)
        for _ in range(2):
            _lua(script_a, bodies, agents, decide_key, pace_a, prefix=None)
            _lua(script_b, bodies, agents, decide_key, pace_b, prefix=prefix + "t")
            a, b = _wrk(base, script_a, conns_a, 2), _wrk(base, script_b, conns_b, 2)
            trial_a, trial_b = _wrk_result(a, 2), _wrk_result(b, 2)
            pace_a = max(0.1, pace_a * trial_a["rate"] / rate_a)
            pace_b = max(0.1, pace_b * trial_b["rate"] / (2 * args.rewarded))
        _lua(script_a, bodies, agents, decide_key, pace_a, prefix=None)
        _lua(script_b, bodies, agents, decide_key, pace_b, prefix=prefix)

        seen: dict[int, tuple[int, float]] = {}
        stop_watch = threading.Event()
        watcher = threading.Thread(target=_watch_snapshots, args=(url, stop_watch, seen), daemon=True)
        watcher.start()
        probe = Probe(base, decide_key, args.probe_ms / 1000.0)
        prober = threading.Thread(target=probe.run, daemon=True)
        prober.start()
        probe.sampling.set()
        a, b = _wrk(base, script_a, conns_a, args.seconds), _wrk(base, script_b, conns_b, args.seconds)
        profiler = _profile(server.pid, args, workdir) if args.profile and label == "current" else None
        load_a, load_b = _wrk_result(a, args.seconds), _wrk_result(b, args.seconds)
        probe.sampling.clear()
        if profiler is not None:
            profiler.wait(60)
            _print_profile(workdir / "learner.txt", args.profile_out)
        load_during = os.getloadavg()
        time.sleep(args.tail)
        probe.stop.set()
        prober.join(15)
        stop_watch.set()
        watcher.join(5)
    finally:
        server.terminate()
        server.wait(60)

    with engine.connect() as connection:
        decided = {row.event_id: (int(row.seq), row.created_at) for row in connection.execute(
            select(Decision.event_id, Decision.seq, Decision.created_at).where(Decision.event_id.in_(probe.samples)))}
        rewarded = {row.event_id: row.created_at for row in connection.execute(
            select(Reward.event_id, Reward.created_at).where(Reward.event_id.in_(probe.samples)))}
        misses = _audit(connection, args.window) if args.audit else None
    engine.dispose()
    shutil.rmtree(workdir, ignore_errors=True)

    def wall(moment: datetime) -> float:
        return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()

    # served responses in time order, with the best cursor served so far
    times, cursors, best = [], [], 0
    for at, version in sorted(probe.served):
        best = max(best, seen.get(version, (0, 0.0))[0])
        times.append(at)
        cursors.append(best)
    snapshots = sorted((cursor, created) for cursor, created in seen.values())
    fresh, learner_part, registry_part, censored = [], [], [], 0
    for event_id in probe.samples:
        if event_id not in decided:
            continue
        seq, created = decided[event_id]
        if args.aggregation == "sum":
            ready = wall(created) + args.window
        else:
            ready = wall(rewarded.get(event_id, created))
        index = bisect.bisect_left(cursors, seq)
        if index == len(cursors):
            censored += 1
            fresh.append(math.inf)
            continue
        fresh.append(times[index] - ready)
        written = min((at for cursor, at in snapshots if cursor >= seq), default=None)
        if written is not None:
            learner_part.append(written - ready)
            registry_part.append(times[index] - written)
    return {
        "label": label, "load_before": load_before[0], "load_during": load_during[0],
        "samples": len(fresh), "censored": censored, "snapshots": len(seen) - 1,
        "fresh_p50": _percentile(fresh, 0.5), "fresh_p95": _percentile(fresh, 0.95), "fresh_max": max(fresh, default=math.nan),
        "learner_p50": _percentile(learner_part, 0.5), "learner_p95": _percentile(learner_part, 0.95),
        "registry_p50": _percentile(registry_part, 0.5), "registry_p95": _percentile(registry_part, 0.95),
        "decide_rate": load_a["rate"] + load_b["rate"] / 2 + probe_rate, "reward_rate": load_b["rate"] / 2,
        "p50_ms": load_a["p50_ms"], "p99_ms": load_a["p99_ms"], "max_ms": load_a["max_ms"],
        "non_2xx": load_a["non_2xx"] + load_b["non_2xx"], "socket_errors": load_a["socket_errors"] + load_b["socket_errors"],
        "probe_errors": probe.errors, "misses": misses,
    }


def _s(value: float) -> str:
    return ">tail" if math.isinf(value) else f"{value:6.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=25, help="length of the measured load")
    parser.add_argument("--rounds", type=int, default=2, help="baseline + current pairs, interleaved")
    parser.add_argument("--rate", type=float, default=1000.0, help="decisions/s, all sources together")
    parser.add_argument("--rewarded", type=float, default=200.0, help="decisions/s of wrk B, each rewarded")
    parser.add_argument("--probe-ms", type=float, default=20.0, help="time between the prober's decides")
    parser.add_argument("--window", type=int, default=1, help="the slot's reward window, seconds")
    parser.add_argument("--aggregation", choices=("sum", "first", "max"), default="sum")
    parser.add_argument("--tail", type=float, default=5.0, help="probing after the load; later samples are censored")
    parser.add_argument("--candidates", type=int, default=20)
    parser.add_argument("--baseline-code", type=Path, default=ROOT,
                        help="source tree the baseline server runs from (default: this one, old settings)")
    parser.add_argument("--audit", action="store_true",
                        help="learner ledger on: count decisions learned without a reward the log holds in their window")
    parser.add_argument("--profile", action="store_true", help="py-spy the learner of the current run")
    parser.add_argument("--profile-out", default="freshness-learner-profile.txt")
    parser.add_argument("--only", choices=("baseline", "current"), help="run one configuration")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("needs wrk: apt-get install wrk", file=sys.stderr)
        return 2

    blocks = make_blocks(args.candidates)
    world = World(seed=3)
    model, _ = train_model(blocks, world)
    visitors = list(world.visitors(300, stream=9))
    import json

    bodies = [json.dumps(v.request_body()) for v in visitors]
    agents = [v.user_agent for v in visitors]
    configs = [("baseline", BASELINE_ENV, args.baseline_code.resolve()), ("current", {}, ROOT)]
    if args.only:
        configs = [c for c in configs if c[0] == args.only]
    results = []
    print(f"freshness benchmark: 1 worker + embedded learner, SQLite, {args.candidates} candidates, "
          f"~{args.rate:.0f} decisions/s ({args.rewarded:.0f}/s rewarded), window {args.window} s, {args.aggregation}; "
          f"{args.seconds:.0f} s per run, {os.cpu_count()} cores")
    for round_ in range(args.rounds):
        for label, env_extra, code in configs:
            r = run_once(args, label, env_extra, code, model, bodies, agents, blocks)
            r["round"] = round_ + 1
            results.append(r)
            print(f"  round {r['round']} {label:8s} load {r['load_before']:.2f}->{r['load_during']:.2f}  "
                  f"{r['decide_rate']:5.0f} dec/s {r['reward_rate']:4.0f} rew/s  "
                  f"freshness p50 {_s(r['fresh_p50'])} p95 {_s(r['fresh_p95'])} max {_s(r['fresh_max'])} s "
                  f"(learner p50/p95 {r['learner_p50']:.2f}/{r['learner_p95']:.2f}, registry {r['registry_p50']:.2f}/"
                  f"{r['registry_p95']:.2f}; {r['samples']} samples, {r['censored']} censored, {r['snapshots']} snapshots)  "
                  f"decide p50 {r['p50_ms']:.2f} p99 {r['p99_ms']:.2f} max {r['max_ms']:.1f} ms  "
                  f"errors {r['non_2xx']}/{r['socket_errors']}/{r['probe_errors']}"
                  + (f"  audit: {r['misses'][1]} of {r['misses'][0]} learned without their reward"
                     if r["misses"] else ""), flush=True)
    if not args.only:
        print("  current / baseline, per round:")
        for round_ in range(1, args.rounds + 1):
            old, new = (next(r for r in results if r["round"] == round_ and r["label"] == name)
                        for name in ("baseline", "current"))

            def ratio(key: str, old: dict[str, Any] = old, new: dict[str, Any] = new) -> str:
                a, b = new[key], old[key]
                return "n/a" if math.isinf(a) or math.isinf(b) or not b else f"{a / b:.3f}"

            print(f"    round {round_}: freshness p50 {ratio('fresh_p50')} p95 {ratio('fresh_p95')} "
                  f"max {ratio('fresh_max')}; decide p50 {ratio('p50_ms')} p99 {ratio('p99_ms')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
