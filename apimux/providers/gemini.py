"""Google's Gemini API (``generativelanguage.googleapis.com``, ``/v1beta``).

Pure translation: OpenAI-shaped messages become ``contents`` with roles
``user`` / ``model`` and typed ``parts``; the system prompt becomes
``systemInstruction``; sampling parameters go into ``generationConfig``.
Streams are SSE ``data:`` lines of whole ``GenerateContentResponse``
objects with NO terminator: a clean end of the connection is the end of the
answer (a cut one surfaces from the transport as ``ConnectionFailed``).
Errors are ``google.rpc.Status`` envelopes whose ``RetryInfo`` says how long
to wait after a 429.
"""

from __future__ import annotations

import json
import mimetypes
from collections.abc import Mapping
from typing import Any, ClassVar

from apimux.core.retry import parse_duration, parse_retry_after
from apimux.errors import (
    ApimuxError,
    AuthError,
    BadRequest,
    NotFound,
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
from apimux.types import ChatChunk, ChatResponse, EmbedResponse, Message, ModelInfo, ToolCall, Usage

FINISH_REASONS = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
    "LANGUAGE": "content_filter",
    "IMAGE_PROHIBITED_CONTENT": "content_filter",
    "IMAGE_RECITATION": "content_filter",
}

STATUS_ERRORS: dict[str, type[ApimuxError]] = {
    "INVALID_ARGUMENT": BadRequest,
    "FAILED_PRECONDITION": BadRequest,
    "OUT_OF_RANGE": BadRequest,
    "PERMISSION_DENIED": AuthError,
    "UNAUTHENTICATED": AuthError,
    "NOT_FOUND": NotFound,
    "RESOURCE_EXHAUSTED": RateLimited,
    "UNAVAILABLE": UpstreamError,
    "INTERNAL": UpstreamError,
    "UNKNOWN": UpstreamError,
    "DEADLINE_EXCEEDED": Timeout,
}
# ErrorInfo reasons that mean "this key is bad" even under a 400 INVALID_ARGUMENT.
AUTH_REASONS = frozenset({"API_KEY_INVALID", "API_KEY_SERVICE_BLOCKED", "API_KEY_HTTP_REFERRER_BLOCKED"})

# OpenAI parameter -> generationConfig field.
GENERATION_FIELDS = {
    "max_tokens": "maxOutputTokens",
    "max_completion_tokens": "maxOutputTokens",
    "temperature": "temperature",
    "top_p": "topP",
    "top_k": "topK",
    "n": "candidateCount",
    "seed": "seed",
    "presence_penalty": "presencePenalty",
    "frequency_penalty": "frequencyPenalty",
}
# Native request fields a caller may pass straight through.
NATIVE_FIELDS = ("safetySettings", "cachedContent", "toolConfig")

# A function call's ``thoughtSignature`` must come back with the call in the
# next request (Gemini 3 refuses the history with a 400 without it), but an
# OpenAI tool call has nowhere to keep it but its id: the id we hand out is
# ``<call id>~sig~<signature>``. "~" is in no base64 alphabet, so the split
# is unambiguous, and the caller just echoes the id back as usual.
SIGNATURE_MARK = "~sig~"


def id_with_signature(call_id: str, signature: Any) -> str:
    return f"{call_id}{SIGNATURE_MARK}{signature}" if isinstance(signature, str) and signature else call_id


def signature_of(call_id: str) -> str | None:
    """The ``thoughtSignature`` carried in a tool call id, if any."""
    _, mark, signature = call_id.rpartition(SIGNATURE_MARK)
    return signature if mark and signature else None


# ---- request translation (pure functions) --------------------------------
def model_path(model: str) -> str:
    """``gemini-2.0-flash`` -> ``models/gemini-2.0-flash``; ``tunedModels/x`` stays."""
    return model if "/" in model else f"models/{model}"


