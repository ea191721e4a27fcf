"""One conformance battery for every chat backend: a backend is not done
until all of this passes against its simulator through the shared core."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from apimux import (
    AsyncClient,
    AuthError,
    BadRequest,
    CircuitOpen,
    FakeClock,
    NotFound,
    Priority,
    RateLimited,
    RetrySettings,
    Settings,
    UpstreamError,
)
from apimux.testing import Fault, SimServer
from tests.conformance.cases import CHAT_CASES, ChatCase

KEYS = ["ck-key-0000000001", "ck-key-0000000002", "ck-key-0000000003"]
USER = [{"role": "user", "content": "hello world"}]


@pytest.fixture(params=CHAT_CASES, ids=str)
def case(request: pytest.FixtureRequest) -> ChatCase:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def sim(case: ChatCase, clock: FakeClock) -> Iterator[SimServer]:
    with case.make_sim(keys=set(KEYS) if case.keyed else None, clock=clock) as s:
        yield s


def client(case: ChatCase, sim: SimServer, clock: FakeClock, keys: list[str] | None = None,
           settings: Settings | None = None, **ep_kw: object) -> AsyncClient:
    ep = case.endpoint(sim, (keys or KEYS[:1]) if case.keyed else [])
    for k, v in ep_kw.items():
        setattr(ep, k, v)
    return AsyncClient([ep], clock=clock, settings=settings)


def model(case: ChatCase) -> str:
    return f"{case.backend}/{case.model}"


async def test_chat(case: ChatCase, sim: SimServer, clock: FakeClock) -> None:
    async with client(case, sim, clock) as c:
        r = await c.chat(model(case), USER, max_tokens=50)
    assert r.text == "echo: hello world"
    assert r.finish_reason == "stop"
    assert r.usage.completion_tokens == 3 and r.usage.prompt_tokens > 0
    assert r.request_id and r.info.backend == case.backend and r.info.attempts == 1


async def test_stream_with_usage(case: ChatCase, sim: SimServer, clock: FakeClock) -> None:
    async with client(case, sim, clock) as c:
        chunks = [ch async for ch in c.chat_stream(model(case), USER, max_tokens=50)]
    assert "".join(ch.text for ch in chunks) == "echo: hello world"
    assert [ch.finish_reason for ch in chunks if ch.finish_reason] == ["stop"]
    usage = [ch.usage for ch in chunks if ch.usage]
    assert usage and usage[-1].completion_tokens == 3
    assert all(ch.request_id == chunks[0].request_id for ch in chunks)


async def test_system_prompt(case: ChatCase, sim: SimServer, clock: FakeClock) -> None:
    async with client(case, sim, clock) as c:
        await c.chat(model(case), USER, system="Be brief.", max_tokens=50)
    assert case.system_of(sim.requests[-1]) == "Be brief."


async def test_finish_reason_length(case: ChatCase, sim: SimServer, clock: FakeClock) -> None:
    async with client(case, sim, clock) as c:
        r = await c.chat(model(case), USER, max_tokens=2)
    assert r.finish_reason == "length" and r.text == "echo: hello"


@pytest.mark.parametrize(("status", "error"), [(400, BadRequest), (401, AuthError), (404, NotFound)])
async def test_error_mapping(case: ChatCase, sim: SimServer, clock: FakeClock, status: int,
                             error: type[Exception]) -> None:
    sim.faults.script(Fault(status=status, message=f"the service says {status}"))
    async with client(case, sim, clock) as c:
        with pytest.raises(error) as info:
            await c.chat(model(case), USER, max_tokens=50)
    assert f"the service says {status}" in str(info.value)
    assert getattr(info.value, "status", None) == status
    assert len(sim.requests) == 1  # the caller's errors are never retried


async def test_retry_after_honoured(case: ChatCase, sim: SimServer, clock: FakeClock) -> None:
    sim.faults.script(Fault(status=429, retry_after=7))
    async with client(case, sim, clock) as c:
        r = await c.chat(model(case), USER, max_tokens=50)
    assert r.info.attempts == 2
    assert sim.requests[1].at - sim.requests[0].at >= 7


async def test_rate_limit_error_type(case: ChatCase, sim: SimServer, clock: FakeClock) -> None:
    sim.faults.script(Fault(status=429, retry_after=1))
    async with client(case, sim, clock) as c:
        with pytest.raises(RateLimited) as info:
            await c.chat(model(case), USER, max_tokens=50, max_retries=0)
    assert info.value.retry_after == 1


async def test_breaker_opens_on_5xx(case: ChatCase, sim: SimServer, clock: FakeClock) -> None:
    sim.faults.script(*[Fault(status=503) for _ in range(5)])
    settings = Settings(retry=RetrySettings(max_retries=0), breaker_threshold=5)
    async with client(case, sim, clock, settings=settings) as c:
        for _ in range(5):
            with pytest.raises(UpstreamError):
                await c.chat(model(case), USER, max_tokens=50)
        with pytest.raises(CircuitOpen):
            await c.chat(model(case), USER, max_tokens=50)
    assert len(sim.requests) == 5


async def test_key_rotation(case: ChatCase, sim: SimServer, clock: FakeClock) -> None:
    if not case.keyed:
        pytest.skip(f"{case.backend} has no API keys")
    async with client(case, sim, clock, keys=KEYS) as c:
        for _ in range(6):
            await c.chat(model(case), USER, max_tokens=50)
    assert [r.key for r in sim.requests] == KEYS * 2


async def test_priority_ordering(case: ChatCase, sim: SimServer, clock: FakeClock) -> None:
    sim.faults.latency = 0.05
    async with client(case, sim, clock, max_concurrent=1) as c:
        first = asyncio.create_task(c.chat(model(case), [{"role": "user", "content": "first"}], max_tokens=50))
        while not sim.requests:
            await asyncio.sleep(0.001)
        tasks = [
            asyncio.create_task(c.chat(model(case), [{"role": "user", "content": p.name}], priority=p, max_tokens=50))
            for p in (Priority.LOW, Priority.NORMAL, Priority.HIGH)
        ]
        await asyncio.gather(first, *tasks)
    answers = [t.result().text for t in tasks]
    assert answers == ["echo: LOW", "echo: NORMAL", "echo: HIGH"]
    assert len(sim.requests) == 4
    order = [str(r.body) for r in sim.requests[1:]]
    assert ["HIGH" in order[0], "NORMAL" in order[1], "LOW" in order[2]] == [True, True, True]
