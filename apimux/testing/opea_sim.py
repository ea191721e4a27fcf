"""A loopback server speaking OPEA's protocols: the OpenAI-compatible
microservice routes (``/v1/chat/completions``, ``/v1/embeddings``,
``/v1/models``) and the ChatQnA megaservice ``/v1/chatqna``.

OPEA services are FastAPI apps, so errors are ``{"detail": "..."}`` and a
request that fails validation is 422 ``{"detail": [{"type", "loc", "msg",
"input"}]}``. ChatQnA streams unless ``"stream": false``; each text piece is
framed as a Python bytes repr (``data: b' word'``) and the stream ends with
``data: [DONE]``; the non-stream answer is an OpenAI chat completion with
``model: "chatqna"``, ``finish_reason: "stop"`` and zero usage, as the real
megaservice returns. The microservice routes are validated in the tests by
the official ``openai`` package.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from apimux.testing.openai_sim import OpenAISim
from apimux.testing.replies import echo_reply
from apimux.testing.server import Fault, Recorded, cut_connection


def _missing(field: str, value: Any = None) -> dict[str, Any]:
    return {"type": "missing", "loc": ["body", field], "msg": "Field required", "input": value}


class OpeaSim(OpenAISim):
    name = "opea"

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("models", ["test-model", "BAAI/bge-base-en-v1.5"])
        super().__init__(prefix="/v1", **kwargs)

    def routes(self, app: web.Application) -> None:
        super().routes(app)
        app.router.add_post("/v1/chatqna", self.route(self.chatqna))

    def error_response(self, status: int, message: str, fault: Fault | None) -> web.Response:
        return web.json_response({"detail": message}, status=status)

    def _invalid(self, message: str, param: str | None = None) -> web.Response:
        detail = [{"type": "value_error", "loc": ["body", param or "body"], "msg": message, "input": None}]
        return web.json_response({"detail": detail}, status=422)

    async def chatqna(self, request: web.Request, rec: Recorded, fault: Fault | None) -> web.StreamResponse:
        body = rec.json
        if not isinstance(body, dict):
            return web.json_response({"detail": [_missing("body")]}, status=422)
        msgs = body.get("messages")
        if msgs is None:
            return web.json_response({"detail": [_missing("messages", body)]}, status=422)
        if isinstance(msgs, str):
            question = msgs
        elif isinstance(msgs, list) and msgs and all(isinstance(m, dict) and m.get("role") for m in msgs):
            question = echo_reply(msgs).removeprefix("echo: ")
        else:
            detail = [{"type": "union_type", "loc": ["body", "messages"],
                       "msg": "Input should be a valid string or a list of messages", "input": msgs}]
            return web.json_response({"detail": detail}, status=422)
        tokens = f"echo: {question}".split()
        max_tokens = body.get("max_tokens")
        if isinstance(max_tokens, int) and max_tokens < len(tokens):
            tokens = tokens[:max_tokens]
        if body.get("stream", True):  # the megaservice streams by default
            return await self._chatqna_stream(request, tokens, fault)
        return web.json_response({
            "id": f"chatcmpl-{time.monotonic_ns():x}", "object": "chat.completion", "created": int(time.time()),
            "model": "chatqna",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": " ".join(tokens)},
                         "finish_reason": "stop", "metadata": None}],
            "usage": {"prompt_tokens": 0, "total_tokens": 0, "completion_tokens": 0},
        })

    async def _chatqna_stream(self, request: web.Request, tokens: list[str], fault: Fault | None) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
        await resp.prepare(request)
        for n, tok in enumerate(tokens):
            if fault is not None and fault.cut_stream_after is not None and n >= fault.cut_stream_after:
                await cut_connection(request)
                return resp
            piece = tok if n == 0 else " " + tok
            await resp.write(f"data: {piece.encode('utf-8')!r}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp
