"""Anthropic's Messages API (Claude): ``POST /v1/messages``.

Pure translation between the unified (OpenAI-shaped) chat call and
Anthropic's wire format: a top-level ``system``, content blocks, ``tool_use``
/ ``tool_result`` blocks, named SSE events ending with ``message_stop`` and
the ``{"type": "error", "error": {"type": ...}}`` envelope.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any

from apimux.core.pool import RateHint
from apimux.core.retry import parse_retry_after
from apimux.errors import (
    ApimuxError,
    AuthError,
    BadRequest,
    NotFound,
    Overloaded,
    RateLimited,
    StreamInterrupted,
    Timeout,
    UpstreamError,
    error_for_status,
)
from apimux.providers.base import Call, Provider, error_message, load_json, safe_json
from apimux.providers.messages import SYSTEM_ROLES, data_url, image_url_of, system_text, text_of, tool_arguments
from apimux.providers.registry import register
from apimux.providers.streams import SSEDecoder, SSEEvent, parse_keeping_text
from apimux.transport import HttpRequest, HttpResponse
from apimux.types import ChatChunk, ChatResponse, Message, ModelInfo, ToolCall, Usage

API_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 1024  # the API requires max_tokens; OpenAI callers rarely give one

FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

ERROR_TYPES: dict[str, type[ApimuxError]] = {
    "invalid_request_error": BadRequest,
    "request_too_large": BadRequest,
    "billing_error": BadRequest,
    "authentication_error": AuthError,
    "permission_error": AuthError,
    "not_found_error": NotFound,
    "rate_limit_error": RateLimited,
    "api_error": UpstreamError,
    "overloaded_error": Overloaded,
    "timeout_error": Timeout,
}

# OpenAI parameters that the Messages API has no equivalent for; dropped
# rather than sent, so one call can be routed to any backend.
_OPENAI_ONLY = frozenset(
    {
        "n", "presence_penalty", "frequency_penalty", "logprobs", "top_logprobs", "logit_bias",
        "seed", "response_format", "stream_options", "parallel_tool_calls", "user",
        "reasoning_effort", "store", "modalities",
    }
)
# Parameters this module translates itself.
_TRANSLATED = frozenset(
    {"messages", "max_tokens", "max_completion_tokens", "stop", "tools", "tool_choice", "stream"}
)


# ---- request translation (pure functions) --------------------------------
def image_block(url: str) -> dict[str, Any]:
    """An OpenAI ``image_url`` -> an Anthropic ``image`` block (base64 or URL source)."""
    if url.startswith("data:"):
        media_type, data = data_url(url)
        return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
    return {"type": "image", "source": {"type": "url", "url": url}}


def content_blocks(content: Any) -> list[dict[str, Any]]:
    """OpenAI content (string or parts) -> Anthropic content blocks."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks: list[dict[str, Any]] = []
    for part in content:
        kind = part.get("type")
        if kind == "text":
            blocks.append({"type": "text", "text": part.get("text", "")})
        elif kind == "image_url":
            blocks.append(image_block(image_url_of(part)))
        else:  # already an Anthropic block (image, document, tool_result, ...)
            blocks.append(dict(part))
    return blocks


def convert_messages(messages: list[Message]) -> tuple[str | None, list[dict[str, Any]]]:
    """OpenAI messages -> (system text, Anthropic messages).

    Consecutive turns of one role are merged: tool results for parallel calls
    must share one user turn, right after the assistant's ``tool_use`` turn.
    """
    out: list[dict[str, Any]] = []
    for m in messages:
        role = m.get("role")
        if role in SYSTEM_ROLES:
            continue  # read by system_text
        if role == "tool":
            result = m.get("content")
            block: dict[str, Any] = {
                "type": "tool_result",
                "tool_use_id": m.get("tool_call_id", ""),
                "content": text_of(result) if isinstance(result, list) else (result or ""),
            }
            _append(out, "user", [block])
            continue
        if role == "assistant":
            blocks = content_blocks(m.get("content"))
            for tc in m.get("tool_calls") or ():
                fn = tc.get("function") or {}
                blocks.append(
                    {
                        "type": "tool_use",
                        "id": tc.get("id", ""),
                        "name": fn.get("name", ""),
                        "input": tool_arguments(fn.get("arguments")),
                    }
                )
            _append(out, "assistant", blocks)
            continue
        if role != "user":
            raise BadRequest(f"anthropic has no message role {role!r}")
        content = m.get("content")
        _append(out, "user", content if isinstance(content, str) else content_blocks(content))
    return (system_text(messages) or None), out


