"""A loopback server speaking OpenAI's REST protocol (and Groq's flavour of it).

Validated in the tests by the official ``openai`` and ``groq`` packages.
Replies are deterministic: the assistant echoes the last user message, so a
test can check that what it sent is what came back.
"""

from __future__ import annotations

import asyncio
import base64
import struct
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

# echo_reply and fake_vector are imported from here too (the older home of both).
from apimux.testing.replies import echo_reply, fake_vector
from apimux.testing.server import Fault, Recorded, SimServer, cut_connection, sse, words

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    404: "invalid_request_error",
    429: "rate_limit_exceeded",
}


class OpenAISim(SimServer):
    name = "openai"

    def __init__(
        self,
        *,
        prefix: str = "/v1",
        flavor: str = "openai",
        reply: Callable[[list[dict[str, Any]]], str] | None = None,
        ratelimit_headers: dict[str, str] | None = None,
        stream_delay: float = 0.0,
        models: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.prefix = prefix
        self.flavor = flavor
        self.reply = reply or echo_reply
        self.ratelimit_headers = ratelimit_headers or {}
        self.stream_delay = stream_delay
        self.model_ids = models or ["gpt-4o-mini", "text-embedding-3-small"]

    def routes(self, app: web.Application) -> None:
        app.router.add_post(f"{self.prefix}/chat/completions", self.route(self.chat))
        app.router.add_post(f"{self.prefix}/embeddings", self.route(self.embeddings))
        app.router.add_get(f"{self.prefix}/models", self.route(self.list_models))

    @property
    def base_url(self) -> str:
        return self.url + self.prefix

    def error_response(self, status: int, message: str, fault: Fault | None) -> web.Response:
        kind = fault.error_type if fault and fault.error_type else _ERROR_TYPES.get(status, "server_error")
        err = {
            "message": message,
            "type": kind,
            "param": None,
            "code": fault.error_type if fault and fault.error_type else None,
        }
        return web.json_response({"error": err}, status=status)

    def _invalid(self, message: str, param: str | None = None) -> web.Response:
        err = {"message": message, "type": "invalid_request_error", "param": param, "code": None}
        return web.json_response({"error": err}, status=400)

    def _headers(self) -> dict[str, str]:
        return {"x-request-id": f"req_{time.monotonic_ns():x}", **self.ratelimit_headers}

    # ---- chat --------------------------------------------------------------
    async def chat(self, request: web.Request, rec: Recorded, fault: Fault | None) -> web.StreamResponse:
        body = rec.json
        problem = validate_chat(body)
        if problem:
            return self._invalid(*problem)
        text = self.reply(body["messages"])
        prompt = sum(words(str(m.get("content") or "")) for m in body["messages"])
        max_tokens = body.get("max_tokens") or body.get("max_completion_tokens")
        tokens = text.split()
        finish = "stop"
        if max_tokens is not None and len(tokens) > max_tokens:
            tokens, finish = tokens[:max_tokens], "length"
        text = " ".join(tokens)
        usage = {"prompt_tokens": prompt, "completion_tokens": len(tokens), "total_tokens": prompt + len(tokens)}
        cid = f"chatcmpl-{time.monotonic_ns():x}"
        if body.get("stream"):
            return await self._stream(request, body, cid, tokens, finish, usage, fault)
        return web.json_response(
            {
                "id": cid,
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text, "refusal": None},
                        "logprobs": None,
                        "finish_reason": finish,
                    }
                ],
                "usage": usage,
                "system_fingerprint": "fp_sim",
            },
            headers=self._headers(),
        )

    async def _stream(
        self, request: web.Request, body: dict[str, Any], cid: str, tokens: list[str], finish: str,
        usage: dict[str, int], fault: Fault | None,
    ) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", **self._headers()})
        await resp.prepare(request)
        base = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": body["model"],
                "system_fingerprint": "fp_sim"}
        events = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                        "logprobs": None, "finish_reason": None}]}]
        for i, tok in enumerate(tokens):
            piece = tok if i == 0 else " " + tok
            events.append({**base, "choices": [{"index": 0, "delta": {"content": piece},
                                                "logprobs": None, "finish_reason": None}]})
        last = {**base, "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": finish}]}
        include_usage = (body.get("stream_options") or {}).get("include_usage")
        if self.flavor == "groq":
            last["x_groq"] = {"id": cid, "usage": usage}
        events.append(last)
        if include_usage:
            events.append({**base, "choices": [], "usage": usage})
        for n, ev in enumerate(events):
            if fault is not None and fault.cut_stream_after is not None and n >= fault.cut_stream_after:
                await cut_connection(request)
                return resp
            await resp.write(sse(ev))
            if self.stream_delay:
                await asyncio.sleep(self.stream_delay)
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    # ---- embeddings ----------------------------------------------------------
    async def embeddings(self, request: web.Request, rec: Recorded, fault: Fault | None) -> web.StreamResponse:
        body = rec.json
        if not isinstance(body, dict) or not body.get("model"):
            return self._invalid("you must provide a model parameter", "model")
        inputs = body.get("input")
        if isinstance(inputs, str):
            inputs = [inputs]
        if not isinstance(inputs, list) or not inputs or not all(isinstance(x, str) for x in inputs):
            return self._invalid("'input' must be a string or a non-empty array of strings", "input")
        if any(x == "" for x in inputs):
            return self._invalid("'input' cannot contain an empty string", "input")
        dims = int(body.get("dimensions") or 8)
        fmt = body.get("encoding_format", "float")
        data = []
        for i, text in enumerate(inputs):
            vec = fake_vector(text, dims)
            emb: Any = vec
            if fmt == "base64":
                emb = base64.b64encode(struct.pack(f"<{dims}f", *vec)).decode()
            data.append({"object": "embedding", "index": i, "embedding": emb})
        tokens = sum(words(t) for t in inputs)
        return web.json_response(
            {"object": "list", "data": data, "model": body["model"],
             "usage": {"prompt_tokens": tokens, "total_tokens": tokens}},
            headers=self._headers(),
        )

    async def list_models(self, request: web.Request, rec: Recorded, fault: Fault | None) -> web.StreamResponse:
        data = [{"id": m, "object": "model", "created": 1700000000, "owned_by": "apimux-sim"} for m in self.model_ids]
        return web.json_response({"object": "list", "data": data}, headers=self._headers())


def validate_chat(body: Any) -> tuple[str, str] | None:
    """The checks the real API makes on required fields (message, param)."""
    if not isinstance(body, dict):
        return ("request body must be a JSON object", "body")
    if not body.get("model"):
        return ("you must provide a model parameter", "model")
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        return ("'messages' must be a non-empty array", "messages")
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant", "tool", "developer"):
            return (f"messages[{i}].role is missing or invalid", f"messages[{i}].role")
    return None
