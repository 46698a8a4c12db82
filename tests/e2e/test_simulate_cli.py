"""`slotbandit simulate` against a live `slotbandit serve` (embedded learner, SQLite) over real HTTP."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from sqlalchemy import func, select

from api.db.engine import make_engine
from api.db.models import Activation, Decision, Reward, Snapshot
from tests.conftest import create_keys

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_simulate_drives_a_live_server_and_the_embedded_learner_learns(sqlite_url: str, tmp_path: Path) -> None:
    admin_key, decide_key = create_keys(sqlite_url)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "SLOTBANDIT_DATABASE_URL": sqlite_url, "SLOTBANDIT_SECRET": "sim-secret",
           "SLOTBANDIT_LEARNER_SAFETY_MARGIN_S": "0.2", "SLOTBANDIT_LEARNER_SNAPSHOT_EVERY": "100",
           "SLOTBANDIT_LEARNER_POLL_INTERVAL_S": "0.1", "SLOTBANDIT_RELOAD_INTERVAL_S": "0.2"}
    log = tmp_path / "serve.log"
    with open(log, "wb") as stream:
        server = subprocess.Popen([sys.executable, "-m", "api.cli", "serve", "--port", str(port)], cwd=ROOT, env=env,
                                  stdout=stream, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, log.read_text()[-2000:]
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.1)
        result = subprocess.run(
            [sys.executable, "-m", "api.cli", "simulate", "--url", url, "--slot", "sim.hero", "--events", "400",
             "--setup", "--admin-key", admin_key, "--api-key", decide_key, "--window", "1", "--no-progress",
             "--concurrency", "8"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=240,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        out = result.stdout
        print(out)
        assert "slot sim.hero: 400 decisions" in out and "0 errors" in out
        for name in ("served policy", "oracle", "uniform", "best single block", "gap to the oracle closed"):
            assert name in out
        time.sleep(2.0)  # the last windows close, the embedded learner snapshots
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(30) in (0, -signal.SIGTERM), log.read_text()[-2000:]  # uvicorn re-raises the signal after a graceful stop
    engine = make_engine(sqlite_url)
    try:
        with engine.connect() as connection:
            decisions = connection.execute(select(func.count()).select_from(Decision)).scalar_one()
            activations = connection.execute(select(func.count()).select_from(Activation)).scalar_one()
            rewards = connection.execute(select(func.count()).select_from(Reward)).scalar_one()
            metrics = connection.execute(select(Snapshot.metrics).order_by(Snapshot.version.desc()).limit(1)).scalar_one()
    finally:
        engine.dispose()
    clicks = int(out.split(" clicks")[0].rsplit(" ", 1)[1])
    assert (decisions, activations, rewards) == (400, 400, clicks)
    assert metrics["decisions_learned"] == 400  # the graceful shutdown snapshots everything learned
    assert metrics["reward_sum"] == clicks
