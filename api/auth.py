"""API keys: stored as SHA-256 hashes, two scopes (``decide`` and ``admin``; admin may decide too).

Keys are listed, revoked and rotated (a new key of the same scope and name; the old one revoked
now or after a grace period) by :func:`list_keys`, :func:`revoke_key`, :func:`rotate_key`, which
the admin API (``api.keys``) and ``slotbandit keys`` share. Every worker's :class:`KeyStore`
forgets revoked keys within a second (``forget_revoked``, run each second), so a revocation
takes effect everywhere within about a second without a database read per request.

The dashboard's cookie holds a signed session (``KeyStore.open_session``), not the key; a
state-changing request authorised by that cookie alone must come from the service's own origin
with a JSON body (:func:`check_same_origin`, in the guards).
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
from urllib.parse import urlsplit

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from sqlalchemy import Engine, or_, select, update

from api.db.models import ApiKey
from api.decide import event_token
from api.errors import ApiError

__all__ = ["ADMIN_COOKIE", "KeyStore", "authorize", "check_event_token", "check_same_origin", "create_key", "hash_key",
           "list_keys", "presented_key", "require_admin", "require_decide", "revoke_key", "rotate_key",
           "session_cookie"]

SCOPES = ("decide", "admin")
ADMIN_COOKIE = "slotbandit_admin"
SESSION_S = 12 * 3600
"""How long a dashboard session lasts."""


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

    def __init__(self, engine: Engine, ttl_s: float = 30.0, unknown_ttl_s: float = 1.0,
                 secret: bytes = b"") -> None:
        self._engine = engine
        self._ttl = ttl_s
        self._unknown_ttl = unknown_ttl_s
        self._secret = secret
        self._cache: dict[str, tuple[str | None, float]] = {}
        self._sessions: dict[str, tuple[str, str | None, float]] = {}  # session -> (key digest, scope, expires)
        self._lock = threading.Lock()

    # -- dashboard sessions: a signed cookie that is not the key ------------------------

    def _signature(self, key_id: int, digest: str, expires: int) -> str:
        message = f"session\x00{key_id}\x00{digest}\x00{expires}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()[:32]

    def open_session(self, key: str, lifetime_s: int = SESSION_S) -> str:
        """The cookie value of a dashboard session of the admin key ``key``: ``s1.<key id>.<expiry>.<HMAC>``,
        signed with the server secret and bound to the key's hash, never the key itself. It ends at
        its expiry, at logout (the cookie goes) or when the key is revoked."""
        digest = hash_key(key)
        with self._engine.connect() as connection:
            key_id = connection.execute(select(ApiKey.id).where(ApiKey.key_hash == digest)).scalar_one()
        expires = int(time.time()) + lifetime_s
        return f"s1.{key_id}.{expires}.{self._signature(key_id, digest, expires)}"

    def _session_scope(self, session: str) -> str | None:
        now = time.monotonic()
        with self._lock:
            hit = self._sessions.get(session)
        if hit is not None and hit[2] > now:
            return hit[1]
        try:
            _, key_id_text, expires_text, signature = session.split(".")
            key_id, expires = int(key_id_text), int(expires_text)
        except ValueError:
            return None
        left = expires - time.time()
        if left <= 0 or not 0 < key_id <= 2**31 - 1:
            return None
        with self._engine.connect() as connection:
            row = connection.execute(select(ApiKey.key_hash, ApiKey.scope).where(
                ApiKey.id == key_id, or_(ApiKey.revoked_at.is_(None), ApiKey.revoked_at > datetime.now(UTC)))).first()
        valid = row is not None and hmac.compare_digest(
            signature.encode("utf-8", "surrogatepass"), self._signature(key_id, row.key_hash, expires).encode())
        scope = row.scope if valid and row is not None else None
        with self._lock:
            if len(self._sessions) > 10_000:
                self._sessions.clear()
            self._sessions[session] = (row.key_hash if row else "", scope,
                                       now + min(left, self._ttl if scope else self._unknown_ttl))
        return scope

    def scope_of(self, key: str) -> str | None:
        """The scope of an API key or a dashboard session, None when unknown, revoked or expired."""
        if key.startswith("s1."):
            return self._session_scope(key)
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
            for session in [k for k, (digest, _, _) in self._sessions.items() if digest in digests]:
                del self._sessions[session]

    def forget_revoked(self) -> None:
        """Drop cached keys revoked by now, on any worker (keys are few: one small read)."""
        with self._lock:
            if not any(scope for scope, _ in self._cache.values()) and not self._sessions:
                return
        with self._engine.connect() as connection:
            revoked = set(connection.execute(
                select(ApiKey.key_hash).where(ApiKey.revoked_at.is_not(None), ApiKey.revoked_at <= datetime.now(UTC))
            ).scalars())
        self.forget(revoked)


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The API key a request presents: ``Authorization: Bearer``, ``X-API-Key``,
    ``Ocp-Apim-Subscription-Key`` (Azure Personalizer's clients), or the admin cookie (the Cookie
    header is parsed only when no key header is there)."""
    header = headers.get("authorization")
    if header and header.lower().startswith("bearer "):
        return header[7:].strip()
    key = headers.get("x-api-key") or headers.get("ocp-apim-subscription-key")
    if key:
        return key.strip()
    return session_cookie(headers)


