"""OPEA (Open Platform for Enterprise AI): OpenAI-compatible microservices
plus the ChatQnA megaservice.

The microservices (LLM text generation ``/v1/chat/completions``, embeddings
``/v1/embeddings``) are OpenAI's protocol, so this is the OpenAI provider
with other configuration. The ChatQnA megaservice (``/v1/chatqna``) is a RAG
pipeline with its own stream framing and is op ``chatqna``.

Model routing: ``client.chat("opea/chatqna", ...)`` goes to the megaservice;
any other model name goes to the microservice routes. Megaservice names can
be changed per endpoint with ``options={"megaservices": ["chatqna", ...]}``
(each served at ``/v1/<name>``). In a real deployment the megaservice
(port 8888) and the LLM microservice (port 9000) usually listen on different
ports: configure one endpoint group for each.

The base URL (``OPEA_ENDPOINT``) may be given with or without ``/v1``.
"""

from __future__ import annotations

import ast
import json
from typing import Any

from apimux.core.retry import parse_retry_after
from apimux.errors import ApimuxError, StreamInterrupted, error_for_status
from apimux.providers.base import Call, safe_json
from apimux.providers.openai import OpenAIProvider, OpenAIStreamParser
from apimux.providers.registry import register
from apimux.providers.streams import SSEDecoder
from apimux.transport import HttpRequest, HttpResponse
from apimux.types import ChatChunk, ChatResponse

MEGASERVICES = ("chatqna",)


def fastapi_message(body: bytes, status: int) -> str:
    """FastAPI's ``{"detail": "..."}`` or its validation list ``{"detail": [{loc, msg}]}``."""
    data = safe_json(body)
    if isinstance(data, dict):
        detail = data.get("detail")
        if isinstance(detail, list):
            parts = []
            for d in detail:
                if isinstance(d, dict):
                    loc = ".".join(str(x) for x in d.get("loc") or () if x != "body")
                    parts.append(f"{loc}: {d.get('msg')}" if loc else str(d.get("msg")))
            return "; ".join(parts) or f"HTTP {status}"
        if detail:
            return str(detail)
        err = data.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if err:
            return str(err)
    text = body[:500].decode("utf-8", errors="replace").strip()
    return text or f"HTTP {status}"


def decode_piece(data: str) -> str:
    """One ChatQnA stream event -> text. The megaservice frames each piece as
    a Python bytes repr (``b'Deep'``, ``b" it's"``); its no-LLM shortcut pastes
    raw text between ``b'`` and ``'`` without escaping; some deployments pass
    the LLM's OpenAI chunks through unchanged."""
    text = data.strip()
    if text[:2] in ("b'", 'b"') and len(text) >= 3:
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return text[2:-1] if text[-1] == text[1] else text[2:]
        if isinstance(value, bytes):
            return value.decode("utf-8", errors="replace")
        return str(value)
    if text.startswith("{"):
        try:
            obj = json.loads(text)
        except ValueError:
            return data
        if isinstance(obj, dict) and obj.get("choices"):
            delta = obj["choices"][0].get("delta") or obj["choices"][0].get("message") or {}
            return str(delta.get("content") or "")
        if isinstance(obj, dict) and isinstance(obj.get("text"), str):
            return obj["text"]
        return ""
    return data


class ChatQnAStreamParser:
    """``data: b'...'`` events ending with ``data: [DONE]``; no usage, and the
    only end reason the megaservice knows is a finished answer ("stop")."""

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self.sse = SSEDecoder()
        self.done = False

    def feed(self, chunk: bytes) -> list[ChatChunk]:
        return [c for ev in self.sse.feed(chunk) if (c := self._event(ev.data)) is not None]

    def close(self) -> list[ChatChunk]:
        out = [c for ev in self.sse.flush() if (c := self._event(ev.data)) is not None]
        if not self.done:
            raise StreamInterrupted(f"{self.backend} chatqna stream ended before [DONE]")
        return out

    def _event(self, data: str) -> ChatChunk | None:
        if self.done:
            return None
        if data.strip() == "[DONE]":
            self.done = True
            return ChatChunk(finish_reason="stop")
        text = decode_piece(data)
        return ChatChunk(text=text) if text else None


@register
class OPEAProvider(OpenAIProvider):
    name = "opea"
    env_keys = ("OPEA_API_KEY",)  # optional; OPEA services usually run without auth
    env_base_url = ("OPEA_ENDPOINT",)
    default_base_url = "http://localhost:8888"
    needs_key = False

    def __init__(self, endpoint: Any) -> None:
        super().__init__(endpoint)
        if not self.base_url.endswith("/v1"):
            self.base_url += "/v1"  # every OPEA route lives under /v1
        self.megaservices = tuple(self.options.get("megaservices") or MEGASERVICES)

    def estimate_tokens(self, call: Call) -> int:
        msgs = call.params.get("messages")
        if isinstance(msgs, str):  # a ChatQnA question
            return max(1, len(msgs) // 4 + int(call.params.get("max_tokens") or 0))
        return super().estimate_tokens(call)

    def is_megaservice(self, call: Call) -> bool:
        return call.model in self.megaservices

    # ---- chat: the megaservice for its names, else the microservice ---------
    def chat_request(self, call: Call, key: str | None) -> HttpRequest:
        if self.is_megaservice(call):
            return self.chatqna_request(call, key)
        return super().chat_request(call, key)

    def chat_stream(self, call: Call) -> Any:
        if self.is_megaservice(call):
            return ChatQnAStreamParser(self.name)
        return OpenAIStreamParser(self.name, self.stream_usage_path)

    # ---- the ChatQnA megaservice -----------------------------------------------
    def chatqna_request(self, call: Call, key: str | None) -> HttpRequest:
        """``messages`` is a question string or OpenAI messages; ``stream`` is
        always sent because the megaservice streams unless told otherwise.
        The model is not sent: the megaservice would pass it to its LLM."""
        params = dict(call.params)
        params.pop("model", None)
        params.pop("stream_options", None)  # unknown to the megaservice
        body = {**params, "stream": bool(call.stream)}
        name = call.model if self.is_megaservice(call) else MEGASERVICES[0]
        return HttpRequest("POST", self.url(f"/{name}"), self.headers(key), json=body)

    def chatqna_response(self, call: Call, resp: HttpResponse) -> ChatResponse:
        return super().chat_response(call, resp)  # an OpenAI chat completion

    def chatqna_stream(self, call: Call) -> ChatQnAStreamParser:
        return ChatQnAStreamParser(self.name)

    # ---- errors: FastAPI's envelope -------------------------------------------
    def error(self, call: Call, resp: HttpResponse) -> ApimuxError:
        cls = error_for_status(resp.status)
        return cls(
            fastapi_message(resp.body, resp.status),
            status=resp.status,
            retry_after=parse_retry_after(resp.headers, resp.wall),
            body=safe_json(resp.body),
        )
