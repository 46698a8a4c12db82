"""API keys: stored as SHA-256 hashes, two scopes (``decide`` and ``admin``; admin may decide too).

Keys are listed, revoked and rotated (a new key of the same scope and name; the old one revoked
now or after a grace period) by :func:`list_keys`, :func:`revoke_key`, :func:`rotate_key`, which
the admin API (``api.keys``) and ``slotbandit keys`` share. Every worker's :class:`KeyStore`
forgets revoked keys within a second (``forget_revoked``, run each second), so a revocation
takes effect everywhere within about a second without a database read per request.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from http.cookies import SimpleCookie
from typing import Any

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from sqlalchemy import Engine, or_, select, update

from api.db.models import ApiKey
from api.decide import event_token
from api.errors import ApiError

__all__ = ["ADMIN_COOKIE", "KeyStore", "authorize", "check_event_token", "create_key", "hash_key", "list_keys",
           "presented_key", "require_admin", "require_decide", "revoke_key", "rotate_key"]

SCOPES = ("decide", "admin")
ADMIN_COOKIE = "slotbandit_admin"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def create_key(engine: Engine, scope: str, name: str = "") -> str:
    """Store a new key and return it; only its hash is kept."""
    return _create(engine, scope, name)[1]


def _create(engine: Engine, scope: str, name: str) -> tuple[int, str]:
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {', '.join(SCOPES)}")
    key = f"sb_{scope[0]}_{secrets.token_urlsafe(24)}"
    with engine.begin() as connection:
        key_id = connection.execute(ApiKey.__table__.insert().values(name=name, key_hash=hash_key(key), scope=scope)
                                    .returning(ApiKey.id)).scalar_one()
    return int(key_id), key


def _key_dict(row: Any) -> dict[str, Any]:
    return {"id": row.id, "name": row.name, "scope": row.scope, "created_at": row.created_at.isoformat(),
            "revoked_at": row.revoked_at.isoformat() if row.revoked_at else None}


_COLUMNS = (ApiKey.id, ApiKey.name, ApiKey.scope, ApiKey.created_at, ApiKey.revoked_at)


def list_keys(engine: Engine) -> list[dict[str, Any]]:
    """Every key, without its hash: id, name, scope, created_at, revoked_at (null while valid)."""
    with engine.connect() as connection:
        return [_key_dict(r) for r in connection.execute(select(*_COLUMNS).order_by(ApiKey.id)).all()]


def revoke_key(engine: Engine, key_id: int, *, after_s: float = 0.0) -> dict[str, Any]:
    """Revoke key ``key_id`` now (or ``after_s`` seconds from now); a revoked key stays revoked at
    its first time. 404 when there is no such key."""
    at = datetime.now(UTC) + timedelta(seconds=after_s)
    with engine.begin() as connection:
        connection.execute(update(ApiKey).where(ApiKey.id == key_id, or_(ApiKey.revoked_at.is_(None),
                                                                        ApiKey.revoked_at > at)).values(revoked_at=at))
        row = connection.execute(select(*_COLUMNS).where(ApiKey.id == key_id)).first()
    if row is None:
        raise ApiError(404, "unknown_key", f"no API key with id {key_id}", "key_id")
    return _key_dict(row)


def rotate_key(engine: Engine, key_id: int, *, grace_s: float = 0.0) -> tuple[dict[str, Any], str]:
    """A new key with the scope and name of ``key_id``, which is revoked after ``grace_s`` seconds
    (time to deploy the new one). Returns the new key's description and the key itself."""
    with engine.connect() as connection:
        old = connection.execute(select(*_COLUMNS).where(ApiKey.id == key_id)).first()
    if old is None:
        raise ApiError(404, "unknown_key", f"no API key with id {key_id}", "key_id")
    if old.revoked_at is not None and old.revoked_at.replace(tzinfo=old.revoked_at.tzinfo or UTC) <= datetime.now(UTC):
        raise ApiError(409, "key_revoked", f"key {key_id} is revoked; create a new one", "key_id")
    new_id, key = _create(engine, old.scope, old.name)
    revoked = revoke_key(engine, key_id, after_s=grace_s)
    new = next(k for k in list_keys(engine) if k["id"] == new_id)
    return {**new, "replaces": revoked}, key


