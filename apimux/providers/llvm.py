"""The LLVM inference REST service: models, single and batch inference, statistics.

There is no public specification of this service; the JSON shapes below are
apimux's, and ``apimux.testing.llvm_sim`` documents and serves exactly them:

- ``GET  /models`` -> ``{"models": [{"id", "owner", "version", "status", "max_batch_size", ...}]}``
- ``GET  /models/{id}`` -> one such model object
- ``POST /models/{id}/infer`` ``{"input": <any JSON>, "parameters": {...}}``
  -> ``{"model", "output": <any JSON>}``
- ``POST /models/{id}/batch_infer`` ``{"inputs": [...], "parameters": {...}}``
  -> ``{"model", "results": [{"index", "output"}, ...]}``
- ``GET  /models/{id}/statistics`` -> counters for the model
- ``GET  /status`` -> the service's health
- errors: ``{"error": {"code", "message"}}`` or FastAPI-style ``{"detail": ...}``, classified by status.

Coalescing: single ``infer`` calls with the same model and parameters can be
served by one ``batch_infer`` (at most ``batch_limits["infer"]`` inputs). The
core does the batching; this class only offers the pure pieces for it:
``coalesce_key(call)`` (calls with equal keys may share a batch; None: never),
``coalesce(calls)`` (the one ``batch_infer`` Call) and
``uncoalesce(response, calls)`` (one ``InferResponse`` per original call).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, ClassVar
from urllib.parse import quote

from apimux.core.retry import parse_retry_after
from apimux.errors import ApimuxError, BadRequest, Overloaded, UpstreamError, error_for_status
from apimux.providers.base import Call, Provider, bearer_headers, load_json, safe_json
from apimux.providers.registry import register
from apimux.transport import HttpRequest, HttpResponse
from apimux.types import InferResponse, ModelInfo


@register
class LLVMProvider(Provider):
    name = "llvm"
    env_keys = ("LLVM_API_KEY",)
    env_base_url = ("LLVM_API_URL",)
    default_base_url = "http://localhost:8090"
    needs_key = False  # the token is optional: a service may run without auth
    # Most single infers one batch_infer may carry (the simulator's default max_batch_size).
    batch_limits: ClassVar[dict[str, int]] = {"infer": 64}

    def headers(self, key: str | None) -> dict[str, str]:
        return bearer_headers(key)

    def model_url(self, model: str, suffix: str = "") -> str:
        if not model or model == "-":
            raise BadRequest("llvm: this operation needs a model id ('llvm/<model>')", backend=self.name)
        return self.url(f"/models/{quote(model, safe='')}{suffix}")

    # ---- models --------------------------------------------------------------
    def models_request(self, call: Call, key: str | None) -> HttpRequest:
        return HttpRequest("GET", self.url("/models"), self.headers(key))

    def models_response(self, call: Call, resp: HttpResponse) -> list[ModelInfo]:
        data = load_json(resp, self.name)
        items = data.get("models") if isinstance(data, dict) else data
        if not isinstance(items, list):
            raise UpstreamError(f"{self.name} /models has no model list: {str(data)[:120]}", status=resp.status)
        return [model_info(m) for m in items]

    def model_info_request(self, call: Call, key: str | None) -> HttpRequest:
        return HttpRequest("GET", self.model_url(call.model), self.headers(key))

    def model_info_response(self, call: Call, resp: HttpResponse) -> ModelInfo:
        return model_info(load_json(resp, self.name))

    # ---- inference -----------------------------------------------------------
    def infer_request(self, call: Call, key: str | None) -> HttpRequest:
        if "inputs" not in call.params:
            raise BadRequest("llvm infer needs inputs", backend=self.name)
        body = {"input": call.params["inputs"], "parameters": parameters_of(call.params)}
        return HttpRequest("POST", self.model_url(call.model, "/infer"), self.headers(key), json=body)

    def infer_response(self, call: Call, resp: HttpResponse) -> InferResponse:
        data = load_json(resp, self.name)
        if not isinstance(data, dict) or "output" not in data:
            raise UpstreamError(f"{self.name} infer answer has no output: {str(data)[:120]}", status=resp.status)
        return InferResponse({"output": data["output"]}, model=str(data.get("model") or call.model), raw=data)

    def batch_infer_request(self, call: Call, key: str | None) -> HttpRequest:
        inputs = call.params.get("inputs")
        if not isinstance(inputs, list):
            raise BadRequest("llvm batch_infer needs inputs as a list", backend=self.name)
        body = {"inputs": inputs, "parameters": parameters_of(call.params)}
        return HttpRequest("POST", self.model_url(call.model, "/batch_infer"), self.headers(key), json=body)

    def batch_infer_response(self, call: Call, resp: HttpResponse) -> InferResponse:
        data = load_json(resp, self.name)
        outputs = batch_outputs(data, len(call.params.get("inputs") or ()), self.name)
        model = str(data.get("model") or call.model) if isinstance(data, dict) else call.model
        return InferResponse({"outputs": outputs}, model=model, raw=data)

    # ---- observability -------------------------------------------------------
    def statistics_request(self, call: Call, key: str | None) -> HttpRequest:
        return HttpRequest("GET", self.model_url(call.model, "/statistics"), self.headers(key))

    def statistics_response(self, call: Call, resp: HttpResponse) -> dict[str, Any]:
        return json_object(resp, self.name)

    def status_request(self, call: Call, key: str | None) -> HttpRequest:
        return HttpRequest("GET", self.url("/status"), self.headers(key))

    def status_response(self, call: Call, resp: HttpResponse) -> dict[str, Any]:
        return json_object(resp, self.name)

    # ---- errors --------------------------------------------------------------
    def error(self, call: Call, resp: HttpResponse) -> ApimuxError:
        return llvm_error(resp)

    # ---- coalescing helpers for the core (pure) --------------------------------
    @staticmethod
    def coalesce_key(call: Call) -> str | None:
        """Single infers with equal keys may be served by one batch_infer; None: never."""
        if call.op != "infer" or call.stream or "inputs" not in call.params:
            return None
        try:
            params = json.dumps(parameters_of(call.params), sort_keys=True)
        except (TypeError, ValueError):
            return None
        return f"{call.model}\x00{params}"

    @staticmethod
    def coalesce(calls: Sequence[Call]) -> Call:
        """The batch_infer Call carrying each call's input, in order."""
        if not calls:
            raise ValueError("coalesce needs at least one call")
        keys = {LLVMProvider.coalesce_key(c) for c in calls}
        if None in keys or len(keys) != 1:
            raise ValueError("only infer calls with the same model and parameters can be coalesced")
        first = calls[0]
        params = {"inputs": [c.params["inputs"] for c in calls], "parameters": parameters_of(first.params)}
        return Call("batch_infer", first.model, params, first.request_id)

    @staticmethod
    def uncoalesce(response: InferResponse, calls: Sequence[Call]) -> list[InferResponse]:
        """One ``{"output": ...}`` response per original call, from the batch's outputs."""
        outputs = response.get("outputs")
        if not isinstance(outputs, list) or len(outputs) != len(calls):
            raise UpstreamError(
                f"llvm batch answered {len(outputs) if isinstance(outputs, list) else 'no'} outputs "
                f"for {len(calls)} inputs"
            )
        return [InferResponse({"output": out}, model=response.model, raw=response.raw) for out in outputs]


