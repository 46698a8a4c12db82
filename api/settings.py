"""Settings: typed objects read once from the environment, and the one place that touches it.

Every field is documented where it is declared and validated in
``__post_init__``. Environment variables are ``SLOTBANDIT_<FIELD>`` in upper
case (e.g. ``SLOTBANDIT_DATABASE_URL``): :class:`ServiceSettings` for the
service, ``api.learner.LearnerSettings`` (``SLOTBANDIT_LEARNER_<FIELD>``) for the
learner, :class:`ClientKeys` for the command-line clients.

No other module of ``api`` reads or writes ``os.environ``: they receive
settings. The environment of child processes (the embedded learner, uvicorn's
workers) is made here too (:func:`child_environment`, :func:`export_environment`).
``tests/api/test_settings.py`` checks that no other file reads the environment.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

__all__ = ["ClientKeys", "ServiceSettings", "SettingsError", "child_environment", "export_environment",
           "load_secret", "settings_from_env"]

DEFAULT_DATABASE_URL = "sqlite:///var/slotbandit.db"


class SettingsError(ValueError):
    pass


@dataclass(frozen=True)
class ServiceSettings:
    database_url: str = DEFAULT_DATABASE_URL
    """SQLAlchemy URL. SQLite (WAL mode) is the embedded default; ``postgresql+psycopg://`` for production."""
    secret_file: str = "var/secret.key"
    """Where the server secret lives when ``SLOTBANDIT_SECRET`` is not set (created on first use, mode 0600)."""
    secret: str | None = None
    """Server secret: keys the unit pseudonyms and the sampling seeds. Keep it stable across restarts."""
    max_body_bytes: int = 64 * 1024
    """Largest accepted request body."""
    max_candidates: int = 50
    """Most candidates in one decision (Personalizer's limit)."""
    max_block_features: int = 32
    """Most features on one block."""
    max_user_features: int = 32
    """Most caller-supplied user features in one decision."""
    max_id_length: int = 256
    """Longest event, unit, slot or block id."""
    max_string_length: int = 256
    """Longest feature string value."""
    max_rewards_per_event: int = 32
    """Most rewards (distinct reward ids) one event may have; the beacon token of an event is
    bounded by it too. Concurrent calls may pass it by the few that race."""
    geo_headers: tuple[str, ...] = ("cf-ipcountry", "cloudfront-viewer-country", "x-vercel-ip-country", "x-appengine-country")
    """CDN headers that carry the visitor's country, in order of trust."""
    trust_forwarded_for: bool = False
    """Use the first ``X-Forwarded-For`` address for the country lookup (only behind a trusted proxy)."""
    cors_origins: tuple[str, ...] = ()
    """Origins allowed to call the API from a browser; empty allows none."""
    commit_before_response: bool = True
    """Await the group commit of a decision before answering: every returned decision is in the log even after a crash."""
    group_commit_ms: float = 0.0
    """Extra time the log writer waits to gather rows into one transaction. 0: it commits whatever
    queued up while the previous commit ran (batches grow with load, latency stays low)."""
    fast_path: bool = True
    """Serve decide, activate and reward calls without an ``Origin`` header straight from ASGI,
    ahead of Litestar's router (same contract; see ``api.hot_path``)."""
    commit_in_loop: bool = True
    """On a SQLite file with ``synchronous=NORMAL``: commit the log on the event loop, once per
    loop iteration, instead of in the writer thread (see ``api.log_writer``). Ignored elsewhere."""
    switch_interval_ms: float = 0.5
    """Python's thread switch interval in the server (default 5 ms): lets the log writer thread
    take the GIL promptly from a busy event loop, so commits and responses are not held up."""
    reload_interval_s: float = 1.0
    """How often a worker polls for changed slots and policies (and new model snapshots)."""
    model_poll_interval_s: float = 0.2
    """How often a worker looks for a new model snapshot version (one small indexed query) and
    loads it: part of how soon a learned reward is served (see ``api.learner``)."""
    checkpoint_interval_s: float = 1.0
    """How often a worker copies the SQLite write-ahead log into the database (off the request path)."""
    embedded_learner: bool = True
    """Start the learner (`slotbandit learn`) as a child process of each server worker (one-command set-up)."""
    auto_migrate: bool = True
    """Upgrade the database schema when the server starts."""
    demo: bool = False
    """Serve the demo page with a demo decide key."""
    personalizer_slot: str = "personalizer"
    """The slot that the Azure Personalizer surface (``/personalizer/...``) serves: one Personalizer
    "service" is one slot, created with the default settings at start-up when missing."""
    sqlite_synchronous: str = "NORMAL"
    """SQLite WAL durability: ``NORMAL`` survives a crash or kill of the process, ``FULL`` also a
    power loss, at an fsync per group commit (``PRAGMA synchronous``). Ignored on PostgreSQL."""
    metrics_dir: str | None = None
    """prometheus_client's multiprocess folder, from its own variable ``PROMETHEUS_MULTIPROC_DIR``
    (``slotbandit serve --workers N`` sets it): ``/metrics`` sums over the workers when set."""

    def __post_init__(self) -> None:
        if not self.database_url:
            raise SettingsError("database_url must not be empty")
        for name in ("max_body_bytes", "max_candidates", "max_block_features", "max_user_features", "max_id_length", "max_string_length",
                     "max_rewards_per_event"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise SettingsError(f"{name} must be a positive integer")
        if not 0.0 <= self.group_commit_ms <= 1000.0:
            raise SettingsError("group_commit_ms must be within [0, 1000]")
        if not 0.05 <= self.switch_interval_ms <= 100:
            raise SettingsError("switch_interval_ms must be within [0.05, 100]")
        if not 0.05 <= self.reload_interval_s <= 3600:
            raise SettingsError("reload_interval_s must be within [0.05, 3600]")
        if not 0.05 <= self.model_poll_interval_s <= 3600:
            raise SettingsError("model_poll_interval_s must be within [0.05, 3600]")
        if not 0.05 <= self.checkpoint_interval_s <= 3600:
            raise SettingsError("checkpoint_interval_s must be within [0.05, 3600]")
        object.__setattr__(self, "sqlite_synchronous", str(self.sqlite_synchronous).upper())
        if self.sqlite_synchronous not in ("NORMAL", "FULL"):
            raise SettingsError("sqlite_synchronous must be NORMAL or FULL")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> ServiceSettings:
        env = os.environ if environ is None else environ
        metrics_dir = env.get("PROMETHEUS_MULTIPROC_DIR") or None
        return settings_from_env(cls, "SLOTBANDIT_", env, {"metrics_dir": metrics_dir, **overrides})

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


@dataclass(frozen=True)
class ClientKeys:
    """API keys of the command-line clients (``slotbandit simulate``) when not given as options."""

    api_key: str | None = None
    """``SLOTBANDIT_API_KEY``: a decide key."""
    admin_key: str | None = None
    """``SLOTBANDIT_ADMIN_KEY``: an admin key (to set a slot up)."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ClientKeys:
        return settings_from_env(cls, "SLOTBANDIT_", environ, {})


def child_environment(**values: str) -> dict[str, str]:
    """The environment of a child process: this process's, with ``values`` set."""
    return {**os.environ, **values}


def export_environment(*, overwrite: bool = True, **values: str) -> None:
    """Set variables for processes started later that build their settings from the environment
    (uvicorn's workers, the embedded learner); ``overwrite=False`` keeps values already set."""
    for name, value in values.items():
        if overwrite or name not in os.environ:
            os.environ[name] = value


T = TypeVar("T", bound="DataclassInstance")


def settings_from_env(cls: type[T], prefix: str, environ: Mapping[str, str] | None,
                      overrides: Mapping[str, object]) -> T:
    """A settings dataclass from ``<prefix><FIELD>`` variables, parsed by each field's default type
    (bool, int, float, comma-separated tuple, str; ``float | None`` and ``int | None`` fields with a
    None default take a number, or ``none``/empty for None); ``overrides`` win. The class validates."""
    env = os.environ if environ is None else environ
    values: dict[str, object] = {}
    for f in fields(cls):
        raw = env.get(f"{prefix}{f.name.upper()}")
        if raw is None:
            continue
        default = f.default
        if default is None and str(f.type).replace(" ", "") in ("float|None", "int|None"):
            # an optional number: empty (or "none") keeps None, which means "decided elsewhere"
            number = float if str(f.type).startswith("float") else int
            values[f.name] = None if raw.strip().lower() in ("", "none") else number(raw)
        elif isinstance(default, bool):
            values[f.name] = raw.strip().lower() in ("1", "true", "yes", "on")
        elif isinstance(default, int):
            values[f.name] = int(raw)
        elif isinstance(default, float):
            values[f.name] = float(raw)
        elif isinstance(default, tuple):
            items = (item.strip() for item in raw.split(","))
            # header names compare lower-cased
            values[f.name] = tuple(i.lower() if f.name == "geo_headers" else i for i in items if i)
        else:
            values[f.name] = raw
    values.update(overrides)
    return cls(**values)


def load_secret(settings: ServiceSettings) -> bytes:
    """The server secret: from settings, else from ``secret_file`` (created once)."""
    if settings.secret:
        return settings.secret.encode("utf-8")
    path = Path(settings.secret_file)
    if path.exists():
        return path.read_bytes().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_hex(32).encode("ascii")
    # O_EXCL: two workers starting at once agree on one secret
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_bytes().strip()
    with os.fdopen(fd, "wb") as stream:
        stream.write(value)
    return value


