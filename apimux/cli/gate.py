"""Stopping a run cleanly: what is on the wire finishes, nothing new is sent.

Every transport of the run's client is wrapped in a :class:`Gate`. While it
is open requests pass through and are counted; once closed (Ctrl-C, a
results file that can no longer be written) a request about to be sent
raises :class:`NotSent` instead. The runner then waits only while something
is on the wire: a request queued behind an rpm/tpm budget or sleeping out a
Retry-After has not been sent, so it is cancelled and left for the next run
rather than holding the exit for minutes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from apimux.client import AsyncClient
from apimux.config import Endpoint
from apimux.core.pool import Server
from apimux.providers.base import Provider
from apimux.transport import HttpRequest, HttpResponse, Timeouts, Transport


class NotSent(Exception):
    """The run is stopping: this request was never sent (the next run does it).

    Not an ApimuxError on purpose: the core neither retries it nor holds it
    against the server's breaker."""


class Gate:
    def __init__(self) -> None:
        self.open = True
        self.on_wire = 0  # requests sent and not yet answered

    def close(self) -> None:
        self.open = False

    def wrap(self, transport: Transport) -> GatedTransport:
        return GatedTransport(transport, self)


class GatedTransport:
    __slots__ = ("gate", "inner")

    def __init__(self, inner: Transport, gate: Gate) -> None:
        self.inner = inner
        self.gate = gate

    async def send(self, req: HttpRequest, timeouts: Timeouts) -> HttpResponse:
        if not self.gate.open:
            raise NotSent("the run is stopping")
        self.gate.on_wire += 1
        try:
            return await self.inner.send(req, timeouts)
        finally:
            self.gate.on_wire -= 1

    @asynccontextmanager
    async def stream(self, req: HttpRequest, timeouts: Timeouts) -> AsyncIterator[Any]:
        if not self.gate.open:
            raise NotSent("the run is stopping")
        self.gate.on_wire += 1
        try:
            async with self.inner.stream(req, timeouts) as resp:
                yield resp
        finally:
            self.gate.on_wire -= 1

    async def close(self) -> None:
        # The client closes the transports it made itself; nothing of ours to close.
        return None


class GatedClient(AsyncClient):
    """An AsyncClient whose every server sends through ``gate``."""

    def __init__(self, *args: Any, gate: Gate, **kwargs: Any) -> None:
        self.gate = gate
        super().__init__(*args, **kwargs)

    def _server(self, cls: type[Provider], ep: Endpoint) -> Server:
        server = super()._server(cls, ep)
        server.transport = self.gate.wrap(server.transport)
        return server