class KeyStore:
    """Looks keys up by hash with a short cache, so the hot path rarely touches the database; a
    key revoked anywhere is forgotten by :meth:`forget_revoked` (every second, on a thread)."""

    def __init__(self, engine: Engine, ttl_s: float = 30.0, unknown_ttl_s: float = 1.0) -> None:
        self._engine = engine
        self._ttl = ttl_s
        self._unknown_ttl = unknown_ttl_s
        self._cache: dict[str, tuple[str | None, float]] = {}
        self._lock = threading.Lock()

    def scope_of(self, key: str) -> str | None:
        digest = hash_key(key)
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(digest)
        if hit is not None and hit[1] > now:
            return hit[0]
        wall = datetime.now(UTC)
        with self._engine.connect() as connection:
            row = connection.execute(
                select(ApiKey.scope, ApiKey.revoked_at)
                .where(ApiKey.key_hash == digest, or_(ApiKey.revoked_at.is_(None), ApiKey.revoked_at > wall))
            ).first()
        scope = row.scope if row else None
        expires = now + (self._ttl if scope else self._unknown_ttl)
        if row is not None and row.revoked_at is not None:  # rotated: valid until its grace ends
            until = row.revoked_at.replace(tzinfo=row.revoked_at.tzinfo or UTC)
            expires = min(expires, now + (until - wall).total_seconds())
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[digest] = (scope, expires)
        return scope

    def forget(self, digests: set[str]) -> None:
        with self._lock:
            for digest in digests:
                self._cache.pop(digest, None)

    def forget_revoked(self) -> None:
        """Drop cached keys revoked by now, on any worker (keys are few: one small read)."""
        with self._lock:
            if not any(scope for scope, _ in self._cache.values()):
                return
        with self._engine.connect() as connection:
            revoked = set(connection.execute(
                select(ApiKey.key_hash).where(ApiKey.revoked_at.is_not(None), ApiKey.revoked_at <= datetime.now(UTC))
            ).scalars())
        self.forget(revoked)


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The API key a request presents: ``Authorization: Bearer``, ``X-API-Key``, or the admin cookie
    (the Cookie header is parsed only when neither header is there)."""
    header = headers.get("authorization")
    if header and header.lower().startswith("bearer "):
        return header[7:].strip()
    key = headers.get("x-api-key")
    if key:
        return key.strip()
    cookie = headers.get("cookie")
    if not cookie:
        return None
    morsel = SimpleCookie(cookie).get(ADMIN_COOKIE)
    return morsel.value if morsel is not None and morsel.value else None


def authorize(store: KeyStore, key: str | None, allowed: tuple[str, ...]) -> None:
    """Raise a 401 (no or unknown key) or 403 (a scope not in ``allowed``)."""
    if not key:
        raise ApiError(401, "unauthorized", "missing API key (Authorization: Bearer <key>)")
    scope = store.scope_of(key)
    if scope is None:
        raise ApiError(401, "unauthorized", "unknown or revoked API key")
    if scope not in allowed:
        raise ApiError(403, "forbidden", f"this key's scope '{scope}' may not do this")


DECIDE_SCOPES = ("decide", "admin")


def check_event_token(secret: bytes, event_id: str, token: str | None) -> None:
    """Raise a 401 unless ``token`` is the beacon token of ``event_id`` (any text is compared, as
    bytes, in constant time: ``hmac.compare_digest`` refuses non-ASCII str)."""
    expected = event_token(secret, event_id).encode("ascii")
    if not token or not hmac.compare_digest(token.encode("utf-8", "surrogatepass"), expected):
        raise ApiError(401, "unauthorized", "missing or wrong beacon token for this event", "t")


# Async on purpose: Litestar runs sync guards in a worker thread, a thread hop per request.
# A cache miss does one indexed lookup; keys are few and cached for ttl_s.
async def require_decide(connection: ASGIConnection, _: BaseRouteHandler) -> None:  # type: ignore[type-arg]
    authorize(connection.app.state.key_store, presented_key(connection.headers), DECIDE_SCOPES)


async def require_admin(connection: ASGIConnection, _: BaseRouteHandler) -> None:  # type: ignore[type-arg]
    authorize(connection.app.state.key_store, presented_key(connection.headers), ("admin",))
