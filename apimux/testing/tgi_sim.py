"""A loopback server speaking Hugging Face TGI's API.

Routes: native ``/generate`` and ``/generate_stream``, the compat root ``/``
(``{"inputs", "parameters", "stream"}``, what ``huggingface_hub`` posts to a
URL; a non-stream answer there is a one-element list), ``/info``,
``/health`` and the OpenAI-compatible ``/v1/chat/completions`` (the OpenAI
simulator's chat with TGI's error envelope). Validated in the tests by
``huggingface_hub.InferenceClient``.

Errors are ``{"error": "...", "error_type": "..."}`` with TGI's statuses:
422 validation, 429 overloaded (``Fault(status=429, error_type="overloaded")``),
424 generation, 500 incomplete_generation.
A fault with no status, ``cut_stream_after=N`` and ``error_type`` set sends
N events and then an error event (as TGI does when generation fails).
"""

from __future__ import annotations

import json
import zlib
from typing import Any

from aiohttp import web

from apimux.testing.openai_sim import OpenAISim
from apimux.testing.server import Fault, Recorded, cut_connection, words

# TGI's own statuses; a 429 is "overloaded" only when the fault says so
# (error_type="overloaded"): a plain 429 is what a gateway in front of TGI
# (Inference Endpoints) sends for a rate limit, without an error_type.
STATUS_TYPES = {422: "validation", 424: "generation", 500: "incomplete_generation"}


def token_id(text: str) -> int:
    return zlib.crc32(text.encode()) % 32000


