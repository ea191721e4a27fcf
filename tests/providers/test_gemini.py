"""The Gemini simulator judged by the official ``google-genai`` SDK, our
adapter run against it through ``AsyncClient``, and the adapter's pure
translation functions."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from apimux import (
    AsyncClient,
    AuthError,
    BadRequest,
    ConnectionFailed,
    Endpoint,
    FakeClock,
    NotFound,
    RateLimited,
    StreamInterrupted,
    Timeout,
    UpstreamError,
)
from apimux.providers.base import Call
from apimux.providers.gemini import (
    GeminiProvider,
    GeminiStreamParser,
    build_body,
    convert_messages,
    convert_tool_choice,
    model_path,
    signature_of,
)
from apimux.testing import Fault, GeminiSim
from apimux.transport import HttpResponse

MSG = [{"role": "user", "content": "hello there"}]
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                       "additionalProperties": False},
    },
}


@pytest.fixture
def sim() -> Iterator[GeminiSim]:
    with GeminiSim() as s:
        yield s  # type: ignore[misc]


def sdk(sim: GeminiSim, key: str = "AIza-test") -> genai.Client:
    # Retries off: one request per call, so scripted faults line up.
    opts = types.HttpOptions(base_url=sim.url, retry_options=types.HttpRetryOptions(attempts=1))
    return genai.Client(api_key=key, http_options=opts)


def client(sim: GeminiSim, clock: FakeClock | None = None, keys: list[str] | None = None) -> AsyncClient:
    ep = Endpoint("gemini", base_url=sim.url, api_keys=keys or ["AIza-test"])
    return AsyncClient([ep], clock=clock or FakeClock())


# ---- the simulator, judged by the official SDK ------------------------------------------------
def test_sdk_generate_content_with_system_and_limit(sim: GeminiSim) -> None:
    g = sdk(sim)
    r = g.models.generate_content(model="gemini-2.5-flash", contents="hello there",
                                  config=types.GenerateContentConfig(system_instruction="be brief"))
    assert r.text == "echo: hello there"
    assert r.candidates and r.candidates[0].finish_reason == types.FinishReason.STOP
    assert r.usage_metadata is not None and r.usage_metadata.prompt_token_count == 4
    assert r.usage_metadata.candidates_token_count == 3 and r.usage_metadata.total_token_count == 7
    assert sim.requests[-1].headers["x-goog-api-key"] == "AIza-test"
    short = g.models.generate_content(model="gemini-2.5-flash", contents="hello there",
                                      config=types.GenerateContentConfig(max_output_tokens=2))
    assert short.text == "echo: hello" and short.candidates[0].finish_reason == types.FinishReason.MAX_TOKENS  # type: ignore[index]


def test_sdk_streams_text_and_final_usage(sim: GeminiSim) -> None:
    g = sdk(sim)  # held: a dropped Client closes its HTTP session
    chunks = list(g.models.generate_content_stream(model="gemini-2.5-flash", contents="hello there"))
    assert "".join(c.text or "" for c in chunks) == "echo: hello there" and len(chunks) == 3
    assert chunks[-1].candidates[0].finish_reason == types.FinishReason.STOP  # type: ignore[index]
    assert chunks[-1].usage_metadata.candidates_token_count == 3  # type: ignore[union-attr]
    assert sim.requests[-1].query == {"alt": "sse"}


def test_sdk_function_calling_round_trip(sim: GeminiSim) -> None:
    g = sdk(sim)
    decl = types.FunctionDeclaration(name="get_weather", description="w", parameters_json_schema={
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})
    config = types.GenerateContentConfig(tools=[types.Tool(function_declarations=[decl])],
                                         automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True))
    first = g.models.generate_content(model="gemini-2.5-flash", contents="Paris", config=config)
    assert first.function_calls and first.function_calls[0].name == "get_weather"
    assert first.function_calls[0].args == {"city": "Paris"}
    history = [
        types.Content(role="user", parts=[types.Part(text="Paris")]),
        first.candidates[0].content,  # type: ignore[index]
        types.Content(role="user", parts=[types.Part.from_function_response(name="get_weather",
                                                                             response={"result": "sunny"})]),
    ]
    second = g.models.generate_content(model="gemini-2.5-flash", contents=history, config=config)  # type: ignore[arg-type]
    assert second.text == 'echo: {"result": "sunny"}'
    # The SDK reads the call's thoughtSignature as bytes and sends it back;
    # a Gemini 3 model needs it in the history.
    assert isinstance(first.candidates[0].content.parts[0].thought_signature, bytes)  # type: ignore[index,union-attr]
    third = g.models.generate_content(model="gemini-3-pro-preview", contents=history, config=config)  # type: ignore[arg-type]
    assert third.text == 'echo: {"result": "sunny"}'
    history[1] = types.Content(role="model", parts=[types.Part(function_call=first.function_calls[0])])
    with pytest.raises(genai_errors.ClientError, match="thought_signature"):
        g.models.generate_content(model="gemini-3-pro-preview", contents=history, config=config)  # type: ignore[arg-type]


def test_sdk_embeds_and_lists_models(sim: GeminiSim) -> None:
    g = sdk(sim)
    e = g.models.embed_content(model="gemini-embedding-001", contents=["a", "b c"],
                               config=types.EmbedContentConfig(output_dimensionality=4))
    assert e.embeddings is not None and [len(x.values or ()) for x in e.embeddings] == [4, 4]
    assert e.embeddings[0].values != e.embeddings[1].values
    assert sim.requests[-1].path.endswith("/models/gemini-embedding-001:batchEmbedContents")
    names = [m.name for m in g.models.list()]
    assert names == ["models/gemini-2.5-flash", "models/gemini-embedding-001"]


def test_sdk_raises_its_own_error_classes(sim: GeminiSim) -> None:
    g = sdk(sim)
    sim.faults.script(Fault(status=429, retry_after=30), Fault(status=503))
    with pytest.raises(genai_errors.ClientError) as rl:
        g.models.generate_content(model="gemini-2.5-flash", contents="x")
    assert rl.value.code == 429 and rl.value.status == "RESOURCE_EXHAUSTED"
    retry_info = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "30s"}
    assert retry_info in rl.value.details["error"]["details"]
    with pytest.raises(genai_errors.ServerError) as unavailable:
        g.models.generate_content(model="gemini-2.5-flash", contents="x")
    assert unavailable.value.status == "UNAVAILABLE"
    with pytest.raises(genai_errors.APIError) as bad:  # inline data without its mimeType
        g.models.generate_content(model="gemini-2.5-flash", contents=[types.Part(inline_data=types.Blob(data=b"x"))])
    assert bad.value.code == 400 and bad.value.status == "INVALID_ARGUMENT" and "mime_type" in str(bad.value.message)


def test_sdk_sees_a_bad_key_and_a_mid_stream_error() -> None:
    with GeminiSim(keys={"good"}) as s:
        bad, good = sdk(s, "bad"), sdk(s, "good")
        with pytest.raises(genai_errors.ClientError) as err:
            bad.models.generate_content(model="gemini-2.5-flash", contents="x")
        assert err.value.code == 400 and err.value.details["error"]["details"][0]["reason"] == "API_KEY_INVALID"
        s.faults.script(Fault(error_type="UNAVAILABLE", cut_stream_after=1))
        with pytest.raises(genai_errors.APIError):
            list(good.models.generate_content_stream(model="gemini-2.5-flash", contents="hello there"))


# ---- our adapter against the simulator ------------------------------------------------------
async def test_chat_system_and_generation_config(sim: GeminiSim) -> None:
    async with client(sim) as c:
        r = await c.chat("gemini/gemini-2.5-flash", MSG, system="be brief", temperature=0.3, top_p=0.9)
    assert r.text == "echo: hello there" and r.finish_reason == "stop"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (4, 3, 7)
    rec = sim.requests[-1]
    assert rec.path == "/v1beta/models/gemini-2.5-flash:generateContent"
    assert rec.json["systemInstruction"] == {"parts": [{"text": "be brief"}]}
    assert rec.json["generationConfig"] == {"temperature": 0.3, "topP": 0.9}
    assert rec.json["contents"] == [{"role": "user", "parts": [{"text": "hello there"}]}]


async def test_alias_google_and_max_tokens_gives_length(sim: GeminiSim) -> None:
    async with client(sim) as c:
        r = await c.chat("google/gemini-2.5-flash", MSG, max_tokens=2, stop=["zzz"])
    assert r.text == "echo: hello" and r.finish_reason == "length"
    assert sim.requests[-1].json["generationConfig"] == {"maxOutputTokens": 2, "stopSequences": ["zzz"]}


async def test_stream_text_finish_and_usage(sim: GeminiSim) -> None:
    async with client(sim) as c:
        chunks = [ch async for ch in c.chat_stream("gemini/gemini-2.5-flash", MSG, max_tokens=2)]
    assert "".join(ch.text for ch in chunks) == "echo: hello"
    assert chunks[-1].finish_reason == "length"
    usage = [ch.usage for ch in chunks if ch.usage is not None]
    assert len(usage) == 1 and (usage[0].prompt_tokens, usage[0].completion_tokens) == (2, 2)
    assert sim.requests[-1].query == {"alt": "sse"}


async def test_stream_cut_is_an_error_but_a_clean_end_is_not(sim: GeminiSim) -> None:
    sim.faults.script(Fault(cut_stream_after=2))
    async with client(sim) as c:
        with pytest.raises(StreamInterrupted) as err:
            _ = [ch async for ch in c.chat_stream("gemini/gemini-2.5-flash", MSG)]
        assert isinstance(err.value.__cause__, ConnectionFailed)
        # Cut before any text: retried, and the retry succeeds.
        sim.faults.script(Fault(cut_stream_after=0))
        text = "".join([ch.text async for ch in c.chat_stream("gemini/gemini-2.5-flash", MSG)])
    assert text == "echo: hello there"


async def test_mid_stream_error_event_is_typed(sim: GeminiSim) -> None:
    sim.faults.script(Fault(error_type="UNAVAILABLE", cut_stream_after=0))
    async with client(sim) as c:
        text = "".join([ch.text async for ch in c.chat_stream("gemini/gemini-2.5-flash", MSG)])
        assert text == "echo: hello there" and len(sim.requests) == 2  # retried
        sim.faults.script(Fault(error_type="INVALID_ARGUMENT", cut_stream_after=0))
        with pytest.raises(BadRequest, match="INVALID_ARGUMENT"):
            _ = [ch async for ch in c.chat_stream("gemini/gemini-2.5-flash", MSG)]


async def test_inline_image(sim: GeminiSim) -> None:
    content = [{"type": "text", "text": "what is this"},
               {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}]
    async with client(sim) as c:
        r = await c.chat("gemini/gemini-2.5-flash", [{"role": "user", "content": content}])
    assert r.text == "echo: what is this"
    assert sim.requests[-1].json["contents"][0]["parts"][1] == {"inlineData": {"mimeType": "image/png", "data": PNG}}


async def test_tools_round_trip_through_the_adapter(sim: GeminiSim) -> None:
    msgs: list[dict[str, Any]] = [{"role": "user", "content": "Paris"}]
    async with client(sim) as c:
        first = await c.chat("gemini/gemini-2.5-flash", msgs, tools=[WEATHER_TOOL], tool_choice="required")
        assert first.finish_reason == "tool_calls" and len(first.tool_calls) == 1
        call = first.tool_calls[0]
        assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"}
        msgs += [{"role": "assistant", "content": None, "tool_calls": [call.to_dict()]},
                 {"role": "tool", "tool_call_id": call.id, "content": '{"sky": "sunny"}'}]
        second = await c.chat("gemini/gemini-2.5-flash", msgs, tools=[WEATHER_TOOL])
        streamed = [ch async for ch in c.chat_stream("gemini/gemini-2.5-flash", msgs[:1], tools=[WEATHER_TOOL])]
    assert second.text == 'echo: {"sky": "sunny"}' and second.finish_reason == "stop"
    sent = sim.requests[0].json
    assert sent["tools"] == [{"functionDeclarations": [{
        "name": "get_weather", "description": "Weather for a city",
        "parametersJsonSchema": WEATHER_TOOL["function"]["parameters"]}]}]  # type: ignore[index]
    assert sent["toolConfig"] == {"functionCallingConfig": {"mode": "ANY"}}
    history = sim.requests[1].json["contents"]
    call_part = {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}},
                 "thoughtSignature": signature_of(call.id)}
    assert call_part["thoughtSignature"] and history[1] == {"role": "model", "parts": [call_part]}
    assert history[2] == {"role": "user", "parts": [{"functionResponse": {"name": "get_weather",
                                                                          "response": {"sky": "sunny"}}}]}
    assert streamed[-1].finish_reason == "tool_calls" and streamed[-1].tool_calls[0].name == "get_weather"


@pytest.mark.parametrize("stream", [False, True])
async def test_gemini_3_tool_loop_sends_the_thought_signature_back(sim: GeminiSim, stream: bool) -> None:
    """Gemini 3 refuses a history whose function call lost its thoughtSignature
    (400 "Function call is missing a thought_signature"); the signature rides
    in the tool call id and is put back on the functionCall part."""
    model = "gemini/gemini-3-pro-preview"
    msgs: list[dict[str, Any]] = [{"role": "user", "content": "Paris"}]
    async with client(sim) as c:
        if stream:
            chunks = [ch async for ch in c.chat_stream(model, msgs, tools=[WEATHER_TOOL])]
            calls = [tc for ch in chunks for tc in ch.tool_calls]
        else:
            calls = (await c.chat(model, msgs, tools=[WEATHER_TOOL])).tool_calls
        assert len(calls) == 1 and signature_of(calls[0].id)
        msgs += [{"role": "assistant", "content": None, "tool_calls": [calls[0].to_dict()]},
                 {"role": "tool", "tool_call_id": calls[0].id, "content": '{"sky": "sunny"}'}]
        second = await c.chat(model, msgs, tools=[WEATHER_TOOL])
        assert second.text == 'echo: {"sky": "sunny"}'
        # The simulator holds us to the rule: a history without the signature is refused.
        msgs[1]["tool_calls"][0]["id"] = "call_0_get_weather"
        msgs[2]["tool_call_id"] = "call_0_get_weather"
        with pytest.raises(BadRequest, match="thought_signature"):
            await c.chat(model, msgs, tools=[WEATHER_TOOL])
    sent = sim.requests[1].json["contents"][1]["parts"][0]
    assert sent["thoughtSignature"] == signature_of(calls[0].id)


async def test_embeddings_in_order(sim: GeminiSim) -> None:
    async with client(sim) as c:
        e = await c.embed("gemini/gemini-embedding-001", ["alpha", "beta", "gamma"], dimensions=4)
        one = await c.embed("gemini/gemini-embedding-001", "alpha", dimensions=4)
    assert len(e.vectors) == 3 and all(len(v) == 4 for v in e.vectors)
    assert e.vectors[0] == one.vectors[0] and e.vectors[0] != e.vectors[1]
    reqs = sim.requests_to(":batchEmbedContents")[0].json["requests"]
    assert [r["content"]["parts"][0]["text"] for r in reqs] == ["alpha", "beta", "gamma"]
    assert reqs[0]["model"] == "models/gemini-embedding-001" and reqs[0]["outputDimensionality"] == 4


async def test_embeddings_split_at_the_batch_limit(sim: GeminiSim) -> None:
    texts = [f"text {i}" for i in range(150)]
    async with client(sim) as c:
        e = await c.embed("gemini/gemini-embedding-001", texts)
        single = await c.embed("gemini/gemini-embedding-001", ["text 120"])
    assert len(e.vectors) == 150 and e.vectors[120] == single.vectors[0]
    assert sorted(len(r.json["requests"]) for r in sim.requests_to(":batchEmbedContents"))[-1] == 100


async def test_retry_info_cools_the_key_and_is_honoured() -> None:
    clock = FakeClock()
    with GeminiSim(clock=clock) as sim:
        sim.faults.script(Fault(status=429, retry_after=30))
        async with client(sim, clock) as c:
            r = await c.chat("gemini/gemini-2.5-flash", MSG)
            key = c.group("gemini").sched.pool.servers[0].keys[0]
            assert key.cooldown_until >= sim.requests[0].at + 30
        assert r.text == "echo: hello there"
        first, second = sim.requests
        assert "retry-after" not in {k.lower() for k in second.headers}
        assert second.at - first.at >= 30
        sim.faults.script(*[Fault(status=429, retry_after=2.5)] * 3)
        async with client(sim, clock) as c:
            with pytest.raises(RateLimited) as err:
                await c.chat("gemini/gemini-2.5-flash", MSG, max_retries=1)
        assert err.value.retry_after == 2.5


@pytest.mark.parametrize(
    ("status", "kind", "retried"),
    [(400, BadRequest, False), (403, AuthError, False), (401, AuthError, False), (404, NotFound, False),
     (500, UpstreamError, True), (503, UpstreamError, True), (504, Timeout, True)],
)
async def test_error_mapping(sim: GeminiSim, status: int, kind: type[Exception], retried: bool) -> None:
    sim.faults.script(*[Fault(status=status, message="nope")] * 2)
    async with client(sim) as c:
        with pytest.raises(kind, match="nope"):
            await c.chat("gemini/gemini-2.5-flash", MSG, max_retries=1)
    assert len(sim.requests) == (2 if retried else 1)


async def test_bad_key_is_auth_error_and_models_list() -> None:
    with GeminiSim(keys={"good"}) as sim:
        async with client(sim, keys=["bad"]) as c:
            with pytest.raises(AuthError, match="API key not valid"):
                await c.chat("gemini/gemini-2.5-flash", MSG)
        assert len(sim.requests) == 1
        async with client(sim, keys=["good"]) as c:
            models = await c.models("gemini")
    assert [m.id for m in models] == ["gemini-2.5-flash", "gemini-embedding-001"]


async def test_malformed_body_is_an_upstream_error(sim: GeminiSim) -> None:
    sim.faults.script(Fault(malformed=True))
    async with client(sim) as c:
        r = await c.chat("gemini/gemini-2.5-flash", MSG)  # retried once, then fine
    assert r.text == "echo: hello there" and len(sim.requests) == 2


# ---- pure translation ----------------------------------------------------------------------
def test_convert_messages_roles_tools_and_merging() -> None:
    system, contents = convert_messages([
        {"role": "system", "content": "a"},
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}},
                        {"id": "c2", "type": "function", "function": {"name": "g", "arguments": "[1]"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "plain text"},
        {"role": "tool", "tool_call_id": "c2", "content": "[1, 2]"},
        {"role": "assistant", "content": "done"},
    ])
    assert system == {"parts": [{"text": "a"}]}
    _, signed = convert_messages([
        {"role": "user", "content": "q"},
        {"role": "assistant", "tool_calls": [{"id": "call_0_mcp__f~sig~c2lnCg==", "type": "function",
                                               "function": {"name": "mcp__f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_0_mcp__f~sig~c2lnCg==", "content": "ok"},
    ])
    assert signed[1]["parts"] == [{"functionCall": {"name": "mcp__f", "args": {}}, "thoughtSignature": "c2lnCg=="}]
    assert signed[2]["parts"][0]["functionResponse"]["name"] == "mcp__f"
    assert contents == [
        {"role": "user", "parts": [{"text": "q"}]},
        {"role": "model", "parts": [{"functionCall": {"name": "f", "args": {"x": 1}}},
                                    {"functionCall": {"name": "g", "args": {"value": [1]}}}]},
        {"role": "user", "parts": [{"functionResponse": {"name": "f", "response": {"result": "plain text"}}},
                                   {"functionResponse": {"name": "g", "response": {"result": [1, 2]}}}]},
        {"role": "model", "parts": [{"text": "done"}]},
    ]


def test_build_body_params_and_tool_choice() -> None:
    body = build_body(Call("chat", "m", {
        "messages": MSG, "max_completion_tokens": 5, "top_k": 3, "n": 2, "seed": 7, "stop": "x",
        "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "object"}}},
        "safetySettings": [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}],
    }))
    assert body["generationConfig"] == {"maxOutputTokens": 5, "topK": 3, "candidateCount": 2, "seed": 7,
                                        "stopSequences": ["x"], "responseMimeType": "application/json",
                                        "responseJsonSchema": {"type": "object"}}
    assert body["safetySettings"][0]["threshold"] == "BLOCK_NONE"
    assert convert_tool_choice("none") == {"functionCallingConfig": {"mode": "NONE"}}
    assert convert_tool_choice({"type": "function", "function": {"name": "f"}}) == {
        "functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["f"]}}
    assert model_path("gemini-2.5-flash") == "models/gemini-2.5-flash"
    assert model_path("tunedModels/mine") == "tunedModels/mine"


def test_response_finish_reasons_thoughts_and_blocked_prompts() -> None:
    p = GeminiProvider(Endpoint("gemini", api_keys=["k"]))

    def parse(data: dict[str, Any]) -> Any:
        return p.chat_response(Call("chat", "m"), HttpResponse(200, {}, json.dumps(data).encode()))

    r = parse({"candidates": [{"content": {"parts": [{"text": "plan", "thought": True}, {"text": "answer"}]},
                               "finishReason": "SAFETY"}],
               "usageMetadata": {"promptTokenCount": 2, "candidatesTokenCount": 1, "thoughtsTokenCount": 4,
                                 "totalTokenCount": 7}})
    assert r.text == "answer" and r.finish_reason == "content_filter"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (2, 5, 7)
    assert parse({"candidates": [{"content": {"parts": [{"text": "x"}]}, "finishReason": "RECITATION"}]}
                 ).finish_reason == "content_filter"
    assert parse({"candidates": [{"finishReason": "IMAGE_PROHIBITED_CONTENT"}]}).finish_reason == "content_filter"
    blocked = parse({"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 3}})
    assert blocked.text == "" and blocked.finish_reason == "content_filter"


def test_error_envelopes() -> None:
    p = GeminiProvider(Endpoint("gemini", api_keys=["k"]))

    def err(code: int, status: str, details: list[Any] | None = None, headers: dict[str, str] | None = None) -> Any:
        body = {"error": {"code": code, "message": "m", "status": status, "details": details or []}}
        return p.error(Call("chat", "m"), HttpResponse(code, headers or {}, json.dumps(body).encode(), wall=1.7e9))

    limited = err(429, "RESOURCE_EXHAUSTED", [{"@type": "type.googleapis.com/google.rpc.RetryInfo",
                                                "retryDelay": "41.5s"}], {"retry-after": "5"})
    assert isinstance(limited, RateLimited) and limited.retry_after == 41.5  # RetryInfo beats the header
    assert err(429, "RESOURCE_EXHAUSTED", headers={"retry-after": "5"}).retry_after == 5.0
    assert isinstance(err(400, "INVALID_ARGUMENT", [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                                                     "reason": "API_KEY_INVALID"}]), AuthError)
    assert isinstance(err(400, "INVALID_ARGUMENT"), BadRequest)
    assert isinstance(err(403, "PERMISSION_DENIED"), AuthError)
    assert isinstance(err(500, "INTERNAL"), UpstreamError)


def test_stream_parser_has_no_terminator_and_defers_errors() -> None:
    parser = GeminiStreamParser("gemini")
    raw = (
        b'data: {"candidates":[{"content":{"parts":[{"text":"Hel"}],"role":"model"}}],'
        b'"usageMetadata":{"promptTokenCount":2,"candidatesTokenCount":1}}\r\n\r\n'
        b'data: {"candidates":[{"content":{"parts":[{"text":"lo"}],"role":"model"},"finishReason":"STOP"}],'
        b'"usageMetadata":{"promptTokenCount":2,"candidatesTokenCount":2,"totalTokenCount":4}}\r\n\r\n'
    )
    chunks = [c for i in range(0, len(raw), 5) for c in parser.feed(raw[i : i + 5])] + parser.close()
    assert "".join(c.text for c in chunks) == "Hello" and chunks[-1].finish_reason == "stop"
    assert [c.usage for c in chunks if c.usage] == [chunks[-1].usage] and chunks[-1].usage.total_tokens == 4  # type: ignore[union-attr]
    # Text and an error in one read: the text goes out, the error follows.
    errored = GeminiStreamParser("gemini")
    first = errored.feed(raw[: raw.index(b"data:", 10)] + b'data: {"error":{"code":503,"status":"UNAVAILABLE",'
                                                          b'"message":"overloaded"}}\r\n\r\n')
    assert [c.text for c in first] == ["Hel"]
    with pytest.raises(UpstreamError, match="overloaded"):
        errored.feed(b"")
