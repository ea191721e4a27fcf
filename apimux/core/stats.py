"""Usage statistics per backend, endpoint (masked) and model.

Recording is a few dict and integer operations per call; percentiles are
computed only when ``snapshot`` is asked for.
"""

from __future__ import annotations

from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

_SAMPLES = 2048  # latency samples kept per series: enough for stable p99


@dataclass(slots=True)
class Series:
    requests: int = 0
    successes: int = 0
    failures: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    retries: int = 0
    rejected: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # never sent
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    cost_unknown: int = 0
    rate_limit_waits: int = 0
    latency: deque[float] = field(default_factory=lambda: deque(maxlen=_SAMPLES))
    queue_wait: deque[float] = field(default_factory=lambda: deque(maxlen=_SAMPLES))

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "successes": self.successes,
            "failures": dict(self.failures),
            "failures_total": sum(self.failures.values()),
            "retries": self.retries,
            "rejected": dict(self.rejected),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost_usd": round(self.cost, 8),
            "cost_unknown_calls": self.cost_unknown,
            "rate_limit_waits": self.rate_limit_waits,
            "latency_s": percentiles(self.latency),
            "queue_wait_s": percentiles(self.queue_wait),
        }


def percentiles(samples: deque[float]) -> dict[str, float | None]:
    if not samples:
        return {"p50": None, "p95": None, "p99": None}
    ordered = sorted(samples)
    last = len(ordered) - 1
    return {f"p{q}": round(ordered[min(last, int(q / 100 * len(ordered)))], 6) for q in (50, 95, 99)}


class Stats:
    """Counters keyed by (backend, endpoint, model); owned by one client."""

    def __init__(self) -> None:
        self._series: dict[tuple[str, str, str], Series] = {}

    def series(self, backend: str, endpoint: str, model: str) -> Series:
        key = (backend, endpoint, model)
        s = self._series.get(key)
        if s is None:
            s = self._series[key] = Series()
        return s

    def reset(self) -> None:
        self._series.clear()

    def totals(self) -> Series:
        total = Series()
        for s in self._series.values():
            total.requests += s.requests
            total.successes += s.successes
            for k, v in s.failures.items():
                total.failures[k] += v
            total.retries += s.retries
            for k, v in s.rejected.items():
                total.rejected[k] += v
            total.prompt_tokens += s.prompt_tokens
            total.completion_tokens += s.completion_tokens
            total.cost += s.cost
            total.cost_unknown += s.cost_unknown
            total.rate_limit_waits += s.rate_limit_waits
            total.latency.extend(s.latency)
            total.queue_wait.extend(s.queue_wait)
        return total

    def snapshot(self) -> dict[str, Any]:
        rows = [
            {"backend": b, "endpoint": e, "model": m, **s.to_dict()}
            for (b, e, m), s in sorted(self._series.items())
        ]
        return {"totals": self.totals().to_dict(), "series": rows}
