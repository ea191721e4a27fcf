"""Hugging Face Text Generation Inference (TGI).

Two faces: the native ``/generate`` and ``/generate_stream`` (op
``generate``), and the OpenAI-compatible ``/v1/chat/completions`` (op
``chat``), which is served by the OpenAI provider's own code through
composition; ``/info`` tells the server's limits (op ``info``).

TGI's errors are ``{"error": "...", "error_type": "..."}``, both as HTTP
bodies and as stream events; the ``error_type`` picks the class.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from apimux.core.retry import parse_retry_after
from apimux.errors import ApimuxError, BadRequest, Overloaded, StreamInterrupted, UpstreamError, error_for_status
from apimux.providers.base import Call, Provider, error_message, load_json, safe_json
from apimux.providers.messages import developer_as_system
from apimux.providers.openai import OpenAIProvider, OpenAIStreamParser
from apimux.providers.registry import register
from apimux.providers.streams import SSEDecoder, parse_keeping_text
from apimux.transport import HttpRequest, HttpResponse
from apimux.types import ChatChunk, ChatResponse, ModelInfo, Usage

ERROR_TYPES: dict[str, type[ApimuxError]] = {
    "overloaded": Overloaded,  # sent with 429: the router's queue is full
    "validation": BadRequest,  # 422
    "template_error": BadRequest,
    "tool_error": BadRequest,
    "missing_template_variable": BadRequest,
    "generation": UpstreamError,  # 424: the model shard failed
    "incomplete_generation": UpstreamError,  # 500
}

FINISH_REASONS = {"length": "length", "eos_token": "stop", "stop_sequence": "stop", "stop": "stop"}

# Unified name -> TGI ``parameters`` name.
PARAMETER_NAMES = {
    "max_tokens": "max_new_tokens",
    "max_completion_tokens": "max_new_tokens",
    "max_new_tokens": "max_new_tokens",
    "top_k": "top_k",
    "seed": "seed",
    "repetition_penalty": "repetition_penalty",
    "frequency_penalty": "frequency_penalty",
    "do_sample": "do_sample",
    "truncate": "truncate",
    "return_full_text": "return_full_text",
    "watermark": "watermark",
    "grammar": "grammar",
    "typical_p": "typical_p",
    "top_n_tokens": "top_n_tokens",
    "adapter_id": "adapter_id",
    "best_of": "best_of",
    "decoder_input_details": "decoder_input_details",
}


def tgi_error(status: int, data: Any, message: str, retry_after: float | None = None) -> ApimuxError:
    kind = data.get("error_type") if isinstance(data, dict) else None
    cls = ERROR_TYPES.get(str(kind)) if kind else None
    return (cls or error_for_status(status))(message, status=status, retry_after=retry_after, body=data)


def generate_parameters(params: Mapping[str, Any], stream: bool) -> dict[str, Any]:
    """Unified parameters -> TGI ``parameters``, within TGI's validation rules."""
    out: dict[str, Any] = dict(params.get("parameters") or {})
    for unified, native in PARAMETER_NAMES.items():
        if params.get(unified) is not None:
            out.setdefault(native, params[unified])
    temp = params.get("temperature")
    if temp is not None:
        if temp > 0:
            out.setdefault("temperature", temp)
        else:
            out.setdefault("do_sample", False)  # TGI wants temperature > 0; 0 means greedy
    top_p = params.get("top_p")
    if top_p is not None and 0 < top_p < 1:  # TGI rejects 1.0, which means "no top-p" anyway
        out.setdefault("top_p", top_p)
    stop = params.get("stop")
    if stop is not None:
        out.setdefault("stop", [stop] if isinstance(stop, str) else list(stop))
    out["details"] = True  # finish_reason and token counts live in details
    if stream:
        out.pop("decoder_input_details", None)  # TGI refuses it when streaming
    return out


class _OpenAIRoutes(OpenAIProvider):
    """TGI's OpenAI-compatible routes; not registered, used by composition."""

    name = "hf_tgi"


