"""API keys: stored as SHA-256 hashes, two scopes (``decide`` and ``admin``; admin may decide too)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Mapping
from http.cookies import SimpleCookie

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from sqlalchemy import Engine, select

from api.db.models import ApiKey
from api.decide import event_token
from api.errors import ApiError

__all__ = ["ADMIN_COOKIE", "KeyStore", "authorize", "check_event_token", "create_key", "hash_key", "presented_key", "require_admin", "require_decide"]

SCOPES = ("decide", "admin")
ADMIN_COOKIE = "slotbandit_admin"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def create_key(engine: Engine, scope: str, name: str = "") -> str:
    """Store a new key and return it; only its hash is kept."""
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {', '.join(SCOPES)}")
    key = f"sb_{scope[0]}_{secrets.token_urlsafe(24)}"
    with engine.begin() as connection:
        connection.execute(ApiKey.__table__.insert().values(name=name, key_hash=hash_key(key), scope=scope))
    return key


class KeyStore:
    """Looks keys up by hash with a short cache, so the hot path rarely touches the database."""

    def __init__(self, engine: Engine, ttl_s: float = 30.0) -> None:
        self._engine = engine
        self._ttl = ttl_s
        self._cache: dict[str, tuple[str | None, float]] = {}
        self._lock = threading.Lock()

    def scope_of(self, key: str) -> str | None:
        digest = hash_key(key)
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(digest)
        if hit is not None and hit[1] > now:
            return hit[0]
        with self._engine.connect() as connection:
            row = connection.execute(
                select(ApiKey.scope).where(ApiKey.key_hash == digest, ApiKey.revoked_at.is_(None))
            ).first()
        scope = row[0] if row else None
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[digest] = (scope, now + self._ttl)
        return scope


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