# ---- pure translation helpers ----------------------------------------------------
def parameters_of(params: dict[str, Any]) -> dict[str, Any]:
    """``parameters=`` as given, plus any other keyword the caller passed."""
    given = params.get("parameters") or {}
    if not isinstance(given, dict):
        raise BadRequest("llvm parameters must be a JSON object")
    extra = {k: v for k, v in params.items() if k not in ("inputs", "parameters") and v is not None}
    return {**extra, **given}


def model_info(m: Any) -> ModelInfo:
    if isinstance(m, str):
        return ModelInfo(m, None, m)
    if not isinstance(m, dict) or not (m.get("id") or m.get("name")):
        raise UpstreamError(f"llvm model entry has no id: {str(m)[:120]}")
    return ModelInfo(str(m.get("id") or m.get("name")), m.get("owner") or m.get("owned_by"), m)


def batch_outputs(data: Any, expected: int, backend: str = "llvm") -> list[Any]:
    """Outputs in input order from ``{"results": [{"index", "output"}]}`` (bare outputs accepted too)."""
    results = data.get("results") if isinstance(data, dict) else None
    if not isinstance(results, list):
        raise UpstreamError(f"{backend} batch_infer answer has no results list: {str(data)[:120]}")
    if results and all(isinstance(r, dict) and "output" in r for r in results):
        ordered = sorted(results, key=lambda r: int(r.get("index", 0)))
        outputs = [r["output"] for r in ordered]
    else:
        outputs = list(results)
    if expected and len(outputs) != expected:
        raise UpstreamError(f"{backend} batch_infer returned {len(outputs)} results for {expected} inputs")
    return outputs


def json_object(resp: HttpResponse, backend: str) -> dict[str, Any]:
    data = load_json(resp, backend)
    if not isinstance(data, dict):
        raise UpstreamError(f"{backend} answer is not a JSON object: {str(data)[:120]}", status=resp.status)
    return data


def error_text(body: Any, raw: bytes) -> tuple[str, str | None]:
    """(message, code) from ``{"error": {"code", "message"}}``, ``{"detail": ...}`` or the raw text."""
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):
            code = err.get("code")
            return str(err.get("message") or code or ""), str(code) if code is not None else None
        if isinstance(err, str):
            return err, None
        detail = body.get("detail")
        if isinstance(detail, list):  # FastAPI validation: [{"loc": [...], "msg": ...}]
            parts = [
                f"{'.'.join(str(p) for p in d.get('loc', ()))}: {d.get('msg')}" if isinstance(d, dict) else str(d)
                for d in detail
            ]
            return "; ".join(parts), None
        if detail is not None:
            return str(detail), None
    return raw[:500].decode("utf-8", errors="replace").strip(), None


def llvm_error(resp: HttpResponse) -> ApimuxError:
    body = safe_json(resp.body)
    message, code = error_text(body, resp.body)
    cls = error_for_status(resp.status)
    if code == "overloaded" and resp.status in (429, 503):
        cls = Overloaded  # the service, not the key, is saturated: back off, keep the key
    return cls(
        message or f"HTTP {resp.status}", status=resp.status,
        retry_after=parse_retry_after(resp.headers, resp.wall), body=body,
    )
