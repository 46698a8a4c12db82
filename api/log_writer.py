"""Group commit of the append-only log: decisions, activations and rewards.

A handler hands a finished row to :class:`LogWriter` and awaits the commit of
the batch it landed in, so every decision the API returns and every reward or
activation it acknowledges is on disk before the response leaves, while one
transaction (one fsync) carries many rows under load. A graceful shutdown
drains the queue. Decisions still in flight are visible through
:meth:`pending`, so a reward or an idempotent repeat that races the commit
still finds its event.

Each row's outcome is ``True`` (inserted) or ``False`` (a duplicate of an
idempotency key: event id, (event, reward id), activated event); any other
database error is raised to the waiting request.

Two ways to commit. The writer thread serves every database. On a SQLite file
in WAL mode with ``synchronous=NORMAL`` a commit is a few appends to the WAL
and no fsync (0.15 ms for one decision, 0.7 ms for twenty), cheaper than
handing a batch to a thread and back: the thread needs the GIL from the busy
event loop for every row, which held each response for milliseconds. There,
``commit_in_loop`` commits on the event loop itself, once per loop iteration,
everything the handlers of that iteration appended. That path waits at most
2 ms for the file's write lock (a second worker commits within one): when
another writer holds it longer (the learner) or anything fails, the batch goes
to the thread, which waits, retries duplicates row by
row and reports errors, as before.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import Connection, Engine, Table
from sqlalchemy.exc import IntegrityError

from api.db.bulk import append_rows
from api.db.engine import try_write_lock, write_lock
from api.db.models import Activation, Decision, Reward

__all__ = ["LogWriter"]

log = logging.getLogger("slotbandit.log")

Kind = Literal["decision", "activation", "reward"]
_TABLES: dict[str, Table] = {
    "decision": Decision.__table__,
    "activation": Activation.__table__,
    "reward": Reward.__table__,
}


@dataclass
class _Item:
    kind: str
    row: dict[str, Any]
    future: asyncio.Future[bool] | None = None
    event: threading.Event | None = None
    outcome: bool | BaseException | None = field(default=None)


def _settle(items: list[_Item]) -> None:
    for item in items:
        future = item.future
        if future is None or future.done():
            continue
        if isinstance(item.outcome, BaseException):
            future.set_exception(item.outcome)
        else:
            future.set_result(bool(item.outcome))


class LogWriter:
    def __init__(self, engine: Engine, *, gather_ms: float = 0.0, max_batch: int = 500,
                 on_batch: Callable[[int, str, float], None] | None = None, commit_in_loop: bool = False) -> None:
        self._engine = engine
        self._commit_in_loop = commit_in_loop
        self._loop_batch: list[_Item] = []
        self._loop_connection: Connection | None = None
        self._gather_s = gather_ms / 1000.0
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._pending: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._on_batch = on_batch
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="log-writer", daemon=True)
        self._thread.start()

    def pending(self, event_id: str) -> dict[str, Any] | None:
        """A decision submitted but not yet committed, if any."""
        with self._lock:
            return self._pending.get(event_id)

    def _register(self, item: _Item) -> None:
        if self._stopped:
            raise RuntimeError("the log writer is stopped")
        if item.kind == "decision":
            with self._lock:
                self._pending[item.row["event_id"]] = item.row

    def _enqueue(self, item: _Item) -> None:
        self._register(item)
        self._queue.put(item)

    async def append(self, kind: Kind, row: dict[str, Any]) -> bool:
        """Append ``row`` and wait for its commit: True if inserted, False if a duplicate."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()
        item = _Item(kind, row, future=future)
        if self._commit_in_loop:
            self._register(item)
            self._loop_batch.append(item)
            if len(self._loop_batch) == 1:
                # after the handlers already scheduled in this iteration: they join the batch
                loop.call_soon(self._flush_in_loop)
        else:
            self._enqueue(item)
        return await future

    async def write(self, row: dict[str, Any]) -> None:
        """Append a decision row and wait for its commit (a duplicate event id raises)."""
        await self.append("decision", row)

    def submit(self, row: dict[str, Any], kind: Kind = "decision") -> None:
        """Append without waiting (the commit follows within ``gather_ms``)."""
        self._enqueue(_Item(kind, row))

    def flush(self, timeout: float = 30.0) -> None:
        """Block until everything submitted so far is committed."""
        marker = _Item("flush", {}, event=threading.Event())
        self._queue.put(marker)
        assert marker.event is not None
        marker.event.wait(timeout)

    def close(self, timeout: float = 30.0) -> None:
        if self._stopped:
            return
        self._stopped = True
        # appends whose loop flush never ran (their loop stopped first) go to the thread
        for item in self._loop_batch:
            self._queue.put(item)
        self._loop_batch = []
        self._queue.put(None)
        self._thread.join(timeout)
        if self._loop_connection is not None:
            self._loop_connection.close()

    # -- commits on the event loop (SQLite, WAL, synchronous=NORMAL) ------------------

    def _flush_in_loop(self) -> None:
        batch, self._loop_batch = self._loop_batch, []
        if not batch:
            return
        started = time.perf_counter()
        # Another worker's commit is over within a millisecond; anything longer (the learner
        # writing a snapshot) is waited out by the thread, not the loop.
        with try_write_lock(self._engine, wait_s=0.002) as held:
            if held:
                try:
                    if self._loop_connection is None:
                        self._loop_connection = self._engine.connect()
                        # fail at once instead of sleeping in SQLite's busy handler on the loop
                        self._loop_connection.exec_driver_sql("PRAGMA busy_timeout=0")
                        self._loop_connection.commit()
                    with self._loop_connection.begin():
                        self._insert_rows(self._loop_connection, batch)
                except Exception:  # noqa: BLE001 - rolled back; the thread retries and reports
                    held = False
                    if self._loop_connection is not None and self._loop_connection.invalidated:
                        self._loop_connection.close()
                        self._loop_connection = None
        if not held:
            for item in batch:
                self._queue.put(item)
            return
        self._finish(batch, "loop", time.perf_counter() - started)
        for item in batch:
            item.outcome = True
        _settle(batch)

    # -- writer thread ---------------------------------------------------------------

    def _run(self) -> None:
        stop = False
        while not stop:
            item = self._queue.get()
            if item is None:
                break
            batch = [item]
            deadline = time.monotonic() + self._gather_s
            while len(batch) < self._max_batch:
                remaining = deadline - time.monotonic()
                try:
                    nxt = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            self._commit(batch)

    def _commit(self, batch: list[_Item]) -> None:
        started = time.perf_counter()
        rows = [item for item in batch if item.kind != "flush"]
        if rows:
            try:
                self._insert_all(rows)
                for item in rows:
                    item.outcome = True
            except IntegrityError:
                # A duplicate idempotency key must not sink the batch: retry row by row.
                for item in rows:
                    try:
                        self._insert_all([item])
                        item.outcome = True
                    except IntegrityError as error:
                        item.outcome = False if item.kind != "decision" else error
                    except Exception as error:  # noqa: BLE001 - handed to the waiting request
                        item.outcome = error
            except Exception as error:  # noqa: BLE001 - database down: every waiter learns it
                log.exception("log commit failed")
                for item in rows:
                    item.outcome = error
        self._finish(rows, "thread", time.perf_counter() - started)
        # One wake-up of each event loop per batch, not one per row.
        by_loop: dict[asyncio.AbstractEventLoop, list[_Item]] = {}
        for item in batch:
            if item.event is not None:
                item.event.set()
            if item.future is not None:
                by_loop.setdefault(item.future.get_loop(), []).append(item)
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_settle, items)
            except RuntimeError:  # that loop has closed: nobody is waiting any more
                pass

    def _finish(self, rows: list[_Item], path: str, seconds: float) -> None:
        if rows and self._on_batch is not None:
            self._on_batch(len(rows), path, seconds)
        with self._lock:
            for item in rows:
                if item.kind == "decision":
                    self._pending.pop(item.row["event_id"], None)

    def _insert_all(self, items: list[_Item]) -> None:
        with write_lock(self._engine), self._engine.begin() as connection:
            self._insert_rows(connection, items)

    @staticmethod
    def _insert_rows(connection: Connection, items: list[_Item]) -> None:
        by_kind: dict[str, list[dict[str, Any]]] = {}
        for item in items:
            by_kind.setdefault(item.kind, []).append(item.row)
        # decisions first: a reward in the same batch may belong to one of them
        for kind in ("decision", "activation", "reward"):
            if kind in by_kind:
                append_rows(connection, _TABLES[kind], by_kind[kind])