class TGISim(OpenAISim):
    name = "hf_tgi"

    def __init__(self, *, model_id: str = "test-model", max_input_tokens: int = 4095,
                 max_total_tokens: int = 4096, max_client_batch_size: int = 4, **kwargs: Any) -> None:
        super().__init__(prefix="/v1", models=[model_id], **kwargs)
        self.model_id = model_id
        self.max_input_tokens = max_input_tokens
        self.max_total_tokens = max_total_tokens
        self.max_client_batch_size = max_client_batch_size

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/chat/completions", self.route(self.chat))
        app.router.add_post("/generate", self.route(self.generate))
        app.router.add_post("/generate_stream", self.route(self.generate_stream))
        app.router.add_post("/", self.route(self.compat))
        app.router.add_get("/info", self.route(self.info))
        app.router.add_get("/health", self.route(self.health))

    @property
    def base_url(self) -> str:
        return self.url

    def error_response(self, status: int, message: str, fault: Fault | None) -> web.Response:
        kind = fault.error_type if fault and fault.error_type else STATUS_TYPES.get(status)
        if kind == "overloaded" and fault is not None and not fault.message:
            message = "Model is overloaded"
        body: dict[str, Any] = {"error": message}
        if kind:
            body["error_type"] = kind
        return web.json_response(body, status=status)

    def _invalid(self, message: str, param: str | None = None) -> web.Response:
        return web.json_response({"error": f"Input validation error: {message}", "error_type": "validation"},
                                 status=422)

    # ---- native generation -------------------------------------------------
    def _validate(self, body: Any, stream: bool) -> tuple[str, dict[str, Any]] | web.Response:
        if not isinstance(body, dict) or "inputs" not in body:
            return self._invalid("missing field `inputs`")
        inputs = body["inputs"]
        if not isinstance(inputs, str):
            return self._invalid("`inputs` must be a string")
        if not inputs:
            return self._invalid("`inputs` cannot be empty")
        params = body.get("parameters") or {}
        if not isinstance(params, dict):
            return self._invalid("`parameters` must be an object")
        temp = params.get("temperature")
        if temp is not None and temp <= 0:
            return self._invalid("`temperature` must be strictly positive")
        top_p = params.get("top_p")
        if top_p is not None and not 0 < top_p < 1:
            return self._invalid("`top_p` must be > 0.0 and < 1.0")
        max_new = params.get("max_new_tokens")
        if max_new is not None and (not isinstance(max_new, int) or max_new <= 0):
            return self._invalid("`max_new_tokens` must be strictly positive")
        if stream and params.get("decoder_input_details"):
            return self._invalid("`decoder_input_details` == true is not supported when streaming tokens")
        if words(inputs) > self.max_input_tokens:
            return self._invalid(f"`inputs` must have less than {self.max_input_tokens} tokens")
        return inputs, params

    def _generation(self, inputs: str, params: dict[str, Any]) -> tuple[list[str], str]:
        tokens = f"echo: {inputs}".split()
        pieces = [t if i == 0 else " " + t for i, t in enumerate(tokens)]
        max_new = params.get("max_new_tokens")
        if max_new is not None and len(pieces) > max_new:
            return pieces[:max_new], "length"
        return pieces, "eos_token"

    def _headers(self, prompt: int = 0, generated: int = 0) -> dict[str, str]:
        return {"x-compute-type": "gpu+optimized", "x-compute-time": "0.01", "x-prompt-tokens": str(prompt),
                "x-generated-tokens": str(generated), "x-inference-time": "10", "x-queue-time": "0"}

    def _token(self, text: str) -> dict[str, Any]:
        return {"id": token_id(text), "text": text, "logprob": -0.25, "special": False}

    async def generate(self, request: web.Request, rec: Recorded, fault: Fault | None) -> web.StreamResponse:
        checked = self._validate(rec.json, stream=False)
        if isinstance(checked, web.Response):
            return checked
        return web.json_response(self._complete(*checked), headers=self._count_headers(*checked))

    def _count_headers(self, inputs: str, params: dict[str, Any]) -> dict[str, str]:
        return self._headers(words(inputs), len(self._generation(inputs, params)[0]))

    def _complete(self, inputs: str, params: dict[str, Any]) -> dict[str, Any]:
        pieces, finish = self._generation(inputs, params)
        out: dict[str, Any] = {"generated_text": "".join(pieces)}
        if params.get("details"):
            prefill = [{"id": token_id(w), "text": w, "logprob": None} for w in inputs.split()]
            out["details"] = {
                "finish_reason": finish,
                "generated_tokens": len(pieces),
                "seed": params.get("seed"),
                "prefill": prefill if params.get("decoder_input_details") else [],
                "tokens": [self._token(p) for p in pieces],
            }
        return out

    async def generate_stream(self, request: web.Request, rec: Recorded, fault: Fault | None) -> web.StreamResponse:
        checked = self._validate(rec.json, stream=True)
        if isinstance(checked, web.Response):
            return checked
        return await self._stream_tokens(request, *checked, fault)

    async def _stream_tokens(
        self, request: web.Request, inputs: str, params: dict[str, Any], fault: Fault | None
    ) -> web.StreamResponse:
        pieces, finish = self._generation(inputs, params)
        events: list[dict[str, Any]] = []
        for i, piece in enumerate(pieces):
            last = i == len(pieces) - 1
            events.append({
                "index": i + 1,
                "token": self._token(piece),
                "top_tokens": None,
                "generated_text": "".join(pieces) if last else None,
                "details": {"finish_reason": finish, "generated_tokens": len(pieces), "seed": params.get("seed"),
                            "input_length": words(inputs)} if last and params.get("details") else None,
            })
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "x-compute-type": "gpu+optimized",
                                           "x-accel-buffering": "no"})
        await resp.prepare(request)
        for n, ev in enumerate(events):
            if fault is not None and fault.cut_stream_after is not None and n >= fault.cut_stream_after:
                if fault.error_type:
                    err = {"error": fault.message or "Request failed during generation: Server error: CUDA OOM",
                           "error_type": fault.error_type}
                    await resp.write(_event(err))
                    await resp.write_eof()
                else:
                    await cut_connection(request)
                return resp
            await resp.write(_event(ev))
        await resp.write_eof()
        return resp

    async def compat(self, request: web.Request, rec: Recorded, fault: Fault | None) -> web.StreamResponse:
        body = rec.json
        stream = bool(body.get("stream")) if isinstance(body, dict) else False
        checked = self._validate(body, stream=stream)
        if isinstance(checked, web.Response):
            return checked
        if stream:
            return await self._stream_tokens(request, *checked, fault)
        # TGI wraps the answer in a list here, to match the old api-inference.
        return web.json_response([self._complete(*checked)], headers=self._count_headers(*checked))

    # ---- server info -------------------------------------------------------
    async def info(self, request: web.Request, rec: Recorded, fault: Fault | None) -> web.StreamResponse:
        return web.json_response({
            "model_id": self.model_id, "model_sha": None, "model_pipeline_tag": "text-generation",
            "max_concurrent_requests": 128, "max_best_of": 2, "max_stop_sequences": 4,
            "max_input_tokens": self.max_input_tokens, "max_total_tokens": self.max_total_tokens,
            "validation_workers": 2, "max_client_batch_size": self.max_client_batch_size,
            "router": "text-generation-router", "version": "3.0.1", "sha": None, "docker_label": None,
        })

    async def health(self, request: web.Request, rec: Recorded, fault: Fault | None) -> web.StreamResponse:
        return web.Response(status=200)


def _event(obj: dict[str, Any]) -> bytes:
    # axum's Sse writes "data:" without a space before the JSON.
    return f"data:{json.dumps(obj, separators=(',', ':'))}\n\n".encode()

