"""The same core conformance checks for the embedding and inference backends
(issue: embeddings, model servers): retry, Retry-After, breaker, key rotation,
priority, stats, and micro-batching where the backend can batch."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from apimux import (
    AsyncClient,
    CircuitOpen,
    Endpoint,
    FakeClock,
    Overloaded,
    Priority,
    RetrySettings,
    Settings,
    UpstreamError,
)
from apimux.testing import Fault, GeminiSim, LLVMSim, OllamaSim, OpenAISim, OVMSSim, SimServer, TEISim

KEYS = ["ok-key-0000000001", "ok-key-0000000002", "ok-key-0000000003"]


@dataclass
class OpCase:
    name: str
    make_sim: Callable[..., SimServer]
    endpoint: Callable[[SimServer, list[str]], Endpoint]
    call: Callable[[AsyncClient, str, Priority], Awaitable[Any]]  # one call whose input carries a tag
    tag_of: Callable[[Any], str]  # the tag back from the result
    path: str  # the route the call's requests go to
    keyed: bool = True
    batches: bool = True

    def __str__(self) -> str:
        return self.name


def _embed(model: str) -> Callable[[AsyncClient, str, Priority], Awaitable[Any]]:
    return lambda c, tag, p: c.embed(model, tag, priority=p)


def _vector_tag(vectors: dict[str, list[float]]) -> Callable[[Any], str]:
    return lambda r: next(t for t, v in vectors.items() if np.allclose(v, r.vectors[0], atol=1e-5))


TAGS = ["first", "LOW", "NORMAL", "HIGH", *[f"t{i}" for i in range(20)]]


# The doubler's metadata declares a dynamic batch dimension, which lets calls coalesce.
DOUBLER = {
    "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, -1]}],
    "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, -1]},
                {"name": "sum", "datatype": "FP32", "shape": [-1]}],
}


def _ovms_call(c: AsyncClient, tag: str, p: Priority) -> Awaitable[Any]:
    x = np.array([[float(TAGS.index(tag))]], np.float32)
    return c.infer("ovms/doubler", {"input": x}, metadata=DOUBLER, priority=p)


CASES = [
    OpCase("openai-embed", lambda **kw: OpenAISim(**kw),
           lambda s, k: Endpoint("openai", base_url=s.base_url, api_keys=k),  # type: ignore[attr-defined]
           _embed("openai/text-embedding-3-small"), lambda r: r.vectors[0], "/embeddings"),
    OpCase("tei-embed", lambda **kw: TEISim(**kw), lambda s, k: Endpoint("hf_tei", base_url=s.url, api_keys=k),
           _embed("hf_tei/bge"), lambda r: r.vectors[0], "/embed"),
    OpCase("gemini-embed", lambda **kw: GeminiSim(**kw), lambda s, k: Endpoint("gemini", base_url=s.url, api_keys=k),
           _embed("gemini/gemini-embedding-001"), lambda r: r.vectors[0], ":batchEmbedContents"),
    OpCase("ollama-embed", lambda **kw: OllamaSim(**kw), lambda s, k: Endpoint("ollama", base_url=s.url),
           _embed("ollama/nomic-embed-text"), lambda r: r.vectors[0], "/api/embed", keyed=False),
    OpCase("llvm-infer", lambda **kw: LLVMSim(**kw), lambda s, k: Endpoint("llvm", base_url=s.url, api_keys=k),
           lambda c, tag, p: c.infer("llvm/echo", tag, priority=p), lambda r: r["output"], "infer"),
    OpCase("ovms-infer", lambda **kw: OVMSSim(**kw), lambda s, k: Endpoint("ovms", base_url=s.url),
           _ovms_call, lambda r: TAGS[int(r["output"][0][0] / 2)], "/infer", keyed=False),
]


@pytest.fixture(params=CASES, ids=str)
def case(request: pytest.FixtureRequest) -> OpCase:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def sim(case: OpCase, clock: FakeClock) -> Iterator[SimServer]:
    with case.make_sim(keys=set(KEYS) if case.keyed else None, clock=clock) as s:
        yield s


def client(
    case: OpCase, sim: SimServer, clock: FakeClock, keys: list[str] | None = None, **settings: Any
) -> AsyncClient:
    ep = case.endpoint(sim, (keys or KEYS[:1]) if case.keyed else [])
    ep.max_concurrent = settings.pop("max_concurrent", 5)
    return AsyncClient([ep], clock=clock, settings=Settings(**settings))


async def tag_map(case: OpCase, sim: SimServer, clock: FakeClock) -> Callable[[Any], str]:
    """What each tag's answer looks like, so answers can be traced back to callers."""
    if case.name.endswith("infer"):
        return case.tag_of
    async with client(case, sim, clock, batch_window=0) as c:
        answers = {t: case.tag_of(await case.call(c, t, Priority.NORMAL)) for t in TAGS}
    sim.reset()
    return _vector_tag(answers)