class _KeepsText:
    """``feed``/``close`` of TGI's two stream parsers: text before a mid-stream
    error reaches the caller first, and a stream must end with ``end_marker``."""

    backend: str
    sse: SSEDecoder
    done: bool
    pending: ApimuxError | None = None
    end_marker: str = ""
    _event: Callable[[str], ChatChunk | None]

    def feed(self, chunk: bytes) -> list[ChatChunk]:
        return parse_keeping_text((ev.data for ev in self.sse.feed(chunk)), self._event, self)

    def close(self) -> list[ChatChunk]:
        out = parse_keeping_text((ev.data for ev in self.sse.flush()), self._event, self)
        if self.pending is not None:
            raise self.pending
        if not self.done:
            raise StreamInterrupted(f"{self.backend} stream ended before {self.end_marker}")
        return out


class TGIChatStreamParser(_KeepsText, OpenAIStreamParser):
    """OpenAI chunks, but a mid-stream error is TGI's ``{"error", "error_type"}``."""

    end_marker = "[DONE]"

    def _event(self, data: str) -> ChatChunk | None:
        obj = safe_json(data.encode())
        if isinstance(obj, dict) and isinstance(obj.get("error"), str):
            raise tgi_error(500, obj, obj["error"])
        chunk = super()._event(data)
        if chunk is not None and chunk.finish_reason:
            chunk.finish_reason = FINISH_REASONS.get(chunk.finish_reason, chunk.finish_reason)
        return chunk


