"""A loopback server speaking Ollama's native REST API.

Validated in the tests by the official ``ollama`` package. Like the real
server it streams unless the request says ``"stream": false``, answers a
request without messages/prompt by "loading" the model (``done_reason:
"load"``), knows only the models it was given (others are 404 "not found,
try pulling it first") and reports errors as ``{"error": "..."}``.

Faults: the base ``Fault`` kinds, plus a mid-stream error: a fault with no
status, ``cut_stream_after=N`` and ``error_type`` set sends N lines and then
``{"error": message}`` instead of cutting the connection.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from typing import Any

from aiohttp import web

from apimux.testing.replies import echo_reply, fake_vector
from apimux.testing.server import Fault, Recorded, SimServer, cut_connection, words

ROLES = ("system", "user", "assistant", "tool")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000000Z", time.gmtime())


class OllamaSim(SimServer):
    name = "ollama"

    def __init__(self, *, models: list[str] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.model_names = models or ["test-model", "llama3.2:latest", "nomic-embed-text:latest"]

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/api/chat", self.route(self.chat))
        app.router.add_post("/api/generate", self.route(self.generate))
        app.router.add_post("/api/embed", self.route(self.embed))
        app.router.add_get("/api/tags", self.route(self.tags))
        app.router.add_get("/", self.route(self.root))

    def error_response(self, status: int, message: str, fault: Fault | None) -> web.Response:
        return web.json_response({"error": message}, status=status)

    def _error(self, status: int, message: str) -> web.Response:
        return web.json_response({"error": message}, status=status)

    def _known(self, model: str) -> bool:
        # Ollama resolves "name" to "name:latest".
        return model in self.model_names or f"{model}:latest" in self.model_names

    def _check_model(self, body: Any) -> web.Response | None:
        if not isinstance(body, dict):
            return self._error(400, "invalid request body")
        model = body.get("model")
        if not model or not isinstance(model, str):
            return self._error(400, "model is required")
        if not self._known(model):
            return self._error(404, f'model "{model}" not found, try pulling it first')
        opts = body.get("options")
        if opts is not None and not isinstance(opts, dict):
            return self._error(400, "options must be an object")
        return None

    # ---- chat and generate ------------------------------------------------
    async def chat(self, request: web.Request, rec: Recorded, fault: Fault | None) -> web.StreamResponse:
        body = rec.json
        problem = self._check_model(body)
        if problem is not None:
            return problem
        msgs = body.get("messages")
        if not msgs:
            return self._load(body, "message")
        if not isinstance(msgs, list):
            return self._error(400, "messages must be an array")
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or m.get("role") not in ROLES:
                return self._error(400, f"messages[{i}]: invalid role")
            content = m.get("content", "")
            if not isinstance(content, str):
                # What Go's decoder says for an OpenAI-style content array.
                return self._error(
                    400, "json: cannot unmarshal array into Go struct field Message.messages.content of type string"
                )
            for img in m.get("images") or ():
                try:
                    base64.b64decode(img, validate=True)
                except (binascii.Error, TypeError, ValueError):
                    return self._error(400, "illegal base64 data in images")
            for tc in m.get("tool_calls") or ():
                if not isinstance((tc.get("function") or {}).get("arguments"), dict):
                    return self._error(400, "tool call arguments must be an object")
        prompt = sum(words(str(m.get("content") or "")) for m in msgs)
        last: dict[str, Any] = next((m for m in reversed(msgs) if m.get("role") == "user"), {})
        tools = body.get("tools") or []
        if tools and str(last.get("content", "")).startswith("tool:"):
            # Scripted tool use: call the first tool with the rest of the text.
            fn = tools[0]["function"]["name"]
            call = {"function": {"name": fn, "arguments": {"input": last["content"][5:].strip()}}}
            final = {"role": "assistant", "content": "", "tool_calls": [call]}
            return await self._answer(request, body, fault, [], "stop", prompt, "message", final)
        tokens, finish = self._limit(echo_reply(msgs).split(), body)
        return await self._answer(request, body, fault, tokens, finish, prompt, "message")

    async def generate(self, request: web.Request, rec: Recorded, fault: Fault | None) -> web.StreamResponse:
        body = rec.json
        problem = self._check_model(body)
        if problem is not None:
            return problem
        prompt = body.get("prompt")
        if not prompt:
            return self._load(body, "response")
        if not isinstance(prompt, str):
            return self._error(400, "prompt must be a string")
        tokens, finish = self._limit(f"echo: {prompt}".split(), body)
        used = words(prompt) + (words(body["system"]) if body.get("system") else 0)
        return await self._answer(request, body, fault, tokens, finish, used, "response")

    def _limit(self, tokens: list[str], body: dict[str, Any]) -> tuple[list[str], str]:
        limit = (body.get("options") or {}).get("num_predict")
        if isinstance(limit, int) and 0 <= limit < len(tokens):
            return tokens[:limit], "length"
        return tokens, "stop"

    def _load(self, body: dict[str, Any], field: str) -> web.Response:
        out: dict[str, Any] = {"model": body["model"], "created_at": _now(), "done": True, "done_reason": "load"}
        out[field] = {"role": "assistant", "content": ""} if field == "message" else ""
        return web.json_response(out)

    def _piece(self, field: str, text: str) -> Any:
        return {"role": "assistant", "content": text} if field == "message" else text

    async def _answer(
        self, request: web.Request, body: dict[str, Any], fault: Fault | None, tokens: list[str], finish: str,
        prompt: int, field: str, final_message: dict[str, Any] | None = None,
    ) -> web.StreamResponse:
        stats = {
            "done": True, "done_reason": finish, "total_duration": 1_000_000, "load_duration": 10_000,
            "prompt_eval_count": prompt, "prompt_eval_duration": 100_000,
            "eval_count": len(tokens), "eval_duration": 500_000,
        }
        head = {"model": body["model"], "created_at": _now()}
        if not body.get("stream", True):  # Ollama streams by default
            text = " ".join(tokens)
            whole = final_message or self._piece(field, text)
            return web.json_response({**head, field: whole, **stats})
        lines = [
            {**head, field: self._piece(field, tok if i == 0 else " " + tok), "done": False}
            for i, tok in enumerate(tokens)
        ]
        if final_message is not None:  # Ollama sends tool calls in one non-final line
            lines.append({**head, field: final_message, "done": False})
        lines.append({**head, field: self._piece(field, ""), **stats})
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        for n, line in enumerate(lines):
            if fault is not None and fault.cut_stream_after is not None and n >= fault.cut_stream_after:
                if fault.error_type:
                    msg = fault.message or "an error was encountered while running the model"
                    await resp.write(_ndjson({"error": msg}))
                    await resp.write_eof()
                else:
                    await cut_connection(request)
                return resp
            await resp.write(_ndjson(line))
        await resp.write_eof()
        return resp

    # ---- embeddings and models ---------------------------------------------
    async def embed(self, request: web.Request, rec: Recorded, fault: Fault | None) -> web.StreamResponse:
        body = rec.json
        problem = self._check_model(body)
        if problem is not None:
            return problem
        inputs = body.get("input")
        if isinstance(inputs, str):
            inputs = [inputs]
        if not isinstance(inputs, list) or not all(isinstance(x, str) for x in inputs):
            return self._error(400, "invalid input type")
        dims = int(body.get("dimensions") or 8)
        return web.json_response({
            "model": body["model"],
            "embeddings": [fake_vector(t, dims) for t in inputs],
            "total_duration": 1_000_000, "load_duration": 10_000,
            "prompt_eval_count": sum(words(t) for t in inputs),
        })

    async def tags(self, request: web.Request, rec: Recorded, fault: Fault | None) -> web.StreamResponse:
        models = [
            {
                "name": m, "model": m, "modified_at": "2024-12-01T10:00:00.000000000Z", "size": 2019393189,
                "digest": "a80c4f17acd55265feec403c7aef86be0c25983ab279d83f3bcd3abbcb5b8b72",
                "details": {"parent_model": "", "format": "gguf", "family": "llama", "families": ["llama"],
                            "parameter_size": "3.2B", "quantization_level": "Q4_K_M"},
            }
            for m in self.model_names
        ]
        return web.json_response({"models": models})

    async def root(self, request: web.Request, rec: Recorded, fault: Fault | None) -> web.StreamResponse:
        return web.Response(text="Ollama is running")


def _ndjson(obj: Any) -> bytes:
    return (json.dumps(obj) + "\n").encode()
