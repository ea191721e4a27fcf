"""A loopback server for the LLVM inference REST service, and the contract it defines.

The service has no public specification, so this module is the reference
for the JSON apimux speaks (``apimux.providers.llvm`` sends and reads
exactly this). All bodies are JSON; a key, when the service has keys, is
``Authorization: Bearer <token>``.

``GET /models``
    ``{"models": [MODEL, ...]}`` where MODEL is ``{"id", "owner", "version",
    "status": "ready", "task", "max_batch_size", "parameters": {name: default}}``.
``GET /models/{id}``
    MODEL, or 404.
``POST /models/{id}/infer``
    request ``{"input": <any JSON>, "parameters": {...}}`` (``parameters``
    optional) -> ``{"id": "inf-...", "model": id, "output": <any JSON>,
    "latency_ms": float}``.
``POST /models/{id}/batch_infer``
    request ``{"inputs": [<any JSON>, ...], "parameters": {...}}`` ->
    ``{"id", "model", "results": [{"index": i, "output": ...}, ...],
    "latency_ms"}``; results in input order, one per input. More inputs than
    the model's ``max_batch_size`` is 413; the batch is all or nothing (one
    bad input fails the whole call with 400 naming its index).
``GET /models/{id}/statistics``
    ``{"model", "requests", "inferences", "batches", "failures",
    "avg_batch_size", "avg_latency_ms"}``.
``GET /status``
    ``{"status": "ok", "version", "uptime_s", "models_loaded", "in_flight"}``.

Errors are ``{"error": {"code": <string>, "message": <string>}}``, except a
request body that fails validation, which is FastAPI's 422
``{"detail": [{"loc": ["body", field], "msg", "type"}]}``. Codes:
``unauthorized`` 401, ``model_not_found`` 404, ``invalid_input`` 400,
``batch_too_large`` 413, ``rate_limited`` 429, ``overloaded`` 503 (and 429
when scripted so), ``internal`` 500.

The simulated models are deterministic functions of (input, parameters):
``echo`` returns the input; ``sum`` adds a list of numbers and multiplies by
``parameters.scale`` (default 1); ``upper`` upper-cases a string (``repeat``
times, default 1). Pass ``models=`` for others: name -> fn(input, params),
raising ``ValueError`` for an input the model refuses.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from apimux.testing.server import Fault, Recorded, SimServer

ModelFn = Callable[[Any, dict[str, Any]], Any]

_CODES = {
    400: "invalid_input", 401: "unauthorized", 403: "forbidden", 404: "model_not_found",
    413: "batch_too_large", 422: "validation_error", 429: "rate_limited", 500: "internal",
    502: "bad_gateway", 503: "overloaded", 504: "timeout",
}


def _echo(value: Any, params: dict[str, Any]) -> Any:
    return value


def _sum(value: Any, params: dict[str, Any]) -> Any:
    if not isinstance(value, list) or not all(isinstance(x, int | float) and not isinstance(x, bool) for x in value):
        raise ValueError("sum expects a list of numbers")
    scale = params.get("scale", 1)
    if not isinstance(scale, int | float):
        raise ValueError("parameters.scale must be a number")
    return sum(value) * scale


def _upper(value: Any, params: dict[str, Any]) -> Any:
    if not isinstance(value, str):
        raise ValueError("upper expects a string")
    repeat = params.get("repeat", 1)
    if not isinstance(repeat, int) or repeat < 1:
        raise ValueError("parameters.repeat must be a positive integer")
    return " ".join([value.upper()] * repeat)


DEFAULT_MODELS: dict[str, ModelFn] = {"echo": _echo, "sum": _sum, "upper": _upper}
_DEFAULT_PARAMS: dict[str, dict[str, Any]] = {"echo": {}, "sum": {"scale": 1}, "upper": {"repeat": 1}}


class LLVMSim(SimServer):
    name = "llvm"

    def __init__(
        self, *, models: dict[str, ModelFn] | None = None, max_batch_size: int = 64, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.models = dict(DEFAULT_MODELS if models is None else models)
        self.max_batch_size = max_batch_size
        self.started = time.monotonic()
        self.stats: dict[str, dict[str, float]] = {}

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/models", self.route(self.list_models))
        app.router.add_get("/models/{id}", self.route(self.get_model))
        app.router.add_post("/models/{id}/infer", self.route(self.infer))
        app.router.add_post("/models/{id}/batch_infer", self.route(self.batch_infer))
        app.router.add_get("/models/{id}/statistics", self.route(self.statistics))
        app.router.add_get("/status", self.route(self.status))

    @property
    def base_url(self) -> str:
        return self.url

    # ---- protocol plumbing --------------------------------------------------
    def error_response(self, status: int, message: str, fault: Fault | None) -> web.Response:
        code = fault.error_type if fault and fault.error_type else _CODES.get(status, "internal")
        return web.json_response({"error": {"code": code, "message": message}}, status=status)

    def _error(self, status: int, message: str) -> web.Response:
        return self.error_response(status, message, None)

    @staticmethod
    def _invalid(field: str, msg: str, kind: str) -> web.Response:
        return web.json_response(
            {"detail": [{"loc": ["body", field], "msg": msg, "type": kind}]}, status=422
        )

    def _model(self, request: web.Request) -> tuple[str, ModelFn | None]:
        mid = request.match_info["id"]
        return mid, self.models.get(mid)

    def _describe(self, mid: str) -> dict[str, Any]:
        return {
            "id": mid, "owner": "llvm-sim", "version": "1", "status": "ready", "task": "generic",
            "max_batch_size": self.max_batch_size, "parameters": _DEFAULT_PARAMS.get(mid, {}),
        }

    def _count(self, mid: str, *, inferences: int = 0, batches: int = 0, failed: bool = False) -> None:
        s = self.stats.setdefault(
            mid, {"requests": 0, "inferences": 0, "batches": 0, "failures": 0, "batch_items": 0}
        )
        s["requests"] += 1
        s["inferences"] += inferences
        s["batches"] += batches
        s["batch_items"] += inferences if batches else 0
        s["failures"] += int(failed)

    def _body(self, rec: Recorded, field: str) -> tuple[dict[str, Any] | None, web.Response | None]:
        try:
            body = rec.json
        except ValueError:
            return None, web.json_response(
                {"detail": [{"loc": ["body"], "msg": "JSON decode error", "type": "json_invalid"}]}, status=422
            )
        if not isinstance(body, dict):
            return None, self._invalid(field, "Input should be a valid dictionary", "dict_type")
        if field not in body:
            return None, self._invalid(field, "Field required", "missing")
        params = body.get("parameters")
        if params is not None and not isinstance(params, dict):
            return None, self._invalid("parameters", "Input should be a valid dictionary", "dict_type")
        return body, None

    # ---- routes ----------------------------------------------------------------
    async def list_models(self, request: web.Request, rec: Recorded, fault: Fault | None) -> web.StreamResponse:
        return web.json_response({"models": [self._describe(m) for m in self.models]})

    async def get_model(self, request: web.Request, rec: Recorded, fault: Fault | None) -> web.StreamResponse:
        mid, fn = self._model(request)
        if fn is None:
            return self._error(404, f"model '{mid}' not found")
        return web.json_response(self._describe(mid))

    async def infer(self, request: web.Request, rec: Recorded, fault: Fault | None) -> web.StreamResponse:
        mid, fn = self._model(request)
        if fn is None:
            return self._error(404, f"model '{mid}' not found")
        body, problem = self._body(rec, "input")
        if problem is not None or body is None:
            return problem or self._error(400, "bad request")
        try:
            output = fn(body["input"], body.get("parameters") or {})
        except ValueError as exc:
            self._count(mid, failed=True)
            return self._error(400, f"invalid input: {exc}")
        self._count(mid, inferences=1)
        return web.json_response(
            {"id": f"inf-{time.monotonic_ns():x}", "model": mid, "output": output, "latency_ms": 0.1}
        )

    async def batch_infer(self, request: web.Request, rec: Recorded, fault: Fault | None) -> web.StreamResponse:
        mid, fn = self._model(request)
        if fn is None:
            return self._error(404, f"model '{mid}' not found")
        body, problem = self._body(rec, "inputs")
        if problem is not None or body is None:
            return problem or self._error(400, "bad request")
        inputs = body["inputs"]
        if not isinstance(inputs, list):
            return self._invalid("inputs", "Input should be a valid list", "list_type")
        if not inputs:
            return self._error(400, "inputs must not be empty")
        if len(inputs) > self.max_batch_size:
            return self._error(413, f"batch of {len(inputs)} inputs exceeds max_batch_size {self.max_batch_size}")
        params = body.get("parameters") or {}
        results = []
        for i, value in enumerate(inputs):
            try:
                results.append({"index": i, "output": fn(value, params)})
            except ValueError as exc:
                self._count(mid, failed=True)
                return self._error(400, f"invalid input at index {i}: {exc}")
        self._count(mid, inferences=len(inputs), batches=1)
        return web.json_response(
            {"id": f"bat-{time.monotonic_ns():x}", "model": mid, "results": results, "latency_ms": 0.1}
        )

    async def statistics(self, request: web.Request, rec: Recorded, fault: Fault | None) -> web.StreamResponse:
        mid, fn = self._model(request)
        if fn is None:
            return self._error(404, f"model '{mid}' not found")
        s = self.stats.get(mid, {"requests": 0, "inferences": 0, "batches": 0, "failures": 0, "batch_items": 0})
        return web.json_response({
            "model": mid,
            "requests": int(s["requests"]),
            "inferences": int(s["inferences"]),
            "batches": int(s["batches"]),
            "failures": int(s["failures"]),
            "avg_batch_size": s["batch_items"] / s["batches"] if s["batches"] else 0.0,
            "avg_latency_ms": 0.1 if s["requests"] else 0.0,
        })

    async def status(self, request: web.Request, rec: Recorded, fault: Fault | None) -> web.StreamResponse:
        return web.json_response({
            "status": "ok",
            "version": "1.0.0-sim",
            "uptime_s": round(time.monotonic() - self.started, 3),
            "models_loaded": len(self.models),
            "in_flight": self.in_flight - 1,  # not counting this request
        })
