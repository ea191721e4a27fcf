"""TGI: the simulator judged by huggingface_hub's InferenceClient, our adapter
through AsyncClient against it, and the pure translation pieces."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from huggingface_hub import InferenceClient
from huggingface_hub.errors import GenerationError, OverloadedError, ValidationError

from apimux import (
    AsyncClient,
    BadRequest,
    Endpoint,
    FakeClock,
    Overloaded,
    RateLimited,
    RetrySettings,
    Settings,
    StreamInterrupted,
    UpstreamError,
)
from apimux.providers import registry
from apimux.providers.base import Call
from apimux.providers.hf_tgi import TGIGenerateStreamParser, TGIProvider, generate_parameters, tgi_error
from apimux.testing import Fault, TGISim
from apimux.transport import HttpResponse

USER = [{"role": "user", "content": "hello world"}]


@pytest.fixture
def tgi(clock: FakeClock) -> Iterator[TGISim]:
    s = TGISim(clock=clock)
    with s:
        yield s


def client(sim: TGISim, clock: FakeClock, retries: int | None = None) -> AsyncClient:
    st = Settings(retry=RetrySettings(max_retries=retries)) if retries is not None else None
    return AsyncClient([Endpoint("hf_tgi", base_url=sim.url)], clock=clock, settings=st)


# ---- the official SDK against the simulator ----------------------------------
def test_sdk_text_generation(tgi: TGISim) -> None:
    c = InferenceClient(base_url=tgi.url)
    assert c.text_generation("hello big world", max_new_tokens=2) == "echo: hello"
    out = c.text_generation("hello big world", details=True, decoder_input_details=True)
    assert out.generated_text == "echo: hello big world"
    assert out.details is not None and out.details.finish_reason == "eos_token"
    assert out.details.generated_tokens == 4 and [t.text for t in out.details.prefill] == ["hello", "big", "world"]
    assert [t.text for t in out.details.tokens] == ["echo:", " hello", " big", " world"]
    assert tgi.requests[0].path == "/" and tgi.requests[0].json["parameters"] == {"max_new_tokens": 2}


def test_sdk_text_generation_stream(tgi: TGISim) -> None:
    c = InferenceClient(base_url=tgi.url)
    assert list(c.text_generation("hello big world", stream=True)) == ["echo:", " hello", " big", " world"]
    events = list(c.text_generation("hello", stream=True, details=True, max_new_tokens=1))
    assert len(events) == 1 and events[0].generated_text == "echo:"
    assert events[0].details is not None and events[0].details.finish_reason == "length"
    assert events[0].details.input_length == 1


def test_sdk_chat_completion(tgi: TGISim) -> None:
    c = InferenceClient(base_url=tgi.url)
    out = c.chat_completion(USER, max_tokens=5)
    assert out.choices[0].message.content == "echo: hello world" and out.choices[0].finish_reason == "stop"
    assert out.usage.completion_tokens == 3
    pieces = [ch.choices[0].delta.content for ch in c.chat_completion(USER, stream=True) if ch.choices]
    assert "".join(p for p in pieces if p) == "echo: hello world"
    assert tgi.requests[0].path == "/v1/chat/completions"


def test_sdk_errors(tgi: TGISim) -> None:
    c = InferenceClient(base_url=tgi.url)
    with pytest.raises(ValidationError, match="temperature"):
        c.text_generation("x", temperature=0.0)
    tgi.faults.script(Fault(status=429, error_type="overloaded"))
    with pytest.raises(OverloadedError, match="Model is overloaded"):
        c.text_generation("x")
    tgi.faults.script(Fault(cut_stream_after=1, error_type="generation", message="CUDA out of memory"))
    with pytest.raises(GenerationError, match="CUDA"):
        list(c.text_generation("a b c", stream=True))


# ---- our adapter against the simulator ----------------------------------------
async def test_generate_with_usage_and_finish(tgi: TGISim, clock: FakeClock) -> None:
    async with client(tgi, clock) as c:
        r = await c.generate("hf_tgi/test-model", "one two three", max_tokens=2, temperature=0.0, top_p=1.0)
        full = await c.generate("tgi/test-model", "one two", stop="\n")
    assert r.text == "echo: one" and r.finish_reason == "length"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (3, 2)
    sent = tgi.requests[0]
    assert sent.path == "/generate"
    # temperature 0 and top_p 1.0 would be 422s at TGI: greedy, no top-p.
    assert sent.json["parameters"] == {"max_new_tokens": 2, "do_sample": False, "details": True}
    assert full.finish_reason == "stop" and full.text == "echo: one two"
    assert tgi.requests[1].json["parameters"]["stop"] == ["\n"]


async def test_generate_stream(tgi: TGISim, clock: FakeClock) -> None:
    async with client(tgi, clock) as c:
        chunks = [ch async for ch in c.generate_stream("hf_tgi/test-model", "one two", max_tokens=50)]
    assert "".join(ch.text for ch in chunks) == "echo: one two"
    assert [ch.finish_reason for ch in chunks if ch.finish_reason] == ["stop"]
    usage = chunks[-1].usage
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (2, 3)
    assert tgi.requests[0].path == "/generate_stream"


async def test_chat_through_openai_route(tgi: TGISim, clock: FakeClock) -> None:
    async with client(tgi, clock) as c:
        r = await c.chat("hf_tgi/tgi", USER, system="Be brief.", max_tokens=2)
        chunks = [ch async for ch in c.chat_stream("hf_tgi/tgi", USER)]
    assert r.text == "echo: hello" and r.finish_reason == "length"
    assert tgi.requests[0].path == "/v1/chat/completions"
    assert tgi.requests[0].json["messages"][0] == {"role": "system", "content": "Be brief."}
    assert "".join(ch.text for ch in chunks) == "echo: hello world"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3


async def test_info_and_models(tgi: TGISim, clock: FakeClock) -> None:
    async with client(tgi, clock) as c:
        info = await c.call("info", "hf_tgi/-", {})
        models = await c.models("hf_tgi")
    assert info["max_input_tokens"] == 4095 and info["max_total_tokens"] == 4096
    assert info["max_client_batch_size"] == 4
    assert [m.id for m in models] == ["test-model"]


async def test_error_mapping(tgi: TGISim, clock: FakeClock) -> None:
    async with client(tgi, clock, retries=0) as c:
        with pytest.raises(BadRequest, match="temperature"):
            # a raw TGI parameter passed through: the sim's 422 validation
            await c.generate("hf_tgi/m", "x", parameters={"temperature": -1})
        tgi.faults.script(Fault(status=429, error_type="overloaded"))
        with pytest.raises(Overloaded):
            await c.generate("hf_tgi/m", "x")
        tgi.faults.script(Fault(status=429, retry_after=4))
        with pytest.raises(RateLimited) as info:
            await c.generate("hf_tgi/m", "x")
        assert info.value.retry_after == 4
        tgi.faults.script(Fault(status=424, message="Request failed during generation"))
        with pytest.raises(UpstreamError, match="during generation"):
            await c.generate("hf_tgi/m", "x")
        tgi.faults.script(Fault(status=500))
        with pytest.raises(UpstreamError):
            await c.chat("hf_tgi/m", USER)


async def test_overloaded_is_retried() -> None:
    clock = FakeClock(autojump=True)
    with TGISim(clock=clock) as sim:
        sim.faults.script(Fault(status=429, error_type="overloaded"), Fault(status=429, error_type="overloaded"))
        async with AsyncClient([Endpoint("hf_tgi", base_url=sim.url)], clock=clock) as c:
            r = await c.generate("hf_tgi/m", "hi")
    assert r.text == "echo: hi" and r.info.attempts == 3


async def test_mid_stream_error_and_cut(tgi: TGISim, clock: FakeClock) -> None:
    async with client(tgi, clock, retries=0) as c:
        tgi.faults.script(Fault(cut_stream_after=1, error_type="generation", message="CUDA OOM"))
        got: list[str] = []
        with pytest.raises(StreamInterrupted, match="CUDA OOM"):
            async for ch in c.generate_stream("hf_tgi/m", "a b c"):
                got.append(ch.text)
        assert got == ["echo:"]
        tgi.faults.script(Fault(cut_stream_after=2))
        with pytest.raises(StreamInterrupted):
            async for _ in c.generate_stream("hf_tgi/m", "a b c"):
                pass
        # an error before any text is the typed error itself
        tgi.faults.script(Fault(cut_stream_after=0, error_type="generation", message="shard died"))
        with pytest.raises(UpstreamError, match="shard died"):
            async for _ in c.generate_stream("hf_tgi/m", "a b c"):
                pass


# ---- pure translation ---------------------------------------------------------
def test_registry_alias_and_env() -> None:
    assert registry.get("tgi") is TGIProvider
    p = TGIProvider(Endpoint("hf_tgi"))
    assert p.url("/generate") == "http://localhost:8080/generate"
    assert p.openai.base_url == "http://localhost:8080/v1"
    req = p.request(Call("chat", "tgi", {"messages": USER}), "hf_abc")
    assert req.url == "http://localhost:8080/v1/chat/completions" and req.headers["Authorization"] == "Bearer hf_abc"
    assert not TGIProvider.supports("embed")


def test_generate_parameters() -> None:
    assert generate_parameters({"max_tokens": 5, "temperature": 0.7, "top_p": 0.9, "stop": ["x"]}, False) == {
        "max_new_tokens": 5, "temperature": 0.7, "top_p": 0.9, "stop": ["x"], "details": True}
    assert "decoder_input_details" not in generate_parameters({"decoder_input_details": True}, True)
    assert generate_parameters({"decoder_input_details": True}, False)["decoder_input_details"] is True


def test_generate_response_counts() -> None:
    p = TGIProvider(Endpoint("hf_tgi"))
    body = json.dumps([{"generated_text": "hi", "details": {"finish_reason": "stop_sequence", "generated_tokens": 1,
                                                             "prefill": [{"id": 1, "text": "a"}] * 3, "tokens": []}}])
    r = p.response(Call("generate", "m"), HttpResponse(200, {}, body.encode()))
    assert r.finish_reason == "stop" and (r.usage.prompt_tokens, r.usage.completion_tokens) == (3, 1)
    r = p.response(Call("generate", "m"), HttpResponse(200, {"x-prompt-tokens": "7"}, body.encode()))
    assert r.usage.prompt_tokens == 7


def test_info_old_field_name() -> None:
    p = TGIProvider(Endpoint("hf_tgi"))
    info = p.response(Call("info", "-"), HttpResponse(200, {}, b'{"model_id": "m", "max_input_length": 1024}'))
    assert info["max_input_tokens"] == 1024


def test_error_types() -> None:
    assert isinstance(tgi_error(429, {"error_type": "overloaded"}, "x"), Overloaded)
    assert isinstance(tgi_error(422, {"error_type": "validation"}, "x"), BadRequest)
    assert isinstance(tgi_error(422, {"error_type": "template_error"}, "x"), BadRequest)
    assert isinstance(tgi_error(424, {"error_type": "generation"}, "x"), UpstreamError)
    assert isinstance(tgi_error(500, {"error_type": "incomplete_generation"}, "x"), UpstreamError)
    assert isinstance(tgi_error(429, {"error": "rate"}, "x"), RateLimited)


def test_stream_parser_final_event() -> None:
    parser = TGIGenerateStreamParser("hf_tgi")
    tok = {"id": 1, "text": "hi", "logprob": -0.1, "special": False}
    eos = {"id": 2, "text": "</s>", "logprob": -0.1, "special": True}
    ev1 = f"data:{json.dumps({'index': 1, 'token': tok, 'generated_text': None, 'details': None})}\n\n"
    final = {"index": 2, "token": eos, "generated_text": "hi",
             "details": {"finish_reason": "eos_token", "generated_tokens": 2, "input_length": 5}}
    out = parser.feed(ev1.encode()) + parser.feed(f"data:{json.dumps(final)}\n\n".encode())
    assert [c.text for c in out] == ["hi", ""] and out[-1].finish_reason == "stop"
    assert out[-1].usage is not None and out[-1].usage.prompt_tokens == 5
    assert parser.close() == []
    cut = TGIGenerateStreamParser("hf_tgi")
    cut.feed(ev1.encode())
    with pytest.raises(StreamInterrupted):
        cut.close()


def test_developer_role_is_sent_as_system() -> None:
    from apimux import Endpoint
    from apimux.providers.base import Call
    from apimux.providers.hf_tgi import TGIProvider

    msgs = [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    provider = TGIProvider(Endpoint("hf_tgi", base_url="http://tgi"))
    req = provider.request(Call("chat", "m", {"messages": msgs}, "r"), None)
    assert [m["role"] for m in req.json["messages"]] == ["system", "user"]
    assert msgs[0]["role"] == "developer"  # the caller's list is not changed
