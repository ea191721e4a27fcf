"""Micro-batching: concurrent single-item calls to the same endpoint group,
model and parameters coalesce into one upstream call.

A batch is sent when it reaches the backend's limit or when the first item
has waited ``window`` seconds, whichever comes first. The window is a few
milliseconds of real event-loop time, not the injected clock: it is a
coalescing delay, not a policy a test needs to control, and a virtual clock
that only moves when a test says so must not hold batches back. The batcher knows
nothing about what an item is: ``flush`` turns a list of items into a list
of per-item results (or exceptions), in order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

from apimux.types import Priority

Flush = Callable[[Hashable, list[Any], Priority], Awaitable[Sequence[Any]]]


@dataclass(eq=False, slots=True)
class _Batch:
    items: list[Any] = field(default_factory=list)
    futures: list[asyncio.Future[Any]] = field(default_factory=list)
    priority: Priority = Priority.LOW
    timer: asyncio.Task[None] | None = None


class MicroBatcher:
    def __init__(self, window: float, flush: Flush) -> None:
        self.window = window
        self._flush = flush
        self._open: dict[Hashable, _Batch] = {}
        self._running: set[asyncio.Task[None]] = set()
        self.batches_sent = 0
        self.items_sent = 0

    async def submit(self, key: Hashable, item: Any, limit: int, priority: Priority) -> Any:
        loop = asyncio.get_running_loop()
        batch = self._open.get(key)
        if batch is None:
            batch = self._open[key] = _Batch()
            batch.timer = loop.create_task(self._after_window(key, batch))
        fut: asyncio.Future[Any] = loop.create_future()
        batch.items.append(item)
        batch.futures.append(fut)
        batch.priority = min(batch.priority, priority)
        if len(batch.items) >= limit:
            self._send(key, batch)
        return await fut

    async def _after_window(self, key: Hashable, batch: _Batch) -> None:
        await asyncio.sleep(self.window)
        if self._open.get(key) is batch:
            batch.timer = None  # this task is the timer: don't let _send cancel it mid-way
            self._send(key, batch)

    def _send(self, key: Hashable, batch: _Batch) -> None:
        del self._open[key]
        if batch.timer is not None:
            batch.timer.cancel()
        self.batches_sent += 1
        self.items_sent += len(batch.items)
        task = asyncio.get_running_loop().create_task(self._run(key, batch))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _run(self, key: Hashable, batch: _Batch) -> None:
        try:
            results = await self._flush(key, batch.items, batch.priority)
        except BaseException as exc:  # the whole call failed: every caller gets the error
            for fut in batch.futures:
                if not fut.done():
                    fut.set_exception(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        for fut, result in zip(batch.futures, results, strict=True):
            if fut.done():
                continue  # that caller was cancelled
            if isinstance(result, BaseException):
                fut.set_exception(result)
            else:
                fut.set_result(result)

    async def close(self) -> None:
        for key, batch in list(self._open.items()):
            self._send(key, batch)
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)


def chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    """Split for a backend's batch limit, keeping order."""
    return [items[i : i + size] for i in range(0, len(items), size)]
