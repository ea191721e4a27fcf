"""Circuit breaker per server: CLOSED -> OPEN -> HALF_OPEN -> CLOSED."""

from __future__ import annotations

from enum import StrEnum


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Breaker:
    """Counts consecutive upstream failures; callers pass the time in."""

    __slots__ = ("failures", "opened_at", "probing", "recovery", "state", "threshold", "trips")

    def __init__(self, threshold: int = 5, recovery: float = 30.0) -> None:
        self.threshold = threshold
        self.recovery = recovery
        self.state = BreakerState.CLOSED
        self.failures = 0
        self.opened_at = 0.0
        self.probing = False
        self.trips = 0

    def current(self, now: float) -> BreakerState:
        if self.state is BreakerState.OPEN and now - self.opened_at >= self.recovery:
            self.state = BreakerState.HALF_OPEN
            self.probing = False
        return self.state

    def available(self, now: float) -> bool:
        """Could a request be sent now? (Half-open admits one probe.)"""
        if self.state is BreakerState.CLOSED:  # the hot path: nothing to work out
            return True
        state = self.current(now)
        if state is BreakerState.CLOSED:
            return True
        return state is BreakerState.HALF_OPEN and not self.probing

    def reopens_in(self, now: float) -> float:
        if self.state is BreakerState.OPEN:
            return max(0.0, self.opened_at + self.recovery - now)
        return 0.0

    def on_send(self, now: float) -> bool:
        """Record a send; returns True when this send is the half-open probe."""
        if self.state is not BreakerState.CLOSED and self.current(now) is BreakerState.HALF_OPEN:
            self.probing = True
            return True
        return False

    def on_success(self) -> None:
        if self.state is BreakerState.CLOSED and not self.failures:
            return  # nothing to reset (the common case)
        self.failures = 0
        self.state = BreakerState.CLOSED
        self.probing = False

    def on_failure(self, now: float) -> None:
        self.failures += 1
        if self.state is BreakerState.HALF_OPEN or self.failures >= self.threshold:
            if self.state is not BreakerState.OPEN:
                self.trips += 1
            self.state = BreakerState.OPEN
            self.opened_at = now
            self.probing = False

    def on_neutral(self) -> None:
        """A probe that ended without verdict (cancelled, caller's 4xx) frees the probe slot."""
        self.probing = False
