"""The OpenAI simulator checked by the official openai and groq SDKs, and our
OpenAI-family adapters checked against it."""

from __future__ import annotations

import base64
import struct
from typing import Any

import groq
import openai
import pytest

from apimux import AsyncClient, AuthError, Endpoint, FakeClock, NotFound, RateLimited
from apimux.providers.base import Call
from apimux.providers.openai import GroqProvider, OpenAIProvider, OpenAIStreamParser
from apimux.testing import Fault, OpenAISim, Recorded
from apimux.transport import HttpResponse

MSG = [{"role": "user", "content": "hello there"}]


# ---- the simulator, judged by the official SDKs ---------------------------------------------
def test_openai_sdk_parses_chat_stream_embeddings_models(sim: OpenAISim) -> None:
    oc = openai.OpenAI(base_url=sim.base_url, api_key="sk-x", max_retries=0)
    r = oc.chat.completions.create(model="gpt-4o-mini", messages=MSG, max_tokens=64)  # type: ignore[arg-type]
    assert r.choices[0].message.content == "echo: hello there"
    assert r.choices[0].finish_reason == "stop" and r.usage is not None and r.usage.total_tokens == 5
    stream = oc.chat.completions.create(
        model="gpt-4o-mini", messages=MSG, stream=True, stream_options={"include_usage": True}  # type: ignore[arg-type]
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "echo: hello there"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3
    e = oc.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    assert len(e.data) == 2 and len(e.data[0].embedding) == 8
    e64 = oc.embeddings.create(model="text-embedding-3-small", input="a", encoding_format="base64")
    assert isinstance(e64.data[0].embedding, str)
    assert [m.id for m in oc.models.list()] == ["gpt-4o-mini", "text-embedding-3-small"]


def test_openai_sdk_maps_simulated_errors(sim: OpenAISim) -> None:
    oc = openai.OpenAI(base_url=sim.base_url, api_key="sk-x", max_retries=0)
    sim.faults.script(Fault(status=429, retry_after=3), Fault(status=400, message="bad temperature"), Fault(status=503))
    with pytest.raises(openai.RateLimitError) as rl:
        oc.chat.completions.create(model="m", messages=MSG)  # type: ignore[arg-type]
    assert rl.value.response.headers["retry-after"] == "3"
    with pytest.raises(openai.BadRequestError, match="bad temperature"):
        oc.chat.completions.create(model="m", messages=MSG)  # type: ignore[arg-type]
    with pytest.raises(openai.InternalServerError):
        oc.chat.completions.create(model="m", messages=MSG)  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError, match="messages"):
        oc.chat.completions.create(model="m", messages=[])


def test_openai_sdk_sees_a_cut_stream_as_an_error(sim: OpenAISim) -> None:
    oc = openai.OpenAI(base_url=sim.base_url, api_key="sk-x", max_retries=0)
    sim.faults.script(Fault(cut_stream_after=2))
    with pytest.raises(openai.APIError):
        list(oc.chat.completions.create(model="m", messages=MSG, stream=True))  # type: ignore[arg-type]


def test_openai_sdk_rejected_key(clock: FakeClock) -> None:
    with OpenAISim(keys={"sk-good"}, clock=clock) as s:
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=s.base_url, api_key="sk-bad", max_retries=0).models.list()
        assert openai.OpenAI(base_url=s.base_url, api_key="sk-good").models.list().data


def test_groq_sdk_parses_the_groq_flavour(clock: FakeClock) -> None:
    with OpenAISim(prefix="/openai/v1", flavor="groq", clock=clock) as s:
        gc = groq.Groq(base_url=s.url, api_key="gsk-x", max_retries=0)
        r = gc.chat.completions.create(model="llama-3.1-8b-instant", messages=MSG)  # type: ignore[arg-type]
        assert r.choices[0].message.content == "echo: hello there"
        chunks = list(gc.chat.completions.create(model="llama", messages=MSG, stream=True))  # type: ignore[arg-type]
        last = chunks[-1]
        assert last.x_groq is not None and last.x_groq.usage is not None
        assert last.x_groq.usage.completion_tokens == 3


