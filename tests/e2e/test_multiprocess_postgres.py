"""Two `slotbandit serve --no-learner` workers and one `slotbandit learn` on PostgreSQL:
both workers serve each new model version within seconds of its snapshot."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from api.db.engine import make_engine
from api.db.models import Snapshot
from bandits.simulation import World
from tests.conftest import create_keys

ROOT = Path(__file__).resolve().parents[2]
SLOT = "mp.hero"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as stream:
        return subprocess.Popen([sys.executable, "-m", "api.cli", *args], cwd=ROOT, env=env, stdout=stream,
                                stderr=subprocess.STDOUT)


def _wait_health(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError("server did not start")


@pytest.mark.postgres
def test_two_workers_hot_swap_the_learners_snapshots(postgres_url: str, tmp_path: Path) -> None:
    admin_key, decide_key = create_keys(postgres_url)
    env = {**os.environ, "SLOTBANDIT_DATABASE_URL": postgres_url, "SLOTBANDIT_SECRET": "mp-secret",
           "SLOTBANDIT_RELOAD_INTERVAL_S": "0.25", "SLOTBANDIT_LEARNER_SNAPSHOT_EVERY": "150",
           "SLOTBANDIT_LEARNER_SAFETY_MARGIN_S": "0.5", "SLOTBANDIT_LEARNER_POLL_INTERVAL_S": "0.1",
           "SLOTBANDIT_LEARNER_SNAPSHOT_INTERVAL_S": "3600"}
    ports = [_free_port(), _free_port()]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for port in ports:
            log = tmp_path / f"serve-{port}.log"
            processes.append(_start(["serve", "--no-learner", "--port", str(port)], env, log))
        for url, process, port in zip(urls, processes, ports, strict=True):
            _wait_health(url, process, tmp_path / f"serve-{port}.log")
        admin = {"Authorization": f"Bearer {admin_key}"}
        world = World(seed=1)
        r = httpx.put(f"{urls[0]}/v1/slots/{SLOT}", json={"default_block": world.catalog[0].id, "reward_window_s": 1,
                                                         "reward_range": [0, 1]}, headers=admin)
        assert r.status_code == 201, r.text
        for block in world.catalog[:6]:
            httpx.put(f"{urls[0]}/v1/slots/{SLOT}/blocks/{block.id}", json={"features": block.features}, headers=admin)
        processes.append(_start(["learn", "--log-level", "warning"], env, tmp_path / "learn.log"))
        headers = {"Authorization": f"Bearer {decide_key}"}
        with httpx.Client(headers=headers, timeout=10) as client:
            for i, visitor in enumerate(world.visitors(300)):
                url = urls[i % 2]
                d = client.post(f"{url}/v1/slots/{SLOT}/decide", json=visitor.request_body(),
                                headers=visitor.headers()).json()
                if d["block"]["id"] in (world.catalog[1].id, world.catalog[3].id):
                    client.post(f"{url}/v1/events/{d['event_id']}/reward", json={"value": 1.0})
        engine = make_engine(postgres_url)
        try:
            deadline = time.monotonic() + 30
            version = 0
            while time.monotonic() < deadline and version < 2:
                with engine.connect() as connection:
                    version = connection.execute(
                        select(Snapshot.version).where(Snapshot.policy_name == SLOT).order_by(Snapshot.version.desc())
                    ).scalars().first() or 0
                time.sleep(0.05)
            assert version >= 2, (tmp_path / "learn.log").read_text()[-2000:]
            seen_at = time.monotonic()
            lags = []
            for url in urls:
                while time.monotonic() - seen_at < 10:
                    if httpx.get(f"{url}/v1/policies/{SLOT}", headers=admin).json()["model_version"] >= version:
                        break
                    time.sleep(0.05)
                lags.append(time.monotonic() - seen_at)
            print(f"snapshot v{version}: served by both workers after {[round(x, 2) for x in lags]} s")
            assert max(lags) < 5.0, lags
            # and their decisions log the version they used
            for url in urls:
                d = httpx.post(f"{url}/v1/slots/{SLOT}/decide", json={}, headers=headers).json()
                assert d["model_version"] >= version
        finally:
            engine.dispose()
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
