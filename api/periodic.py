"""A function run every N seconds on its own thread, stopped and joined on shutdown.

Used for the cheap polls of a serving worker (registry, experiments). A thread
that is joined before the engine is disposed never returns a connection to a
disposed pool (asyncio.to_thread work cannot be joined on cancel).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

__all__ = ["Periodic"]

log = logging.getLogger("slotbandit.periodic")


class Periodic:
    def __init__(self, name: str, interval_s: float, function: Callable[[], None]) -> None:
        self.name = name
        self._interval = interval_s
        self._function = function
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> Periodic:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._function()
            except Exception:  # noqa: BLE001 - keep serving the last known state
                log.exception("%s failed", self.name)

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
