"""Python client of the slotbandit API, on httpx: :class:`Client` (sync) and :class:`AsyncClient`.

Both build their requests with the same helpers, raise :class:`ClientError`
(with ``status``, ``code`` and ``field`` of the server's error body) on a
4xx/5xx, and return the decoded JSON.

    >>> with Client("http://127.0.0.1:8000", api_key="sb_d_...") as sb:
    ...     decision = sb.decide("home.hero", unit_id="user-42", context={"user": {"segment": "sports"}})
    ...     sb.reward(decision["event_id"], 1.0)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import httpx

__all__ = ["AsyncClient", "Client", "ClientError"]


class ClientError(Exception):
    def __init__(self, status: int, body: Any) -> None:
        self.status = status
        self.body = body
        self.code = body.get("error") if isinstance(body, dict) else None
        self.field = body.get("field") if isinstance(body, dict) else None
        detail = body.get("detail") if isinstance(body, dict) else body
        super().__init__(f"HTTP {status}: {self.code or ''} {detail} (field: {self.field})")


def _decide_body(
    event_id: str | None, unit_id: str | None, context: Mapping[str, Any] | None,
    candidates: Sequence[Mapping[str, Any]] | None, exclude: Sequence[str] | None,
    consent: bool, defer_activation: bool,
) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if event_id is not None:
        body["event_id"] = event_id
    if unit_id is not None:
        body["unit_id"] = unit_id
    if context is not None:
        body["context"] = dict(context)
    if candidates is not None:
        body["candidates"] = [dict(c) for c in candidates]
    if exclude:
        body["exclude"] = list(exclude)
    if not consent:
        body["consent"] = False
    if defer_activation:
        body["defer_activation"] = True
    return body


def _reward_body(value: float, reward_id: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"value": value}
    if reward_id is not None:
        body["reward_id"] = reward_id
    return body


def _result(response: httpx.Response) -> Any:
    try:
        body = response.json()
    except ValueError:
        body = response.text
    if response.status_code >= 400:
        raise ClientError(response.status_code, body)
    return body


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


class Client:
    def __init__(self, base_url: str, api_key: str | None = None, *, timeout: float = 10.0,
                 transport: httpx.BaseTransport | None = None, headers: Mapping[str, str] | None = None) -> None:
        self._http = httpx.Client(base_url=base_url, headers={**_headers(api_key), **(headers or {})},
                                  timeout=timeout, transport=transport)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def request(self, method: str, path: str, json: Any = None, headers: Mapping[str, str] | None = None) -> Any:
        return _result(self._http.request(method, path, json=json, headers=headers))

    def decide(self, slot: str, *, event_id: str | None = None, unit_id: str | None = None,
               context: Mapping[str, Any] | None = None, candidates: Sequence[Mapping[str, Any]] | None = None,
               exclude: Sequence[str] | None = None, consent: bool = True, defer_activation: bool = False,
               headers: Mapping[str, str] | None = None) -> dict[str, Any]:
        body = _decide_body(event_id, unit_id, context, candidates, exclude, consent, defer_activation)
        body_: dict[str, Any] = self.request("POST", f"/v1/slots/{slot}/decide", body, headers)
        return body_

    def activate(self, event_id: str) -> dict[str, Any]:
        body_: dict[str, Any] = self.request("POST", f"/v1/events/{event_id}/activate")
        return body_

    def reward(self, event_id: str, value: float, reward_id: str | None = None) -> dict[str, Any]:
        body_: dict[str, Any] = self.request("POST", f"/v1/events/{event_id}/reward", _reward_body(value, reward_id))
        return body_

    def put_slot(self, slot: str, **settings: Any) -> dict[str, Any]:
        body_: dict[str, Any] = self.request("PUT", f"/v1/slots/{slot}", settings)
        return body_

    def put_block(self, slot: str, block: str, features: Mapping[str, Any] | None = None) -> dict[str, Any]:
        body_: dict[str, Any] = self.request("PUT", f"/v1/slots/{slot}/blocks/{block}", {"features": dict(features or {})})
        return body_

    def delete_block(self, slot: str, block: str) -> dict[str, Any]:
        body_: dict[str, Any] = self.request("DELETE", f"/v1/slots/{slot}/blocks/{block}")
        return body_

    def put_policy(self, name: str, **config: Any) -> dict[str, Any]:
        body_: dict[str, Any] = self.request("PUT", f"/v1/policies/{name}", config)
        return body_

    def slot(self, slot: str) -> dict[str, Any]:
        body_: dict[str, Any] = self.request("GET", f"/v1/slots/{slot}")
        return body_

    def event(self, event_id: str) -> dict[str, Any]:
        body_: dict[str, Any] = self.request("GET", f"/v1/events/{event_id}")
        return body_


class AsyncClient:
    def __init__(self, base_url: str, api_key: str | None = None, *, timeout: float = 10.0,
                 transport: httpx.AsyncBaseTransport | None = None, headers: Mapping[str, str] | None = None,
                 limits: httpx.Limits | None = None) -> None:
        self._http = httpx.AsyncClient(base_url=base_url, headers={**_headers(api_key), **(headers or {})},
                                       timeout=timeout, transport=transport,
                                       limits=limits or httpx.Limits(max_connections=100))

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def request(self, method: str, path: str, json: Any = None, headers: Mapping[str, str] | None = None) -> Any:
        return _result(await self._http.request(method, path, json=json, headers=headers))

    async def decide(self, slot: str, *, event_id: str | None = None, unit_id: str | None = None,
                     context: Mapping[str, Any] | None = None, candidates: Sequence[Mapping[str, Any]] | None = None,
                     exclude: Sequence[str] | None = None, consent: bool = True, defer_activation: bool = False,
                     headers: Mapping[str, str] | None = None) -> dict[str, Any]:
        body = _decide_body(event_id, unit_id, context, candidates, exclude, consent, defer_activation)
        body_: dict[str, Any] = await self.request("POST", f"/v1/slots/{slot}/decide", body, headers)
        return body_

    async def activate(self, event_id: str) -> dict[str, Any]:
        body_: dict[str, Any] = await self.request("POST", f"/v1/events/{event_id}/activate")
        return body_

    async def reward(self, event_id: str, value: float, reward_id: str | None = None) -> dict[str, Any]:
        body_: dict[str, Any] = await self.request("POST", f"/v1/events/{event_id}/reward", _reward_body(value, reward_id))
        return body_
