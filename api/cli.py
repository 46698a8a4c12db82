"""The ``slotbandit`` command line.

    slotbandit migrate                      upgrade the database schema
    slotbandit serve [--host --port]        run the API server (embedded learner by default)
    slotbandit keys create --scope S        create an API key (printed alone on the last line)
    slotbandit keys list|revoke ID|rotate ID [--grace-s S]
    slotbandit purge --older-than DAYS      delete decisions (and their rewards) past retention
    slotbandit demo [--events N] [--exit]   server + demo slot + simulated audience
    slotbandit learn [--once]               the learner as its own process
    slotbandit model list|export|import|reset|rollback
    slotbandit simulate --url --slot --events N
    slotbandit export --slot S --format dsjson|csv|parquet --output PATH
    slotbandit evaluate (--log FILE | --slot S) [--candidate NAME=JSON] [--standard-candidates]
    slotbandit report EXPERIMENT --format md|html|json|csv
    slotbandit challenger add|remove|list --slot S, optimize --slot S, revisions list|rollback

``SLOTBANDIT_DATABASE_URL`` selects the database (default: SQLite under ./var/).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from api.settings import ServiceSettings

__all__ = ["main"]

Command = Callable[[argparse.Namespace, ServiceSettings], int]
_COMMANDS: dict[str, Command] = {}


def command(name: str) -> Callable[[Command], Command]:
    def register(function: Command) -> Command:
        _COMMANDS[name] = function
        return function

    return register


@command("migrate")
def _migrate(args: argparse.Namespace, settings: ServiceSettings) -> int:
    from api.db.engine import migrate

    migrate(settings.database_url)
    print(f"database at head: {_safe_url(settings.database_url)}")
    return 0


@command("serve")
def _serve(args: argparse.Namespace, settings: ServiceSettings) -> int:
    import uvicorn

    from api.app import create_app

    if args.no_learner:
        settings = _replace(settings, embedded_learner=False)
    if args.workers > 1:
        # Worker processes build their app from the environment: hand the settings over there.
        import shutil
        import tempfile

        from api.settings import export_environment

        # /metrics sums over the workers (api.metrics); a fresh folder per run, no stale counts
        metrics_dir = tempfile.mkdtemp(prefix="slotbandit-metrics-")
        export_environment(SLOTBANDIT_DATABASE_URL=settings.database_url,
                           SLOTBANDIT_EMBEDDED_LEARNER="1" if settings.embedded_learner else "0",
                           SLOTBANDIT_SQLITE_SYNCHRONOUS=settings.sqlite_synchronous,
                           PROMETHEUS_MULTIPROC_DIR=metrics_dir)
        try:
            uvicorn.run("api.app:create_app", factory=True, workers=args.workers, host=args.host, port=args.port,
                        log_level=args.log_level, access_log=False, timeout_graceful_shutdown=10)
        finally:
            shutil.rmtree(metrics_dir, ignore_errors=True)
        return 0
    app = create_app(settings)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False,
                timeout_graceful_shutdown=10)
    return 0


@command("keys")
def _keys(args: argparse.Namespace, settings: ServiceSettings) -> int:
    from api.auth import create_key, list_keys, revoke_key, rotate_key
    from api.db.engine import make_engine, migrate
    from api.errors import ApiError

    migrate(settings.database_url)
    engine = make_engine(settings.database_url, synchronous=settings.sqlite_synchronous)
    try:
        if args.keys_command == "list":
            for k in list_keys(engine):
                print(f"{k['id']:>5}  {k['scope']:<6}  {k['created_at'][:19]}  "
                      f"{'revoked ' + k['revoked_at'][:19] if k['revoked_at'] else 'valid':<27}  {k['name']}")
            return 0
        if args.keys_command in ("revoke", "rotate"):
            try:
                if args.keys_command == "revoke":
                    k = revoke_key(engine, args.id)
                    print(f"key {k['id']} revoked at {k['revoked_at']}; every worker refuses it within a second or two")
                    return 0
                new, key = rotate_key(engine, args.id, grace_s=args.grace_s)
            except ApiError as error:
                print(f"error: {error.detail}", file=sys.stderr)
                return 2
            print(f"key {new['id']} replaces key {args.id}, which is revoked at {new['replaces']['revoked_at']}; "
                  "the new key is shown once:")
            print(key)
            return 0
        key = create_key(engine, args.scope, args.name or "")
    finally:
        engine.dispose()
    print(f"created a '{args.scope}' key; it is shown once and stored only as a hash:")
    print(key)
    return 0


MAX_RETENTION_DAYS = 36_500  # a century: past it the cutoff date would overflow


@command("purge")
def _purge(args: argparse.Namespace, settings: ServiceSettings) -> int:
    from api.db.engine import make_engine
    from api.db.queries import purge_older_than

    if not 0 <= args.older_than <= MAX_RETENTION_DAYS:  # also refuses nan and inf
        print(f"--older-than must be a number of days within [0, {MAX_RETENTION_DAYS:,}]", file=sys.stderr)
        return 2
    engine = make_engine(settings.database_url, synchronous=settings.sqlite_synchronous)
    try:
        removed = purge_older_than(engine, args.older_than)
    finally:
        engine.dispose()
    print(", ".join(f"{count} {name}" for name, count in removed.items()) + " deleted")
    return 0


@command("demo")
def _demo(args: argparse.Namespace, settings: ServiceSettings) -> int:
    from api.demo import run_demo

    return run_demo(settings, host=args.host, port=args.port, events=args.events, exit_after=args.exit)


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _replace(settings: ServiceSettings, **changes: Any) -> ServiceSettings:
    import dataclasses

    return dataclasses.replace(settings, **changes)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="slotbandit",
        description="Contextual-bandit decisions for page slots (Vowpal Wabbit), with logged propensities, "
        "online learning and offline evaluation. SLOTBANDIT_DATABASE_URL selects the database.",
    )
    parser.add_argument("--database-url", help="override SLOTBANDIT_DATABASE_URL")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("migrate", help="upgrade the database schema to the newest version")

    serve = sub.add_parser("serve", help="run the API server")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--log-level", default="warning")
    serve.add_argument("--workers", type=int, default=1,
                       help="worker processes (each holds a read-only model copy; embedded learners share "
                       "the work through leases, so exactly one learns each policy)")
    serve.add_argument("--no-learner", action="store_true", help="do not run the embedded learner (use `slotbandit learn`)")

    keys = sub.add_parser("keys", help="manage API keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    create = keys_sub.add_parser("create", help="create a key and print it")
    create.add_argument("--scope", choices=["decide", "admin"], required=True)
    create.add_argument("--name", default="", help="a label for the key")
    keys_sub.add_parser("list", help="list the keys (id, scope, created, revoked, name; never the key)")
    revoke = keys_sub.add_parser("revoke", help="revoke a key by its id (every worker within a second or two)")
    revoke.add_argument("id", type=int)
    rotate = keys_sub.add_parser("rotate", help="a new key of the same scope and name; the old one revoked")
    rotate.add_argument("id", type=int)
    rotate.add_argument("--grace-s", type=float, default=0.0, help="seconds the old key keeps working")

    purge = sub.add_parser("purge", help="delete decisions older than a retention period")
    purge.add_argument("--older-than", type=float, required=True, metavar="DAYS")

    demo = sub.add_parser("demo", help="start the server with a demo slot and a simulated audience")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=8000)
    demo.add_argument("--events", type=int, default=3000, help="simulated visitors to send")
    demo.add_argument("--exit", action="store_true", help="stop after the scripted part (for tests)")
    from api.app import FEATURES  # the features add their own subcommands

    for feature in FEATURES:
        if feature.add_commands is not None:
            feature.add_commands(sub, command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from api.errors import escape_log_records

    escape_log_records()  # no request text can forge a log line, in any command
    parser = build_parser()
    args = parser.parse_args(argv)
    overrides = {"database_url": args.database_url} if args.database_url else {}
    settings = ServiceSettings.from_env(**overrides)
    return _COMMANDS[args.command](args, settings)


if __name__ == "__main__":
    sys.exit(main())
