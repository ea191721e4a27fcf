import pytest

from apimux.core.breaker import Breaker, BreakerState
from apimux.core.limits import TokenBucket
from apimux.core.queue import LevelQueue
from apimux.types import Priority


class Now:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_queue_priority_then_fifo() -> None:
    now = Now()
    q: LevelQueue[str] = LevelQueue(10, aging=30, now=now)
    for item, p in [("l1", Priority.LOW), ("n1", Priority.NORMAL), ("h1", Priority.HIGH),
                    ("n2", Priority.NORMAL), ("h2", Priority.HIGH)]:
        q.push(item, p)
    assert [q.pop() for _ in range(5)] == ["h1", "h2", "n1", "n2", "l1"]


def test_low_ages_so_it_cannot_starve() -> None:
    now = Now()
    q: LevelQueue[str] = LevelQueue(10, aging=30, now=now)
    q.push("low", Priority.LOW)
    now.t = 31
    q.push("high", Priority.HIGH)
    assert q.pop() == "low"


def test_retry_goes_to_front_of_its_level_and_remove() -> None:
    q: LevelQueue[str] = LevelQueue(10, aging=30, now=Now())
    q.push("a", Priority.NORMAL)
    q.push("retry", Priority.NORMAL, front=True)
    assert q.remove("a") and not q.remove("a")
    assert q.pop() == "retry" and len(q) == 0


def test_token_bucket_rate_and_debt() -> None:
    b = TokenBucket(60, now=0)  # 1 per second, burst 1
    assert b.wait_time(1, 0) == 0
    b.take(1, 0)
    assert b.wait_time(1, 0) == pytest.approx(1.0)
    assert b.wait_time(1, 1.0) == 0
    big = TokenBucket(600, now=0, burst_seconds=1)  # 10/s, capacity 10
    big.take(50, 0)  # a request larger than the bucket goes when full...
    assert big.wait_time(1, 0) == pytest.approx(4.1)  # ...and its debt delays the next


def test_token_bucket_reconcile() -> None:
    b = TokenBucket(6000, now=0, burst_seconds=1)  # 100/s
    b.take(100, 0)
    b.give_back(60)  # estimated 100, used 40
    assert b.wait_time(60, 0) == 0


def test_breaker_cycle() -> None:
    b = Breaker(threshold=3, recovery=30)
    for _ in range(2):
        b.on_failure(0)
    assert b.current(0) is BreakerState.CLOSED
    b.on_failure(1)
    assert b.current(1) is BreakerState.OPEN and not b.available(29)
    assert b.current(31) is BreakerState.HALF_OPEN and b.available(31)
    assert b.on_send(31) and not b.available(31)  # one probe only
    b.on_failure(32)
    assert b.current(32) is BreakerState.OPEN and b.trips == 2
    assert b.on_send(63)
    b.on_success()
    assert b.current(63) is BreakerState.CLOSED and b.failures == 0


def test_success_resets_consecutive_count() -> None:
    b = Breaker(threshold=2)
    b.on_failure(0)
    b.on_success()
    b.on_failure(0)
    assert b.current(0) is BreakerState.CLOSED


def test_request_ids_are_unique_uuid4() -> None:
    import uuid

    from apimux.core.tracking import new_request_id

    ids = [new_request_id() for _ in range(5000)]  # several refills of the batch
    assert len(set(ids)) == len(ids)
    for i in ids[:600]:
        u = uuid.UUID(i)
        assert str(u) == i and u.version == 4 and u.variant == uuid.RFC_4122
