"""The loopback simulator base: an aiohttp server in a background thread with
scripted faults and a record of everything it received.

Each protocol simulator subclasses ``SimServer``: it adds its routes, says
how a key is sent (``key_of``) and how its errors look (``error_response``).
The base does the rest for all of them: recording, in-flight peak, latency,
scripted statuses, error rates, auth.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

Handler = Callable[[web.Request, "Recorded", "Fault | None"], Awaitable[web.StreamResponse]]


@dataclass
class Fault:
    """What to do to one request instead of (or on top of) answering it."""

    status: int | None = None  # answer with this error status
    message: str | None = None
    retry_after: float | None = None  # sent as retry-after (seconds)
    retry_after_ms: float | None = None
    headers: dict[str, str] = field(default_factory=dict)
    latency: float = 0.0  # real seconds before answering
    malformed: bool = False  # a 200 whose body is not valid JSON
    cut_stream_after: int | None = None  # drop the connection after N stream events
    error_type: str | None = None  # protocol-specific error kind (e.g. "overloaded")
    key: str | None = None  # only for requests made with this key
    path: str | None = None  # only for requests whose path ends with this


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    headers: CIMultiDict[str]  # case-insensitive, as HTTP headers are
    body: bytes
    key: str | None
    at: float  # the simulator clock's time when received
    in_flight: int = 0  # requests being served when this one arrived, itself included

    @property
    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


class Faults:
    """Scripted faults (consumed in order), plus rates that apply to every request."""

    def __init__(self, seed: int = 0) -> None:
        self._script: deque[Fault] = deque()
        self.error_rate = 0.0
        self.error_status = 500
        self.latency = 0.0
        self._rand = random.Random(seed)
        self._lock = threading.Lock()

    def script(self, *faults: Fault) -> None:
        with self._lock:
            self._script.extend(faults)

    def clear(self) -> None:
        with self._lock:
            self._script.clear()
            self.error_rate = 0.0
            self.latency = 0.0

    def next_for(self, rec: Recorded) -> Fault | None:
        with self._lock:
            for i, f in enumerate(self._script):
                if (f.key is None or f.key == rec.key) and (f.path is None or rec.path.endswith(f.path)):
                    del self._script[i]
                    return f
            if self.error_rate and self._rand.random() < self.error_rate:
                return Fault(status=self.error_status)
        return None

    @property
    def pending(self) -> int:
        return len(self._script)


class SimServer:
    """Base class: ``with OpenAISim() as sim: sim.url ...``."""

    name = "sim"

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        keys: set[str] | None = None,
        clock: Any = None,
        seed: int = 0,
    ) -> None:
        self.host = host
        self.port = port
        self.keys = keys  # accepted keys; None accepts any (and none)
        self.clock = clock
        self.faults = Faults(seed)
        self.requests: list[Recorded] = []
        self.in_flight = 0
        self.peak_in_flight = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._ready = threading.Event()
        self._lock = threading.Lock()

    # ---- for subclasses ----------------------------------------------------
    def routes(self, app: web.Application) -> None:
        raise NotImplementedError

    def key_of(self, request: web.Request) -> str | None:
        auth = request.headers.get("Authorization", "")
        return auth[7:] if auth.startswith("Bearer ") else None

    def error_response(self, status: int, message: str, fault: Fault | None) -> web.Response:
        return web.json_response({"error": {"message": message, "code": status}}, status=status)

    def auth_required(self, request: web.Request) -> bool:
        return self.keys is not None

    # ---- the wrapper every route goes through -------------------------------
    def route(self, fn: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handler(request: web.Request) -> web.StreamResponse:
            body = await request.read()
            rec = Recorded(
                request.method, request.path, dict(request.query), CIMultiDict(request.headers), body,
                self.key_of(request), self.clock.now() if self.clock else time.monotonic(),
            )
            with self._lock:
                self.requests.append(rec)
                self.in_flight += 1
                rec.in_flight = self.in_flight
                self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            try:
                fault = self.faults.next_for(rec)
                delay = fault.latency if fault and fault.latency else self.faults.latency
                if delay:
                    await asyncio.sleep(delay)
                if fault is not None and fault.status:
                    return self._fault_response(fault)
                if self.auth_required(request) and (rec.key is None or rec.key not in (self.keys or ())):
                    return self.error_response(401, "Incorrect API key provided", None)
                if fault is not None and fault.malformed:
                    return web.Response(status=200, body=b'{"choices": [', content_type="application/json")
                return await fn(request, rec, fault)
            finally:
                with self._lock:
                    self.in_flight -= 1

        return handler

    def _fault_response(self, fault: Fault) -> web.Response:
        assert fault.status is not None
        resp = self.error_response(fault.status, fault.message or default_message(fault.status), fault)
        if fault.retry_after is not None:
            resp.headers["retry-after"] = _num(fault.retry_after)
        if fault.retry_after_ms is not None:
            resp.headers["retry-after-ms"] = _num(fault.retry_after_ms)
        resp.headers.update(fault.headers)
        return resp

    # ---- lifecycle ---------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> SimServer:
        self._thread = threading.Thread(target=self._serve, name=f"{self.name}-sim", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError(f"{self.name} simulator did not start")
        return self

    def _serve(self) -> None:
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        app = web.Application(client_max_size=64 * 1024 * 1024)
        self.routes(app)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, self.host, self.port, backlog=1024)
        self._loop.run_until_complete(site.start())
        server = getattr(site, "_server", None)
        if server is not None and server.sockets:
            self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._runner.cleanup())
        self._loop.close()

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop = None

    def __enter__(self) -> SimServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- views for assertions ----------------------------------------------
    def requests_to(self, path_suffix: str) -> list[Recorded]:
        return [r for r in self.requests if r.path.endswith(path_suffix)]

    def count_by_key(self) -> dict[str | None, int]:
        out: dict[str | None, int] = {}
        for r in self.requests:
            out[r.key] = out.get(r.key, 0) + 1
        return out

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self.peak_in_flight = self.in_flight
        self.faults.clear()


def default_message(status: int) -> str:
    return {
        400: "Bad request",
        401: "Unauthorized",
        404: "Not found",
        429: "Rate limit reached, please retry later",
        500: "The server had an error while processing your request",
        502: "Bad gateway",
        503: "Service unavailable",
        529: "Overloaded",
    }.get(status, f"HTTP {status}")


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


async def cut_connection(request: web.Request) -> None:
    """Drop the TCP connection mid-response, as a crashed upstream would."""
    if request.transport is not None:
        request.transport.close()


def sse(data: Any, event: str | None = None) -> bytes:
    """One server-sent event (``data`` JSON-encoded unless already a string)."""
    text = data if isinstance(data, str) else json.dumps(data)
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {text}\n\n".encode()


def words(text: str) -> int:
    """The simulators' token count: whitespace-separated words (at least 1)."""
    return max(1, len(text.split()))
