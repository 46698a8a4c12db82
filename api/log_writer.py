"""Group commit of decisions.

The decide handler hands a finished decision row to :class:`DecisionWriter`
and (by default) awaits the commit of the batch it landed in, so every
decision the API returns is in the log before the response leaves, while a
single transaction carries many decisions under load. A graceful shutdown
drains the queue. Rows still in flight are visible through :meth:`pending`
so a reward or an idempotent repeat that races the commit still finds them.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, insert
from sqlalchemy.exc import IntegrityError

from api.db.models import Decision

__all__ = ["DecisionWriter"]

log = logging.getLogger("slotbandit.log")

_table = Decision.__table__


@dataclass
class _Item:
    row: dict[str, Any]
    done: Callable[[BaseException | None], None] | None
    future: asyncio.Future[None] | None = None


def _settle(results: list[tuple[asyncio.Future[None], BaseException | None]]) -> None:
    for future, error in results:
        if future.done():
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)


class DecisionWriter:
    def __init__(self, engine: Engine, *, gather_ms: float = 2.0, max_batch: int = 500,
                 on_batch: Callable[[int], None] | None = None) -> None:
        self._engine = engine
        self._gather_s = gather_ms / 1000.0
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._pending: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._on_batch = on_batch
        self._thread = threading.Thread(target=self._run, name="decision-writer", daemon=True)
        self._stopped = False
        self._thread.start()

    def pending(self, event_id: str) -> dict[str, Any] | None:
        with self._lock:
            return self._pending.get(event_id)

    def submit(self, row: dict[str, Any], done: Callable[[BaseException | None], None] | None = None) -> None:
        if self._stopped:
            raise RuntimeError("decision writer is stopped")
        with self._lock:
            self._pending[row["event_id"]] = row
        self._queue.put(_Item(row, done))

    async def write(self, row: dict[str, Any]) -> None:
        """Submit and wait until the row is committed (raises what the commit raised)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        if self._stopped:
            raise RuntimeError("decision writer is stopped")
        with self._lock:
            self._pending[row["event_id"]] = row
        self._queue.put(_Item(row, None, future))
        await future

    def write_sync(self, row: dict[str, Any], timeout: float = 30.0) -> None:
        event = threading.Event()
        failure: list[BaseException] = []

        def done(error: BaseException | None) -> None:
            if error is not None:
                failure.append(error)
            event.set()

        self.submit(row, done)
        if not event.wait(timeout):
            raise TimeoutError("decision log commit timed out")
        if failure:
            raise failure[0]

    def flush(self, timeout: float = 30.0) -> None:
        """Block until everything submitted so far is committed."""
        marker = threading.Event()
        self._queue.put(_Item({"__flush__": True}, lambda _e: marker.set()))
        marker.wait(timeout)

    def close(self, timeout: float = 30.0) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._queue.put(None)
        self._thread.join(timeout)

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
        rows = [item for item in batch if "__flush__" not in item.row]
        errors: dict[int, BaseException] = {}
        if rows:
            try:
                self._insert([item.row for item in rows])
            except IntegrityError:
                # One bad row (a raced duplicate event id) must not sink the batch: retry one by one.
                for item in rows:
                    try:
                        self._insert([item.row])
                    except Exception as error:  # noqa: BLE001 - handed to the waiting request
                        errors[id(item)] = error
            except Exception as error:  # noqa: BLE001 - database down: every waiter learns it
                log.exception("decision log commit failed")
                for item in rows:
                    errors[id(item)] = error
            if self._on_batch is not None:
                self._on_batch(len(rows))
        with self._lock:
            for item in rows:
                self._pending.pop(item.row["event_id"], None)
        # One wake-up of each event loop per batch, not one per decision.
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[None], BaseException | None]]] = {}
        for item in batch:
            if item.done is not None:
                item.done(errors.get(id(item)))
            if item.future is not None:
                by_loop.setdefault(item.future.get_loop(), []).append((item.future, errors.get(id(item))))
        for loop, results in by_loop.items():
            try:
                loop.call_soon_threadsafe(_settle, results)
            except RuntimeError:  # that loop has closed: nobody is waiting any more
                pass

    def _insert(self, rows: list[dict[str, Any]]) -> None:
        with self._engine.begin() as connection:
            connection.execute(insert(_table), rows)
