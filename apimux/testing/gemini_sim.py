"""A loopback server speaking Google's Gemini API (``/v1beta``).

Validated in the tests by the official ``google-genai`` package. Shared chat
conventions: the reply is ``echo_reply`` of the last user turn, tokens are
words, ``maxOutputTokens`` truncates (``finishReason`` ``MAX_TOKENS``).

Like the real service it sends no ``retry-after`` header on a 429: a
``Fault(status=429, retry_after=30)`` becomes a ``google.rpc.RetryInfo``
detail with ``retryDelay: "30s"``. A bad key is the real ``400
INVALID_ARGUMENT`` with reason ``API_KEY_INVALID``; no key at all is ``403
PERMISSION_DENIED``. Streams (``?alt=sse``) end without a terminator;
``Fault(cut_stream_after=N)`` drops the connection after N events and
``Fault(error_type="UNAVAILABLE", cut_stream_after=N)`` sends an error
event there instead.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from apimux.testing.replies import echo_reply, fake_arguments, fake_vector
from apimux.testing.server import Fault, Recorded, SimServer, cut_connection, words

STATUSES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
CODES = {v: k for k, v in STATUSES.items()}

# Request fields the real API knows (proto JSON accepts lowerCamel and snake_case).
REQUEST_FIELDS = {"contents", "systemInstruction", "generationConfig", "tools", "toolConfig", "safetySettings",
                  "cachedContent"}
GENERATION_FIELDS = {
    "stopSequences", "responseMimeType", "responseSchema", "responseJsonSchema", "candidateCount",
    "maxOutputTokens", "temperature", "topP", "topK", "seed", "presencePenalty", "frequencyPenalty",
    "responseLogprobs", "logprobs", "enableEnhancedCivicAnswers", "responseModalities", "speechConfig",
    "thinkingConfig", "mediaResolution", "imageConfig",
}
PART_FIELDS = {"text", "inlineData", "fileData", "functionCall", "functionResponse", "executableCode",
               "codeExecutionResult"}


def _snake(name: str) -> str:
    return re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), name)


def _known(fields: set[str]) -> set[str]:
    return fields | {_snake(f) for f in fields}


def _get(obj: dict[str, Any], name: str) -> Any:
    """A field by its lowerCamel or snake_case name."""
    return obj[name] if name in obj else obj.get(_snake(name))


class GeminiSim(SimServer):
    name = "gemini"

    def __init__(
        self,
        *,
        reply: Callable[[list[dict[str, Any]]], str] | None = None,
        stream_delay: float = 0.0,
        models: list[str] | None = None,
        embed_dims: int = 8,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.reply = reply or echo_reply
        self.stream_delay = stream_delay
        self.model_ids = models or ["gemini-2.5-flash", "gemini-embedding-001"]
        self.embed_dims = embed_dims

    @property
    def base_url(self) -> str:
        return self.url

    @staticmethod
    def system_of(rec: Recorded) -> Any:
        """Where the system prompt lands: ``systemInstruction`` (its text)."""
        system = _get(rec.json or {}, "systemInstruction")
        return _parts_text(system.get("parts") or []) if isinstance(system, dict) else None

    def routes(self, app: web.Application) -> None:
        # The service answers on both versions; recent google-genai releases default to v1.
        for version in ("v1beta", "v1"):
            app.router.add_post(f"/{version}/models/{{target}}", self.route(self.model_method))
            app.router.add_get(f"/{version}/models", self.route(self.list_models))
            app.router.add_get(f"/{version}/models/{{target}}", self.route(self.get_model))

    def key_of(self, request: web.Request) -> str | None:
        return request.headers.get("x-goog-api-key") or request.query.get("key")

    # ---- errors: google.rpc.Status ---------------------------------------------------
    def error_response(self, status: int, message: str, fault: Fault | None) -> web.Response:
        if status == 401 and fault is None:  # the base's key check: what Google says for a bad key
            return self._error(400, "API key not valid. Please pass a valid API key.",
                               [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
                                 "domain": "googleapis.com",
                                 "metadata": {"service": "generativelanguage.googleapis.com"}}])
        details: list[dict[str, Any]] = []
        if status == 429:
            details.append({"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [
                {"quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                 "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier"}]})
            if fault is not None and fault.retry_after is not None:
                details.append({"@type": "type.googleapis.com/google.rpc.RetryInfo",
                                "retryDelay": f"{fault.retry_after:g}s"})
        kind = fault.error_type if fault and fault.error_type else None
        return self._error(status, message, details, kind)

    def _error(self, code: int, message: str, details: list[dict[str, Any]] | None = None,
               status: str | None = None) -> web.Response:
        return web.json_response(error_body(code, message, details, status), status=code)

    def _fault_response(self, fault: Fault) -> web.Response:
        # No retry-after header, like the real service: the delay is in RetryInfo.
        assert fault.status is not None
        resp = self.error_response(fault.status, fault.message or default_message(fault.status), fault)
        resp.headers.update(fault.headers)
        return resp

    def _invalid(self, message: str) -> web.Response:
        return self._error(400, message)

    def _checks(self, rec: Recorded) -> web.Response | None:
        if not rec.key:
            return self._error(403, "Method doesn't allow unregistered callers (callers without established "
                                    "identity). Please use API Key or other form of API consumer identity to call "
                                    "this API.")
        return None

    # ---- POST models/{model}:{method} --------------------------------------------------
    async def model_method(self, request: web.Request, rec: Recorded, fault: Fault | None) -> web.StreamResponse:
        refused = self._checks(rec)
        if refused is not None:
            return refused
        model, _, method = request.match_info["target"].partition(":")
        if method == "generateContent":
            return await self.generate(request, rec, model, False, fault)
        if method == "streamGenerateContent":
            return await self.generate(request, rec, model, True, fault)
        if method == "batchEmbedContents":
            return self.batch_embed(rec, model)
        if method == "embedContent":
            return self.embed_one(rec, model)
        return self._error(404, f"Method not found: {method or '(none)'}")

    async def generate(self, request: web.Request, rec: Recorded, model: str, stream: bool,
                       fault: Fault | None) -> web.StreamResponse:
        try:
            body = rec.json
        except ValueError:
            return self._invalid("Invalid JSON payload received.")
        problem = validate_generate(body) or (missing_signature(_get(body, "contents"))
                                              if model.startswith("gemini-3") else None)
        if problem:
            return self._invalid(problem)
        contents: list[dict[str, Any]] = _get(body, "contents")
        gen = _get(body, "generationConfig") or {}
        system = _get(body, "systemInstruction")
        prompt = sum(words(_parts_text(c.get("parts") or [])) for c in contents)
        if system:
            prompt += words(_parts_text(system.get("parts") or []))
        decl = pick_function(body)
        parts: list[dict[str, Any]]
        if decl is not None:
            schema = _get(decl, "parametersJsonSchema") or decl.get("parameters") or {}
            args = fake_arguments(schema, _last_user_text(contents), any_case=True)
            # Thinking models sign the first function call of a step; the
            # signature must come back with it (enforced for Gemini 3).
            parts = [{"functionCall": {"name": decl["name"], "args": args},
                      "thoughtSignature": base64.b64encode(f"sim-thought:{decl['name']}".encode()).decode()}]
            tokens = json.dumps(args).split()
            finish = "STOP"
        else:
            text = self.reply(as_openai(contents))
            finish = "STOP"
            for stop in _get(gen, "stopSequences") or ():
                if stop and stop in text:
                    text = text[: text.find(stop)].rstrip()
            tokens = text.split()
            limit = _get(gen, "maxOutputTokens")
            if limit is not None and len(tokens) > int(limit):
                tokens, finish = tokens[: int(limit)], "MAX_TOKENS"
            parts = [{"text": " ".join(tokens)}]
        rid = f"sim{time.monotonic_ns():x}"
        if stream:
            return await self._stream(request, rec, model, rid, parts, tokens, finish, prompt, fault)
        return web.json_response(
            {"candidates": [{"content": {"parts": parts, "role": "model"}, "finishReason": finish, "index": 0}],
             "usageMetadata": usage(prompt, len(tokens)), "modelVersion": model, "responseId": rid}
        )

    async def _stream(self, request: web.Request, rec: Recorded, model: str, rid: str, parts: list[dict[str, Any]],
                      tokens: list[str], finish: str, prompt: int, fault: Fault | None) -> web.StreamResponse:
        chunks: list[dict[str, Any]] = []
        if "text" in parts[0]:
            pieces = [t if i == 0 else " " + t for i, t in enumerate(tokens)] or [""]
            for i, piece in enumerate(pieces):
                cand: dict[str, Any] = {"content": {"parts": [{"text": piece}], "role": "model"}, "index": 0}
                if i == len(pieces) - 1:
                    cand["finishReason"] = finish
                chunks.append({"candidates": [cand], "usageMetadata": usage(prompt, i + 1),
                               "modelVersion": model, "responseId": rid})
        else:
            chunks.append({"candidates": [{"content": {"parts": parts, "role": "model"}, "finishReason": finish,
                                           "index": 0}],
                           "usageMetadata": usage(prompt, len(tokens)), "modelVersion": model, "responseId": rid})
        if chunks and "text" in parts[0]:
            chunks[-1]["usageMetadata"] = usage(prompt, len(tokens))
        if rec.query.get("alt") != "sse":  # without alt=sse the answer is one JSON array
            return web.json_response(chunks)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for n, chunk in enumerate(chunks):
            if fault is not None and fault.cut_stream_after is not None and n >= fault.cut_stream_after:
                if fault.error_type:
                    code = CODES.get(fault.error_type, 500)
                    err = error_body(code, fault.message or default_message(code), None, fault.error_type)
                    await resp.write(f"data: {json.dumps(err)}\r\n\r\n".encode())
                    await resp.write_eof()
                else:
                    await cut_connection(request)
                return resp
            # The real service separates events with CRLF pairs.
            await resp.write(f"data: {json.dumps(chunk)}\r\n\r\n".encode())
            if self.stream_delay:
                await asyncio.sleep(self.stream_delay)
        await resp.write_eof()
        return resp

    # ---- embeddings ---------------------------------------------------------------
    def batch_embed(self, rec: Recorded, model: str) -> web.Response:
        body = rec.json
        reqs = body.get("requests") if isinstance(body, dict) else None
        if not isinstance(reqs, list) or not reqs:
            return self._invalid("* BatchEmbedContentsRequest.requests: contents is not specified\n")
        if len(reqs) > 100:
            return self._invalid("* BatchEmbedContentsRequest.requests: at most 100 requests can be in one batch\n")
        out = []
        for i, r in enumerate(reqs):
            if not isinstance(r, dict) or r.get("model") != f"models/{model}":
                return self._invalid(f"* BatchEmbedContentsRequest.requests[{i}].model: the model must match "
                                     f"the parent model models/{model}\n")
            vec, problem = self._embed(r, f"requests[{i}]")
            if problem:
                return self._invalid(problem)
            out.append({"values": vec})
        return web.json_response({"embeddings": out})

    def embed_one(self, rec: Recorded, model: str) -> web.Response:
        body = rec.json
        vec, problem = self._embed(body if isinstance(body, dict) else {}, "content")
        if problem:
            return self._invalid(problem)
        return web.json_response({"embedding": {"values": vec}})

    def _embed(self, req: dict[str, Any], where: str) -> tuple[list[float], str | None]:
        parts = (req.get("content") or {}).get("parts")
        if not isinstance(parts, list) or not parts or not all(isinstance(p.get("text"), str) for p in parts):
            return [], f"* EmbedContentRequest.{where}.content.parts: contents is not specified\n"
        text = " ".join(p["text"] for p in parts)
        if not text.strip():
            return [], f"* EmbedContentRequest.{where}.content: text is empty\n"
        dims = int(_get(req, "outputDimensionality") or self.embed_dims)
        return fake_vector(text, dims), None

    # ---- models -------------------------------------------------------------------
    def _model(self, name: str) -> dict[str, Any]:
        methods = ["embedContent", "batchEmbedContents"] if "embedding" in name else [
            "generateContent", "countTokens"]
        return {"name": f"models/{name}", "version": "001", "displayName": name, "description": f"{name} (sim)",
                "inputTokenLimit": 1048576, "outputTokenLimit": 65536, "supportedGenerationMethods": methods}

    async def list_models(self, request: web.Request, rec: Recorded, fault: Fault | None) -> web.StreamResponse:
        refused = self._checks(rec)
        if refused is not None:
            return refused
        return web.json_response({"models": [self._model(m) for m in self.model_ids]})

    async def get_model(self, request: web.Request, rec: Recorded, fault: Fault | None) -> web.StreamResponse:
        refused = self._checks(rec)
        if refused is not None:
            return refused
        name = request.match_info["target"]
        if name not in self.model_ids:
            version = request.path.split("/")[1]
            return self._error(404, f"models/{name} is not found for API version {version}")
        return web.json_response(self._model(name))


def error_body(code: int, message: str, details: list[dict[str, Any]] | None = None,
               status: str | None = None) -> dict[str, Any]:
    err: dict[str, Any] = {"code": code, "message": message, "status": status or STATUSES.get(code, "UNKNOWN")}
    if details:
        err["details"] = details
    return {"error": err}


def default_message(code: int) -> str:
    return {
        429: "You exceeded your current quota, please check your plan and billing details.",
        500: "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting",
        503: "The model is overloaded. Please try again later.",
    }.get(code, f"HTTP {code}")


def usage(prompt: int, out: int) -> dict[str, Any]:
    return {"promptTokenCount": prompt, "candidatesTokenCount": out, "totalTokenCount": prompt + out,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}]}


# ---- validation: the checks the real API makes ----------------------------------
def validate_generate(body: Any) -> str | None:
    if not isinstance(body, dict):
        return "Invalid JSON payload received. Expected an object."
    for name in body:
        if name not in _known(REQUEST_FIELDS):
            return f'Invalid JSON payload received. Unknown name "{name}": Cannot find field.'
    contents = _get(body, "contents")
    if not isinstance(contents, list) or not contents:
        return "* GenerateContentRequest.contents: contents is not specified\n"
    for i, c in enumerate(contents):
        if not isinstance(c, dict):
            return f"* GenerateContentRequest.contents[{i}]: must be an object\n"
        if c.get("role") not in (None, "", "user", "model", "function"):
            return f"Please use a valid role: user, model. (contents[{i}].role = {c.get('role')!r})"
        problem = _validate_parts(c.get("parts"), f"contents[{i}]")
        if problem:
            return problem
    system = _get(body, "systemInstruction")
    if system is not None:
        problem = _validate_parts(system.get("parts") if isinstance(system, dict) else None, "system_instruction")
        if problem:
            return problem
    gen = _get(body, "generationConfig")
    if gen is not None:
        if not isinstance(gen, dict):
            return "Invalid value at 'generation_config': expected an object"
        for name in gen:
            if name not in _known(GENERATION_FIELDS):
                return (f"Invalid JSON payload received. Unknown name \"{name}\" at 'generation_config': "
                        "Cannot find field.")
    for t, tool in enumerate(_get(body, "tools") or ()):
        for d, decl in enumerate(_get(tool, "functionDeclarations") or ()):
            if not isinstance(decl, dict) or not decl.get("name"):
                return f"* GenerateContentRequest.tools[{t}].function_declarations[{d}].name: Name cannot be empty.\n"
    mode = ((_get(body, "toolConfig") or {}).get("functionCallingConfig") or {}).get("mode")
    if mode not in (None, "AUTO", "ANY", "NONE", "VALIDATED", "MODE_UNSPECIFIED"):
        return f"Invalid value at 'tool_config.function_calling_config.mode', \"{mode}\""
    return None


def missing_signature(contents: list[dict[str, Any]]) -> str | None:
    """Gemini 3's rule: in the current turn (every step since the last user
    content that is not only function responses) the first function call of
    each model step must carry the ``thoughtSignature`` it was answered with."""
    start = 0
    for i, c in enumerate(contents):
        if c.get("role") != "model" and any(_get(p, "functionResponse") is None for p in c.get("parts") or ()):
            start = i + 1
    for c in contents[start:]:
        if c.get("role") != "model":
            continue
        for j, part in enumerate(c.get("parts") or ()):
            fc = _get(part, "functionCall")
            if fc is None:
                continue
            signature = _get(part, "thoughtSignature")
            if not isinstance(signature, str) or not signature:
                return ("Function call is missing a thought_signature in functionCall parts. This is required for "
                        "tools to work correctly, and missing thought_signature may lead to degraded model "
                        f"performance. Additional data, function call `default_api:{fc.get('name')}` , position "
                        f"{j + 1}. Please refer to https://ai.google.dev/gemini-api/docs/thought-signatures for more "
                        "details.")
            break  # parallel calls: only the first one is signed
    return None


def _validate_parts(parts: Any, where: str) -> str | None:
    if not isinstance(parts, list) or not parts:
        return f"* GenerateContentRequest.{where}.parts: contents.parts must not be empty.\n"
    for j, part in enumerate(parts):
        fields = set(part) & _known(PART_FIELDS) if isinstance(part, dict) else set()
        if len(fields) != 1:
            return (f"* GenerateContentRequest.{where}.parts[{j}].data: required oneof field 'data' "
                    "must have one initialized field\n")
        inline = _get(part, "inlineData")
        if inline is not None:
            mime, data = _get(inline, "mimeType"), inline.get("data")
            if not mime or not isinstance(data, str):
                return f"* GenerateContentRequest.{where}.parts[{j}].inline_data: mime_type and data are required\n"
            try:
                base64.b64decode(data, validate=True)
            except (binascii.Error, ValueError):
                return f"Invalid value at '{where}.parts[{j}].inline_data.data' (TYPE_BYTES), Base64 decoding failed"
        fc = _get(part, "functionCall")
        if fc is not None and not fc.get("name"):
            return f"* GenerateContentRequest.{where}.parts[{j}].function_call.name: Name cannot be empty.\n"
        fr = _get(part, "functionResponse")
        if fr is not None and (not fr.get("name") or not isinstance(fr.get("response"), dict)):
            return (f"* GenerateContentRequest.{where}.parts[{j}].function_response: name and an object "
                    "response are required\n")
    return None


# ---- the deterministic answer ------------------------------------------------------
def _parts_text(parts: list[dict[str, Any]]) -> str:
    out = []
    for p in parts:
        if "text" in p:
            out.append(p["text"])
        fr = _get(p, "functionResponse")
        if fr is not None:
            out.append(json.dumps(fr.get("response")))
        fc = _get(p, "functionCall")
        if fc is not None:
            out.append(json.dumps(fc.get("args")))
    return " ".join(out)


def as_openai(contents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Contents as ``echo_reply`` reads them (a function response counts as user text)."""
    return [{"role": "assistant" if c.get("role") == "model" else "user", "content": _parts_text(c["parts"])}
            for c in contents]


def _last_user_text(contents: list[dict[str, Any]]) -> str:
    return next((_parts_text(c["parts"]) for c in reversed(contents) if c.get("role") != "model"), "")


def pick_function(body: dict[str, Any]) -> dict[str, Any] | None:
    decls = [d for t in _get(body, "tools") or () for d in _get(t, "functionDeclarations") or ()]
    cfg = (_get(body, "toolConfig") or {})
    cfg = _get(cfg, "functionCallingConfig") or {}
    mode = cfg.get("mode") or "AUTO"
    if not decls or mode == "NONE":
        return None
    allowed = _get(cfg, "allowedFunctionNames")
    if allowed:
        decls = [d for d in decls if d["name"] in allowed] or decls
    last = _get(body, "contents")[-1]
    answered = any(_get(p, "functionResponse") is not None for p in last.get("parts") or ())
    if mode != "ANY" and answered:
        return None  # the function has answered: now reply in text
    return decls[0]

