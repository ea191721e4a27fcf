"""The only I/O: one pooled aiohttp session per client.

A transport has two methods, ``send`` and ``stream`` (the httpx seam); a
backend that runs in process (the local model) supplies its own.
aiohttp's exceptions are mapped to apimux's here, at the boundary.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp

from apimux.errors import ApimuxError, ConnectionFailed, Timeout

# One compact encoder, built once: json.dumps(separators=...) builds a new one per call.
_ENCODE = json.JSONEncoder(separators=(",", ":")).encode


@dataclass(slots=True)
class HttpRequest:
    method: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    json: Any = None
    data: bytes | None = None
    params: dict[str, str] | None = None


@dataclass(slots=True)
class HttpResponse:
    status: int
    headers: Mapping[str, str]
    body: bytes
    wall: float = 0.0  # unix time received, for HTTP-date Retry-After

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(slots=True)
class Timeouts:
    total: float | None = 600.0
    connect: float | None = 10.0
    read: float | None = None
    # The transport's own form of these, built once (one Timeouts lives per server).
    native: Any = field(default=None, compare=False, repr=False)


class StreamResponse(Protocol):
    status: int
    headers: Mapping[str, str]

    def chunks(self) -> AsyncIterator[bytes]: ...

    async def read(self) -> bytes: ...


class Transport(Protocol):
    async def send(self, req: HttpRequest, timeouts: Timeouts) -> HttpResponse: ...

    def stream(self, req: HttpRequest, timeouts: Timeouts) -> Any:
        """An async context manager yielding a ``StreamResponse``."""
        ...

    async def close(self) -> None: ...


class _AiohttpStream:
    __slots__ = ("_resp", "headers", "status")

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self._resp = resp
        self.status = resp.status
        self.headers = resp.headers

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._resp.content.iter_any():
                yield chunk
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
            raise ConnectionFailed(f"stream connection lost: {exc}") from None
        except TimeoutError:
            raise Timeout("timed out reading the stream") from None

    async def read(self) -> bytes:
        return await self._resp.read()


class AiohttpTransport:
    """One ``aiohttp.ClientSession`` (created lazily on the running loop)."""

    def __init__(self, connector_limit: int = 0) -> None:
        self._limit = connector_limit  # 0: no cap here; the scheduler enforces limits
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self._limit, ttl_dns_cache=300)
            # Bodies are encoded by us; skip aiohttp's auto-decompression checks.
            self._session = aiohttp.ClientSession(connector=connector, auto_decompress=True)
        return self._session

    @staticmethod
    def _timeout(t: Timeouts) -> aiohttp.ClientTimeout:
        native = t.native
        if native is None:
            native = t.native = aiohttp.ClientTimeout(total=t.total, sock_connect=t.connect, sock_read=t.read)
        return native

    def _kwargs(self, req: HttpRequest, timeouts: Timeouts) -> dict[str, Any]:
        kw: dict[str, Any] = {"headers": req.headers, "timeout": self._timeout(timeouts)}
        if req.json is not None:
            kw["data"] = _ENCODE(req.json).encode()
            # Providers write header names in canonical case, so a plain lookup suffices.
            req.headers.setdefault("Content-Type", "application/json")
        elif req.data is not None:
            kw["data"] = req.data
        if req.params:
            kw["params"] = req.params
        return kw

    async def send(self, req: HttpRequest, timeouts: Timeouts) -> HttpResponse:
        session = self._get_session()
        try:
            async with session.request(req.method, req.url, **self._kwargs(req, timeouts)) as resp:
                body = await resp.read()
                return HttpResponse(resp.status, resp.headers, body)
        except ApimuxError:
            raise
        except Exception as exc:  # cancellation and the like pass through untouched
            raise map_exception(exc) from exc

    @asynccontextmanager
    async def stream(self, req: HttpRequest, timeouts: Timeouts) -> AsyncIterator[_AiohttpStream]:
        session = self._get_session()
        try:
            resp = await session.request(req.method, req.url, **self._kwargs(req, timeouts))
        except Exception as exc:
            raise map_exception(exc) from exc
        try:
            yield _AiohttpStream(resp)
        finally:
            resp.release()

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()


def map_exception(exc: Exception) -> Exception:
    """aiohttp/asyncio failures -> apimux errors; anything else passes through."""
    if isinstance(exc, (TimeoutError, aiohttp.ServerTimeoutError)):
        return Timeout(f"request timed out: {type(exc).__name__}")
    if isinstance(exc, (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError)):
        return ConnectionFailed(f"connection failed: {exc}")
    if isinstance(exc, aiohttp.InvalidURL):
        return ConnectionFailed(f"invalid URL: {exc}")
    return exc
