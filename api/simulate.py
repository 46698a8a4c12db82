"""``slotbandit simulate``: a simulated audience driving a running server over real HTTP.

Each visitor of a :class:`bandits.simulation.World` asks ``POST /v1/slots/{slot}/decide``
with its own body and browser headers (:meth:`Visitor.request_body`,
:meth:`Visitor.headers`), activates the event, and when the world says it
clicks, sends ``reward 1`` after the world's click delay. Time is compressed:
every delay is multiplied by ``time_scale`` (default 0.01, so the median click
delay of 6 s becomes 60 ms), which keeps the order of events and their
relative spacing while a run finishes quickly. Visitors are issued in stream
order by ``concurrency`` workers.

The report compares, with the world's exact click probabilities ``p(a | x)``
(no sampling noise), the served policy with the references on the same
visitors:

* ``served``: mean ``p(chosen | x)``, the expected click rate of what was shown;
* ``policy``: mean ``sum_a pi(a | x) p(a | x)`` with the served pmf ``pi``
  (the ranking probabilities of the response);
* ``oracle``: mean ``max_a p(a | x)``; ``uniform``: mean over blocks;
  ``best_fixed``: the single block with the best mean in hindsight;
* ``gap_closed = (policy - uniform) / (oracle - uniform)``.

Each figure is given for the whole run and for its last quarter (after the
model had time to learn).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np

from api.client import AsyncClient, Client, ClientError
from api.settings import ClientKeys, ServiceSettings
from bandits.simulation import Visitor, World

__all__ = ["SimulationReport", "WindowFigures", "add_commands", "seed_world_slot", "simulate"]


@dataclass(frozen=True)
class WindowFigures:
    """Mean expected click rates over a window of the run (see the module doc)."""

    n: int
    served: float
    policy: float
    realized: float
    oracle: float
    uniform: float
    best_fixed: float
    best_fixed_block: str

    @property
    def gap_closed(self) -> float:
        span = self.oracle - self.uniform
        return (self.policy - self.uniform) / span if span > 0 else float("nan")


@dataclass(frozen=True)
class SimulationReport:
    """What a simulated audience saw: events, errors, model versions and the figures of the run."""

    slot: str
    events: int
    """Decisions answered."""
    errors: int
    """Requests that failed (HTTP or transport errors)."""
    fallbacks: int
    clicks: int
    rewards_sent: int
    model_versions: tuple[int, ...]
    """Distinct model versions that served, in order of first use."""
    seconds: float
    overall: WindowFigures
    last: WindowFigures
    """The last quarter of the run."""

    def table(self) -> str:
        """A short terminal table."""
        o, last = self.overall, self.last
        rows = [
            ("served policy", o.served, last.served),
            ("  its pmf", o.policy, last.policy),
            ("oracle", o.oracle, last.oracle),
            ("uniform", o.uniform, last.uniform),
            (f"best single block ({last.best_fixed_block})", o.best_fixed, last.best_fixed),
        ]
        width = max(len(r[0]) for r in rows)
        lines = [
            f"slot {self.slot}: {self.events} decisions in {self.seconds:.1f} s "
            f"({self.events / max(self.seconds, 1e-9):.0f}/s), {self.clicks} clicks, {self.errors} errors, "
            f"{self.fallbacks} fallbacks, model versions {self._versions()}",
            f"{'expected click rate':<{width}}  {'all':>8}  {f'last {last.n}':>10}",
        ]
        lines += [f"{name:<{width}}  {a:>8.4f}  {b:>10.4f}" for name, a, b in rows]
        lines.append(f"{'gap to the oracle closed':<{width}}  {o.gap_closed:>8.1%}  {last.gap_closed:>10.1%}")
        return "\n".join(lines)

    def _versions(self) -> str:
        v = self.model_versions
        if not v:
            return "-"
        return f"{v[0]}..{v[-1]}" if len(v) > 1 else str(v[0])


def _figures(expected: np.ndarray, pmf: np.ndarray, chosen: np.ndarray, clicks: np.ndarray,
             ids: Sequence[str]) -> WindowFigures:
    n = len(expected)
    if n == 0:
        return WindowFigures(0, *(float("nan"),) * 6, "-")
    columns = expected.mean(axis=0)
    best = int(np.argmax(columns))
    return WindowFigures(
        n=n,
        served=float(expected[np.arange(n), chosen].mean()),
        policy=float((pmf * expected).sum(axis=1).mean()),
        realized=float(clicks.mean()),
        oracle=float(expected.max(axis=1).mean()),
        uniform=float(expected.mean()),
        best_fixed=float(columns[best]),
        best_fixed_block=ids[best],
    )


def seed_world_slot(
    client_or_url: Client | str,
    admin_key: str | None,
    slot: str,
    world: World,
    *,
    reward_window_s: int = 5,
    reward_aggregation: str = "max",
    learning_mode: str = "online",
    default_block: str | None = None,
    policy: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Create (or update) ``slot`` with the blocks of ``world.catalog``; returns the slot as the server sees it.

    Rewards are clicks in [0, 1]; with ``max`` a click is final at once, so
    clicked decisions need not wait for the window. The window is in real
    seconds: with a time scale of 0.01 the default 5 s stands for 500 s of
    simulated time, longer than nearly every click delay.
    """
    client = Client(client_or_url, admin_key) if isinstance(client_or_url, str) else client_or_url
    try:
        body: dict[str, Any] = {
            "default_block": default_block or world.catalog[0].id,
            "reward_range": [0, 1],
            "reward_window_s": reward_window_s,
            "reward_aggregation": reward_aggregation,
            "learning_mode": learning_mode,
        }
        if policy is not None:
            body["policy"] = policy
        client.put_slot(slot, **body)
        for block in world.catalog:
            client.put_block(slot, block.id, block.features)
        return client.slot(slot)
    finally:
        if isinstance(client_or_url, str):
            client.close()