def image_part(url: str) -> dict[str, Any]:
    """OpenAI ``image_url`` -> ``inlineData`` (data URL) or ``fileData`` (a URI)."""
    if url.startswith("data:"):
        media_type, data = data_url(url)
        return {"inlineData": {"mimeType": media_type, "data": data}}
    mime = mimetypes.guess_type(url.split("?")[0])[0] or "image/jpeg"
    return {"fileData": {"mimeType": mime, "fileUri": url}}


def parts_of(content: Any) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"text": content}] if content else []
    parts: list[dict[str, Any]] = []
    for part in content:
        kind = part.get("type")
        if kind == "text":
            parts.append({"text": part.get("text", "")})
        elif kind == "image_url":
            parts.append(image_part(image_url_of(part)))
        elif kind is None:
            parts.append(dict(part))  # already a Gemini part
        else:
            raise BadRequest(f"gemini: unsupported content part type {kind!r}")
    return parts


def _args(arguments: Any) -> dict[str, Any]:
    """``functionCall.args`` must be an object; wrap anything else."""
    value = tool_arguments(arguments)
    return value if isinstance(value, dict) else {"value": value}


def _tool_response(content: Any) -> dict[str, Any]:
    """A ``functionResponse.response`` must be an object; wrap anything else."""
    text = text_of(content)
    try:
        value = json.loads(text)
    except ValueError:
        return {"result": text}
    return value if isinstance(value, dict) else {"result": value}


def convert_messages(messages: list[Message]) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """OpenAI messages -> (``systemInstruction``, ``contents``).

    A tool message names only its call id; Gemini wants the function's name,
    found from the assistant turn that made the call. Consecutive turns of
    one role are merged (parallel function responses share one turn).
    """
    contents: list[dict[str, Any]] = []
    names: dict[str, str] = {}
    for m in messages:
        role = m.get("role")
        if role in SYSTEM_ROLES:
            continue  # read by system_text
        if role == "user":
            _append(contents, "user", parts_of(m.get("content")))
        elif role == "assistant":
            parts = parts_of(m.get("content"))
            for tc in m.get("tool_calls") or ():
                fn = tc.get("function") or {}
                call_id = str(tc.get("id") or "")
                names[call_id] = fn.get("name", "")
                call = {"name": fn.get("name", ""), "args": _args(fn.get("arguments"))}
                part: dict[str, Any] = {"functionCall": call}
                signature = signature_of(call_id)
                if signature:
                    part["thoughtSignature"] = signature
                parts.append(part)
            _append(contents, "model", parts)
        elif role == "tool":
            call_id = m.get("tool_call_id", "")
            name = m.get("name") or names.get(call_id) or call_id
            response = _tool_response(m.get("content"))
            _append(contents, "user", [{"functionResponse": {"name": name, "response": response}}])
        else:
            raise BadRequest(f"gemini has no message role {role!r}")
    text = system_text(messages)
    return ({"parts": [{"text": text}]} if text else None), contents


def _append(contents: list[dict[str, Any]], role: str, parts: list[dict[str, Any]]) -> None:
    if not parts:
        return
    if contents and contents[-1]["role"] == role:
        contents[-1]["parts"].extend(parts)
    else:
        contents.append({"role": role, "parts": parts})


