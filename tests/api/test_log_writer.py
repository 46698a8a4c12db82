"""The log writer on a real SQLite file: commits on the event loop, the hand-off to the writer
thread when another writer holds the file, duplicates, and the cross-process write lock."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from api.db.engine import make_engine, migrate, try_write_lock, write_lock
from api.db.models import Activation, Decision
from api.log_writer import LogWriter


def decision(event_id: str) -> dict:
    return {"event_id": event_id, "slot_id": 1, "policy_name": "p", "policy_kind": "uniform", "model_version": 0,
            "trained": False, "learning_mode": "online", "catalog_version": 1, "inline_candidates": None,
            "candidate_ids": ["a", "b"], "pmf": [0.5, 0.5], "chosen_index": 1, "chosen_block": "b",
            "probability": 0.5, "context": {"device": {"type": "mobile"}}, "unit_key": None,
            "experiment_id": None, "arm": None, "consent": True, "deferred": False, "fallback": False,
            "fallback_reason": None, "created_at": datetime.now(UTC), "device_type": "mobile", "country": None,
            "daypart": None}


@pytest.fixture
def engine(sqlite_url: str):
    migrate(sqlite_url)
    engine = make_engine(sqlite_url, background_checkpoint=True)
    yield engine
    engine.dispose()


def logged(engine) -> dict[str, float]:
    with engine.connect() as connection:
        return dict(connection.execute(select(Decision.event_id, Decision.probability)).all())


def test_appends_of_one_loop_iteration_commit_together_on_the_loop(engine) -> None:
    batches: list[tuple[int, str]] = []
    writer = LogWriter(engine, commit_in_loop=True, on_batch=lambda n, path, seconds: batches.append((n, path)))

    async def run() -> list[bool]:
        return await asyncio.gather(*(writer.append("decision", decision(f"e{i}")) for i in range(25)))

    try:
        assert asyncio.run(run()) == [True] * 25
    finally:
        writer.close()
    assert batches == [(25, "loop")]
    assert set(logged(engine)) == {f"e{i}" for i in range(25)}


def test_duplicates_in_a_loop_batch_are_settled_row_by_row_by_the_thread(engine) -> None:
    batches: list[tuple[int, str]] = []
    writer = LogWriter(engine, commit_in_loop=True, on_batch=lambda n, path, seconds: batches.append((n, path)))

    async def run() -> tuple[object, ...]:
        await writer.write(decision("first"))
        await writer.append("activation", {"event_id": "first", "created_at": datetime.now(UTC)})
        return tuple(await asyncio.gather(
            writer.append("decision", decision("second")),
            writer.append("activation", {"event_id": "first", "created_at": datetime.now(UTC)}),  # a repeat
            writer.append("decision", decision("first")),  # an event id already logged
            return_exceptions=True,
        ))

    try:
        second, repeat, clash = asyncio.run(run())
    finally:
        writer.close()
    assert second is True and repeat is False and isinstance(clash, IntegrityError)
    assert set(logged(engine)) == {"first", "second"}
    with engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(Activation)).scalar_one() == 1
    assert [path for _, path in batches] == ["loop", "loop", "thread"]


def test_a_busy_file_sends_the_batch_to_the_thread_which_waits(engine, sqlite_url: str) -> None:
    """Another process's writer (here: a second engine on the same file) holds the lock longer
    than the loop may wait: the batch goes to the thread, the loop keeps serving."""
    other = make_engine(sqlite_url)
    batches: list[tuple[int, str]] = []
    writer = LogWriter(engine, commit_in_loop=True, on_batch=lambda n, path, seconds: batches.append((n, path)))
    held = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with write_lock(other):
            held.set()
            release.wait(5)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(5)

    async def run() -> tuple[bool, float]:
        task = asyncio.ensure_future(writer.write(decision("late")))
        started = time.monotonic()
        await asyncio.sleep(0.1)  # the loop is free while the thread waits for the lock
        loop_free_after = time.monotonic() - started
        assert not task.done()
        release.set()
        await task
        return True, loop_free_after

    try:
        done, loop_free_after = asyncio.run(run())
    finally:
        release.set()
        holder.join()
        writer.close()
        other.dispose()
    assert done and loop_free_after < 0.5
    assert batches == [(1, "thread")]
    assert "late" in logged(engine)


def test_the_write_lock_excludes_other_engines_on_the_file(engine, sqlite_url: str) -> None:
    other = make_engine(sqlite_url)
    try:
        with write_lock(other):
            started = time.monotonic()
            with try_write_lock(engine, wait_s=0.05) as taken:
                assert taken is False
            assert 0.04 <= time.monotonic() - started < 1.0
        with try_write_lock(engine, wait_s=0.05) as taken:
            assert taken is True
            with try_write_lock(other, wait_s=0.0) as inner:
                assert inner is False
    finally:
        other.dispose()


def test_the_sqlite_appender_stores_what_sqlalchemy_stores(tmp_path) -> None:
    """Column by column, byte for byte: JSON, NULLs, booleans, aware datetimes, unicode, floats."""
    import sqlite3

    from sqlalchemy import insert

    from api.db.bulk import SqliteAppender
    from api.db.models import Reward

    rows = [decision("plain"), {**decision("inline"), "inline_candidates": [{"id": "ä|b", "features": {"x": 1.5}}],
                                "unit_key": "k" * 32, "consent": False, "fallback": True, "fallback_reason": "boom",
                                "context": {"user": {"név": "日本", "n": 1e-300}}, "experiment_id": 3, "arm": "B"}]
    rewards = [{"event_id": "plain", "reward_id": None, "value": 0.25, "created_at": datetime(2026, 1, 2, 3, 4, 5, 6, UTC)}]
    stored = []
    for way in ("sqlalchemy", "appender"):
        url = f"sqlite:///{tmp_path / way}.db"
        migrate(url)
        engine = make_engine(url)
        with engine.begin() as connection:
            if way == "sqlalchemy":
                connection.execute(insert(Decision.__table__), rows)
                connection.execute(insert(Reward.__table__), rewards)
            else:
                appender = SqliteAppender(engine.dialect)
                appender.append(connection, Decision.__table__, rows)
                appender.append(connection, Reward.__table__, rewards)
        engine.dispose()
        with sqlite3.connect(tmp_path / f"{way}.db") as raw:
            stored.append([raw.execute("SELECT * FROM decisions ORDER BY seq").fetchall(),
                           raw.execute("SELECT * FROM rewards").fetchall()])
    assert stored[0] == stored[1]
    assert len(stored[0][0]) == 2 and len(stored[0][1]) == 1
