"""A loopback server speaking Anthropic's Messages API.

Validated in the tests by the official ``anthropic`` package. Conventions
shared with every chat simulator: the reply is ``echo_reply`` of the last
user turn, tokens are words, ``max_tokens`` truncates (``stop_reason``
``max_tokens``).

Tools: when the request carries tools and the last user turn is not a
``tool_result`` (or ``tool_choice`` forces a call), the simulator calls the
first (or the named) tool, filling string properties with the user's text.

Faults: ``Fault(cut_stream_after=N)`` drops the connection after N events;
``Fault(error_type="overloaded_error", cut_stream_after=N)`` instead sends
the protocol's mid-stream ``event: error`` after N events.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from apimux.testing.replies import echo_reply, fake_arguments
from apimux.testing.server import Fault, Recorded, SimServer, cut_connection, sse, words

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
BLOCK_TYPES = ("text", "image", "document", "tool_use", "tool_result", "thinking", "redacted_thinking")


class AnthropicSim(SimServer):
    name = "anthropic"

    def __init__(
        self,
        *,
        reply: Callable[[list[dict[str, Any]]], str] | None = None,
        ratelimit_headers: dict[str, str] | None = None,
        stream_delay: float = 0.0,
        models: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.reply = reply or echo_reply
        self.ratelimit_headers = ratelimit_headers or {}
        self.stream_delay = stream_delay
        self.model_ids = models or ["claude-sonnet-4-5", "claude-haiku-4-5"]

    @property
    def base_url(self) -> str:
        return self.url

    @staticmethod
    def system_of(rec: Recorded) -> Any:
        """Where the system prompt lands: the top-level ``system`` (text)."""
        system = (rec.json or {}).get("system")
        return system if system is None or isinstance(system, str) else _system_text(system)

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/messages", self.route(self.messages))
        app.router.add_get("/v1/models", self.route(self.list_models))

    def key_of(self, request: web.Request) -> str | None:
        # x-api-key is the documented header; recent official SDKs send the
        # same key as a bearer token, which the service accepts too.
        auth = request.headers.get("Authorization", "")
        return request.headers.get("x-api-key") or (auth[7:] if auth.startswith("Bearer ") else None)

    def error_response(self, status: int, message: str, fault: Fault | None) -> web.Response:
        kind = fault.error_type if fault and fault.error_type else ERROR_TYPES.get(status, "api_error")
        if status == 401 and fault is None:
            message = "invalid x-api-key"
        return web.json_response(error_body(kind, message), status=status, headers=self._headers())

    def _invalid(self, message: str) -> web.Response:
        return web.json_response(error_body("invalid_request_error", message), status=400, headers=self._headers())

    def _headers(self) -> dict[str, str]:
        return {"request-id": f"req_sim{time.monotonic_ns():x}", **self.ratelimit_headers}

    def _checks(self, request: web.Request, rec: Recorded) -> web.Response | None:
        """What the real API refuses before reading the body."""
        if not rec.key:
            return web.json_response(
                error_body("authentication_error", "x-api-key header is required"), status=401, headers=self._headers()
            )
        if not request.headers.get("anthropic-version"):
            return self._invalid("anthropic-version: header is required")
        return None

    # ---- messages ----------------------------------------------------------
    async def messages(self, request: web.Request, rec: Recorded, fault: Fault | None) -> web.StreamResponse:
        refused = self._checks(request, rec)
        if refused is not None:
            return refused
        try:
            body = rec.json
        except ValueError:
            return self._invalid("There was an error parsing the body")
        problem = validate_messages(body)
        if problem:
            return self._invalid(problem)
        msgs: list[dict[str, Any]] = body["messages"]
        prompt = words(_system_text(body.get("system"))) if body.get("system") else 0
        prompt += sum(words(_all_text(m["content"])) for m in msgs)
        tool = pick_tool(body)
        content: list[dict[str, Any]]
        if tool is not None:
            args = fake_arguments(tool.get("input_schema") or {}, _last_user_text(msgs))
            content = [{"type": "tool_use", "id": f"toolu_sim{time.monotonic_ns():x}", "name": tool["name"],
                        "input": args}]
            tokens = json.dumps(args).split()
            stop_reason, stop_seq = "tool_use", None
            out_tokens = len(tokens)
        else:
            text = self.reply(as_openai(msgs))
            text, stop_reason, stop_seq = apply_stops(text, body.get("stop_sequences") or [])
            tokens = text.split()
            if len(tokens) > body["max_tokens"]:
                tokens, stop_reason, stop_seq = tokens[: body["max_tokens"]], "max_tokens", None
            content = [{"type": "text", "text": " ".join(tokens)}]
            out_tokens = len(tokens)
        mid = f"msg_sim{time.monotonic_ns():x}"
        usage = {"input_tokens": prompt, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
                 "output_tokens": out_tokens, "service_tier": "standard"}
        message = {"id": mid, "type": "message", "role": "assistant", "model": body["model"], "content": content,
                   "stop_reason": stop_reason, "stop_sequence": stop_seq, "usage": usage}
        if body.get("stream"):
            return await self._stream(request, message, fault)
        return web.json_response(message, headers=self._headers())

    async def _stream(self, request: web.Request, message: dict[str, Any], fault: Fault | None) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8",
                                           "Cache-Control": "no-cache", **self._headers()})
        await resp.prepare(request)
        for n, (name, data) in enumerate(stream_events(message)):
            if fault is not None and fault.cut_stream_after is not None and n >= fault.cut_stream_after:
                if fault.error_type:
                    await resp.write(sse(error_body(fault.error_type, fault.message or "Overloaded"), "error"))
                    await resp.write_eof()
                else:
                    await cut_connection(request)
                return resp
            await resp.write(sse(data, name))
            if self.stream_delay:
                await asyncio.sleep(self.stream_delay)
        await resp.write_eof()
        return resp

    async def list_models(self, request: web.Request, rec: Recorded, fault: Fault | None) -> web.StreamResponse:
        refused = self._checks(request, rec)
        if refused is not None:
            return refused
        data = [{"type": "model", "id": m, "display_name": m.replace("-", " ").title(),
                 "created_at": "2025-09-29T00:00:00Z"} for m in self.model_ids]
        return web.json_response(
            {"data": data, "has_more": False, "first_id": data[0]["id"] if data else None,
             "last_id": data[-1]["id"] if data else None},
            headers=self._headers(),
        )


def error_body(kind: str, message: str) -> dict[str, Any]:
    rid = f"req_sim{time.monotonic_ns():x}"
    return {"type": "error", "error": {"type": kind, "message": message}, "request_id": rid}


def stream_events(message: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The SSE events the real API sends for ``message`` (text split by word)."""
    start_usage = {**message["usage"], "output_tokens": 1}
    events: list[tuple[str, dict[str, Any]]] = [
        ("message_start", {"type": "message_start", "message": {**message, "content": [], "stop_reason": None,
                                                                "stop_sequence": None, "usage": start_usage}}),
    ]
    for i, block in enumerate(message["content"]):
        if block["type"] == "text":
            events.append(("content_block_start", {"type": "content_block_start", "index": i,
                                                   "content_block": {"type": "text", "text": ""}}))
            events.append(("ping", {"type": "ping"}))
            for j, tok in enumerate(block["text"].split()):
                delta = {"type": "text_delta", "text": tok if j == 0 else " " + tok}
                events.append(("content_block_delta", {"type": "content_block_delta", "index": i, "delta": delta}))
        else:
            events.append(("content_block_start", {"type": "content_block_start", "index": i,
                                                   "content_block": {**block, "input": {}}}))
            args = json.dumps(block["input"])
            half = len(args) // 2
            for piece in ("", args[:half], args[half:]):  # the API's first delta is often empty
                delta = {"type": "input_json_delta", "partial_json": piece}
                events.append(("content_block_delta", {"type": "content_block_delta", "index": i, "delta": delta}))
        events.append(("content_block_stop", {"type": "content_block_stop", "index": i}))
    events.append(("message_delta", {"type": "message_delta",
                                     "delta": {"stop_reason": message["stop_reason"],
                                               "stop_sequence": message["stop_sequence"]},
                                     "usage": {"output_tokens": message["usage"]["output_tokens"]}}))
    events.append(("message_stop", {"type": "message_stop"}))
    return events


