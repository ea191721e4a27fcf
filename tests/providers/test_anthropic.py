"""The Anthropic simulator judged by the official ``anthropic`` SDK, our
adapter run against it through ``AsyncClient``, and the adapter's pure
translation functions."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import pytest

from apimux import (
    AsyncClient,
    AuthError,
    BadRequest,
    Endpoint,
    FakeClock,
    NotFound,
    Overloaded,
    RateLimited,
    StreamInterrupted,
    UpstreamError,
)
from apimux.providers.anthropic import (
    AnthropicProvider,
    AnthropicStreamParser,
    build_body,
    convert_messages,
    convert_tool_choice,
    rate_hint_from,
)
from apimux.providers.base import Call
from apimux.testing import AnthropicSim, Fault
from apimux.transport import HttpResponse

MSG = [{"role": "user", "content": "hello there"}]
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@pytest.fixture
def sim() -> Iterator[AnthropicSim]:
    with AnthropicSim() as s:
        yield s  # type: ignore[misc]


def sdk(sim: AnthropicSim) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=sim.url, api_key="sk-ant-test", max_retries=0)


def client(sim: AnthropicSim, clock: FakeClock | None = None, keys: list[str] | None = None) -> AsyncClient:
    ep = Endpoint("anthropic", base_url=sim.url, api_keys=keys or ["sk-ant-test"])
    return AsyncClient([ep], clock=clock or FakeClock())


# ---- the simulator, judged by the official SDK ------------------------------------------------
def test_sdk_parses_a_plain_message(sim: AnthropicSim) -> None:
    m = sdk(sim).messages.create(model="claude-x", max_tokens=64, system="be brief", messages=MSG)  # type: ignore[arg-type]
    assert m.content[0].type == "text" and m.content[0].text == "echo: hello there"
    assert m.stop_reason == "end_turn" and m.model == "claude-x"
    assert m.usage.input_tokens == 4 and m.usage.output_tokens == 3  # "be brief" + "hello there"
    rec = sim.requests[-1]
    assert rec.headers["anthropic-version"] and rec.json["system"] == "be brief"  # the SDK picks its version


def test_sdk_streams_text_usage_and_stop_reason(sim: AnthropicSim) -> None:
    with sdk(sim).messages.stream(model="claude-x", max_tokens=64, messages=MSG) as stream:  # type: ignore[arg-type]
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert "".join(pieces) == "echo: hello there" and len(pieces) == 3
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == 3 and final.usage.input_tokens == 2
    # The raw event sequence, through stream=True.
    events = list(sdk(sim).messages.create(model="claude-x", max_tokens=1, messages=MSG, stream=True))  # type: ignore[arg-type]
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop" and "content_block_delta" in kinds
    delta = next(e for e in events if e.type == "message_delta")
    assert delta.delta.stop_reason == "max_tokens" and delta.usage.output_tokens == 1


def test_sdk_tool_round_trip(sim: AnthropicSim) -> None:
    tool = {"name": "get_weather", "description": "w",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
    c = sdk(sim)
    first = c.messages.create(model="claude-x", max_tokens=64, tools=[tool],  # type: ignore[list-item]
                              messages=[{"role": "user", "content": "Paris"}])
    assert first.stop_reason == "tool_use"
    use = first.content[0]
    assert use.type == "tool_use" and use.name == "get_weather" and use.input == {"city": "Paris"}
    second = c.messages.create(
        model="claude-x", max_tokens=64, tools=[tool],  # type: ignore[list-item]
        messages=[
            {"role": "user", "content": "Paris"},
            {"role": "assistant", "content": [use.model_dump(exclude_none=True)]},  # type: ignore[list-item]
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny"}]},
        ],
    )
    assert second.stop_reason == "end_turn" and second.content[0].text == "echo: sunny"  # type: ignore[union-attr]
    # The streamed tool call is reassembled by the SDK from input_json_delta events.
    with c.messages.stream(model="claude-x", max_tokens=64, tools=[tool],  # type: ignore[list-item]
                           messages=[{"role": "user", "content": "Oslo"}]) as stream:
        final = stream.get_final_message()
    assert final.content[0].input == {"city": "Oslo"}  # type: ignore[union-attr]


def test_sdk_raises_its_own_error_classes(sim: AnthropicSim) -> None:
    sim.faults.script(Fault(status=529), Fault(status=429, retry_after=7), Fault(status=404, message="no model"))
    c = sdk(sim)
    with pytest.raises(anthropic.OverloadedError):
        c.messages.create(model="claude-x", max_tokens=8, messages=MSG)  # type: ignore[arg-type]
    with pytest.raises(anthropic.RateLimitError) as rl:
        c.messages.create(model="claude-x", max_tokens=8, messages=MSG)  # type: ignore[arg-type]
    assert rl.value.response.headers["retry-after"] == "7"
    assert rl.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    with pytest.raises(anthropic.NotFoundError, match="no model"):
        c.messages.create(model="claude-x", max_tokens=8, messages=MSG)  # type: ignore[arg-type]
    # Validation: max_tokens is required by the API (the SDK's types would stop us; go around them).
    with pytest.raises(anthropic.BadRequestError, match="max_tokens"):
        c.post("/v1/messages", body={"model": "claude-x", "messages": MSG}, cast_to=object)
    with pytest.raises(anthropic.BadRequestError, match="system"):
        c.messages.create(model="claude-x", max_tokens=8, messages=[{"role": "system", "content": "x"}, *MSG])  # type: ignore[list-item]


def test_sdk_sees_mid_stream_error_event_as_overloaded(sim: AnthropicSim) -> None:
    sim.faults.script(Fault(error_type="overloaded_error", cut_stream_after=3))
    with pytest.raises(anthropic.APIStatusError) as err:
        list(sdk(sim).messages.create(model="claude-x", max_tokens=64, messages=MSG, stream=True))  # type: ignore[arg-type]
    assert "overloaded_error" in str(err.value)


def test_sdk_lists_models_and_auth_is_enforced() -> None:
    with AnthropicSim(keys={"good"}) as s:
        good = anthropic.Anthropic(base_url=s.url, api_key="good", max_retries=0)
        assert [m.id for m in good.models.list()] == ["claude-sonnet-4-5", "claude-haiku-4-5"]
        bad = anthropic.Anthropic(base_url=s.url, api_key="bad", max_retries=0)
        with pytest.raises(anthropic.AuthenticationError):
            bad.messages.create(model="claude-x", max_tokens=8, messages=MSG)  # type: ignore[arg-type]


# ---- our adapter against the simulator ------------------------------------------------------
async def test_chat_with_system_and_default_max_tokens(sim: AnthropicSim) -> None:
    async with client(sim) as c:
        r = await c.chat("anthropic/claude-x", MSG, system="be brief")
    assert r.text == "echo: hello there" and r.finish_reason == "stop"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (4, 3)
    body = sim.requests[-1].json
    assert body["system"] == "be brief" and body["max_tokens"] == 1024
    assert all(m["role"] != "system" for m in body["messages"])
    assert sim.requests[-1].headers["x-api-key"] == "sk-ant-test"


async def test_default_max_tokens_leaves_room_above_the_thinking_budget(sim: AnthropicSim) -> None:
    """The API refuses max_tokens <= thinking.budget_tokens; a caller who turns
    thinking on without a max_tokens must not get a 400 from our default."""
    thinking = {"type": "enabled", "budget_tokens": 2048}
    async with client(sim) as c:
        r = await c.chat("anthropic/claude-x", MSG, thinking=thinking)
        with pytest.raises(BadRequest, match="budget_tokens"):  # the simulator checks the rule
            await c.chat("anthropic/claude-x", MSG, thinking=thinking, max_tokens=2000)
    assert r.text == "echo: hello there"
    assert sim.requests[0].json["max_tokens"] == 2048 + 1024
    assert sim.requests[0].json["thinking"] == thinking


async def test_alias_claude_and_max_tokens_gives_length(sim: AnthropicSim) -> None:
    async with client(sim) as c:
        r = await c.chat("claude/claude-x", MSG, max_tokens=2)
    assert r.text == "echo: hello" and r.finish_reason == "length"


async def test_stop_sequence_finishes_with_stop(sim: AnthropicSim) -> None:
    async with client(sim) as c:
        r = await c.chat("anthropic/claude-x", [{"role": "user", "content": "one two three"}], stop="three")
    assert r.text == "echo: one two" and r.finish_reason == "stop"
    assert sim.requests[-1].json["stop_sequences"] == ["three"]


async def test_stream_text_finish_and_usage(sim: AnthropicSim) -> None:
    async with client(sim) as c:
        chunks = [ch async for ch in c.chat_stream("anthropic/claude-x", MSG)]
    assert "".join(ch.text for ch in chunks) == "echo: hello there"
    assert chunks[-1].finish_reason == "stop"
    usage = [ch.usage for ch in chunks if ch.usage is not None][-1]
    assert (usage.prompt_tokens, usage.completion_tokens) == (2, 3)


async def test_image_data_url_becomes_base64_image_block(sim: AnthropicSim) -> None:
    content = [{"type": "text", "text": "what is this"},
               {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}]
    async with client(sim) as c:
        r = await c.chat("anthropic/claude-x", [{"role": "user", "content": content}])
    assert r.text == "echo: what is this"
    block = sim.requests[-1].json["messages"][0]["content"][1]
    assert block == {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}


async def test_tools_round_trip_through_the_adapter(sim: AnthropicSim) -> None:
    msgs: list[dict[str, Any]] = [{"role": "user", "content": "Paris"}]
    async with client(sim) as c:
        first = await c.chat("anthropic/claude-x", msgs, tools=[WEATHER_TOOL], tool_choice="auto")
        assert first.finish_reason == "tool_calls" and len(first.tool_calls) == 1
        call = first.tool_calls[0]
        assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"}
        msgs += [{"role": "assistant", "content": None, "tool_calls": [call.to_dict()]},
                 {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21C"}]
        second = await c.chat("anthropic/claude-x", msgs, tools=[WEATHER_TOOL])
        streamed = [ch async for ch in c.chat_stream("anthropic/claude-x", msgs[:1], tools=[WEATHER_TOOL],
                                                     tool_choice={"type": "function",
                                                                  "function": {"name": "get_weather"}})]
    assert second.text == "echo: sunny, 21C" and second.finish_reason == "stop"
    sent = sim.requests[1].json
    assert sent["tools"][0]["input_schema"] == WEATHER_TOOL["function"]["parameters"]  # type: ignore[index]
    assert sent["messages"][1]["content"][0]["type"] == "tool_use"
    assert sent["messages"][2]["content"][0] == {"type": "tool_result", "tool_use_id": call.id, "content": "sunny, 21C"}
    final = streamed[-1]
    assert final.finish_reason == "tool_calls" and json.loads(final.tool_calls[0].arguments) == {"city": "Paris"}
    assert sim.requests[2].json["tool_choice"] == {"type": "tool", "name": "get_weather"}


@pytest.mark.parametrize(
    ("status", "kind"),
    [(400, BadRequest), (401, AuthError), (404, NotFound), (413, BadRequest)],
)
async def test_caller_errors_are_typed_and_not_retried(sim: AnthropicSim, status: int, kind: type[Exception]) -> None:
    sim.faults.script(Fault(status=status, message="nope"))
    async with client(sim) as c:
        with pytest.raises(kind, match="nope"):
            await c.chat("anthropic/claude-x", MSG)
    assert len(sim.requests) == 1


async def test_overloaded_529_and_api_error_500_are_retried(sim: AnthropicSim) -> None:
    clock = FakeClock()
    sim.faults.script(Fault(status=529), Fault(status=500))
    async with client(sim, clock) as c:
        r = await c.chat("anthropic/claude-x", MSG)
    assert r.text == "echo: hello there" and len(sim.requests) == 3 and r.info.attempts == 3
    sim.faults.script(*[Fault(status=529)] * 10)
    async with client(sim, clock) as c:
        with pytest.raises(Overloaded):
            await c.chat("anthropic/claude-x", MSG, max_retries=1)
    sim.faults.clear()
    sim.faults.script(*[Fault(status=500)] * 2)
    async with client(sim, clock) as c:
        with pytest.raises(UpstreamError):
            await c.chat("anthropic/claude-x", MSG, max_retries=1)


async def test_rate_limit_retry_after_cools_the_key() -> None:
    clock = FakeClock()
    with AnthropicSim(clock=clock) as sim:
        sim.faults.script(Fault(status=429, retry_after=20))
        async with client(sim, clock) as c:
            r = await c.chat("anthropic/claude-x", MSG)
        assert r.text == "echo: hello there"
        first, second = sim.requests
        assert second.at - first.at >= 20
        sim.faults.script(*[Fault(status=429, retry_after=1)] * 3)
        async with client(sim, clock) as c:
            with pytest.raises(RateLimited) as err:
                await c.chat("anthropic/claude-x", MSG, max_retries=1)
        assert err.value.retry_after == 1


async def test_mid_stream_errors_and_cut_streams(sim: AnthropicSim) -> None:
    # An error event before any text: retried like the 529 it stands for.
    sim.faults.script(Fault(error_type="overloaded_error", cut_stream_after=1))
    async with client(sim) as c:
        text = "".join([ch.text async for ch in c.chat_stream("anthropic/claude-x", MSG)])
    assert text == "echo: hello there" and len(sim.requests) == 2
    # After text has reached the caller: interrupted, with the cause kept.
    sim.faults.script(Fault(error_type="overloaded_error", cut_stream_after=4))
    async with client(sim) as c:
        with pytest.raises(StreamInterrupted) as err:
            _ = [ch async for ch in c.chat_stream("anthropic/claude-x", MSG)]
    assert isinstance(err.value.__cause__, Overloaded)
    sim.faults.script(Fault(cut_stream_after=5))
    async with client(sim) as c:
        with pytest.raises(StreamInterrupted):
            _ = [ch async for ch in c.chat_stream("anthropic/claude-x", MSG)]


async def test_bad_key_is_auth_error_and_models_list() -> None:
    with AnthropicSim(keys={"good"}) as sim:
        async with client(sim, keys=["bad"]) as c:
            with pytest.raises(AuthError, match="authentication_error"):
                await c.chat("anthropic/claude-x", MSG)
        async with client(sim, keys=["good"]) as c:
            models = await c.models("anthropic")
    assert [m.id for m in models] == ["claude-sonnet-4-5", "claude-haiku-4-5"]


# ---- pure translation ----------------------------------------------------------------------
def test_convert_messages_merges_turns_and_lifts_system() -> None:
    system, msgs = convert_messages([
        {"role": "system", "content": "a"},
        {"role": "developer", "content": [{"type": "text", "text": "b"}]},
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "let me look",
         "tool_calls": [{"id": "t1", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}},
                        {"id": "t2", "type": "function", "function": {"name": "g", "arguments": ""}}]},
        {"role": "tool", "tool_call_id": "t1", "content": "one"},
        {"role": "tool", "tool_call_id": "t2", "content": "two"},
        {"role": "user", "content": "and?"},
    ])
    assert system == "a\n\nb"
    assert [m["role"] for m in msgs] == ["user", "assistant", "user"]
    assert msgs[1]["content"] == [
        {"type": "text", "text": "let me look"},
        {"type": "tool_use", "id": "t1", "name": "f", "input": {"x": 1}},
        {"type": "tool_use", "id": "t2", "name": "g", "input": {}},
    ]
    assert msgs[2]["content"] == [
        {"type": "tool_result", "tool_use_id": "t1", "content": "one"},
        {"type": "tool_result", "tool_use_id": "t2", "content": "two"},
        {"type": "text", "text": "and?"},
    ]


def test_tool_choice_mapping() -> None:
    assert convert_tool_choice("auto", None) == {"type": "auto"}
    assert convert_tool_choice("required", None) == {"type": "any"}
    assert convert_tool_choice("none", None) == {"type": "none"}
    assert convert_tool_choice({"type": "function", "function": {"name": "f"}}, False) == {
        "type": "tool", "name": "f", "disable_parallel_tool_use": True}
    assert convert_tool_choice(None, None) is None


def test_build_body_translates_params_and_drops_openai_only_ones() -> None:
    call = Call("chat", "claude-x", {"messages": MSG, "max_completion_tokens": 10, "temperature": 0.2, "top_k": 5,
                                     "seed": 1, "presence_penalty": 0.1, "user": "u1", "stop": ["x", "y"]},
                stream=True)
    body = build_body(call)
    assert body == {"model": "claude-x", "max_tokens": 10, "messages": MSG, "stop_sequences": ["x", "y"],
                    "metadata": {"user_id": "u1"}, "temperature": 0.2, "top_k": 5, "stream": True}
    with pytest.raises(BadRequest):
        build_body(Call("chat", "m", {"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png,notbase64"}}]}]}))


def test_response_parsing_usage_and_finish_reasons() -> None:
    p = AnthropicProvider(Endpoint("anthropic", api_keys=["k"]))
    body = {"id": "m", "type": "message", "role": "assistant", "model": "claude-x", "stop_reason": "refusal",
            "content": [{"type": "thinking", "thinking": "hmm", "signature": "s"}, {"type": "text", "text": "no"}],
            "usage": {"input_tokens": 3, "cache_read_input_tokens": 10, "output_tokens": 1}}
    r = p.chat_response(Call("chat", "claude-x"), HttpResponse(200, {}, json.dumps(body).encode()))
    assert r.text == "no" and r.finish_reason == "content_filter"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (13, 1, 14)
    with pytest.raises(UpstreamError):
        p.chat_response(Call("chat", "m"), HttpResponse(200, {}, b'{"choices": ['))


def test_error_envelope_mapping_and_retry_after_from_reset() -> None:
    p = AnthropicProvider(Endpoint("anthropic", api_keys=["k"]))

    def err(status: int, kind: str, headers: dict[str, str] | None = None) -> Exception:
        body = json.dumps({"type": "error", "error": {"type": kind, "message": "m"}}).encode()
        return p.error(Call("chat", "m"), HttpResponse(status, headers or {}, body, wall=1.7e9))

    assert isinstance(err(529, "overloaded_error"), Overloaded)
    assert isinstance(err(500, "api_error"), UpstreamError)
    assert isinstance(err(403, "permission_error"), AuthError)
    assert isinstance(err(400, "invalid_request_error"), BadRequest)
    limited = err(429, "rate_limit_error", {
        "date": "Tue, 14 Nov 2023 22:13:20 GMT",
        "anthropic-ratelimit-requests-remaining": "0",
        "anthropic-ratelimit-requests-reset": "2023-11-14T22:13:45Z",
    })
    assert isinstance(limited, RateLimited) and limited.retry_after == 25.0  # type: ignore[attr-defined]


def test_rate_hint_reads_rfc3339_resets_against_the_date_header() -> None:
    hint = rate_hint_from({
        "date": "Tue, 14 Nov 2023 22:13:20 GMT",
        "anthropic-ratelimit-requests-remaining": "0",
        "anthropic-ratelimit-requests-reset": "2023-11-14T22:13:30Z",
        "anthropic-ratelimit-input-tokens-remaining": "500",
        "anthropic-ratelimit-input-tokens-reset": "2023-11-14T22:13:21Z",
        "anthropic-ratelimit-output-tokens-remaining": "40",
        "anthropic-ratelimit-output-tokens-reset": "2023-11-14T22:13:22.500Z",
    })
    assert hint is not None
    assert (hint.remaining_requests, hint.reset_requests) == (0, 10.0)
    assert (hint.remaining_tokens, hint.reset_tokens) == (40, 2.5)
    assert rate_hint_from({"date": "Tue, 14 Nov 2023 22:13:20 GMT"}) is None


async def test_learned_rate_hint_holds_the_key_until_reset() -> None:
    clock = FakeClock(wall_start=1.7e9)
    headers = {"anthropic-ratelimit-requests-remaining": "0",
               "anthropic-ratelimit-requests-reset": "2099-01-01T00:00:00Z"}
    with AnthropicSim(clock=clock, ratelimit_headers=headers) as sim:
        async with client(sim, clock) as c:
            await c.chat("anthropic/claude-x", MSG)
            key = c.group("anthropic").sched.pool.servers[0].keys[0]
            assert key.cooldown_until > clock.now() + 3600


def test_stream_parser_events_split_anywhere() -> None:
    events = [
        {"type": "message_start", "message": {"usage": {"input_tokens": 5, "output_tokens": 1}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "ping"},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}},
        {"type": "content_block_start", "index": 1,
         "content_block": {"type": "tool_use", "id": "t", "name": "f", "input": {}}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": '{"a": '}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "2}"}},
        {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 9}},
        {"type": "message_stop"},
    ]
    raw = b"".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events)
    parser = AnthropicStreamParser("anthropic")
    chunks = [c for i in range(0, len(raw), 7) for c in parser.feed(raw[i : i + 7])] + parser.close()
    assert "".join(c.text for c in chunks) == "Hi"
    last = chunks[-1]
    assert last.finish_reason == "tool_calls" and last.tool_calls[0].arguments == '{"a": 2}'
    assert last.usage is not None and (last.usage.prompt_tokens, last.usage.completion_tokens) == (5, 9)
    unfinished = AnthropicStreamParser("anthropic")
    unfinished.feed(raw[: raw.index(b"event: message_stop")])
    with pytest.raises(StreamInterrupted):
        unfinished.close()
    errored = AnthropicStreamParser("anthropic")
    with pytest.raises(RateLimited):
        errored.feed(b'event: error\ndata: {"type":"error","error":{"type":"rate_limit_error","message":"slow"}}\n\n')
    # Text and an error event in one read: the text goes out, the error follows.
    split = AnthropicStreamParser("anthropic")
    head = raw[: raw.index(b"event: content_block_start\ndata: {\"type\": \"content_block_start\", \"index\": 1")]
    error = b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"x"}}\n\n'
    got = split.feed(head + error)
    assert [c.text for c in got] == ["Hi"]
    with pytest.raises(Overloaded):
        split.close()