def _append(out: list[dict[str, Any]], role: str, content: str | list[dict[str, Any]]) -> None:
    if out and out[-1]["role"] == role:
        prev = out[-1]["content"]
        prev_blocks = [{"type": "text", "text": prev}] if isinstance(prev, str) else prev
        new_blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        out[-1]["content"] = prev_blocks + new_blocks
    else:
        out.append({"role": role, "content": content})


def convert_tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI function tools -> Anthropic custom tools; native tools pass through."""
    out = []
    for t in tools:
        if t.get("type") == "function" and "function" in t:
            fn = t["function"]
            tool: dict[str, Any] = {
                "name": fn["name"],
                "input_schema": fn.get("parameters") or {"type": "object", "properties": {}},
            }
            if fn.get("description"):
                tool["description"] = fn["description"]
            out.append(tool)
        else:
            out.append(dict(t))
    return out


def convert_tool_choice(choice: Any, parallel: Any) -> dict[str, Any] | None:
    """OpenAI ``tool_choice`` (+ ``parallel_tool_calls``) -> Anthropic ``tool_choice``."""
    out: dict[str, Any] | None
    if choice is None:
        out = None
    elif choice == "auto":
        out = {"type": "auto"}
    elif choice == "required":
        out = {"type": "any"}
    elif choice == "none":
        out = {"type": "none"}
    elif isinstance(choice, Mapping) and choice.get("type") == "function":
        out = {"type": "tool", "name": (choice.get("function") or {}).get("name", "")}
    elif isinstance(choice, Mapping):
        out = dict(choice)  # already Anthropic-shaped
    else:
        raise BadRequest(f"unsupported tool_choice {choice!r}")
    if parallel is False:
        out = out or {"type": "auto"}
        if out["type"] != "none":
            out["disable_parallel_tool_use"] = True
    return out


def build_body(call: Call, default_max_tokens: int = DEFAULT_MAX_TOKENS) -> dict[str, Any]:
    p = call.params
    system, messages = convert_messages(p.get("messages") or [])
    max_tokens = p.get("max_tokens") or p.get("max_completion_tokens")
    if not max_tokens:
        # With extended thinking the API wants max_tokens > thinking.budget_tokens;
        # the default is room for the answer on top of the thinking budget.
        thinking = p.get("thinking")
        budget = thinking.get("budget_tokens") if isinstance(thinking, Mapping) else None
        max_tokens = default_max_tokens + (int(budget) if isinstance(budget, int) else 0)
    body: dict[str, Any] = {"model": call.model, "max_tokens": int(max_tokens), "messages": messages}
    if system is not None:
        body["system"] = system
    stop = p.get("stop")
    if stop:
        body["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if p.get("tools"):
        body["tools"] = convert_tools(p["tools"])
    choice = convert_tool_choice(p.get("tool_choice"), p.get("parallel_tool_calls"))
    if choice is not None and p.get("tools"):
        body["tool_choice"] = choice
    if p.get("user") and "metadata" not in p:
        body["metadata"] = {"user_id": str(p["user"])}
    for k, v in p.items():  # temperature, top_p, top_k, metadata, thinking, ...
        if k not in _TRANSLATED and k not in _OPENAI_ONLY and v is not None:
            body[k] = v
    if call.stream:
        body["stream"] = True
    return body


# ---- response translation --------------------------------------------------
def usage_from(u: Mapping[str, Any] | None) -> Usage:
    """Anthropic counts cache reads/writes apart from ``input_tokens``; OpenAI's
    ``prompt_tokens`` includes them, so they are added back."""
    if not u:
        return Usage()
    prompt = sum(int(u.get(k) or 0) for k in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"))
    return Usage(prompt, int(u.get("output_tokens") or 0))


def finish_reason(stop_reason: str | None) -> str | None:
    if stop_reason is None:
        return None
    return FINISH_REASONS.get(stop_reason, "stop")


def parse_message(data: Mapping[str, Any], model: str) -> ChatResponse:
    text: list[str] = []
    calls: list[ToolCall] = []
    for block in data.get("content") or ():
        kind = block.get("type")
        if kind == "text":
            text.append(block.get("text", ""))
        elif kind == "tool_use":
            calls.append(ToolCall(block.get("id", ""), block.get("name", ""), json.dumps(block.get("input") or {})))
    return ChatResponse(
        text="".join(text),
        model=data.get("model", model),
        finish_reason=finish_reason(data.get("stop_reason")),
        usage=usage_from(data.get("usage")),
        tool_calls=calls,
        raw=data,
    )


def error_from_envelope(status: int | None, data: Any, fallback: str) -> ApimuxError:
    """``{"type": "error", "error": {"type": ..., "message": ...}}`` -> typed error."""
    err = data.get("error") if isinstance(data, Mapping) else None
    kind = err.get("type") if isinstance(err, Mapping) else None
    cls = ERROR_TYPES.get(kind or "") or error_for_status(status or 500)
    message = str(err.get("message")) if isinstance(err, Mapping) and err.get("message") else fallback
    return cls(f"{kind}: {message}" if kind else message, status=status, body=data)


def _seconds_until(stamp: str | None, now: datetime | None) -> float | None:
    if not stamp or now is None:
        return None
    try:
        when = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, (when - now).total_seconds())


def _int(v: str | None) -> int | None:
    try:
        return int(v) if v is not None else None
    except ValueError:
        return None


def rate_hint_from(headers: Mapping[str, str]) -> RateHint | None:
    """``anthropic-ratelimit-*`` headers. Resets are RFC 3339 instants; they are
    turned into seconds against the response's own ``Date`` header, so the
    hint does not depend on our clock agreeing with Anthropic's."""
    pre = "anthropic-ratelimit-"
    rr = headers.get(pre + "requests-remaining")
    rt = headers.get(pre + "tokens-remaining")
    token_families = ("tokens", "input-tokens", "output-tokens")
    if rr is None and rt is None and not any(headers.get(f"{pre}{f}-remaining") for f in token_families):
        return None
    try:
        date = headers.get("date")
        now = parsedate_to_datetime(date) if date else None
    except (TypeError, ValueError, IndexError):
        now = None
    # "tokens" is the most restrictive family; else the tightest of input/output.
    tok_remaining, tok_reset = _int(rt), _seconds_until(headers.get(pre + "tokens-reset"), now)
    if tok_remaining is None:
        for fam in ("input-tokens", "output-tokens"):
            r = _int(headers.get(f"{pre}{fam}-remaining"))
            if r is not None and (tok_remaining is None or r < tok_remaining):
                tok_remaining, tok_reset = r, _seconds_until(headers.get(f"{pre}{fam}-reset"), now)
    return RateHint(
        remaining_requests=_int(rr),
        remaining_tokens=tok_remaining,
        reset_requests=_seconds_until(headers.get(pre + "requests-reset"), now),
        reset_tokens=tok_reset,
    )


