"""The embedded learner is a child process of the server (VW holds the GIL while it learns): it
starts with the server, stops with it, and leaves on its own when the server is killed."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.conftest import create_keys
from tests.e2e.live import LiveServer


def children(pid: int) -> dict[int, str]:
    """Live child processes of ``pid`` with their command lines (Linux /proc)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found[int(entry.name)] = cmdline
    return found


def learner_of(server: LiveServer) -> int:
    assert server.process is not None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        for pid, cmdline in children(server.process.pid).items():
            if "api.cli learn" in cmdline and f"--exit-with-parent {server.process.pid}" in cmdline:
                return pid
        time.sleep(0.1)
    raise AssertionError(f"no learner child of {server.process.pid}: {children(server.process.pid)}")


def gone(pid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:  # reap it if it is our own child
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.1)
    return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc to find child processes")
def test_the_learner_process_follows_the_server(sqlite_url: str, tmp_path: Path) -> None:
    create_keys(sqlite_url)
    server = LiveServer(sqlite_url, tmp_path, learner=True).start()
    try:
        learner = learner_of(server)
    finally:
        server.stop()
    assert gone(learner, within=30), "a graceful stop of the server left its learner running"

    server = LiveServer(sqlite_url, tmp_path, learner=True).start()
    try:
        learner = learner_of(server)
        assert server.process is not None
        os.kill(server.process.pid, signal.SIGKILL)  # the server alone: no group kill
        server.process.wait(30)
        assert gone(learner, within=15), "the learner outlived a killed server"
    finally:
        server.stop()