# ---- our adapters against the simulator -------------------------------------------------
async def test_embeddings_float_and_base64(sim: OpenAISim, clock: FakeClock) -> None:
    async with AsyncClient([Endpoint("openai", base_url=sim.base_url, api_keys=["sk-e"])], clock=clock) as c:
        plain = await c.embed("openai/text-embedding-3-small", ["a", "b"])
        b64 = await c.embed("openai/text-embedding-3-small", ["a", "b"], encoding_format="base64")
    assert len(plain.vectors) == 2 and plain.usage.prompt_tokens == 2
    for got, want in zip(b64.vectors, plain.vectors, strict=True):
        assert got == pytest.approx(want, abs=1e-6)


async def test_groq_stream_usage_from_x_groq(clock: FakeClock) -> None:
    with OpenAISim(prefix="/openai/v1", flavor="groq", clock=clock) as s:
        ep = Endpoint("groq", base_url=s.base_url, api_keys=["gsk-test-0001"])  # type: ignore[attr-defined]
        async with AsyncClient([ep], clock=clock) as c:
            chunks = [ch async for ch in c.chat_stream("groq/llama", MSG, stream_options={"include_usage": False})]
    usage = [ch.usage for ch in chunks if ch.usage]
    assert usage and usage[-1].completion_tokens == 3


async def test_models_list_and_auth_and_not_found(clock: FakeClock) -> None:
    with OpenAISim(keys={"sk-good-key-0001"}, clock=clock) as s:
        good = Endpoint("openai", base_url=s.base_url, api_keys=["sk-good-key-0001"])
        async with AsyncClient([good], clock=clock) as c:
            assert [m.id for m in await c.models("openai")] == ["gpt-4o-mini", "text-embedding-3-small"]
            s.faults.script(Fault(status=404, message="The model `nope` does not exist"))
            with pytest.raises(NotFound, match="does not exist"):
                await c.chat("openai/nope", MSG)
        bad = Endpoint("openai", base_url=s.base_url, api_keys=["sk-wrong-key-9999"])
        async with AsyncClient([bad], clock=clock) as c:
            with pytest.raises(AuthError) as info:
                await c.chat("openai/gpt-4o-mini", MSG)
            assert "sk-wrong-key-9999" not in str(info.value) and info.value.attempts == 1


async def test_ratelimit_headers_slow_down_before_a_429(clock: FakeClock) -> None:
    headers = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "6s"}
    with OpenAISim(ratelimit_headers=headers, clock=clock) as s:
        async with AsyncClient([Endpoint("openai", base_url=s.base_url, api_keys=["sk-h-1"])], clock=clock) as c:
            await c.chat("openai/m", MSG)
            await c.chat("openai/m", MSG)
    assert s.requests[1].at - s.requests[0].at >= 6


async def test_rpm_budget_spaces_requests(sim: OpenAISim, clock: FakeClock) -> None:
    ep = Endpoint("openai", base_url=sim.base_url, api_keys=["sk-rpm-1"], rpm=60)
    async with AsyncClient([ep], clock=clock) as c:
        for _ in range(4):
            await c.chat("openai/m", MSG)
        assert c.stats()["groups"]["openai"]["rate_limit_waits"] == 3  # each later call waited once
    gaps = [b.at - a.at for a, b in zip(sim.requests, sim.requests[1:], strict=False)]
    assert all(g >= 0.999 for g in gaps)


async def test_tpm_budget_uses_estimate_then_reported_usage(sim: OpenAISim, clock: FakeClock) -> None:
    # 600 tokens a minute = 10/s with 100 tokens of burst. Each call is estimated
    # at ~201 tokens (max_tokens 200 + prompt) but really uses 5.
    ep = Endpoint("openai", base_url=sim.base_url, api_keys=["sk-tpm-1"], tpm=600)
    async with AsyncClient([ep], clock=clock) as c:
        for _ in range(3):
            await c.chat("openai/m", MSG, max_tokens=200)
        await c.chat("openai/m", MSG, max_tokens=2000)  # an estimate far above the burst still goes...
        t_big = clock.now()
        await c.chat("openai/m", MSG, max_tokens=5)  # ...and a big *real* usage would delay the next
    gaps = [b.at - a.at for a, b in zip(sim.requests, sim.requests[1:], strict=False)]
    # Before the first answer the budget is in debt (-101): the second call waits
    # for the bucket to refill. With the estimate reconciled to the real usage
    # (+196 back), that wait is ~0.5 s, not the ~20 s an unreconciled debt costs.
    assert 0 < gaps[0] < 2 and gaps[1] < 2
    assert clock.now() - t_big < 2


