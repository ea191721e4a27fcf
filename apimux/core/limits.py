"""Token buckets for rpm / tpm budgets, one per key."""

from __future__ import annotations


class TokenBucket:
    """A bucket refilled at ``per_minute / 60`` a second.

    A take may drive the level negative (debt): a request larger than the
    bucket can still go once the bucket is full, and the debt makes the
    following ones wait, so the long-run rate holds without starving big
    requests.
    """

    __slots__ = ("_stamp", "capacity", "level", "rate")

    def __init__(self, per_minute: float, now: float, burst_seconds: float = 1.0) -> None:
        if per_minute <= 0:
            raise ValueError("a rate limit must be positive")
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate * burst_seconds)
        self.level = self.capacity
        self._stamp = now

    def _refill(self, now: float) -> None:
        if now > self._stamp:
            self.level = min(self.capacity, self.level + (now - self._stamp) * self.rate)
            self._stamp = now

    def wait_time(self, cost: float, now: float) -> float:
        """Seconds until ``cost`` may be taken (0 if now)."""
        self._refill(now)
        need = min(cost, self.capacity)
        if self.level >= need:
            return 0.0
        return (need - self.level) / self.rate

    def take(self, cost: float, now: float) -> None:
        self._refill(now)
        self.level -= cost

    def give_back(self, amount: float) -> None:
        """Reconcile an estimate with the real usage (amount may be negative)."""
        self.level = min(self.capacity, self.level + amount)