@register
class AnthropicProvider(Provider):
    name = "anthropic"
    aliases = ("claude",)
    env_keys = ("ANTHROPIC_API_KEY", "CLAUDE_API_KEY")
    env_base_url = ("ANTHROPIC_BASE_URL",)
    default_base_url = "https://api.anthropic.com"
    sends_request_id = False  # Anthropic assigns its own (the request-id response header)

    def headers(self, key: str | None) -> dict[str, str]:
        h = {"Accept": "application/json", "anthropic-version": str(self.options.get("anthropic_version", API_VERSION))}
        if key:
            h["x-api-key"] = key
        beta = self.options.get("anthropic_beta")
        if beta:
            h["anthropic-beta"] = beta if isinstance(beta, str) else ",".join(beta)
        return h

    # ---- chat -----------------------------------------------------------
    def chat_request(self, call: Call, key: str | None) -> HttpRequest:
        body = build_body(call, int(self.options.get("max_tokens", DEFAULT_MAX_TOKENS)))
        return HttpRequest("POST", self.url("/v1/messages"), self.headers(key), json=body)

    def chat_response(self, call: Call, resp: HttpResponse) -> ChatResponse:
        data = load_json(resp, self.name)
        if not isinstance(data, Mapping) or data.get("type") != "message":
            raise UpstreamError(f"anthropic answer is not a message: {str(data)[:200]}", status=resp.status)
        return parse_message(data, call.model)

    def chat_stream(self, call: Call) -> AnthropicStreamParser:
        return AnthropicStreamParser(self.name)

    # ---- models ---------------------------------------------------------
    def models_request(self, call: Call, key: str | None) -> HttpRequest:
        return HttpRequest("GET", self.url("/v1/models"), self.headers(key), params={"limit": "1000"})

    def models_response(self, call: Call, resp: HttpResponse) -> list[ModelInfo]:
        data = load_json(resp, self.name)
        return [ModelInfo(m["id"], "anthropic", m) for m in data.get("data") or []]

    # ---- errors and limits ----------------------------------------------
    def error(self, call: Call, resp: HttpResponse) -> ApimuxError:
        err = error_from_envelope(resp.status, safe_json(resp.body), error_message(resp.body) or f"HTTP {resp.status}")
        err.retry_after = parse_retry_after(resp.headers, resp.wall)
        if err.retry_after is None and isinstance(err, RateLimited):
            # No retry-after: the reset of whichever budget is exhausted.
            hint = rate_hint_from(resp.headers)
            if hint is not None:
                waits = [
                    reset for remaining, reset in (
                        (hint.remaining_requests, hint.reset_requests), (hint.remaining_tokens, hint.reset_tokens)
                    ) if remaining == 0 and reset is not None
                ]
                err.retry_after = max(waits) if waits else None
        return err

    def rate_hint(self, headers: Mapping[str, str]) -> RateHint | None:
        return rate_hint_from(headers)