def session_cookie(headers: Mapping[str, str]) -> str | None:
    """The dashboard session in the admin cookie, if the request carries one (a raw key there is
    not accepted: the cookie holds a signed session, ``KeyStore.open_session``)."""
    cookie = headers.get("cookie")
    if not cookie:
        return None
    morsel = SimpleCookie(cookie).get(ADMIN_COOKIE)
    return morsel.value if morsel is not None and morsel.value.startswith("s1.") else None


_STATE_CHANGING = ("POST", "PUT", "PATCH", "DELETE")


def check_same_origin(method: str, headers: Mapping[str, str]) -> None:
    """Refuse (403 ``cross_origin``) a state-changing request that a browser sent from another
    origin, or with a body that is not ``application/json``, when it is authorised by the admin
    cookie alone: a page on another port of the same host (same site, so the SameSite cookie
    goes along) can then neither submit a form nor send a "simple" text/plain request.
    Requests with a key header cannot be forged by a page and are not checked."""
    if method not in _STATE_CHANGING or headers.get("authorization") or headers.get("x-api-key") \
            or headers.get("ocp-apim-subscription-key"):
        return
    site = headers.get("sec-fetch-site")
    origin = headers.get("origin")
    if site is not None and site not in ("same-origin", "none"):
        raise ApiError(403, "cross_origin", f"a {site} request may not use the admin cookie", "origin")
    if origin is not None and urlsplit(origin).netloc.lower() != headers.get("host", "").lower():
        raise ApiError(403, "cross_origin", "a request from another origin may not use the admin cookie", "origin")
    content_type = headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type and content_type != "application/json":
        raise ApiError(403, "cross_origin", "with the admin cookie, bodies must be application/json", "content-type")


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


def _method(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    scope: Mapping[str, object] = connection.scope  # guards run on HTTP routes only: there is a method
    return str(scope.get("method", "GET"))


# Async on purpose: Litestar runs sync guards in a worker thread, a thread hop per request.
# A cache miss does one indexed lookup; keys are few and cached for ttl_s.
async def require_decide(connection: ASGIConnection, _: BaseRouteHandler) -> None:  # type: ignore[type-arg]
    authorize(connection.app.state.key_store, presented_key(connection.headers), DECIDE_SCOPES)
    check_same_origin(_method(connection), connection.headers)


async def require_admin(connection: ASGIConnection, _: BaseRouteHandler) -> None:  # type: ignore[type-arg]
    authorize(connection.app.state.key_store, presented_key(connection.headers), ("admin",))
    check_same_origin(_method(connection), connection.headers)