@register
class TGIProvider(Provider):
    name = "hf_tgi"
    aliases = ("tgi",)
    env_keys = ("HF_TOKEN", "HF_API_KEY")  # optional: Inference Endpoints want a token
    env_base_url = ("TGI_BASE_URL",)
    default_base_url = "http://localhost:8080"
    needs_key = False

    def __init__(self, endpoint: Any) -> None:
        super().__init__(endpoint)
        self.openai = _OpenAIRoutes(endpoint)
        self.openai.base_url = self.base_url + "/v1"

    def headers(self, key: str | None) -> dict[str, str]:
        return self.openai.headers(key)

    def estimate_tokens(self, call: Call) -> int:
        base = super().estimate_tokens(call)
        prompt = call.params.get("prompt")
        return base + (len(prompt) // 4 if isinstance(prompt, str) else 0)

    # ---- chat: the OpenAI provider's code on /v1 ---------------------------
    def chat_request(self, call: Call, key: str | None) -> HttpRequest:
        # TGI renders messages through the model's chat template, which knows
        # system/user/assistant/tool; OpenAI's "developer" role goes as system.
        messages = developer_as_system(call.params["messages"])
        if messages is not call.params["messages"]:
            call = Call(call.op, call.model, {**call.params, "messages": messages}, call.request_id, call.stream)
        return self.openai.chat_request(call, key)

    def chat_response(self, call: Call, resp: HttpResponse) -> ChatResponse:
        out = self.openai.chat_response(call, resp)
        if out.finish_reason:  # TGI before 2.x said "eos_token" here too
            out.finish_reason = FINISH_REASONS.get(out.finish_reason, out.finish_reason)
        return out

    def chat_stream(self, call: Call) -> TGIChatStreamParser:
        return TGIChatStreamParser(self.name)

    # ---- generate: the native API --------------------------------------------
    def generate_request(self, call: Call, key: str | None) -> HttpRequest:
        body = {"inputs": call.params["prompt"], "parameters": generate_parameters(call.params, call.stream)}
        path = "/generate_stream" if call.stream else "/generate"
        return HttpRequest("POST", self.url(path), self.headers(key), json=body)

    def generate_response(self, call: Call, resp: HttpResponse) -> ChatResponse:
        data = load_json(resp, self.name)
        if isinstance(data, list) and data:  # the compat route wraps it in a list
            data = data[0]
        if not isinstance(data, dict) or not isinstance(data.get("generated_text"), str):
            raise UpstreamError(f"TGI response has no generated_text: {str(data)[:200]}", status=resp.status)
        details = data.get("details") or {}
        prompt = _int(resp.headers.get("x-prompt-tokens"))
        if prompt is None:
            prompt = len(details.get("prefill") or ())
        completion = details.get("generated_tokens")
        if completion is None:
            completion = _int(resp.headers.get("x-generated-tokens")) or 0
        reason = details.get("finish_reason")
        return ChatResponse(
            text=data["generated_text"],
            model=call.model,
            finish_reason=FINISH_REASONS.get(reason, reason) if reason else None,
            usage=Usage(prompt, int(completion)),
            raw=data,
        )

    def generate_stream(self, call: Call) -> TGIGenerateStreamParser:
        return TGIGenerateStreamParser(self.name)

    # ---- server info and models ----------------------------------------------
    def info_request(self, call: Call, key: str | None) -> HttpRequest:
        return HttpRequest("GET", self.url("/info"), self.headers(key))

    def info_response(self, call: Call, resp: HttpResponse) -> dict[str, Any]:
        """``/info`` as TGI sends it, with ``max_input_tokens`` filled in from
        the pre-2.0 name ``max_input_length`` when only that is there."""
        data = load_json(resp, self.name)
        if not isinstance(data, dict):
            raise UpstreamError(f"TGI /info is not an object: {str(data)[:200]}", status=resp.status)
        info = dict(data)
        if info.get("max_input_tokens") is None and info.get("max_input_length") is not None:
            info["max_input_tokens"] = info["max_input_length"]
        return info

    def models_request(self, call: Call, key: str | None) -> HttpRequest:
        return self.info_request(call, key)

    def models_response(self, call: Call, resp: HttpResponse) -> list[ModelInfo]:
        info = self.info_response(call, resp)
        return [ModelInfo(str(info.get("model_id", "")), None, info)]

    # ---- errors ---------------------------------------------------------
    def error(self, call: Call, resp: HttpResponse) -> ApimuxError:
        data = safe_json(resp.body)
        message = error_message(resp.body) or f"HTTP {resp.status}"
        return tgi_error(resp.status, data, message, parse_retry_after(resp.headers, resp.wall))


class TGIGenerateStreamParser(_KeepsText):
    """``/generate_stream``: one SSE event per token; no ``[DONE]`` — the last
    event is the one whose ``generated_text`` (and ``details``) is set."""

    end_marker = "its final event"

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self.sse = SSEDecoder()
        self.done = False
        self.pending: ApimuxError | None = None

    def _event(self, data: str) -> ChatChunk | None:
        if data.strip() == "[DONE]":  # not sent by /generate_stream; harmless if a proxy adds it
            return None
        try:
            obj = json.loads(data)
        except ValueError:
            raise StreamInterrupted(f"{self.backend} sent a malformed stream event: {data[:120]!r}") from None
        if not isinstance(obj, dict):
            raise StreamInterrupted(f"{self.backend} sent a stream event that is not an object: {data[:120]!r}")
        if obj.get("error") is not None:
            raise tgi_error(500, obj, str(obj["error"]))
        token = obj.get("token") or {}
        # Special tokens (</s>, <|eot_id|>) are not part of the text.
        chunk = ChatChunk(text="" if token.get("special") else str(token.get("text") or ""))
        if obj.get("generated_text") is not None:
            self.done = True
            details = obj.get("details") or {}
            reason = details.get("finish_reason")
            chunk.finish_reason = FINISH_REASONS.get(reason, reason) if reason else "stop"
            chunk.usage = Usage(int(details.get("input_length") or 0), int(details.get("generated_tokens") or 0))
        if not chunk.text and chunk.finish_reason is None:
            return None
        return chunk


def _int(v: str | None) -> int | None:
    try:
        return int(v) if v is not None else None
    except ValueError:
        return None
