"""A live ``slotbandit serve`` subprocess on a loopback port, for whole-service tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

BIN = Path(sys.executable).parent / "slotbandit"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveServer:
    def __init__(self, database_url: str, workdir: Path, *, port: int | None = None, learner: bool = False,
                 extra_env: dict[str, str] | None = None, workers: int = 1) -> None:
        self.workers = workers
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.database_url = database_url
        self.workdir = workdir
        self.learner = learner
        self.env = {**os.environ, "SLOTBANDIT_DATABASE_URL": database_url, "SLOTBANDIT_SECRET": "live-secret",
                    "SLOTBANDIT_SECRET_FILE": str(workdir / "secret.key"), "SLOTBANDIT_RELOAD_INTERVAL_S": "0.3",
                    **(extra_env or {})}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> LiveServer:
        args = [str(BIN), "serve", "--port", str(self.port)]
        if not self.learner:
            args.append("--no-learner")
        if self.workers > 1:
            args += ["--workers", str(self.workers)]
        self.log = open(self.workdir / f"server-{self.port}.log", "ab")  # noqa: SIM115
        # its own process group: a kill takes the worker processes down with the supervisor
        self.process = subprocess.Popen(args, env=self.env, cwd=self.workdir, stdout=self.log, stderr=self.log,
                                        start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}; see {self.log.name}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError("server did not become healthy")

    def kill(self) -> None:
        """SIGKILL: no graceful shutdown, no flush."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(30)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(30)
        if hasattr(self, "log"):
            self.log.close()
