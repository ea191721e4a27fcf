"""Retry decisions as small pure functions (the shape of tenacity's wait/stop
and openai-python's ``_calculate_retry_timeout``)."""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

from apimux.errors import ApimuxError, ConnectionFailed, Overloaded, RateLimited, Timeout, UpstreamError


@dataclass(frozen=True, slots=True)
class RetrySettings:
    max_retries: int = 5
    initial_delay: float = 1.0
    factor: float = 2.0
    max_delay: float = 16.0
    jitter: float = 0.25  # fraction of the delay added at random (0 disables)
    max_retry_after: float = 60.0


@dataclass(frozen=True, slots=True)
class Decision:
    retry: bool
    delay: float = 0.0  # seconds to wait before re-queueing
    key_cooldown: float | None = None  # the key is unusable for this long


def backoff(attempt: int, s: RetrySettings, rand: float) -> float:
    """Delay before retry number ``attempt`` (0-based), with jitter in [0, jitter)."""
    base = min(s.max_delay, s.initial_delay * (s.factor**attempt))
    return min(s.max_delay, base * (1.0 + s.jitter * rand))


def parse_retry_after(headers: Mapping[str, str], wall_now: float) -> float | None:
    """Seconds from ``retry-after-ms`` or ``retry-after`` (seconds or HTTP date)."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - wall_now)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def parse_duration(text: str) -> float | None:
    """OpenAI-style reset durations: '1s', '6m0s', '20ms', '1h2m3.5s', or plain seconds."""
    try:
        return float(text)
    except ValueError:
        pass
    total, number = 0.0, ""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    i = 0
    while i < len(text):
        ch = text[i]
        if ch.isdigit() or ch == ".":
            number += ch
            i += 1
            continue
        unit = "ms" if text.startswith("ms", i) else ch
        if unit not in units or not number:
            return None
        total += float(number) * units[unit]
        number = ""
        i += len(unit)
    return total if not number else None


def decide(error: ApimuxError, attempt: int, s: RetrySettings, rand: float | None = None) -> Decision:
    """What to do after a failed attempt number ``attempt`` (0-based)."""
    if not error.retryable or attempt >= s.max_retries:
        return Decision(False)
    hinted = error.retry_after
    if hinted is not None:
        hinted = min(hinted, s.max_retry_after)
    if isinstance(error, RateLimited):
        # The key cools down for the server's delay; the retry itself waits
        # only if no other key is free, which the pool works out.
        cooldown = hinted if hinted is not None else backoff(attempt, s, _rand(rand))
        return Decision(True, 0.0, key_cooldown=cooldown)
    delay = hinted if hinted is not None else backoff(attempt, s, _rand(rand))
    return Decision(True, delay)


def is_upstream_failure(error: BaseException) -> bool:
    """Failures that count against a server's breaker (not the caller's, not a key's)."""
    if isinstance(error, RateLimited):
        return False
    return isinstance(error, (UpstreamError, Timeout, ConnectionFailed, Overloaded))


def _rand(value: float | None) -> float:
    return random.random() if value is None else value
