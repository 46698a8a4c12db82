"""``slotbandit challenger add|remove|list``, ``slotbandit optimize`` and ``slotbandit revisions
list|rollback``: the admin API's champion-and-challenger calls, straight on the database (like
``slotbandit model``). Output is JSON; errors go to stderr with exit status 2. Revisions made here
name ``cli`` as their actor."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from api.errors import ApiError

__all__ = ["add_commands"]

ACTOR = "cli"


def _run(args: argparse.Namespace, settings: Any, work: Callable[[Any], Any]) -> int:
    from api.db.engine import make_engine

    engine = make_engine(settings.database_url)
    try:
        result = work(engine)
    except ApiError as error:
        print(f"error: {error.detail}" + (f" ({error.field})" if error.field else ""), file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    sys.stdout.write(json.dumps(result, indent=2, default=str) + "\n")
    return 0


def _challenger_command(args: argparse.Namespace, settings: Any) -> int:
    from api.champion.challengers import delete_challenger, list_challengers, put_challenger

    if args.challenger_command == "list":
        return _run(args, settings, lambda engine: list_challengers(engine, args.slot))
    if args.challenger_command == "remove":
        return _run(args, settings, lambda engine: delete_challenger(engine, args.slot, args.name))
    body = args.policy.encode("utf-8")
    return _run(args, settings, lambda engine: put_challenger(engine, args.slot, args.name, body)[0])


def _optimize_command(args: argparse.Namespace, settings: Any) -> int:
    from api.champion.optimize import claim_slot, release_slot, run_auto_optimize

    def work(engine: Any) -> dict[str, Any]:
        if not claim_slot(engine, args.slot, every_s=None):
            raise ApiError(409, "auto_optimize_running", f"auto-optimize of slot '{args.slot}' is running elsewhere",
                           "slot")
        outcome: dict[str, Any] = {"outcome": "failed"}
        try:
            outcome = run_auto_optimize(engine, args.slot, actor=ACTOR, mode=args.mode)
        finally:
            release_slot(engine, args.slot, outcome)
        return outcome

    return _run(args, settings, work)


def _revisions_command(args: argparse.Namespace, settings: Any) -> int:
    from api.champion.revisions import list_revisions, rollback

    if args.revisions_command == "list":
        return _run(args, settings, lambda engine: list_revisions(engine, args.slot))
    return _run(args, settings, lambda engine: rollback(engine, args.id, ACTOR))


def add_commands(subparsers: Any, command: Callable[[str], Callable[[Any], Any]]) -> None:
    challenger = subparsers.add_parser("challenger", help="policies learned on a slot's stream without serving")
    actions = challenger.add_subparsers(dest="challenger_command", required=True, metavar="ACTION")
    add = actions.add_parser("add", help="add or change a challenger of the slot's serving policy")
    add.add_argument("--slot", required=True)
    add.add_argument("--name", required=True)
    add.add_argument("--policy", default='{"kind": "linear"}', metavar="JSON",
                     help='the policy, e.g. \'{"kind": "vw", "vw": {"exploration": "epsilon"}}\' (default: linear)')
    remove = actions.add_parser("remove", help="remove a challenger and its snapshots")
    remove.add_argument("--slot", required=True)
    remove.add_argument("--name", required=True)
    listing = actions.add_parser("list", help="the serving policy and its challengers with their metrics")
    listing.add_argument("--slot", required=True)
    command("challenger")(_challenger_command)

    optimize = subparsers.add_parser("optimize", help="run a slot's auto-optimize now (evaluate, then promote or record)")
    optimize.add_argument("--slot", required=True)
    optimize.add_argument("--mode", choices=["dry-run", "apply"], help="default: the slot's setting (dry-run when off)")
    command("optimize")(_optimize_command)

    revisions = subparsers.add_parser("revisions", help="a slot's audited policy revisions")
    revision_actions = revisions.add_subparsers(dest="revisions_command", required=True, metavar="ACTION")
    rev_list = revision_actions.add_parser("list", help="promotions, recommendations and rollbacks, newest first")
    rev_list.add_argument("--slot", required=True)
    rev_rollback = revision_actions.add_parser("rollback", help="undo a promotion (the newest of its slot)")
    rev_rollback.add_argument("id", type=int)
    command("revisions")(_revisions_command)
