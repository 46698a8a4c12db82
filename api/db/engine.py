"""Engine creation and schema upgrades."""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.pool import ConnectionPoolEntry

__all__ = ["SQLITE_SYNCHRONOUS_MODES", "checkpoint", "make_engine", "migrate", "try_write_lock", "write_lock"]

ROOT = Path(__file__).resolve().parents[2]


SQLITE_SYNCHRONOUS_MODES = ("NORMAL", "FULL")
"""``ServiceSettings.sqlite_synchronous``: what :func:`make_engine` accepts as ``synchronous``."""


def _sqlite_pragmas(synchronous: str) -> Callable[[DBAPIConnection, ConnectionPoolEntry], None]:
    def on_connect(dbapi_connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # WAL + NORMAL: a committed transaction survives a crash or kill of the process (it is in the
        # WAL file); only a power loss or OS crash can lose the last commits. FULL adds an fsync per
        # commit for that case too. PostgreSQL, the production store, always fsyncs.
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()
    return on_connect


def _json_dumps(value: object) -> str:
    # msgspec is several times faster than the stdlib json the JSON columns use by default
    return msgspec.json.encode(value).decode("utf-8")


class _FileWriteLock:
    """One writer at a time across the processes that share a SQLite file.

    SQLite's own busy handler polls with sleeps of up to 100 ms, so two server
    workers committing at once pushed the p99 of a decision to about a second.
    A blocking ``flock`` on a side file wakes the next writer the moment the
    lock is released; the thread lock orders writers within one process.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._thread_lock = threading.Lock()
        self._fd: int | None = None

    def _file(self) -> int:
        if self._fd is None:
            self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        return self._fd

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        with self._thread_lock:
            fd = self._file()
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def try_hold(self, wait_s: float) -> Iterator[bool]:
        """Take the lock if it comes free within ``wait_s``; yields whether it was taken."""
        deadline = time.monotonic() + wait_s
        if not self._thread_lock.acquire(timeout=wait_s):
            yield False
            return
        try:
            fd = self._file()
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        yield False
                        return
                    time.sleep(0.00005)  # another worker's commit takes a fraction of a millisecond
            try:
                yield True
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            self._thread_lock.release()


_WRITE_LOCKS: weakref.WeakKeyDictionary[Engine, _FileWriteLock] = weakref.WeakKeyDictionary()


def write_lock(engine: Engine) -> contextlib.AbstractContextManager[None]:
    """Hold around a write transaction of the log; serialises writers of one SQLite file."""
    lock = _WRITE_LOCKS.get(engine)
    return lock.hold() if lock is not None else contextlib.nullcontext()


def try_write_lock(engine: Engine, wait_s: float) -> contextlib.AbstractContextManager[bool]:
    """Like :func:`write_lock` but waits at most ``wait_s``: yields whether the lock was taken."""
    lock = _WRITE_LOCKS.get(engine)
    return lock.try_hold(wait_s) if lock is not None else contextlib.nullcontext(True)


def _no_autocheckpoint(dbapi_connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA wal_autocheckpoint=0")
    cursor.close()


def make_engine(url: str, *, synchronous: str = "NORMAL", background_checkpoint: bool = False) -> Engine:
    """An engine for ``url``; SQLite files get WAL mode and their folder is created.

    ``synchronous``: SQLite's ``PRAGMA synchronous`` (``NORMAL`` or ``FULL``: pass
    ``ServiceSettings.sqlite_synchronous``); PostgreSQL ignores it.

    ``background_checkpoint``: commits never checkpoint the WAL themselves (SQLite's default
    makes the commit that crosses 1,000 pages copy them into the database and fsync, a stall of
    tens of milliseconds for every request waiting on that commit); the caller runs
    :func:`checkpoint` on its own thread instead. The server does; short-lived tools don't.
    """
    if synchronous.upper() not in SQLITE_SYNCHRONOUS_MODES:
        raise ValueError(f"synchronous must be one of {SQLITE_SYNCHRONOUS_MODES}, not {synchronous!r}")
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False}, pool_size=8, max_overflow=8,
                               json_serializer=_json_dumps)
        event.listen(engine, "connect", _sqlite_pragmas(synchronous.upper()))
        if background_checkpoint:
            event.listen(engine, "connect", _no_autocheckpoint)
        if parsed.database and parsed.database != ":memory:":
            _WRITE_LOCKS[engine] = _FileWriteLock(Path(parsed.database + "-writelock"))
        return engine
    return create_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True, json_serializer=_json_dumps)


def checkpoint(engine: Engine) -> None:
    """Copy committed WAL pages of a SQLite file into the database without blocking writers (PASSIVE)."""
    with engine.connect() as connection:
        connection.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")


def alembic_config(url: str) -> Config:
    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "migrations"))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def migrate(url: str, revision: str = "head") -> None:
    """Upgrade the database at ``url`` to ``revision`` (creates the SQLite file if needed)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(url), revision)
