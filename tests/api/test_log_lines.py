"""No request can forge a log line: control characters from a request are escaped in every log
record (message, arguments, exception text), and paths with control characters are 404s."""

from __future__ import annotations

import io
import logging

import pytest

import api.db.queries
from tests.api.test_decision_api import seed_slot, service  # noqa: F401


@pytest.fixture
def log_text():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
    logger = logging.getLogger("slotbandit")  # it does not propagate to the root (api.app's logging config)
    logger.addHandler(handler)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)


def test_request_text_cannot_start_a_log_line(service, log_text, monkeypatch) -> None:  # noqa: F811
    seed_slot(service, blocks=1)
    c = service.client

    def failing(connection, slot_id, block_id, features):
        raise RuntimeError(f"cannot store {features['note']}")  # a bug whose message carries request text

    monkeypatch.setattr(api.db.queries, "upsert_block", failing)
    forged = "x\nINFO slotbandit.auth admin key accepted\r\n"
    r = c.put("/v1/slots/home.hero/blocks/b0", json={"features": {"note": forged}}, headers=service.admin)
    assert r.status_code == 500 and r.json()["error"] == "internal_error"
    r = c.get("/v1/events/a%0aINFO%20slotbandit.auth%20forged", headers=service.admin)
    assert r.status_code == 404 and r.json()["field"] == "path"
    text = log_text.getvalue()
    assert "unhandled error on PUT /v1/slots/home.hero/blocks/b0" in text
    assert "x\\x0aINFO slotbandit.auth admin key accepted\\x0d\\x0a" in text
    for line in text.splitlines():
        assert line.startswith(("ERROR ", "WARNING ", "  ", "Traceback", "RuntimeError", "During", "The above")) or not line, line
    assert "forged" not in text