def convert_tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI function tools -> one ``functionDeclarations`` tool; native tools pass.

    ``parametersJsonSchema`` takes full JSON Schema (``parameters`` accepts
    only an OpenAPI subset and refuses e.g. ``additionalProperties``).
    """
    decls: list[dict[str, Any]] = []
    native: list[dict[str, Any]] = []
    for t in tools:
        if t.get("type") == "function" and "function" in t:
            fn = t["function"]
            decl: dict[str, Any] = {"name": fn["name"]}
            if fn.get("description"):
                decl["description"] = fn["description"]
            if fn.get("parameters"):
                decl["parametersJsonSchema"] = fn["parameters"]
            decls.append(decl)
        else:
            native.append(dict(t))
    return ([{"functionDeclarations": decls}] if decls else []) + native


def convert_tool_choice(choice: Any) -> dict[str, Any] | None:
    if choice is None:
        return None
    if choice == "auto":
        cfg: dict[str, Any] = {"mode": "AUTO"}
    elif choice == "required":
        cfg = {"mode": "ANY"}
    elif choice == "none":
        cfg = {"mode": "NONE"}
    elif isinstance(choice, Mapping) and choice.get("type") == "function":
        cfg = {"mode": "ANY", "allowedFunctionNames": [(choice.get("function") or {}).get("name", "")]}
    else:
        raise BadRequest(f"unsupported tool_choice {choice!r}")
    return {"functionCallingConfig": cfg}


def build_body(call: Call) -> dict[str, Any]:
    p = call.params
    system, contents = convert_messages(p.get("messages") or [])
    body: dict[str, Any] = {"contents": contents}
    if system is not None:
        body["systemInstruction"] = system
    gen: dict[str, Any] = {}
    for name, field in GENERATION_FIELDS.items():
        if p.get(name) is not None:
            gen[field] = p[name]
    stop = p.get("stop")
    if stop:
        gen["stopSequences"] = [stop] if isinstance(stop, str) else list(stop)
    fmt = p.get("response_format")
    if isinstance(fmt, Mapping) and fmt.get("type") in ("json_object", "json_schema"):
        gen["responseMimeType"] = "application/json"
        schema = (fmt.get("json_schema") or {}).get("schema")
        if schema:
            gen["responseJsonSchema"] = schema
    gen.update(p.get("generation_config") or p.get("generationConfig") or {})
    if gen:
        body["generationConfig"] = gen
    if p.get("tools"):
        body["tools"] = convert_tools(p["tools"])
        choice = convert_tool_choice(p.get("tool_choice"))
        if choice is not None:
            body["toolConfig"] = choice
    for name in NATIVE_FIELDS:
        if p.get(name) is not None:
            body[name] = p[name]
    return body


# ---- response translation --------------------------------------------------
def usage_from(u: Mapping[str, Any] | None) -> Usage:
    """``thoughtsTokenCount`` is billed as output, like OpenAI's reasoning tokens."""
    if not u:
        return Usage()
    completion = int(u.get("candidatesTokenCount") or 0) + int(u.get("thoughtsTokenCount") or 0)
    return Usage(int(u.get("promptTokenCount") or 0), completion, int(u.get("totalTokenCount") or 0))


def finish_reason(reason: str | None, has_calls: bool) -> str | None:
    if not reason or reason == "FINISH_REASON_UNSPECIFIED":
        return None
    if has_calls and reason == "STOP":
        return "tool_calls"  # Gemini says STOP; OpenAI callers look for tool_calls
    return FINISH_REASONS.get(reason, "stop")


def split_parts(parts: list[dict[str, Any]], first_index: int = 0) -> tuple[str, list[ToolCall]]:
    """Answer text (thought summaries left out) and function calls."""
    text: list[str] = []
    calls: list[ToolCall] = []
    for part in parts:
        if "functionCall" in part:
            fc = part["functionCall"]
            # Gemini may omit ids; a stable one lets callers pair results with calls.
            cid = fc.get("id") or f"call_{first_index + len(calls)}_{fc.get('name', '')}"
            cid = id_with_signature(cid, part.get("thoughtSignature"))
            calls.append(ToolCall(cid, fc.get("name", ""), json.dumps(fc.get("args") or {})))
        elif "text" in part and not part.get("thought"):
            text.append(part["text"])
    return "".join(text), calls