async def simulate(
    base_url: str,
    api_key: str | None,
    slot: str,
    events: int,
    *,
    seed: int = 0,
    concurrency: int = 16,
    progress: bool = True,
    time_scale: float = 0.01,
    world: World | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    on_event: Callable[[int], None] | None = None,
    activate: bool = True,
) -> SimulationReport:
    """Send ``events`` simulated visitors to the server at ``base_url`` and report how the served policy did.

    Args:
        api_key: a decide (or admin) key.
        seed: seeds the world (unless ``world`` is given), the clicks and their delays.
        concurrency: visitors in flight at once.
        time_scale: real seconds per simulated second for reward delays.
        on_event: called with the number of answered decisions after each one.
        activate: report every decision as shown (one more durable write per visitor).
    """
    if events < 1:
        raise ValueError("events must be at least 1")
    if not (math.isfinite(time_scale) and time_scale >= 0):
        raise ValueError("time_scale must be >= 0")
    world = world or World(seed=seed)
    ids = [b.id for b in world.catalog]
    by_id = {b.id: b for b in world.catalog}
    index = {block_id: i for i, block_id in enumerate(ids)}
    k = len(ids)
    visitors = list(world.visitors(events))
    expected = np.array([world.expected_rewards(v) for v in visitors])
    pmf = np.zeros((events, k))
    chosen = np.full(events, -1, dtype=np.int64)
    clicks = np.zeros(events)
    answered = np.zeros(events, dtype=bool)
    versions: list[int] = []
    counts = {"errors": 0, "fallbacks": 0, "rewards": 0}
    rng = np.random.default_rng([seed, 11])
    draws = [rng.random(4) for _ in range(events)]  # fixed per visitor, whatever the completion order
    reward_tasks: list[asyncio.Task[None]] = []
    bar: Any = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=events, desc=f"simulate {slot}", unit="visitor", file=sys.stderr)

    async def send_reward(client: AsyncClient, event_id: str, delay: float) -> None:
        await asyncio.sleep(delay * time_scale)
        try:
            await client.reward(event_id, 1.0)
            counts["rewards"] += 1
        except (ClientError, httpx.HTTPError):
            counts["errors"] += 1

    async def one(client: AsyncClient, i: int, visitor: Visitor) -> None:
        body = visitor.request_body()
        try:
            decision = await client.decide(slot, unit_id=body["unit_id"], context=body["context"],
                                           headers=visitor.headers())
            if activate:
                await client.activate(decision["event_id"])
        except (ClientError, httpx.HTTPError):
            counts["errors"] += 1
            return
        block_id = decision["block"]["id"]
        if block_id not in index:
            counts["errors"] += 1
            return
        for item in decision["ranking"]:
            if item["id"] in index:
                pmf[i, index[item["id"]]] = item["probability"]
        chosen[i] = index[block_id]
        answered[i] = True
        counts["fallbacks"] += bool(decision.get("fallback"))
        version = int(decision.get("model_version") or 0)
        if version not in versions:
            versions.append(version)
        outcome = _outcome(world, visitor, by_id[block_id], draws[i])
        if outcome is not None:
            clicks[i] = 1.0
            reward_tasks.append(asyncio.create_task(send_reward(client, decision["event_id"], outcome)))

    began = time.perf_counter()
    async with AsyncClient(base_url, api_key, transport=transport,
                           limits=httpx.Limits(max_connections=concurrency * 2)) as client:
        queue: asyncio.Queue[tuple[int, Visitor] | None] = asyncio.Queue()
        for item in enumerate(visitors):
            queue.put_nowait(item)
        done = 0

        async def worker() -> None:
            nonlocal done
            while True:
                item = queue.get_nowait() if not queue.empty() else None
                if item is None:
                    return
                await one(client, *item)
                done += 1
                if bar is not None:
                    bar.update(1)
                if on_event is not None:
                    on_event(done)

        await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
        if reward_tasks:
            await asyncio.gather(*reward_tasks)
    seconds = time.perf_counter() - began
    if bar is not None:
        bar.close()
    ok = answered
    quarter = max(1, events // 4)
    last = np.zeros(events, dtype=bool)
    last[-quarter:] = True
    last &= ok
    return SimulationReport(
        slot=slot,
        events=int(ok.sum()),
        errors=counts["errors"],
        fallbacks=counts["fallbacks"],
        clicks=int(clicks.sum()),
        rewards_sent=counts["rewards"],
        model_versions=tuple(versions),
        seconds=seconds,
        overall=_figures(expected[ok], pmf[ok], chosen[ok], clicks[ok], ids),
        last=_figures(expected[last], pmf[last], chosen[last], clicks[last], ids),
    )


def _outcome(world: World, visitor: Visitor, block: Any, draws: np.ndarray) -> float | None:
    """The click delay in seconds when this visitor clicks this block, else None (world's click model)."""
    p = float(world.expected_rewards(visitor, [block])[0])
    if draws[0] >= p:
        return None
    return float(math.exp(math.log(6.0) + 1.0 * _normal(draws[1], draws[2])))  # log-normal, median 6 s (World.reward)


def _normal(u1: float, u2: float) -> float:
    # Box-Muller: a standard normal from two uniforms
    return math.sqrt(-2.0 * math.log(max(u1, 1e-300))) * math.cos(2.0 * math.pi * u2)


# --------------------------------------------------------------------------- CLI


def _simulate_command(args: argparse.Namespace, settings: ServiceSettings) -> int:
    keys = ClientKeys.from_env()
    api_key = args.api_key or keys.api_key
    world = World(seed=args.seed)
    if args.setup:
        admin = args.admin_key or keys.admin_key
        seed_world_slot(args.url, admin, args.slot, world, reward_window_s=args.window)
        api_key = api_key or admin
    report = asyncio.run(simulate(args.url, api_key, args.slot, args.events, seed=args.seed,
                                  concurrency=args.concurrency, progress=not args.no_progress,
                                  time_scale=args.time_scale, world=world))
    print(report.table())
    return 0 if report.events > 0 else 1


def add_commands(subparsers: Any, command: Callable[[str], Callable[[Any], Any]]) -> None:
    sim = subparsers.add_parser("simulate", help="drive a running server with a simulated audience over HTTP")
    sim.add_argument("--url", required=True, help="the server, e.g. http://127.0.0.1:8000")
    sim.add_argument("--slot", required=True)
    sim.add_argument("--events", type=int, default=2000, help="visitors to send")
    sim.add_argument("--api-key", help="decide key (default: $SLOTBANDIT_API_KEY)")
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--concurrency", type=int, default=16)
    sim.add_argument("--time-scale", type=float, default=0.01, help="real seconds per simulated second of reward delay")
    sim.add_argument("--setup", action="store_true", help="first create the slot and its blocks from the world's catalog")
    sim.add_argument("--admin-key", help="admin key for --setup (default: $SLOTBANDIT_ADMIN_KEY)")
    sim.add_argument("--window", type=int, default=5, help="reward window in seconds for --setup")
    sim.add_argument("--no-progress", action="store_true")
    command("simulate")(_simulate_command)