# ---- validation: the checks the real API makes --------------------------------
def validate_messages(body: Any) -> str | None:
    if not isinstance(body, dict):
        return "request body must be a JSON object"
    for name in ("model", "max_tokens", "messages"):
        if name not in body:
            return f"{name}: Field required"
    if not isinstance(body["model"], str) or not body["model"]:
        return "model: String should have at least 1 character"
    mt = body["max_tokens"]
    if not isinstance(mt, int) or isinstance(mt, bool) or mt < 1:
        return "max_tokens: Input should be a valid integer greater than or equal to 1"
    msgs = body["messages"]
    if not isinstance(msgs, list) or not msgs:
        return "messages: at least one message is required"
    system = body.get("system")
    if system is not None and not isinstance(system, (str, list)):
        return "system: Input should be a valid string or list of text blocks"
    prev_tool_ids: set[str] = set()
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            return f"messages.{i}: Input should be a valid dictionary"
        role = m.get("role")
        if role not in ("user", "assistant"):
            if role == "system":
                return ('messages: Unexpected role "system". The Messages API accepts a top-level `system` '
                        "parameter, not \"system\" as an input message role.")
            return f"messages.{i}.role: Input should be 'user' or 'assistant'"
        content = m.get("content")
        if isinstance(content, str):
            prev_tool_ids = set()
            continue
        if not isinstance(content, list):
            return f"messages.{i}.content: Input should be a valid string or list"
        tool_ids: set[str] = set()
        for j, block in enumerate(content):
            where = f"messages.{i}.content.{j}"
            problem = _validate_block(block, where, role)
            if problem:
                return problem
            if block["type"] == "tool_use":
                tool_ids.add(block.get("id", ""))
            if block["type"] == "tool_result" and block.get("tool_use_id") not in prev_tool_ids:
                return (f"{where}: unexpected `tool_use_id` found in `tool_result` blocks: "
                        f"{block.get('tool_use_id')}. Each `tool_result` block must have a corresponding "
                        "`tool_use` block in the previous message.")
        prev_tool_ids = tool_ids
    for k, tool in enumerate(body.get("tools") or ()):
        if not isinstance(tool, dict) or not tool.get("name"):
            return f"tools.{k}.name: Field required"
        if "type" not in tool and not isinstance(tool.get("input_schema"), dict):
            return f"tools.{k}.custom.input_schema: Field required"
    choice = body.get("tool_choice")
    if choice is not None:
        if not isinstance(choice, dict) or choice.get("type") not in ("auto", "any", "tool", "none"):
            return "tool_choice: Input tag does not match any of the expected tags: 'auto', 'any', 'tool', 'none'"
        if choice["type"] == "tool" and not choice.get("name"):
            return "tool_choice.tool.name: Field required"
    thinking = body.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") == "enabled":
        budget = thinking.get("budget_tokens")
        if not isinstance(budget, int) or budget < 1024:
            return "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024"
        if budget >= mt:
            return "`max_tokens` must be greater than `thinking.budget_tokens`."
    stops = body.get("stop_sequences")
    if stops is not None and (not isinstance(stops, list) or not all(isinstance(s, str) for s in stops)):
        return "stop_sequences: Input should be a valid list of strings"
    return None