def parse_response(data: Mapping[str, Any], model: str) -> ChatResponse:
    candidates = data.get("candidates") or []
    if not candidates:
        blocked = (data.get("promptFeedback") or {}).get("blockReason")
        return ChatResponse("", data.get("modelVersion", model), "content_filter" if blocked else None,
                            usage_from(data.get("usageMetadata")), raw=data)
    cand = candidates[0]
    text, calls = split_parts((cand.get("content") or {}).get("parts") or [])
    return ChatResponse(
        text=text,
        model=data.get("modelVersion", model),
        finish_reason=finish_reason(cand.get("finishReason"), bool(calls)),
        usage=usage_from(data.get("usageMetadata")),
        tool_calls=calls,
        raw=data,
    )


def retry_delay(details: Any) -> float | None:
    """``RetryInfo.retryDelay`` (a protobuf Duration such as ``"30s"``) in seconds."""
    for d in details or ():
        if isinstance(d, Mapping) and str(d.get("@type", "")).endswith("google.rpc.RetryInfo"):
            delay = d.get("retryDelay")
            if isinstance(delay, Mapping):  # {"seconds": 30, "nanos": 0}
                return float(delay.get("seconds") or 0) + float(delay.get("nanos") or 0) / 1e9
            if isinstance(delay, str):
                return parse_duration(delay)
    return None


def error_from_status(http_status: int | None, data: Any, fallback: str) -> ApimuxError:
    """A ``google.rpc.Status`` envelope -> typed error (class from ``status``)."""
    err = data.get("error") if isinstance(data, Mapping) else None
    if isinstance(data, list) and data and isinstance(data[0], Mapping):
        err = data[0].get("error")  # non-SSE streaming answers wrap errors in an array
    if not isinstance(err, Mapping):
        return error_for_status(http_status or 500)(fallback, status=http_status, body=data)
    status = str(err.get("status") or "")
    code = err.get("code") if isinstance(err.get("code"), int) else http_status
    details = err.get("details") or []
    reasons = {d.get("reason") for d in details if isinstance(d, Mapping)}
    cls = AuthError if reasons & AUTH_REASONS else STATUS_ERRORS.get(status) or error_for_status(code or 500)
    message = str(err.get("message") or fallback)
    out = cls(f"{status}: {message}" if status else message, status=http_status or code, body=data)
    out.retry_after = retry_delay(details)
    return out


@register
class GeminiProvider(Provider):
    name = "gemini"
    aliases = ("google",)
    env_keys = ("GEMINI_API_KEY", "GOOGLE_API_KEY")
    env_base_url = ("GEMINI_BASE_URL",)
    default_base_url = "https://generativelanguage.googleapis.com"
    sends_request_id = False
    batch_limits: ClassVar[dict[str, int]] = {"embed": 100}
    api_version = "v1beta"

    def headers(self, key: str | None) -> dict[str, str]:
        h = {"Accept": "application/json"}
        if key:
            h["x-goog-api-key"] = key
        return h

    def _url(self, suffix: str) -> str:
        return self.url(f"/{self.options.get('api_version', self.api_version)}/{suffix}")

    # ---- chat -----------------------------------------------------------
    def chat_request(self, call: Call, key: str | None) -> HttpRequest:
        method = "streamGenerateContent" if call.stream else "generateContent"
        return HttpRequest(
            "POST", self._url(f"{model_path(call.model)}:{method}"), self.headers(key), json=build_body(call),
            params={"alt": "sse"} if call.stream else None,
        )

    def chat_response(self, call: Call, resp: HttpResponse) -> ChatResponse:
        data = load_json(resp, self.name)
        if not isinstance(data, Mapping):
            raise UpstreamError(f"gemini answer is not an object: {str(data)[:200]}", status=resp.status)
        return parse_response(data, call.model)

    def chat_stream(self, call: Call) -> GeminiStreamParser:
        return GeminiStreamParser(self.name)

    # ---- embeddings -----------------------------------------------------
    def embed_request(self, call: Call, key: str | None) -> HttpRequest:
        p = call.params
        texts = p.get("input")
        texts = [texts] if isinstance(texts, str) else list(texts or [])
        extra: dict[str, Any] = {}
        if p.get("dimensions"):
            extra["outputDimensionality"] = int(p["dimensions"])
        if p.get("task_type"):
            extra["taskType"] = p["task_type"]
        path = model_path(call.model)
        requests = [{"model": path, "content": {"parts": [{"text": t}]}, **extra} for t in texts]
        return HttpRequest("POST", self._url(f"{path}:batchEmbedContents"), self.headers(key),
                           json={"requests": requests})

    def embed_response(self, call: Call, resp: HttpResponse) -> EmbedResponse:
        data = load_json(resp, self.name)
        vectors = [[float(x) for x in e.get("values") or ()] for e in data.get("embeddings") or ()]
        return EmbedResponse(vectors, call.model, usage_from(data.get("usageMetadata")))

    # ---- models ---------------------------------------------------------
    def models_request(self, call: Call, key: str | None) -> HttpRequest:
        return HttpRequest("GET", self._url("models"), self.headers(key), params={"pageSize": "1000"})

    def models_response(self, call: Call, resp: HttpResponse) -> list[ModelInfo]:
        data = load_json(resp, self.name)
        return [ModelInfo(str(m["name"]).removeprefix("models/"), "google", m) for m in data.get("models") or []]

    # ---- errors -----------------------------------------------------------
    def error(self, call: Call, resp: HttpResponse) -> ApimuxError:
        err = error_from_status(resp.status, safe_json(resp.body), error_message(resp.body) or f"HTTP {resp.status}")
        if err.retry_after is None:
            err.retry_after = parse_retry_after(resp.headers, resp.wall)
        return err


