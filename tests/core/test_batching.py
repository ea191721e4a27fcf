"""Micro-batching and splitting, through the core, against the OpenAI simulator."""

from __future__ import annotations

import asyncio

import pytest

from apimux import AsyncClient, BadRequest, Endpoint, FakeClock, Settings
from apimux.testing import OpenAISim
from apimux.testing.openai_sim import fake_vector

MODEL = "openai/text-embedding-3-small"


def client(sim: OpenAISim, clock: FakeClock, **settings: object) -> AsyncClient:
    ep = Endpoint("openai", base_url=sim.base_url, api_keys=["sk-batch-0001"])
    return AsyncClient([ep], clock=clock, settings=Settings(**settings))  # type: ignore[arg-type]


async def test_concurrent_single_texts_coalesce_and_each_gets_its_own(sim: OpenAISim, clock: FakeClock) -> None:
    texts = [f"text number {i}" for i in range(100)]
    async with client(sim, clock) as c:
        results = await asyncio.gather(*(c.embed(MODEL, t) for t in texts))
    assert len(sim.requests) == 1
    assert sim.requests[0].json["input"] == texts
    for t, r in zip(texts, results, strict=True):
        assert r.vectors == [fake_vector(t)]
    assert sum(r.usage.prompt_tokens for r in results) == 300  # the batch's usage, shared out


async def test_batches_respect_the_backend_limit(
    sim: OpenAISim, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    from apimux.providers.openai import OpenAIProvider

    monkeypatch.setattr(OpenAIProvider, "batch_limits", {"embed": 32})
    async with client(sim, clock) as c:
        results = await asyncio.gather(*(c.embed(MODEL, f"t{i}") for i in range(1000)))
    assert len(results) == 1000
    sizes = [len(r.json["input"]) for r in sim.requests]
    assert max(sizes) <= 32 and sum(sizes) == 1000 and len(sizes) <= 1.2 * 1000 / 32


async def test_one_bad_item_gets_its_own_error(sim: OpenAISim, clock: FakeClock) -> None:
    async with client(sim, clock) as c:
        results = await asyncio.gather(*(c.embed(MODEL, t) for t in ["good", "", "fine"]), return_exceptions=True)
    assert isinstance(results[1], BadRequest)
    assert results[0].vectors == [fake_vector("good")]  # type: ignore[union-attr]
    assert results[2].vectors == [fake_vector("fine")]  # type: ignore[union-attr]


async def test_different_params_never_share_a_call(sim: OpenAISim, clock: FakeClock) -> None:
    async with client(sim, clock) as c:
        await asyncio.gather(c.embed(MODEL, "a", dimensions=8), c.embed(MODEL, "b", dimensions=16))
    assert sorted(len(r.json["input"]) for r in sim.requests) == [1, 1]


async def test_batching_off_sends_one_call_per_text(sim: OpenAISim, clock: FakeClock) -> None:
    async with client(sim, clock, batch_window=0) as c:
        await asyncio.gather(*(c.embed(MODEL, f"t{i}") for i in range(10)))
    assert len(sim.requests) == 10


async def test_a_list_longer_than_the_limit_is_split_and_reassembled(
    sim: OpenAISim, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    from apimux.providers.openai import OpenAIProvider

    monkeypatch.setattr(OpenAIProvider, "batch_limits", {"embed": 10})
    texts = [f"line {i}" for i in range(35)]
    async with client(sim, clock) as c:
        r = await c.embed(MODEL, texts)
    assert [len(q.json["input"]) for q in sim.requests] == [10, 10, 10, 5]
    assert r.vectors == [fake_vector(t) for t in texts]
    assert r.usage.prompt_tokens == 70


async def test_single_infers_coalesce_into_batch_infer(clock: FakeClock) -> None:
    from apimux.testing.llvm_sim import LLVMSim

    with LLVMSim(clock=clock) as s:
        async with AsyncClient([Endpoint("llvm", base_url=s.url)], clock=clock) as c:
            results = await asyncio.gather(*(c.infer("llvm/echo", i) for i in range(10)))
    assert [r["output"] for r in results] == list(range(10))
    assert [r.path for r in s.requests] == ["/models/echo/batch_infer"]


async def test_ovms_infers_stack_along_a_declared_batch_dimension(clock: FakeClock) -> None:
    import numpy as np

    from apimux.testing import OVMSSim

    meta = {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, -1]}],
        "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, -1]},
                    {"name": "sum", "datatype": "FP32", "shape": [-1]}],
    }
    xs = [np.full((i % 3 + 1, 2), i, np.float32) for i in range(9)]  # batches of 1, 2 or 3 rows
    with OVMSSim(clock=clock) as s:
        async with AsyncClient([Endpoint("ovms", base_url=s.url)], clock=clock) as c:
            stacked = await asyncio.gather(*(c.infer("ovms/doubler", {"input": x}, metadata=meta) for x in xs))
            assert len(s.requests) == 1 and s.requests[0].json["inputs"][0]["shape"] == [18, 2]
            plain = await asyncio.gather(*(c.infer("ovms/doubler", {"input": x}) for x in xs))
            assert len(s.requests) == 10  # without a declared batch dimension: one request each
    for x, a, b in zip(xs, stacked, plain, strict=True):
        np.testing.assert_array_equal(a["output"], x * 2)
        np.testing.assert_array_equal(a["sum"], (x * 2).sum(axis=-1))
        np.testing.assert_array_equal(a["output"], b["output"])


async def test_max_retries_is_kept_and_batching_still_applies(sim: OpenAISim, clock: FakeClock) -> None:
    from apimux import UpstreamError
    from apimux.testing import Fault

    async with client(sim, clock) as c:
        results = await asyncio.gather(*(c.embed(MODEL, f"t{i}", max_retries=2) for i in range(10)))
        assert len(results) == 10 and len(sim.requests) == 1  # still one upstream call
        sim.faults.script(*[Fault(status=503) for _ in range(3)])
        with pytest.raises(UpstreamError) as info:
            await asyncio.gather(*(c.embed(MODEL, f"u{i}", max_retries=1) for i in range(5)))
    assert info.value.attempts == 2  # the callers' max_retries reached the batch
