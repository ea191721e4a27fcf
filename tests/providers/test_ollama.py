"""Ollama: the simulator judged by the official ``ollama`` package, our adapter
through AsyncClient against it, and the pure translation pieces."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import ollama
import pytest

from apimux import (
    AsyncClient,
    BadRequest,
    Endpoint,
    FakeClock,
    NotFound,
    Overloaded,
    RetrySettings,
    Settings,
    StreamInterrupted,
    UpstreamError,
)
from apimux.config import endpoints_from_env
from apimux.providers.base import Call
from apimux.providers.ollama import (
    OllamaProvider,
    OllamaStreamParser,
    error_from,
    messages_to_ollama,
    options_from,
    parse_host,
)
from apimux.testing import Fault, OllamaSim
from apimux.transport import HttpResponse

USER = [{"role": "user", "content": "hello world"}]
PNG = "iVBORw0KGgo="  # base64 of the PNG signature
TOOL = {"type": "function", "function": {"name": "lookup", "description": "find",
                                         "parameters": {"type": "object", "properties": {"input": {"type": "string"}}}}}


@pytest.fixture
def osim(clock: FakeClock) -> Iterator[OllamaSim]:
    s = OllamaSim(clock=clock)
    with s:
        yield s


def client(sim: OllamaSim, clock: FakeClock, **settings: object) -> AsyncClient:
    st = Settings(retry=RetrySettings(**settings)) if settings else None  # type: ignore[arg-type]
    return AsyncClient([Endpoint("ollama", base_url=sim.url)], clock=clock, settings=st)


# ---- the official SDK against the simulator ----------------------------------
def test_sdk_chat_plain_and_stream(osim: OllamaSim) -> None:
    c = ollama.Client(host=osim.url)
    r = c.chat(model="test-model", messages=USER, options={"num_predict": 2})
    assert r.message.content == "echo: hello" and r.done and r.done_reason == "length"
    assert r.eval_count == 2 and r.prompt_eval_count == 2
    parts = list(c.chat(model="test-model", messages=USER, stream=True))
    assert "".join(p.message.content or "" for p in parts) == "echo: hello world"
    assert parts[-1].done and parts[-1].done_reason == "stop" and not any(p.done for p in parts[:-1])
    # The SDK leaves stream unset -> false; the sim must have been told explicitly.
    assert osim.requests[0].json["stream"] is False and osim.requests[1].json["stream"] is True


def test_sdk_generate_embed_list(osim: OllamaSim) -> None:
    c = ollama.Client(host=osim.url)
    g = c.generate(model="test-model", prompt="say this")
    assert g.response == "echo: say this" and g.done_reason == "stop" and g.eval_count == 3
    pieces = [p.response or "" for p in c.generate(model="test-model", prompt="say this", stream=True)]
    assert "".join(pieces) == "echo: say this"
    e = c.embed(model="nomic-embed-text", input=["a", "b"])
    assert len(e.embeddings) == 2 and len(e.embeddings[0]) == 8 and e.embeddings[0] != e.embeddings[1]
    names = [m.model for m in c.list().models]
    assert "test-model" in names and "llama3.2:latest" in names


def test_sdk_tool_call_and_image(osim: OllamaSim) -> None:
    c = ollama.Client(host=osim.url)
    r = c.chat(model="test-model", messages=[{"role": "user", "content": "tool: paris"}], tools=[TOOL])
    call = r.message.tool_calls[0]  # type: ignore[index]
    assert call.function.name == "lookup" and call.function.arguments == {"input": "paris"}
    r = c.chat(model="test-model", messages=[{"role": "user", "content": "look", "images": [PNG]}])
    assert r.message.content == "echo: look"


def test_sdk_errors(osim: OllamaSim) -> None:
    c = ollama.Client(host=osim.url)
    with pytest.raises(ollama.ResponseError) as info:
        c.chat(model="missing", messages=USER)
    assert info.value.status_code == 404 and "not found" in info.value.error
    osim.faults.script(Fault(cut_stream_after=1, error_type="runner", message="model runner crashed"))
    with pytest.raises(ollama.ResponseError) as info:
        list(c.chat(model="test-model", messages=USER, stream=True))
    assert info.value.error == "model runner crashed"
    osim.faults.script(Fault(status=503, message="server busy, please try again.  maximum pending requests exceeded"))
    with pytest.raises(ollama.ResponseError) as info:
        c.generate(model="test-model", prompt="x")
    assert info.value.status_code == 503


# ---- our adapter against the simulator ----------------------------------------
async def test_chat_stream_usage_and_options(osim: OllamaSim, clock: FakeClock) -> None:
    async with client(osim, clock) as c:
        r = await c.chat("ollama/test-model", USER, system="Be brief.", max_tokens=50, temperature=0.2, stop="x")
        chunks = [ch async for ch in c.chat_stream("ollama/test-model", USER)]
    assert r.text == "echo: hello world" and r.finish_reason == "stop"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (4, 3)
    sent = osim.requests[0].json
    assert sent["stream"] is False
    assert sent["options"] == {"num_predict": 50, "temperature": 0.2, "stop": ["x"]}
    assert sent["messages"][0] == {"role": "system", "content": "Be brief."}
    assert "".join(ch.text for ch in chunks) == "echo: hello world"
    assert [ch.finish_reason for ch in chunks if ch.finish_reason] == ["stop"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3
    assert osim.requests[1].json["stream"] is True


async def test_developer_role_is_sent_as_system(osim: OllamaSim, clock: FakeClock) -> None:
    """OpenAI's "developer" role is not one Ollama knows (the simulator refuses
    it as the templates would drop it): it goes as a system message."""
    msgs = [{"role": "developer", "content": "Be brief."}, *USER]
    async with client(osim, clock) as c:
        r = await c.chat("ollama/test-model", msgs)
    assert r.text == "echo: hello world"
    assert osim.requests[0].json["messages"][0] == {"role": "system", "content": "Be brief."}


async def test_length_generate_embed_models(osim: OllamaSim, clock: FakeClock) -> None:
    async with client(osim, clock) as c:
        r = await c.chat("ollama/test-model", USER, max_tokens=2)
        g = await c.generate("ollama/test-model", "one two three", max_tokens=10)
        gs = [ch async for ch in c.generate_stream("ollama/test-model", "one two")]
        e = await c.embed("ollama/nomic-embed-text", ["a", "b", "c"])
        models = await c.models("ollama")
    assert r.text == "echo: hello" and r.finish_reason == "length"
    assert g.text == "echo: one two three" and g.usage.prompt_tokens == 3
    assert osim.requests[1].path == "/api/generate" and osim.requests[1].json["options"] == {"num_predict": 10}
    assert "".join(ch.text for ch in gs) == "echo: one two" and gs[-1].finish_reason == "stop"
    assert len(e.vectors) == 3 and e.usage.prompt_tokens == 3
    assert osim.requests[3].json == {"model": "nomic-embed-text", "input": ["a", "b", "c"]}
    assert {m.id for m in models} >= {"test-model", "nomic-embed-text:latest"}


async def test_tools_and_images_round_trip(osim: OllamaSim, clock: FakeClock) -> None:
    async with client(osim, clock) as c:
        r = await c.chat("ollama/test-model", [{"role": "user", "content": "tool: paris"}], tools=[TOOL])
        history: list[dict[str, Any]] = [
            {"role": "user", "content": "tool: paris"},
            {"role": "assistant", "content": None, "tool_calls": [t.to_dict() for t in r.tool_calls]},
            {"role": "tool", "tool_call_id": r.tool_calls[0].id, "content": "capital of France"},
            {"role": "user", "content": [{"type": "text", "text": "and this"},
                                         {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}]},
        ]
        r2 = await c.chat("ollama/test-model", history, tools=[TOOL])
        s = [ch async for ch in c.chat_stream("ollama/test-model", [{"role": "user", "content": "tool: x"}],
                                             tools=[TOOL])]
    assert r.finish_reason == "tool_calls" and r.tool_calls[0].name == "lookup"
    assert json.loads(r.tool_calls[0].arguments) == {"input": "paris"}
    sent = osim.requests[1].json["messages"]
    assert sent[1]["tool_calls"] == [{"function": {"name": "lookup", "arguments": {"input": "paris"}}}]
    assert sent[2] == {"role": "tool", "content": "capital of France", "tool_name": "lookup"}
    assert sent[3] == {"role": "user", "content": "and this", "images": [PNG]}
    assert r2.text == "echo: and this"
    assert s[-1].finish_reason == "tool_calls" and s[-1].tool_calls[0].name == "lookup"


async def test_error_mapping(osim: OllamaSim, clock: FakeClock) -> None:
    async with client(osim, clock, max_retries=0) as c:
        with pytest.raises(NotFound, match="try pulling it first"):
            await c.chat("ollama/missing", USER)
        osim.faults.script(Fault(status=400, message="invalid options"))
        with pytest.raises(BadRequest, match="invalid options"):
            await c.chat("ollama/test-model", USER)
        osim.faults.script(Fault(status=500))
        with pytest.raises(UpstreamError):
            await c.chat("ollama/test-model", USER)
        osim.faults.script(Fault(status=503, message="server busy, please try again."))
        with pytest.raises(Overloaded):
            await c.chat("ollama/test-model", USER)


async def test_busy_is_retried(osim: OllamaSim) -> None:
    clock = FakeClock(autojump=True)
    osim.faults.script(Fault(status=503, message="server busy"), Fault(status=429, retry_after=2))
    async with AsyncClient([Endpoint("ollama", base_url=osim.url)], clock=clock) as c:
        r = await c.chat("ollama/test-model", USER)
    assert r.text == "echo: hello world" and r.info.attempts == 3


async def test_mid_stream_error_and_cut(osim: OllamaSim, clock: FakeClock) -> None:
    async with client(osim, clock, max_retries=0) as c:
        osim.faults.script(Fault(cut_stream_after=2, error_type="runner", message="runner crashed"))
        got: list[str] = []
        with pytest.raises(StreamInterrupted, match="runner crashed"):
            async for ch in c.chat_stream("ollama/test-model", USER):
                got.append(ch.text)
        assert got == ["echo:", " hello"]
        osim.faults.script(Fault(cut_stream_after=3))
        with pytest.raises(StreamInterrupted):
            async for _ in c.chat_stream("ollama/test-model", USER):
                pass


# ---- pure translation ---------------------------------------------------------
def test_parse_host_like_the_cli() -> None:
    assert parse_host("0.0.0.0:11434") == "http://0.0.0.0:11434"
    assert parse_host("example.com") == "http://example.com:11434"
    assert parse_host("http://example.com") == "http://example.com:80"
    assert parse_host("https://example.com/") == "https://example.com:443"
    assert parse_host("example.com:5000/path") == "http://example.com:5000/path"


def test_env_host_without_scheme() -> None:
    eps = endpoints_from_env({"OLLAMA_HOST": "127.0.0.1:9999"})
    ep = next(e for e in eps if e.backend == "ollama")
    assert OllamaProvider(ep).url("/api/chat") == "http://127.0.0.1:9999/api/chat"
    assert OllamaProvider(Endpoint("ollama")).base_url == "http://localhost:11434"


def test_options_and_format() -> None:
    p = OllamaProvider(Endpoint("ollama"))
    call = Call("chat", "m", {"messages": USER, "max_tokens": 5, "top_p": 0.9, "seed": 1, "options": {"num_ctx": 4096},
                              "response_format": {"type": "json_object"}, "keep_alive": "5m"})
    body = p.request(call, None).json
    assert body["options"] == {"num_ctx": 4096, "num_predict": 5, "top_p": 0.9, "seed": 1}
    assert body["format"] == "json" and body["keep_alive"] == "5m" and body["stream"] is False
    assert options_from({"stop": ["a", "b"]}) == {"stop": ["a", "b"]}
    schema = {"type": "object"}
    call.params = {"messages": USER, "response_format": {"type": "json_schema", "json_schema": {"schema": schema}}}
    assert p.request(call, None).json["format"] == schema


def test_messages_translation_refuses_remote_images() -> None:
    with pytest.raises(BadRequest, match="data: URLs"):
        messages_to_ollama([{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}])


def test_stream_parser() -> None:
    parser = OllamaStreamParser("ollama", lambda o: o.get("message") or {})
    line1 = json.dumps({"message": {"role": "assistant", "content": "hi"}, "done": False}).encode()
    last = json.dumps({"message": {"role": "assistant", "content": ""}, "done": True, "done_reason": "length",
                       "prompt_eval_count": 4, "eval_count": 1}).encode()
    # Split mid-line to check the incremental decoding.
    out = parser.feed(line1[:5]) + parser.feed(line1[5:] + b"\n" + last[:10]) + parser.feed(last[10:] + b"\n")
    assert [c.text for c in out] == ["hi", ""]
    assert out[-1].finish_reason == "length" and out[-1].usage is not None and out[-1].usage.prompt_tokens == 4
    assert parser.close() == []
    cut = OllamaStreamParser("ollama", lambda o: o.get("message") or {})
    cut.feed(line1 + b"\n")
    with pytest.raises(StreamInterrupted):
        cut.close()
    bad = OllamaStreamParser("ollama", lambda o: o.get("message") or {})
    with pytest.raises(UpstreamError, match="boom"):
        bad.feed(b'{"error": "boom"}\n')


def test_error_envelope() -> None:
    err = error_from(404, b'{"error": "model \\"x\\" not found, try pulling it first"}', None)
    assert isinstance(err, NotFound) and err.message.startswith('model "x" not found')
    assert isinstance(error_from(503, b'{"error": "Service unavailable"}', None), UpstreamError)
    resp = HttpResponse(429, {"retry-after": "3"}, b'{"error": "too many requests"}')
    e = OllamaProvider(Endpoint("ollama")).error(Call("chat", "m"), resp)
    assert e.retry_after == 3 and e.kind == "RateLimited"