class GeminiStreamParser:
    """Each SSE ``data:`` is a whole ``GenerateContentResponse``; no terminator."""

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self.sse = SSEDecoder()
        self.pending: ApimuxError | None = None
        self.usage: Usage | None = None
        self.usage_sent = False
        # Whole function calls arrive in any chunk; like the other backends they
        # are handed over together on the chunk that carries the finish reason.
        self.calls: list[ToolCall] = []
        self.calls_sent = False

    def feed(self, chunk: bytes) -> list[ChatChunk]:
        return self._events(self.sse.feed(chunk))

    def _events(self, events: list[SSEEvent]) -> list[ChatChunk]:
        return parse_keeping_text((ev.data for ev in events), self._event, self)

    def close(self) -> list[ChatChunk]:
        out = self._events(self.sse.flush())
        if self.pending is not None:
            raise self.pending  # nothing reads after close: the error wins
        calls = self.calls if not self.calls_sent else []
        if calls or (self.usage is not None and not self.usage_sent):
            out.append(ChatChunk(usage=self.usage, tool_calls=list(calls)))
        return out

    def _event(self, data: str) -> ChatChunk | None:
        try:
            obj = json.loads(data)
        except ValueError:
            raise StreamInterrupted(f"{self.backend} sent a malformed stream event: {data[:120]!r}") from None
        if isinstance(obj, Mapping) and "error" in obj:
            raise error_from_status(None, obj, "stream error")
        if obj.get("usageMetadata"):
            self.usage = usage_from(obj["usageMetadata"])  # cumulative; the last one is final
        chunk = ChatChunk()
        for cand in (obj.get("candidates") or [])[:1]:
            text, calls = split_parts((cand.get("content") or {}).get("parts") or [], len(self.calls))
            self.calls.extend(calls)
            chunk.text = text
            chunk.finish_reason = finish_reason(cand.get("finishReason"), bool(self.calls))
        if not obj.get("candidates") and (obj.get("promptFeedback") or {}).get("blockReason"):
            chunk.finish_reason = "content_filter"
        if chunk.finish_reason is not None:
            chunk.tool_calls, self.calls_sent = list(self.calls), True
            if self.usage is not None:
                chunk.usage, self.usage_sent = self.usage, True
        if not chunk.text and chunk.finish_reason is None:
            return None
        return chunk
