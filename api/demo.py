"""``slotbandit demo``: the whole loop on the embedded SQLite default.

Starts the server (with its embedded learner) in this process, creates API
keys and a demo slot whose blocks come from the simulated world, sends a
simulated audience through the real HTTP API (decide, activate, reward with
realistic, time-compressed delays), and prints what the served policy earned
against the oracle and uniform choice. Then it keeps serving for a person to
explore, unless ``--exit``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time

import uvicorn

from api.settings import ServiceSettings, export_environment

__all__ = ["DEMO_SLOT", "run_demo"]

DEMO_SLOT = "home.hero"


class _Server(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # the main thread keeps Ctrl-C
        pass


def _start_server(settings: ServiceSettings, host: str, port: int) -> tuple[_Server, threading.Thread]:
    from api.app import create_app

    config = uvicorn.Config(create_app(settings), host=host, port=port, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=10)
    server = _Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the server did not start on {host}:{port} (is the port taken?)")
        time.sleep(0.05)
    return server, thread


def run_demo(settings: ServiceSettings, *, host: str, port: int, events: int, exit_after: bool) -> int:
    from api.auth import create_key
    from api.db.engine import make_engine, migrate
    from api.simulate import seed_world_slot, simulate
    from bandits.simulation import World

    settings = dataclasses.replace(settings, demo=True, embedded_learner=True)
    # A demo audience is small and quick: snapshot often so the served model visibly improves
    # within the run (the learner child reads these; a value already set wins).
    export_environment(overwrite=False, SLOTBANDIT_LEARNER_SNAPSHOT_EVERY="250",
                       SLOTBANDIT_LEARNER_SNAPSHOT_INTERVAL_S="3")
    migrate(settings.database_url)
    engine = make_engine(settings.database_url, synchronous=settings.sqlite_synchronous)
    admin_key = create_key(engine, "admin", "demo")
    decide_key = create_key(engine, "decide", "demo")
    engine.dispose()

    server, thread = _start_server(settings, host, port)
    base_url = f"http://{host}:{port}"
    world = World(seed=7)
    seed_world_slot(base_url, admin_key, DEMO_SLOT, world)
    print(f"slotbandit is serving on {base_url}  (database: {settings.database_url})")
    print(f"demo slot '{DEMO_SLOT}' with {len(world.catalog)} blocks; sending {events} simulated visitors...")
    report = asyncio.run(simulate(base_url, decide_key, DEMO_SLOT, events, seed=7, progress=True))
    print()
    print(report.table())
    print()
    print("Try it:")
    print(f"  curl -s -X POST {base_url}/v1/slots/{DEMO_SLOT}/decide -H 'Authorization: Bearer {decide_key}' "
          "-H 'Content-Type: application/json' -d '{\"unit_id\": \"me\"}'")
    print(f"  dashboard: {base_url}/dashboard   (admin key: {admin_key})")
    print(f"  demo page: {base_url}/demo        API schema: {base_url}/schema")
    if exit_after:
        server.should_exit = True
        thread.join(30)
        return 0
    print("Serving until Ctrl-C.")
    try:
        while thread.is_alive():
            thread.join(0.5)
    except KeyboardInterrupt:
        server.should_exit = True
        thread.join(30)
    return 0