async def test_insufficient_quota_is_not_retried(sim: OpenAISim, clock: FakeClock) -> None:
    sim.faults.script(Fault(status=429, error_type="insufficient_quota"))
    async with AsyncClient([Endpoint("openai", base_url=sim.base_url, api_keys=["sk-q"])], clock=clock) as c:
        with pytest.raises(RateLimited):
            await c.chat("openai/m", MSG)
    assert len(sim.requests) == 1  # no wait fixes an exhausted balance


# ---- pure translation ----------------------------------------------------------------------
def test_request_building() -> None:
    p = OpenAIProvider(Endpoint("openai", api_keys=["sk-1"]))
    req = p.request(Call("chat", "gpt-4o-mini", {"messages": MSG, "max_tokens": 5}, "rid", stream=True), "sk-1")
    assert req.url == "https://api.openai.com/v1/chat/completions"
    assert req.headers["Authorization"] == "Bearer sk-1"
    assert req.json == {"model": "gpt-4o-mini", "messages": MSG, "max_tokens": 5, "stream": True,
                        "stream_options": {"include_usage": True}}
    assert GroqProvider(Endpoint("groq", api_keys=["g"])).base_url == "https://api.groq.com/openai/v1"


def test_tool_calls_parsed_from_response_and_stream() -> None:
    p = OpenAIProvider(Endpoint("openai", api_keys=["sk-1"]))
    body = (b'{"model":"m","choices":[{"index":0,"finish_reason":"tool_calls","message":{"role":"assistant",'
            b'"content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"get_weather",'
            b'"arguments":"{\\"city\\":\\"Paris\\"}"}}]}}],"usage":{"prompt_tokens":3,"completion_tokens":4}}')
    r = p.response(Call("chat", "m"), HttpResponse(200, {}, body))
    assert r.finish_reason == "tool_calls" and r.tool_calls[0].name == "get_weather"
    assert r.tool_calls[0].arguments == '{"city":"Paris"}' and r.usage.total_tokens == 7
    parser = OpenAIStreamParser("openai")
    events = [
        b'data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1","function":'
        b'{"name":"get_weather","arguments":""}}]}}]}\n\n',
        b'data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\\"ci"}}]}}]}\n\n',
        b'data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"ty\\":1}"}}]}}]}\n',
        b'\ndata: {"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}\n\ndata: [DONE]\n\n',
    ]
    chunks = [c for e in events for c in parser.feed(e)] + parser.close()
    final = chunks[-1]
    assert final.finish_reason == "tool_calls"
    assert final.tool_calls[0].name == "get_weather" and final.tool_calls[0].arguments == '{"city":1}'


def test_stream_without_done_is_interrupted() -> None:
    from apimux import StreamInterrupted

    parser = OpenAIStreamParser("openai")
    parser.feed(b'data: {"choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n')
    with pytest.raises(StreamInterrupted):
        parser.close()


def test_base64_embedding_decoding() -> None:
    from apimux.providers.openai import decode_embedding

    raw = base64.b64encode(struct.pack("<3f", 0.5, -1.0, 2.0)).decode()
    assert decode_embedding(raw) == [0.5, -1.0, 2.0]


async def test_image_parts_pass_through_untouched(sim: OpenAISim, clock: FakeClock) -> None:
    parts = [{"type": "text", "text": "what is this"},
             {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]
    async with AsyncClient([Endpoint("openai", base_url=sim.base_url, api_keys=["sk-i"])], clock=clock) as c:
        r = await c.chat("openai/gpt-4o-mini", [{"role": "user", "content": parts}])
    assert sim.requests[0].json["messages"][0]["content"] == parts
    assert r.text == "echo: what is this"


class OddSim(OpenAISim):
    """Answers chat with valid JSON of the wrong shape (a proxy's page, a changed API)."""

    async def chat(self, request: Any, rec: Recorded, fault: Fault | None) -> Any:
        from aiohttp import web

        odd = [b'{"choices": [{"index": 0, "message": 7}]}', b'{"unexpected": true}']
        return web.Response(body=odd[len(self.requests) % 2], content_type="application/json")


async def test_an_unexpected_body_shape_is_a_retried_upstream_error(clock: FakeClock) -> None:
    from apimux import UpstreamError

    with OddSim(clock=clock) as s:
        ep = Endpoint("openai", base_url=s.base_url, api_keys=["sk-odd"])
        async with AsyncClient([ep], clock=clock) as c:
            with pytest.raises(UpstreamError, match="openai") as info:
                await c.chat("openai/m", MSG, max_retries=1)
    assert info.value.attempts == 2 and len(s.requests) == 2
