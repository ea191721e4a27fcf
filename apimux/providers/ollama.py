"""Ollama's native REST API: /api/chat, /api/generate, /api/embed, /api/tags.

Ollama differs from OpenAI in ways that matter for a translator:
``stream`` defaults to TRUE on the server, so every request states it;
sampling settings live in ``options`` (``max_tokens`` is ``num_predict``);
images are bare base64 strings in a message's ``images`` list; tool-call
arguments are JSON objects, not JSON text; streams are NDJSON that end with
a ``"done": true`` line, and errors are ``{"error": "..."}``, also mid-stream.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, ClassVar
from urllib.parse import urlsplit

from apimux.core.retry import parse_retry_after
from apimux.errors import (
    ApimuxError,
    BadRequest,
    Overloaded,
    StreamInterrupted,
    UpstreamError,
    error_for_status,
)
from apimux.providers.base import Call, Provider, bearer_headers, error_message, load_json, safe_json
from apimux.providers.messages import SYSTEM_ROLES, image_url_of
from apimux.providers.registry import register
from apimux.providers.streams import NDJSONDecoder, parse_keeping_text
from apimux.transport import HttpRequest, HttpResponse
from apimux.types import ChatChunk, ChatResponse, EmbedResponse, ModelInfo, ToolCall, Usage

DEFAULT_PORT = 11434

# Unified parameter -> Ollama ``options`` field.
OPTION_NAMES = {
    "max_tokens": "num_predict",
    "max_completion_tokens": "num_predict",
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "seed": "seed",
    "frequency_penalty": "frequency_penalty",
    "presence_penalty": "presence_penalty",
    "repeat_penalty": "repeat_penalty",
    "num_ctx": "num_ctx",
    "min_p": "min_p",
}
# Top-level request fields passed through unchanged when the caller gives them.
PASS_THROUGH = ("keep_alive", "think", "format", "raw", "suffix", "template", "context", "system",
                "truncate", "dimensions", "logprobs", "top_logprobs")


def parse_host(value: str) -> str:
    """``OLLAMA_HOST`` read as the ollama CLI and SDK read it: a bare
    ``host[:port]`` gets http and port 11434; an explicit ``http://host``
    means port 80 and ``https://host`` port 443."""
    value = value.strip().rstrip("/")
    scheme, sep, rest = value.partition("://")
    port = DEFAULT_PORT
    if not sep:
        scheme, rest = "http", value
    elif scheme == "http":
        port = 80
    elif scheme == "https":
        port = 443
    parts = urlsplit(f"{scheme}://{rest}")
    host = parts.hostname or "127.0.0.1"
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    return f"{scheme}://{host}:{parts.port or port}{parts.path.rstrip('/')}"


def options_from(params: dict[str, Any]) -> dict[str, Any]:
    opts: dict[str, Any] = dict(params.get("options") or {})
    for unified, native in OPTION_NAMES.items():
        if params.get(unified) is not None:
            opts.setdefault(native, params[unified])
    stop = params.get("stop")
    if stop is not None:
        opts.setdefault("stop", [stop] if isinstance(stop, str) else list(stop))
    return opts


def format_from(params: dict[str, Any]) -> Any:
    """OpenAI ``response_format`` -> Ollama ``format`` ("json" or a JSON schema)."""
    rf = params.get("response_format")
    if not isinstance(rf, dict):
        return None
    if rf.get("type") == "json_object":
        return "json"
    if rf.get("type") == "json_schema":
        return (rf.get("json_schema") or {}).get("schema")
    return None


def image_from_url(url: str) -> str:
    """An OpenAI image URL -> the base64 Ollama wants; only inline data URLs,
    because a translator does no I/O and Ollama cannot fetch URLs itself."""
    if url.startswith("data:") and "," in url:
        return url.split(",", 1)[1]
    raise BadRequest("ollama needs images inline as data: URLs (base64); fetch the image first")


def message_to_ollama(m: dict[str, Any], tool_names: dict[str, str]) -> dict[str, Any]:
    # Ollama's chat templates know system/user/assistant/tool; OpenAI's newer
    # "developer" role would be dropped or garbled, so it is sent as system.
    out: dict[str, Any] = {"role": "system" if m["role"] in SYSTEM_ROLES else m["role"]}
    content = m.get("content")
    if isinstance(content, list):
        texts: list[str] = []
        images: list[str] = []
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                texts.append(str(part.get("text", "")))
            elif kind == "image_url":
                images.append(image_from_url(image_url_of(part)))
            else:
                raise BadRequest(f"ollama cannot take a {kind!r} content part")
        out["content"] = "\n".join(texts)
        if images:
            out["images"] = images
    else:
        out["content"] = content or ""
    if m.get("images"):  # already in Ollama's shape
        out["images"] = list(m["images"])
    if m.get("tool_calls"):
        out["tool_calls"] = [
            {"function": {"name": tc["function"]["name"], "arguments": _args(tc["function"].get("arguments"))}}
            for tc in m["tool_calls"]
        ]
    if m["role"] == "tool":
        name = m.get("name") or tool_names.get(str(m.get("tool_call_id")))
        if name:
            out["tool_name"] = name
    return out