class AnthropicStreamParser:
    """Named SSE events: ``message_start`` … ``message_stop`` (the terminator)."""

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self.sse = SSEDecoder()
        self.pending: ApimuxError | None = None
        self.done = False
        self.input_usage: dict[str, Any] = {}
        self.output_tokens = 0
        self.tools: dict[int, dict[str, str]] = {}  # content block index -> tool_use so far

    def feed(self, chunk: bytes) -> list[ChatChunk]:
        return self._events(self.sse.feed(chunk))

    def _events(self, events: list[SSEEvent]) -> list[ChatChunk]:
        return parse_keeping_text(events, lambda ev: self._event(ev.event, ev.data), self)

    def close(self) -> list[ChatChunk]:
        out = self._events(self.sse.flush())
        if self.pending is not None:
            raise self.pending  # nothing reads after close: the error wins
        if not self.done:
            raise StreamInterrupted(f"{self.backend} stream ended before message_stop")
        return out

    def _event(self, name: str | None, data: str) -> ChatChunk | None:
        try:
            obj = json.loads(data)
        except ValueError:
            raise StreamInterrupted(f"{self.backend} sent a malformed stream event: {data[:120]!r}") from None
        kind = obj.get("type") or name
        if kind == "error":
            # Mid-stream errors carry no HTTP status; the type says what happened.
            raise error_from_envelope(None, obj, "stream error")
        if kind == "message_start":
            usage = (obj.get("message") or {}).get("usage") or {}
            self.input_usage = dict(usage)
            self.output_tokens = int(usage.get("output_tokens") or 0)
            return None
        if kind == "content_block_start":
            block = obj.get("content_block") or {}
            if block.get("type") == "tool_use":
                self.tools[int(obj.get("index", 0))] = {"id": block.get("id", ""), "name": block.get("name", ""),
                                                        "arguments": ""}
            elif block.get("type") == "text" and block.get("text"):
                return ChatChunk(text=block["text"])
            return None
        if kind == "content_block_delta":
            delta = obj.get("delta") or {}
            if delta.get("type") == "text_delta":
                return ChatChunk(text=delta.get("text", "")) if delta.get("text") else None
            if delta.get("type") == "input_json_delta":
                slot = self.tools.get(int(obj.get("index", 0)))
                if slot is not None:
                    slot["arguments"] += delta.get("partial_json", "")
            return None  # thinking / signature / citations deltas carry no answer text
        if kind == "message_delta":
            usage = obj.get("usage") or {}
            # output_tokens is cumulative; newer API versions repeat input counts here too.
            self.output_tokens = int(usage.get("output_tokens") or self.output_tokens)
            for k in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"):
                if usage.get(k) is not None:
                    self.input_usage[k] = usage[k]
            stop = (obj.get("delta") or {}).get("stop_reason")
            return ChatChunk(
                finish_reason=finish_reason(stop),
                usage=usage_from({**self.input_usage, "output_tokens": self.output_tokens}),
                tool_calls=[ToolCall(t["id"], t["name"], t["arguments"] or "{}") for t in self.tools.values()],
            )
        if kind == "message_stop":
            self.done = True
        return None  # ping, content_block_stop, unknown future events
