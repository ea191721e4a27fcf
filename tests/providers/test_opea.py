"""OPEA: the microservice routes judged by the official ``openai`` package, the
ChatQnA megaservice and the microservices through AsyncClient, and the pure
translation pieces (the ``data: b'...'`` framing)."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from apimux import AsyncClient, BadRequest, Endpoint, FakeClock, RetrySettings, Settings, StreamInterrupted
from apimux.providers.base import Call
from apimux.providers.opea import ChatQnAStreamParser, OPEAProvider, decode_piece, fastapi_message
from apimux.testing import Fault, OpeaSim

USER = [{"role": "user", "content": "hello world"}]


@pytest.fixture
def opea(clock: FakeClock) -> Iterator[OpeaSim]:
    s = OpeaSim(clock=clock)
    with s:
        yield s


def client(sim: OpeaSim, clock: FakeClock, **ep: object) -> AsyncClient:
    settings = Settings(retry=RetrySettings(max_retries=0))
    return AsyncClient([Endpoint("opea", base_url=sim.url, **ep)], clock=clock, settings=settings)  # type: ignore[arg-type]


# ---- the official SDK against the microservice routes ------------------------------
def test_sdk_microservices(opea: OpeaSim) -> None:
    c = openai.OpenAI(base_url=f"{opea.url}/v1", api_key="unused")
    r = c.chat.completions.create(model="test-model", messages=USER, max_tokens=2)  # type: ignore[arg-type]
    assert r.choices[0].message.content == "echo: hello" and r.choices[0].finish_reason == "length"
    stream = c.chat.completions.create(model="test-model", messages=USER, stream=True)  # type: ignore[arg-type]
    text = "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices)  # type: ignore[union-attr]
    assert text == "echo: hello world"
    e = c.embeddings.create(model="BAAI/bge-base-en-v1.5", input=["a", "b"])
    assert len(e.data) == 2 and len(e.data[0].embedding) == 8
    with pytest.raises(openai.UnprocessableEntityError) as info:
        c.chat.completions.create(model="test-model", messages=[])
    assert info.value.status_code == 422 and isinstance(info.value.body, dict) and "detail" in info.value.body


# ---- our adapter: megaservice routing ---------------------------------------------
async def test_chat_on_chatqna_goes_to_megaservice(opea: OpeaSim, clock: FakeClock) -> None:
    async with client(opea, clock) as c:
        r = await c.chat("opea/chatqna", [{"role": "user", "content": "What is OPEA?"}], max_tokens=50)
        chunks = [ch async for ch in c.chat_stream("opea/chatqna", [{"role": "user", "content": "it's fine"}])]
    assert r.text == "echo: What is OPEA?" and r.finish_reason == "stop" and r.model == "chatqna"
    sent = opea.requests[0]
    assert sent.path == "/v1/chatqna" and sent.json["stream"] is False and "model" not in sent.json
    # bytes reprs, including one that Python writes with double quotes
    assert "".join(ch.text for ch in chunks) == "echo: it's fine"
    assert [ch.finish_reason for ch in chunks if ch.finish_reason] == ["stop"]
    assert opea.requests[1].json["stream"] is True and "stream_options" not in opea.requests[1].json


async def test_chatqna_op_with_a_question_string(opea: OpeaSim, clock: FakeClock) -> None:
    async with client(opea, clock) as c:
        r = await c.call("chatqna", "opea/chatqna", {"messages": "What is Deep Learning?", "max_tokens": 3})
        s = [ch async for ch in c.call_stream("chatqna", "opea/chatqna", {"messages": "naïve café"})]
    assert r.text == "echo: What is"
    assert opea.requests[0].json == {"messages": "What is Deep Learning?", "max_tokens": 3, "stream": False}
    assert "".join(ch.text for ch in s) == "echo: naïve café"


async def test_other_models_use_microservices(opea: OpeaSim, clock: FakeClock) -> None:
    async with client(opea, clock) as c:
        r = await c.chat("opea/test-model", USER, system="Be brief.", max_tokens=50)
        chunks = [ch async for ch in c.chat_stream("opea/test-model", USER)]
        e = await c.embed("opea/BAAI/bge-base-en-v1.5", ["a", "b"])
    assert r.text == "echo: hello world" and opea.requests[0].path == "/v1/chat/completions"
    assert opea.requests[0].json["messages"][0] == {"role": "system", "content": "Be brief."}
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3
    assert len(e.vectors) == 2 and opea.requests[2].path == "/v1/embeddings"


async def test_configured_megaservice_names(opea: OpeaSim, clock: FakeClock) -> None:
    async with client(opea, clock, options={"megaservices": ["chatqna", "rag"]}) as c:
        await c.chat("opea/chatqna", USER)
    assert opea.requests[0].path == "/v1/chatqna"
    p = OPEAProvider(Endpoint("opea", base_url="http://h:8888/v1", options={"megaservices": ["codegen"]}))
    assert p.request(Call("chat", "codegen", {"messages": USER}), None).url == "http://h:8888/v1/codegen"


async def test_errors_and_cut_stream(opea: OpeaSim, clock: FakeClock) -> None:
    async with client(opea, clock) as c:
        with pytest.raises(BadRequest, match="messages"):
            await c.call("chatqna", "opea/chatqna", {"max_tokens": 3})
        opea.faults.script(Fault(cut_stream_after=2))
        got: list[str] = []
        with pytest.raises(StreamInterrupted):
            async for ch in c.chat_stream("opea/chatqna", USER):
                got.append(ch.text)
        assert got == ["echo:", " hello"]


# ---- pure translation ---------------------------------------------------------
def test_base_url_with_or_without_v1() -> None:
    assert OPEAProvider(Endpoint("opea", base_url="http://h:9000")).url("/x") == "http://h:9000/v1/x"
    assert OPEAProvider(Endpoint("opea", base_url="http://h:9000/v1")).url("/x") == "http://h:9000/v1/x"
    assert OPEAProvider(Endpoint("opea")).url("/chatqna") == "http://localhost:8888/v1/chatqna"


def test_decode_piece() -> None:
    assert decode_piece("b' Deep'") == " Deep"
    assert decode_piece('b" it\'s"') == " it's"
    assert decode_piece("b'caf\\xc3\\xa9'") == "café"
    assert decode_piece("b'line\\n'") == "line\n"
    assert decode_piece("b'it's raw'") == "it's raw"  # the unescaped no-LLM shortcut
    assert decode_piece('{"choices": [{"delta": {"content": "x"}}]}') == "x"


def test_chatqna_parser() -> None:
    p = ChatQnAStreamParser("opea")
    out = p.feed(b"data: b'a'\n\ndata: b' b'\n\n") + p.feed(b"data: [DONE]\n\n")
    assert [c.text for c in out] == ["a", " b", ""] and out[-1].finish_reason == "stop"
    assert p.close() == []
    cut = ChatQnAStreamParser("opea")
    cut.feed(b"data: b'a'\n\n")
    with pytest.raises(StreamInterrupted):
        cut.close()


def test_fastapi_errors() -> None:
    body = b'{"detail": [{"type": "missing", "loc": ["body", "messages"], "msg": "Field required"}]}'
    assert fastapi_message(body, 422) == "messages: Field required"
    assert fastapi_message(b'{"detail": "boom"}', 500) == "boom"
    assert fastapi_message(b"Internal Server Error", 500) == "Internal Server Error"