def _args(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value) if value.strip() else {}
        except ValueError:
            raise BadRequest(f"tool call arguments are not JSON: {value[:80]!r}") from None
    return value or {}


def messages_to_ollama(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # OpenAI links a tool result to its call by id; Ollama by the tool's name.
    tool_names = {
        str(tc.get("id")): tc["function"]["name"]
        for m in messages
        for tc in m.get("tool_calls") or ()
        if tc.get("function")
    }
    return [message_to_ollama(m, tool_names) for m in messages]


def tool_calls_from(items: list[dict[str, Any]] | None, start: int = 0) -> list[ToolCall]:
    out = []
    for i, tc in enumerate(items or (), start):
        fn = tc.get("function") or {}
        args = fn.get("arguments")
        text = args if isinstance(args, str) else json.dumps(args if args is not None else {})
        out.append(ToolCall(str(tc.get("id") or f"call_{i}"), fn.get("name", ""), text))
    return out


def finish_reason(done_reason: str | None, has_tools: bool) -> str:
    if has_tools:
        return "tool_calls"
    return "length" if done_reason == "length" else "stop"


def usage_from(data: dict[str, Any]) -> Usage:
    return Usage(int(data.get("prompt_eval_count") or 0), int(data.get("eval_count") or 0))


def error_from(status: int, body: bytes, retry_after: float | None) -> ApimuxError:
    """Ollama's ``{"error": "..."}`` with its status: 404 is an unpulled model,
    429 a cloud quota, and a 503 saying "server busy" is a full request queue
    (OLLAMA_MAX_QUEUE), which is overload rather than a broken server."""
    message = error_message(body) or f"HTTP {status}"
    cls = error_for_status(status)
    if status == 503 and "busy" in message.lower():
        cls = Overloaded
    return cls(message, status=status, retry_after=retry_after, body=safe_json(body))


@register
class OllamaProvider(Provider):
    name = "ollama"
    env_keys = ("OLLAMA_API_KEY",)  # only for ollama.com or an authenticating proxy
    env_base_url = ("OLLAMA_HOST",)
    default_base_url = "http://localhost:11434"
    needs_key = False
    batch_limits: ClassVar[dict[str, int]] = {"embed": 512}

    def __init__(self, endpoint: Any) -> None:
        super().__init__(endpoint)
        self.base_url = parse_host(self.base_url)

    def headers(self, key: str | None) -> dict[str, str]:
        return bearer_headers(key)

    def _body(self, call: Call, extra: dict[str, Any]) -> dict[str, Any]:
        p = call.params
        body: dict[str, Any] = {"model": call.model, **extra, "stream": bool(call.stream)}
        opts = options_from(p)
        if opts:
            body["options"] = opts
        fmt = format_from(p)
        if fmt is not None:
            body["format"] = fmt
        for name in PASS_THROUGH:
            if p.get(name) is not None:
                body[name] = p[name]
        return body

    def estimate_tokens(self, call: Call) -> int:
        base = super().estimate_tokens(call)
        prompt = call.params.get("prompt")
        return base + (len(prompt) // 4 if isinstance(prompt, str) else 0)

    # ---- chat -----------------------------------------------------------
    def chat_request(self, call: Call, key: str | None) -> HttpRequest:
        p = call.params
        extra: dict[str, Any] = {"messages": messages_to_ollama(p["messages"])}
        if p.get("tools") and p.get("tool_choice") != "none":
            extra["tools"] = p["tools"]  # OpenAI's tool schema is Ollama's
        return HttpRequest("POST", self.url("/api/chat"), self.headers(key), json=self._body(call, extra))

    def chat_response(self, call: Call, resp: HttpResponse) -> ChatResponse:
        data = load_json(resp, self.name)
        if not isinstance(data, dict) or not isinstance(data.get("message"), dict):
            raise UpstreamError(f"ollama chat response has no message: {str(data)[:200]}", status=resp.status)
        msg = data["message"]
        tools = tool_calls_from(msg.get("tool_calls"))
        return ChatResponse(
            text=msg.get("content") or "",
            model=data.get("model", call.model),
            finish_reason=finish_reason(data.get("done_reason"), bool(tools)),
            usage=usage_from(data),
            tool_calls=tools,
            raw=data,
        )

    def chat_stream(self, call: Call) -> OllamaStreamParser:
        return OllamaStreamParser(self.name, lambda obj: (obj.get("message") or {}))

    # ---- generate -------------------------------------------------------
    def generate_request(self, call: Call, key: str | None) -> HttpRequest:
        p = call.params
        extra: dict[str, Any] = {"prompt": p["prompt"]}
        if p.get("images"):
            extra["images"] = [i if not i.startswith("data:") else image_from_url(i) for i in p["images"]]
        return HttpRequest("POST", self.url("/api/generate"), self.headers(key), json=self._body(call, extra))

    def generate_response(self, call: Call, resp: HttpResponse) -> ChatResponse:
        data = load_json(resp, self.name)
        if not isinstance(data, dict) or "response" not in data:
            raise UpstreamError(f"ollama generate response has no 'response': {str(data)[:200]}", status=resp.status)
        return ChatResponse(
            text=data.get("response") or "",
            model=data.get("model", call.model),
            finish_reason=finish_reason(data.get("done_reason"), False),
            usage=usage_from(data),
            raw=data,
        )

    def generate_stream(self, call: Call) -> OllamaStreamParser:
        return OllamaStreamParser(self.name, lambda obj: {"content": obj.get("response")})

    # ---- embeddings -----------------------------------------------------
    def embed_request(self, call: Call, key: str | None) -> HttpRequest:
        p = call.params
        body: dict[str, Any] = {"model": call.model, "input": list(p["input"])}
        for name in ("truncate", "dimensions", "keep_alive", "options"):
            if p.get(name) is not None:
                body[name] = p[name]
        return HttpRequest("POST", self.url("/api/embed"), self.headers(key), json=body)

    def embed_response(self, call: Call, resp: HttpResponse) -> EmbedResponse:
        data = load_json(resp, self.name)
        vectors = data.get("embeddings") if isinstance(data, dict) else None
        if not isinstance(vectors, list):
            raise UpstreamError(f"ollama embed response has no embeddings: {str(data)[:200]}", status=resp.status)
        return EmbedResponse(
            vectors=[[float(x) for x in v] for v in vectors],
            model=data.get("model", call.model),
            usage=Usage(int(data.get("prompt_eval_count") or 0)),
        )

    # ---- models ---------------------------------------------------------
    def models_request(self, call: Call, key: str | None) -> HttpRequest:
        return HttpRequest("GET", self.url("/api/tags"), self.headers(key))

    def models_response(self, call: Call, resp: HttpResponse) -> list[ModelInfo]:
        data = load_json(resp, self.name)
        return [ModelInfo(m.get("name") or m.get("model", ""), None, m) for m in data.get("models") or []]

    # ---- errors ---------------------------------------------------------
    def error(self, call: Call, resp: HttpResponse) -> ApimuxError:
        return error_from(resp.status, resp.body, parse_retry_after(resp.headers, resp.wall))


class OllamaStreamParser:
    """NDJSON objects ending with one whose ``done`` is true; ``message_of``
    picks the part holding ``content``/``tool_calls`` (chat) or ``response``."""

    def __init__(self, backend: str, message_of: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        self.backend = backend
        self.message_of = message_of
        self.lines = NDJSONDecoder()
        self.done = False
        self.tools: list[ToolCall] = []
        self.pending: ApimuxError | None = None

    def feed(self, chunk: bytes) -> list[ChatChunk]:
        return parse_keeping_text(self.lines.feed(chunk), self._line, self)

    def close(self) -> list[ChatChunk]:
        out = parse_keeping_text(self.lines.flush(), self._line, self)
        if self.pending is not None:
            raise self.pending
        if not self.done:
            raise StreamInterrupted(f"{self.backend} stream ended without its done line")
        return out

    def _line(self, line: str) -> ChatChunk | None:
        try:
            obj = json.loads(line)
        except ValueError:
            raise StreamInterrupted(f"{self.backend} sent a malformed stream line: {line[:120]!r}") from None
        if not isinstance(obj, dict):
            raise StreamInterrupted(f"{self.backend} sent a stream line that is not an object: {line[:120]!r}")
        if obj.get("error"):
            # A failure after the 200 (runner crashed, context overflow): the
            # server's fault, so retryable while nothing reached the caller.
            raise UpstreamError(str(obj["error"]), body=obj)
        msg = self.message_of(obj)
        chunk = ChatChunk(text=msg.get("content") or "")
        self.tools += tool_calls_from(msg.get("tool_calls"), len(self.tools))
        if obj.get("done"):
            self.done = True
            chunk.finish_reason = finish_reason(obj.get("done_reason"), bool(self.tools))
            chunk.tool_calls = list(self.tools)
            chunk.usage = usage_from(obj)
        if not chunk.text and chunk.finish_reason is None:
            return None
        return chunk
