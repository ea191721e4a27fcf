"""Chooses a server and key for the next attempt.

A *server* is one base URL with its breaker; a *key* has its own slots,
rpm/tpm buckets, 429 cooldown and learned rate-limit hints, since each key
has its own quota at the provider.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from apimux.core.breaker import Breaker, BreakerState
from apimux.core.limits import TokenBucket


@dataclass(slots=True)
class RateHint:
    """What a response said about the key's remaining budget."""

    remaining_requests: int | None = None
    remaining_tokens: int | None = None
    reset_requests: float | None = None  # seconds
    reset_tokens: float | None = None


@dataclass(eq=False, slots=True)
class KeyState:
    key: str | None
    label: str  # masked, for stats and errors
    max_concurrent: int
    rpm: TokenBucket | None = None
    tpm: TokenBucket | None = None
    in_flight: int = 0
    limit: int = 0  # current ramp limit; max_concurrent when healthy
    cooldown_until: float = 0.0  # a server-announced delay (429) or a learned reset
    last_used: float = 0.0
    sent: int = 0
    epoch: int = 0  # bumped by each cooldown, so older leases cannot ramp the key back up

    def __post_init__(self) -> None:
        self.limit = self.max_concurrent

    def ready_at(self, now: float, tokens: int) -> float:
        """Earliest time this key can take a request of ``tokens`` (now if free)."""
        t = max(now, self.cooldown_until)
        if self.rpm is not None:
            t = max(t, now + self.rpm.wait_time(1, now))
        if self.tpm is not None:
            t = max(t, now + self.tpm.wait_time(tokens, now))
        return t

    def cool_down(self, until: float) -> None:
        # After a 429: no sends until ``until``, then one probe, then ramp up.
        self.cooldown_until = max(self.cooldown_until, until)
        self.limit = 1
        self.epoch += 1


@dataclass(eq=False, slots=True)
class Server:
    """One base URL of a group: its provider adapter, transport and breaker."""

    name: str  # masked label of the server
    endpoint: Any  # apimux.config.Endpoint (kept untyped so core needs no config import)
    provider: Any
    transport: Any
    breaker: Breaker
    keys: list[KeyState]
    rr: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(eq=False, slots=True)
class Lease:
    server: Server
    key: KeyState
    tokens: int
    probe: bool = False
    epoch: int = 0


class Blocked:
    """No lease now; ``until`` is when to look again (None: when a slot frees)."""

    __slots__ = ("circuit_open", "until")

    def __init__(self, until: float | None, circuit_open: bool = False) -> None:
        self.until = until
        self.circuit_open = circuit_open


class Pool:
    def __init__(self, servers: list[Server], strategy: str = "round_robin") -> None:
        if strategy not in ("round_robin", "least_loaded"):
            raise ValueError(f"unknown key strategy {strategy!r}: use round_robin or least_loaded")
        self.servers = servers
        self.strategy = strategy
        self._rr = 0
        self._pairs = [(s, k) for s in servers for k in s.keys]
        # Token estimates cost work on every call; only a tpm budget needs them.
        self.uses_tpm = any(k.tpm is not None for _, k in self._pairs)

    def acquire(self, now: float, tokens: int, avoid: Server | None = None) -> Lease | Blocked:
        best: tuple[Server, KeyState] | None = None
        best_idx = 0
        best_rank: tuple[float, ...] | None = None
        soonest: float | None = None
        any_breaker_ok = False
        n = len(self._pairs)
        for i in range(n):
            # Round-robin rotates the starting point; least-loaded ranks all.
            idx = (self._rr + i) % n
            server, key = self._pairs[idx]
            if not server.breaker.available(now):
                continue
            any_breaker_ok = True
            if key.in_flight >= key.limit:
                continue
            if key.cooldown_until <= now and key.rpm is None and key.tpm is None:
                ready = now  # no budget and no cooldown: free to go (the common case)
            else:
                ready = key.ready_at(now, tokens)
            if ready > now:
                soonest = ready if soonest is None else min(soonest, ready)
                continue
            avoided = 1.0 if server is avoid else 0.0
            if self.strategy == "round_robin":
                if not avoided:  # the first ready key after the last one used: done
                    best, best_idx = (server, key), idx
                    break
                rank: tuple[float, ...] = (avoided, float(i))
            else:
                rank = (avoided, float(key.in_flight), key.last_used, float(i))
            if best_rank is None or rank < best_rank:
                best, best_rank, best_idx = (server, key), rank, idx
        if best is None:
            if not any_breaker_ok:
                reopen = [s.breaker.reopens_in(now) for s in self.servers if s.breaker.state is BreakerState.OPEN]
                return Blocked(now + min(reopen) if reopen else None, circuit_open=True)
            return Blocked(soonest)
        server, key = best
        self._rr = (best_idx + 1) % n
        return self._lease(server, key, tokens, now)

    def _lease(self, server: Server, key: KeyState, tokens: int, now: float) -> Lease:
        key.in_flight += 1
        key.sent += 1
        key.last_used = now
        if key.rpm is not None:
            key.rpm.take(1, now)
        if key.tpm is not None:
            key.tpm.take(tokens, now)
        return Lease(server, key, tokens, server.breaker.on_send(now), key.epoch)

    def release(self, lease: Lease) -> None:
        lease.key.in_flight -= 1

    @staticmethod
    def learn(lease: Lease, hint: RateHint, now: float) -> None:
        """Slow down before the server says 429: an exhausted budget blocks
        the key until the announced reset."""
        key = lease.key
        if hint.remaining_requests is not None and hint.remaining_requests <= 0 and hint.reset_requests:
            key.cooldown_until = max(key.cooldown_until, now + hint.reset_requests)
        if hint.remaining_tokens is not None and hint.remaining_tokens <= 0 and hint.reset_tokens:
            key.cooldown_until = max(key.cooldown_until, now + hint.reset_tokens)

    @staticmethod
    def on_success(lease: Lease, used_tokens: int | None) -> None:
        key = lease.key
        if key.limit < key.max_concurrent and lease.epoch == key.epoch:
            key.limit = min(key.max_concurrent, key.limit * 2)  # ramp back after a cooldown
        if used_tokens is not None and key.tpm is not None:
            key.tpm.give_back(lease.tokens - used_tokens)