def _validate_block(block: Any, where: str, role: str) -> str | None:
    if not isinstance(block, dict) or block.get("type") not in BLOCK_TYPES:
        kind = block.get("type") if isinstance(block, dict) else None
        return f"{where}.type: Input tag '{kind}' found using 'type' does not match any of the expected tags"
    kind = block["type"]
    if kind == "text" and not isinstance(block.get("text"), str):
        return f"{where}.text.text: Field required"
    if kind == "image":
        src = block.get("source")
        if not isinstance(src, dict) or src.get("type") not in ("base64", "url"):
            return f"{where}.image.source: Input tag does not match any of the expected tags: 'base64', 'url'"
        if src["type"] == "base64":
            if src.get("media_type") not in IMAGE_TYPES:
                return f"{where}.image.source.base64.media_type: Input should be one of {', '.join(IMAGE_TYPES)}"
            if not isinstance(src.get("data"), str) or not src["data"]:
                return f"{where}.image.source.base64.data: Field required"
    if kind == "tool_use":
        if role != "assistant":
            return f"{where}: tool_use blocks may only appear in assistant messages"
        if not block.get("id") or not block.get("name") or not isinstance(block.get("input"), dict):
            return f"{where}.tool_use: id, name and an object input are required"
    if kind == "tool_result" and role != "user":
        return f"{where}: tool_result blocks may only appear in user messages"
    return None


# ---- the deterministic answer ------------------------------------------------------
def _system_text(system: Any) -> str:
    return system if isinstance(system, str) else " ".join(b.get("text", "") for b in system or ())


def _all_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    parts = []
    for b in content:
        if b.get("type") == "text":
            parts.append(b.get("text", ""))
        elif b.get("type") == "tool_result":
            parts.append(_all_text(b.get("content") or ""))
        elif b.get("type") == "tool_use":
            parts.append(json.dumps(b.get("input")))
    return " ".join(parts)


def as_openai(msgs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages as ``echo_reply`` reads them (a tool result counts as the user's text)."""
    return [{"role": m["role"], "content": _all_text(m["content"])} for m in msgs]


def _last_user_text(msgs: list[dict[str, Any]]) -> str:
    return next((_all_text(m["content"]) for m in reversed(msgs) if m["role"] == "user"), "")


def pick_tool(body: dict[str, Any]) -> dict[str, Any] | None:
    tools = [t for t in body.get("tools") or () if "input_schema" in t]
    choice = body.get("tool_choice") or {"type": "auto"}
    if not tools or choice["type"] == "none":
        return None
    if choice["type"] == "tool":
        return next((t for t in tools if t["name"] == choice["name"]), None)
    last = body["messages"][-1]
    answered = isinstance(last["content"], list) and any(b.get("type") == "tool_result" for b in last["content"])
    if choice["type"] == "auto" and answered:
        return None  # the tool has answered: now reply in text
    return tools[0]


def apply_stops(text: str, stops: list[str]) -> tuple[str, str, str | None]:
    """Cut at the earliest stop sequence, as the model would stop generating there."""
    hits = [(text.find(s), s) for s in stops if s and s in text]
    if not hits:
        return text, "end_turn", None
    at, seq = min(hits)
    return text[:at].rstrip(), "stop_sequence", seq
