"""OpenAI's REST protocol, and the compatible family as configuration-only subclasses."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from apimux.core.pool import RateHint
from apimux.core.retry import parse_duration
from apimux.errors import ApimuxError, StreamInterrupted, UpstreamError, error_for_status
from apimux.providers.base import Call, Provider, bearer_headers, error_message, load_json, safe_json
from apimux.providers.registry import register
from apimux.providers.streams import SSEDecoder
from apimux.transport import HttpRequest, HttpResponse
from apimux.types import ChatChunk, ChatResponse, EmbedResponse, ModelInfo, ToolCall, Usage


def usage_from(data: Mapping[str, Any] | None) -> Usage:
    if not data:
        return Usage()
    return Usage(
        int(data.get("prompt_tokens") or 0),
        int(data.get("completion_tokens") or 0),
        int(data.get("total_tokens") or 0),
    )


def tool_calls_from(items: list[dict[str, Any]] | None) -> list[ToolCall]:
    return [
        ToolCall(t.get("id", ""), t["function"]["name"], t["function"].get("arguments") or "")
        for t in items or ()
        if t.get("function")
    ]


@register
class OpenAIProvider(Provider):
    name = "openai"
    env_keys = ("OPENAI_API_KEY",)
    env_base_url = ("OPENAI_BASE_URL",)
    default_base_url = "https://api.openai.com/v1"
    batch_limits: ClassVar[dict[str, int]] = {"embed": 2048}
    # Where a stream's final usage lives, if not in the top-level "usage".
    stream_usage_path: tuple[str, ...] = ()

    def headers(self, key: str | None) -> dict[str, str]:
        return bearer_headers(key)

    # ---- chat -----------------------------------------------------------
    def chat_request(self, call: Call, key: str | None) -> HttpRequest:
        body: dict[str, Any] = {"model": call.model, **call.params}
        if call.stream:
            body["stream"] = True
            opts = dict(body.get("stream_options") or {})
            opts.setdefault("include_usage", True)
            body["stream_options"] = opts
        return HttpRequest("POST", self.url("/chat/completions"), self.headers(key), json=body)

    def chat_response(self, call: Call, resp: HttpResponse) -> ChatResponse:
        data = load_json(resp, self.name)
        try:
            choice = data["choices"][0]
            message = choice.get("message") or {}
        except (KeyError, IndexError, TypeError):
            raise UpstreamError(f"{self.name} response has no choices: {str(data)[:200]}") from None
        return ChatResponse(
            text=message.get("content") or "",
            model=data.get("model", call.model),
            finish_reason=choice.get("finish_reason"),
            usage=usage_from(data.get("usage")),
            tool_calls=tool_calls_from(message.get("tool_calls")),
            raw=data,
        )

    def chat_stream(self, call: Call) -> OpenAIStreamParser:
        return OpenAIStreamParser(self.name, self.stream_usage_path)

    # ---- embeddings -----------------------------------------------------
    def embed_request(self, call: Call, key: str | None) -> HttpRequest:
        body = {"model": call.model, **call.params}
        return HttpRequest("POST", self.url("/embeddings"), self.headers(key), json=body)

    def embed_response(self, call: Call, resp: HttpResponse) -> EmbedResponse:
        data = load_json(resp, self.name)
        items = sorted(data.get("data") or [], key=lambda d: d.get("index", 0))
        return EmbedResponse(
            vectors=[decode_embedding(d["embedding"]) for d in items],
            model=data.get("model", call.model),
            usage=usage_from(data.get("usage")),
        )

    # ---- models ---------------------------------------------------------
    def models_request(self, call: Call, key: str | None) -> HttpRequest:
        return HttpRequest("GET", self.url("/models"), self.headers(key))

    def models_response(self, call: Call, resp: HttpResponse) -> list[ModelInfo]:
        data = load_json(resp, self.name)
        return [ModelInfo(m["id"], m.get("owned_by"), m) for m in data.get("data") or []]

    # ---- errors and limits ----------------------------------------------
    def error(self, call: Call, resp: HttpResponse) -> ApimuxError:
        err = super().error(call, resp)
        body = safe_json(resp.body)
        # OpenAI sends 429 "insufficient_quota" that no wait can fix.
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict) and error.get("code") == "insufficient_quota":
            err.retryable = False
        return err

    def rate_hint(self, headers: Mapping[str, str]) -> RateHint | None:
        rr = headers.get("x-ratelimit-remaining-requests")
        rt = headers.get("x-ratelimit-remaining-tokens")
        if rr is None and rt is None:
            return None
        return RateHint(
            remaining_requests=_int(rr),
            remaining_tokens=_int(rt),
            reset_requests=_dur(headers.get("x-ratelimit-reset-requests")),
            reset_tokens=_dur(headers.get("x-ratelimit-reset-tokens")),
        )


def decode_embedding(value: Any) -> list[float]:
    """A float list, or base64 of little-endian float32 (``encoding_format=base64``)."""
    if isinstance(value, str):
        return np.frombuffer(base64.b64decode(value), dtype="<f4").astype(float).tolist()
    return [float(x) for x in value]


def _int(v: str | None) -> int | None:
    try:
        return int(v) if v is not None else None
    except ValueError:
        return None


def _dur(v: str | None) -> float | None:
    return parse_duration(v) if v else None


class OpenAIStreamParser:
    """``data: {chunk}`` events ending with ``data: [DONE]``."""

    def __init__(self, backend: str, usage_path: tuple[str, ...] = ()) -> None:
        self.backend = backend
        self.usage_path = usage_path
        self.sse = SSEDecoder()
        self.done = False
        self.tools: dict[int, dict[str, str]] = {}

    def feed(self, chunk: bytes) -> list[ChatChunk]:
        return [c for ev in self.sse.feed(chunk) if (c := self._event(ev.data)) is not None]

    def close(self) -> list[ChatChunk]:
        out = [c for ev in self.sse.flush() if (c := self._event(ev.data)) is not None]
        if not self.done:
            raise StreamInterrupted(f"{self.backend} stream ended before [DONE]")
        return out

    def _event(self, data: str) -> ChatChunk | None:
        if data.strip() == "[DONE]":
            self.done = True
            return None
        try:
            obj = json.loads(data)
        except ValueError:
            raise StreamInterrupted(f"{self.backend} sent a malformed stream event: {data[:120]!r}") from None
        if "error" in obj and not obj.get("choices"):
            status = obj["error"].get("code") if isinstance(obj["error"], dict) else None
            cls = error_for_status(status if isinstance(status, int) else 500)
            raise cls(error_message(data.encode()), body=obj)
        chunk = ChatChunk()
        for choice in obj.get("choices") or ():
            delta = choice.get("delta") or {}
            chunk.text += delta.get("content") or ""
            for tc in delta.get("tool_calls") or ():
                slot = self.tools.setdefault(tc.get("index", 0), {"id": "", "name": "", "arguments": ""})
                slot["id"] = tc.get("id") or slot["id"]
                fn = tc.get("function") or {}
                slot["name"] += fn.get("name") or ""
                slot["arguments"] += fn.get("arguments") or ""
            if choice.get("finish_reason"):
                chunk.finish_reason = choice["finish_reason"]
                chunk.tool_calls = [ToolCall(t["id"], t["name"], t["arguments"]) for t in self.tools.values()]
        usage = obj.get("usage")
        for part in self.usage_path:
            usage = usage or (obj.get(part) or {}).get("usage")
        if usage:
            chunk.usage = usage_from(usage)
        if not chunk.text and chunk.finish_reason is None and chunk.usage is None:
            return None
        return chunk


@register
class GroqProvider(OpenAIProvider):
    name = "groq"
    env_keys = ("GROQ_API_KEY",)
    env_base_url = ("GROQ_BASE_URL",)
    default_base_url = "https://api.groq.com/openai/v1"
    stream_usage_path = ("x_groq",)


@register
class VLLMProvider(OpenAIProvider):
    name = "vllm"
    env_keys = ("VLLM_API_KEY",)
    env_base_url = ("VLLM_BASE_URL",)
    default_base_url = "http://localhost:8000/v1"
    needs_key = False
