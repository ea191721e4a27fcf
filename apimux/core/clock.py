"""One clock for all time in apimux, so tests never sleep for real.

``SystemClock`` is the default. ``FakeClock`` keeps virtual time: ``sleep``
waits until ``advance`` moves time past its deadline, and with
``autojump=True`` time jumps to the next deadline whenever sleepers are
waiting, so a five-retry backoff finishes in milliseconds of real time.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Monotonic seconds."""
        ...

    async def sleep(self, seconds: float) -> None: ...

    def wall(self) -> float:
        """Unix time, for HTTP-date Retry-After and timestamps."""
        ...


class SystemClock:
    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    def wall(self) -> float:
        return time.time()


class FakeClock:
    """Virtual time. Safe to use from one event loop (plus ``advance`` from tests)."""

    def __init__(self, start: float = 1000.0, *, autojump: bool = True, wall_start: float = 1.7e9):
        self._now = start
        self._wall_offset = wall_start - start
        self.autojump = autojump
        self.sleeps: list[float] = []  # every requested delay, for assertions
        self._waiters: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self._jumper: asyncio.Task[None] | None = None

    def now(self) -> float:
        return self._now

    def wall(self) -> float:
        return self._now + self._wall_offset

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        heapq.heappush(self._waiters, (self._now + seconds, next(self._seq), fut))
        if self.autojump and (self._jumper is None or self._jumper.done()):
            self._jumper = loop.create_task(self._autojump())
        await fut

    def advance(self, seconds: float) -> None:
        """Move time forward and wake every sleeper whose deadline passed."""
        self._now += seconds
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self._waiters[0][0] <= self._now:
            _, _, fut = heapq.heappop(self._waiters)
            if not fut.done():
                fut.set_result(None)

    async def _autojump(self) -> None:
        # Let ready work (including loopback I/O) run first, so time only
        # jumps when everyone who can make progress without it has.
        while self._waiters:
            for _ in range(3):
                await asyncio.sleep(0.0005)
            self._waiters = [w for w in self._waiters if not w[2].done()]
            heapq.heapify(self._waiters)
            if self._waiters:
                self._now = max(self._now, self._waiters[0][0])
                self._wake()
