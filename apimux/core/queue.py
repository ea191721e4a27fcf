"""Bounded priority queue: HIGH/NORMAL/LOW, FIFO within a level, LOW ages.

It is driven from one event loop (the scheduler's), so it needs no lock;
``Client`` hands calls from other threads to that loop, which is what makes
the whole scheduler thread-safe.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from apimux.types import Priority

T = TypeVar("T")


class LevelQueue(Generic[T]):
    """Three FIFO deques. An item older than ``aging`` seconds is served
    before newer higher-priority items, so LOW cannot starve under load."""

    def __init__(self, capacity: int, aging: float, now: Callable[[], float]) -> None:
        if capacity < 1:
            raise ValueError("queue capacity must be at least 1")
        self.capacity = capacity
        self.aging = aging
        self._now = now
        self._levels: tuple[deque[tuple[float, T]], ...] = tuple(deque() for _ in Priority)
        self._size = 0

    def __len__(self) -> int:
        return self._size

    @property
    def full(self) -> bool:
        return self._size >= self.capacity

    def depth_by_level(self) -> dict[str, int]:
        return {p.name: len(self._levels[p]) for p in Priority}

    def push(self, item: T, priority: Priority, *, front: bool = False) -> None:
        """Add an item. ``front`` is for retries, which keep their place."""
        entry = (self._now(), item)
        level = self._levels[priority]
        if front:
            level.appendleft(entry)
        else:
            level.append(entry)
        self._size += 1

    def _pick(self) -> deque[tuple[float, T]] | None:
        first: deque[tuple[float, T]] | None = None
        oldest_aged: deque[tuple[float, T]] | None = None
        cutoff = self._now() - self.aging
        for level in self._levels:
            if not level:
                continue
            if first is None:
                first = level
            elif level[0][0] <= cutoff and (oldest_aged is None or level[0][0] < oldest_aged[0][0]):
                oldest_aged = level
        return oldest_aged or first

    def peek(self) -> T | None:
        level = self._pick()
        return level[0][1] if level else None

    def pop(self) -> T:
        level = self._pick()
        if level is None:
            raise IndexError("pop from an empty queue")
        self._size -= 1
        return level.popleft()[1]

    def items(self) -> Iterator[T]:
        """Every queued item, best level first, FIFO within a level."""
        for level in self._levels:
            for _, item in level:
                yield item

    def remove_where(self, pred: Callable[[T], bool]) -> list[T]:
        """Take out every item ``pred`` accepts, keeping the others' order and age."""
        taken: list[T] = []
        for level in self._levels:
            kept = [e for e in level if not pred(e[1])]
            if len(kept) != len(level):
                taken.extend(e[1] for e in level if pred(e[1]))
                level.clear()
                level.extend(kept)
        self._size -= len(taken)
        return taken

    def remove(self, item: T) -> bool:
        """Drop a cancelled item; O(n) but only on cancellation."""
        for level in self._levels:
            for entry in level:
                if entry[1] is item:
                    level.remove(entry)
                    self._size -= 1
                    return True
        return False