def sent(sim: SimServer, case: OpCase) -> list[Any]:
    return sim.requests_to(case.path)


async def test_call_succeeds_and_stats_match_the_server(case: OpCase, sim: SimServer, clock: FakeClock) -> None:
    tag_of = await tag_map(case, sim, clock)
    async with client(case, sim, clock, batch_window=0) as c:
        results = [await case.call(c, t, Priority.NORMAL) for t in TAGS[4:9]]
        totals = c.stats()["totals"]
    assert [tag_of(r) for r in results] == TAGS[4:9]
    # Every request the server saw is counted once (TEI's one /info lookup included).
    assert len(sent(sim, case)) == 5
    assert totals["successes"] == totals["requests"] == len(sim.requests)


async def test_5xx_is_retried(case: OpCase, sim: SimServer, clock: FakeClock) -> None:
    sim.faults.script(Fault(status=503, path=case.path), Fault(status=500, path=case.path))
    async with client(case, sim, clock, batch_window=0) as c:
        r = await case.call(c, "t1", Priority.NORMAL)
    assert r.info.attempts == 3 and len(sent(sim, case)) == 3


async def test_retry_after_honoured(case: OpCase, sim: SimServer, clock: FakeClock) -> None:
    sim.faults.script(Fault(status=429, retry_after=9, path=case.path))
    async with client(case, sim, clock, batch_window=0) as c:
        r = await case.call(c, "t1", Priority.NORMAL)
    first, second = sent(sim, case)
    assert r.info.attempts == 2 and second.at - first.at >= 9


async def test_breaker_opens_on_5xx(case: OpCase, sim: SimServer, clock: FakeClock) -> None:
    sim.faults.script(*[Fault(status=503, path=case.path) for _ in range(5)])
    async with client(case, sim, clock, batch_window=0, retry=RetrySettings(max_retries=0)) as c:
        for _ in range(5):
            with pytest.raises((UpstreamError, Overloaded)):  # some services call their 503 "overloaded"
                await case.call(c, "t1", Priority.NORMAL)
        with pytest.raises(CircuitOpen):
            await case.call(c, "t1", Priority.NORMAL)
    assert len(sent(sim, case)) == 5


async def test_key_rotation(case: OpCase, sim: SimServer, clock: FakeClock) -> None:
    if not case.keyed:
        pytest.skip(f"{case.name} has no API keys")
    async with client(case, sim, clock, keys=KEYS, batch_window=0) as c:
        for i in range(6):
            await case.call(c, f"t{i}", Priority.NORMAL)
    used = [r.key for r in sent(sim, case)]
    # Round robin: every key in turn (a one-off /info lookup may shift where the cycle starts).
    assert sorted(used) == sorted(KEYS * 2) and used[:3] == used[3:] and len(set(used[:3])) == 3


async def test_priority_ordering(case: OpCase, sim: SimServer, clock: FakeClock) -> None:
    tag_of = await tag_map(case, sim, clock)
    sim.faults.latency = 0.05
    async with client(case, sim, clock, batch_window=0, max_concurrent=1) as c:
        first = asyncio.create_task(case.call(c, "first", Priority.NORMAL))
        while not sent(sim, case):
            await asyncio.sleep(0.001)
        order: list[str] = []

        async def tracked(tag: str, p: Priority) -> None:
            order.append(tag_of(await case.call(c, tag, p)))

        await asyncio.gather(first, *(tracked(p.name, p) for p in (Priority.LOW, Priority.NORMAL, Priority.HIGH)))
    assert order == ["HIGH", "NORMAL", "LOW"]


async def test_concurrent_single_calls_coalesce(case: OpCase, sim: SimServer, clock: FakeClock) -> None:
    if not case.batches:
        pytest.skip(f"{case.name} cannot serve several calls in one request")
    tag_of = await tag_map(case, sim, clock)
    tags = TAGS[4:]
    async with client(case, sim, clock) as c:
        results = await asyncio.gather(*(case.call(c, t, Priority.NORMAL) for t in tags))
    assert [tag_of(r) for r in results] == tags  # each caller its own answer
    assert len(sim.requests) < len(tags) / 4
