"""The one scheduler: a bounded priority queue in front of a pool of slots.

Callers wait in the queue until the pool can give them a lease (a server and
key with a free slot, budget and a breaker that lets traffic through). All of
this runs on one event loop, so there are no locks and limits hold across
every thread that feeds the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from dataclasses import dataclass, field

from apimux.core.clock import Clock
from apimux.core.pool import Blocked, Lease, Pool, Server
from apimux.core.queue import LevelQueue
from apimux.errors import CircuitOpen, QueueFull
from apimux.types import Priority


@dataclass(eq=False, slots=True)
class Ticket:
    """One caller's place in the queue."""

    priority: Priority
    tokens: int
    avoid: Server | None
    future: asyncio.Future[Lease]
    enqueued: float = 0.0
    deadline: float = 0.0  # until when it may wait for an open breaker (enqueued + patience)
    counted: bool = True  # holds one of the queue's places (retries re-enter without one)
    extra: dict[str, object] = field(default_factory=dict)


class GroupScheduler:
    """Queue and pool for one model group (endpoints sharing a name)."""

    def __init__(self, name: str, pool: Pool, clock: Clock, capacity: int, aging: float) -> None:
        self.name = name
        self.pool = pool
        self.clock = clock
        self.queue: LevelQueue[Ticket] = LevelQueue(capacity, aging, clock.now)
        self._space: deque[asyncio.Future[None]] = deque()
        self._held = 0  # queue places taken by tickets not yet granted
        self._timer: asyncio.Task[None] | None = None
        self._timer_at = 0.0
        self.rate_limit_waits = 0

    # ---- queue places -------------------------------------------------
    async def _wait_for_place(self, wait: bool, timeout: float | None) -> None:
        if self._held < self.queue.capacity and not self._space:
            self._held += 1
            return
        if not wait:
            raise QueueFull(f"queue for {self.name!r} is full ({self.queue.capacity} waiting)")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._space.append(fut)
        try:
            if timeout is None:
                await fut
            else:
                await self._within(fut, timeout)
        except BaseException as exc:
            if fut.done() and not fut.cancelled():
                self._free_place()  # we were handed a place just as we gave up
            else:
                fut.cancel()
            with contextlib.suppress(ValueError):
                self._space.remove(fut)
            if isinstance(exc, TimeoutError):
                raise QueueFull(
                    f"queue for {self.name!r} stayed full for {timeout}s ({self.queue.capacity} waiting)"
                ) from None
            raise  # a cancelled caller stays cancelled

    async def _within(self, fut: asyncio.Future[None], timeout: float) -> None:
        """Wait for ``fut`` at most ``timeout`` seconds of the injected clock."""
        sleeper = asyncio.ensure_future(self.clock.sleep(timeout))
        try:
            await asyncio.wait((fut, sleeper), return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
        if not fut.done():
            raise TimeoutError

    def _free_place(self) -> None:
        self._held -= 1
        while self._space:
            fut = self._space.popleft()
            if not fut.done():
                self._held += 1
                fut.set_result(None)
                return

    # ---- leases -------------------------------------------------------
    def lease_now(self, tokens: int, avoid: Server | None = None) -> Lease | None:
        """A lease at once when nobody is queued and a slot is free, else None
        (then ``acquire`` decides: wait, or CircuitOpen)."""
        if len(self.queue):
            return None
        got = self.pool.acquire(self.clock.now(), tokens, avoid)
        return None if isinstance(got, Blocked) else got

    async def acquire(
        self,
        priority: Priority,
        tokens: int,
        *,
        avoid: Server | None = None,
        retry: bool = False,
        wait: bool = True,
        timeout: float | None = None,
        patience: float = 0.0,
    ) -> Lease:
        """Wait for a lease. A retry re-enters at the front of its level
        without taking a new queue place (it already waited once).

        When every server's breaker is open the call fails with CircuitOpen,
        unless ``patience`` lets it wait that long for a breaker to let
        traffic through again (a batch job would rather wait out an outage
        than fail every remaining line in a second)."""
        if not len(self.queue):
            # Fast path: nobody is waiting, so a free slot goes to this caller now.
            got = self.pool.acquire(self.clock.now(), tokens, avoid)
            if not isinstance(got, Blocked):
                return got
            if got.circuit_open and patience <= 0:
                raise CircuitOpen(f"every server for {self.name!r} has an open circuit breaker")
        if not retry:
            await self._wait_for_place(wait, timeout)
        loop = asyncio.get_running_loop()
        now = self.clock.now()
        ticket = Ticket(priority, tokens, avoid, loop.create_future(), now, now + patience, counted=not retry)
        self.queue.push(ticket, priority, front=retry)
        self._pump()
        try:
            return await ticket.future
        except asyncio.CancelledError:
            if self.queue.remove(ticket):
                self._left_queue(ticket)
            elif ticket.future.done() and not ticket.future.cancelled() and ticket.future.exception() is None:
                self.release(ticket.future.result())  # granted as we were cancelled
            raise

    def _left_queue(self, ticket: Ticket) -> None:
        if ticket.counted:
            self._free_place()

    def release(self, lease: Lease) -> None:
        self.pool.release(lease)
        if len(self.queue):  # someone waits for this slot
            self._pump()

    def _pump(self) -> None:
        """Hand out leases to queued tickets, best first, while the pool has them."""
        now = self.clock.now()
        while len(self.queue):
            ticket = self.queue.peek()
            assert ticket is not None
            if ticket.future.done():  # its caller was cancelled and has not run yet
                self.queue.pop()
                self._left_queue(ticket)
                continue
            got = self.pool.acquire(now, ticket.tokens, ticket.avoid)
            if isinstance(got, Blocked):
                if got.circuit_open:
                    patient = self._reject_impatient(now)
                    # Look again when a breaker may admit traffic or a wait runs out
                    # (a half-open probe's answer pumps by itself on release).
                    wakes = [t.deadline for t in patient] + ([got.until] if got.until is not None else [])
                    if wakes:
                        self._wake_at(min(wakes))
                    return
                if got.until is not None:
                    self._wake_at(got.until)
                return
            self.queue.pop()
            self._left_queue(ticket)
            ticket.future.set_result(got)

    def _reject_impatient(self, now: float) -> list[Ticket]:
        """Every server's breaker is open: fail fast whoever may not wait
        (longer); return the tickets still waiting."""
        for ticket in self.queue.remove_where(lambda t: t.deadline <= now or t.future.done()):
            self._left_queue(ticket)
            if not ticket.future.done():
                ticket.future.set_exception(
                    CircuitOpen(f"every server for {self.name!r} has an open circuit breaker")
                )
        return list(self.queue.items())

    def _wake_at(self, when: float) -> None:
        if self._timer is not None and not self._timer.done() and self._timer_at <= when:
            return
        if self._timer is not None:
            self._timer.cancel()
        else:
            self.rate_limit_waits += 1  # a new wait for a budget, cooldown or breaker to reopen
        self._timer_at = when
        self._timer = asyncio.get_running_loop().create_task(self._sleep_then_pump(when))

    async def _sleep_then_pump(self, when: float) -> None:
        await self.clock.sleep(max(0.0, when - self.clock.now()))
        self._timer = None
        self._pump()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def depth(self) -> int:
        return len(self.queue)
