"""Schemathesis fuzzes the live server from its own ``/schema/openapi.json``, with an admin key
and with a decide key, on SQLite and on PostgreSQL: no server error, and every answer is one
the document describes (status, content type, headers, body schema).

Seeded (``--seed 1``) and bounded: ``SLOTBANDIT_FUZZ_SECONDS`` per key (default 40), so a run
takes about three minutes for both databases.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import create_keys
from tests.e2e.live import LiveServer

SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,"
          "response_headers_conformance,response_schema_conformance")
BUDGET_S = int(os.environ.get("SLOTBANDIT_FUZZ_SECONDS", "40"))


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_the_live_api_answers_as_its_openapi_document_says(backend: str, tmp_path: Path,
                                                           request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue("sqlite_url" if backend == "sqlite" else "postgres_url")
    admin_key, decide_key = create_keys(url)
    server = LiveServer(url, tmp_path).start()
    try:
        admin = {"Authorization": f"Bearer {admin_key}"}
        with httpx.Client(base_url=server.url, headers=admin) as c:  # something to find besides 404s
            assert c.put("/v1/slots/home.hero", json={"default_block": "b0"}).status_code == 201
            for block in ("b0", "b1", "b2"):
                assert c.put(f"/v1/slots/home.hero/blocks/{block}", json={"features": {"k": block}}).status_code == 201
            assert c.post("/v1/slots/home.hero/decide", json={"event_id": "e1"}).status_code == 200
        for key in (admin_key, decide_key):
            run = subprocess.run(
                [str(SCHEMATHESIS), "run", f"{server.url}/schema/openapi.json", "--header", f"Authorization: Bearer {key}",
                 "--seed", "1", "--workers", "1", "--checks", CHECKS, "--phases", "coverage,fuzzing",
                 "--max-time", str(BUDGET_S), "--suppress-health-check", "all", "--no-color",
                 "--request-timeout", "30",
                 # revoking or rotating the fuzzer's own key would end the run (tests/api/test_keys.py)
                 "--exclude-path-regex", r"^/v1/keys/\{key_id\}/"],
                cwd=tmp_path, capture_output=True, text=True, timeout=BUDGET_S + 300,
            )
            assert run.returncode == 0, run.stdout[-8000:]
            cases = next((line.strip() for line in run.stdout.splitlines() if line.strip()[:1].isdigit() and " generated" in line), "?")
            print(f"{backend}, {'admin' if key == admin_key else 'decide'} key: {cases}, no failure")
        assert server.process is not None and server.process.poll() is None, "the server died"
    finally:
        server.stop()
    log = (tmp_path / f"server-{server.port}.log").read_text(errors="replace")
    assert "unhandled error" not in log, log[-4000:]
