"""A loopback OpenVINO Model Server: KServe v2 (/v2), TF Serving (/v1) and
OpenAI-compatible (/v3) REST faces over one configurable set of models.

Validated in the tests by the official clients: ``tritonclient.http`` (KServe
v2), ``ovmsclient`` (TF Serving) and ``openai`` (/v3). Error bodies are OVMS's
``{"error": "..."}`` with its messages. The KServe face speaks the binary
tensor data extension both ways (inputs with ``binary_data_size``, outputs
asked with ``binary_data`` or the request's ``binary_data_output``) and, like
Triton and KServe, refuses FP16 as JSON in either direction.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiohttp import web

from apimux.providers.ovms_tensors import (
    HEADER_LENGTH,
    KSERVE_TO_NP,
    KSERVE_TO_TF,
    binary_body,
    shape_matches,
    tensor_bytes,
    tensor_from_bytes,
)
from apimux.testing.openai_sim import OpenAISim
from apimux.testing.server import Fault, Recorded, SimServer

Arrays = dict[str, np.ndarray]
MODEL_NOT_FOUND = "Model with requested name is not found"
VERSION_NOT_FOUND = "Model with requested version is not found"


@dataclass
class TensorSpec:
    name: str
    datatype: str  # KServe datatype
    shape: list[int]  # -1 = any size

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass
class SimModel:
    """A served model: declared tensors and a function from input arrays to output arrays."""

    name: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    fn: Callable[[Arrays], Arrays]
    versions: list[str] = field(default_factory=lambda: ["1"])
    ready: bool = True

    @property
    def latest(self) -> str:
        return max(self.versions, key=int)


def doubler(name: str = "doubler", datatype: str = "FP32", versions: list[str] | None = None) -> SimModel:
    """``output = input * 2`` and ``sum`` over the last axis, both keeping the input's dtype."""

    def fn(x: Arrays) -> Arrays:
        a = x["input"]
        return {"output": (a * 2).astype(a.dtype), "sum": (a * 2).sum(axis=-1).astype(a.dtype)}

    return SimModel(name, [TensorSpec("input", datatype, [-1, -1])],
                    [TensorSpec("output", datatype, [-1, -1]), TensorSpec("sum", datatype, [-1])], fn,
                    versions or ["1"])


def negate() -> SimModel:
    return SimModel("negate", [TensorSpec("flags", "BOOL", [-1])], [TensorSpec("inverted", "BOOL", [-1])],
                    lambda x: {"inverted": np.logical_not(x["flags"])})


def upper() -> SimModel:
    """BYTES in, BYTES and INT64 out: upper-cased text and its length."""

    def fn(x: Arrays) -> Arrays:
        # Binary BYTES arrive as bytes (maybe not UTF-8), JSON ones as str.
        text = [s.decode("utf-8", "replace") if isinstance(s, bytes) else str(s) for s in x["text"].reshape(-1)]
        out = np.empty(len(text), dtype=object)
        out[:] = [s.upper() for s in text]
        return {"upper": out.reshape(x["text"].shape),
                "length": np.array([len(s) for s in text], dtype=np.int64).reshape(x["text"].shape)}

    return SimModel("upper", [TensorSpec("text", "BYTES", [-1])],
                    [TensorSpec("upper", "BYTES", [-1]), TensorSpec("length", "INT64", [-1])], fn)


def halver() -> SimModel:
    """FP32 in, FP16 out: a model whose outputs no server returns as JSON."""
    return SimModel("halver", [TensorSpec("x", "FP32", [-1])], [TensorSpec("half", "FP16", [-1])],
                    lambda a: {"half": (a["x"] / 2).astype(np.float16)})


def default_models() -> list[SimModel]:
    return [doubler(versions=["1", "2"]), doubler("doubler_i64", "INT64"), doubler("doubler_f16", "FP16"),
            negate(), upper(), halver()]


class _V3(OpenAISim):
    """OpenAISim's handlers, answering validation errors in OVMS's envelope."""

    def _invalid(self, message: str, param: str | None = None) -> web.Response:
        return web.json_response({"error": message}, status=400)


class OVMSSim(SimServer):
    name = "ovms"

    def __init__(self, *, models: list[SimModel] | None = None, openai_models: set[str] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.models = {m.name: m for m in (models if models is not None else default_models())}
        self.openai_models = openai_models  # names the /v3 routes serve; None serves any
        self.server_ready = True
        self.v3 = _V3(prefix="/v3")  # never started: only its handlers are used

    def __enter__(self) -> OVMSSim:  # typed for `with OVMSSim() as sim: sim.models ...`
        self.start()
        return self

    def routes(self, app: web.Application) -> None:
        r = app.router
        m, v = "{model:[^/:]+}", "{version:[^/:]+}"
        r.add_get("/v2", self.route(self.server_metadata))
        r.add_get("/v2/health/live", self.route(self.live))
        r.add_get("/v2/health/ready", self.route(self.server_ready_route))
        for base in (f"/v2/models/{m}", f"/v2/models/{m}/versions/{v}"):
            r.add_get(base, self.route(self.v2_metadata))
            r.add_get(f"{base}/ready", self.route(self.v2_model_ready))
            r.add_post(f"{base}/infer", self.route(self.v2_infer))
        for base in (f"/v1/models/{m}", f"/v1/models/{m}/versions/{v}"):
            r.add_get(base, self.route(self.v1_status))
            r.add_get(f"{base}/metadata", self.route(self.v1_metadata))
            r.add_post(f"{base}:predict", self.route(self.v1_predict))
        r.add_post("/v3/chat/completions", self.route(self._v3(self.v3.chat)))
        r.add_post("/v3/embeddings", self.route(self._v3(self.v3.embeddings)))
        r.add_get("/v3/models", self.route(self.v3.list_models))

    def error_response(self, status: int, message: str, fault: Fault | None) -> web.Response:
        return web.json_response({"error": message}, status=status)

    def auth_required(self, request: web.Request) -> bool:
        # OVMS's API key guards the generative (/v3) endpoints.
        return self.keys is not None and request.path.startswith("/v3/")

    def _error(self, status: int, message: str) -> web.Response:
        return self.error_response(status, message, None)

    def _resolve(self, request: web.Request) -> tuple[SimModel, str] | web.Response:
        model = self.models.get(request.match_info["model"])
        if model is None:
            return self._error(404, MODEL_NOT_FOUND)
        version = request.match_info.get("version")
        if version in (None, "0"):  # 0 is ovmsclient's "default version"
            return model, model.latest
        if version not in model.versions:
            return self._error(404, VERSION_NOT_FOUND)
        return model, version

    # ---- KServe v2 -------------------------------------------------------------
    async def server_metadata(self, request: web.Request, rec: Recorded, fault: Fault | None) -> web.StreamResponse:
        return web.json_response({"name": "OpenVINO Model Server", "version": "sim", "extensions": []})

    async def live(self, request: web.Request, rec: Recorded, fault: Fault | None) -> web.StreamResponse:
        return web.json_response({})

    async def server_ready_route(self, request: web.Request, rec: Recorded, fault: Fault | None) -> web.StreamResponse:
        return web.json_response({}) if self.server_ready else self._error(503, "Server is not ready")

    async def v2_metadata(self, request: web.Request, rec: Recorded, fault: Fault | None) -> web.StreamResponse:
        found = self._resolve(request)
        if isinstance(found, web.Response):
            return found
        model, _ = found
        return web.json_response({
            "name": model.name, "versions": model.versions, "platform": "OpenVINO",
            "inputs": [s.to_json() for s in model.inputs], "outputs": [s.to_json() for s in model.outputs],
            "rt_info": {},
        })

    async def v2_model_ready(self, request: web.Request, rec: Recorded, fault: Fault | None) -> web.StreamResponse:
        found = self._resolve(request)
        if isinstance(found, web.Response):
            return found
        return web.json_response({}) if found[0].ready else self._error(503, "Model is not loaded yet")

    async def v2_infer(self, request: web.Request, rec: Recorded, fault: Fault | None) -> web.StreamResponse:
        found = self._resolve(request)
        if isinstance(found, web.Response):
            return found
        model, version = found
        parsed = _split_request(rec)
        if isinstance(parsed, str):
            return self._error(400, parsed)
        body, binary = parsed
        if not isinstance(body, dict):
            return self._error(400, "Request body should be JSON object")
        raw = body.get("inputs")
        if not isinstance(raw, list) or not raw:
            return self._error(400, "Invalid JSON structure, missing inputs")
        arrays: Arrays = {}
        pos = 0
        for i, item in enumerate(raw):
            got = _v2_tensor(i, item, binary, pos, model.name)
            if isinstance(got, str):
                return self._error(400, got)
            name, arr, pos = got
            arrays[name] = arr
        if binary is not None and pos != len(binary):
            return self._error(400, f"unexpected additional input data for model '{model.name}'")
        problem = _check(model, arrays, typed=True)
        if problem:
            return self._error(400, problem)
        requested = [o for o in body.get("outputs") or () if isinstance(o, dict)]
        wanted = [o.get("name") for o in requested]
        declared = {s.name for s in model.outputs}
        for asked in wanted:
            if asked not in declared:
                return self._error(400, f"Missing output with specific name - Requested output: {asked}")
        as_binary = _binary_outputs(body, requested)
        if isinstance(as_binary, str):
            return self._error(400, as_binary)
        results = model.fn(arrays)
        specs = {s.name: s for s in model.outputs}
        outputs: list[dict[str, Any]] = []
        tensors: list[bytes] = []
        for n, a in results.items():
            if wanted and n not in wanted:
                continue
            datatype = specs[n].datatype
            entry: dict[str, Any] = {"name": n, "shape": list(a.shape), "datatype": datatype}
            if as_binary(n):
                data = tensor_bytes(n, a, datatype)
                entry["parameters"] = {"binary_data_size": len(data)}
                tensors.append(data)
            elif datatype == "FP16":  # Triton's refusal, word for word
                return self._error(400, "sending FP16 data via JSON is not supported. Please use the "
                                        f"binary data format for output {n}")
            else:
                entry["data"] = _json_flat(a)
            outputs.append(entry)
        out: dict[str, Any] = {"model_name": model.name, "model_version": version, "outputs": outputs}
        if "id" in body:
            out["id"] = body["id"]
        if not tensors:
            return web.json_response(out)
        payload, header_length = binary_body(out, tensors)
        return web.Response(body=payload, content_type="application/octet-stream",
                            headers={HEADER_LENGTH: str(header_length)})

    # ---- TF Serving ------------------------------------------------------------
    async def v1_status(self, request: web.Request, rec: Recorded, fault: Fault | None) -> web.StreamResponse:
        found = self._resolve(request)
        if isinstance(found, web.Response):
            return found
        model, version = found
        shown = model.versions if request.match_info.get("version") in (None, "0") else [version]
        status = [{"version": v, "state": "AVAILABLE" if model.ready else "LOADING",
                   "status": {"error_code": "OK", "error_message": "OK"}} for v in shown]
        return web.json_response({"model_version_status": status})

    async def v1_metadata(self, request: web.Request, rec: Recorded, fault: Fault | None) -> web.StreamResponse:
        found = self._resolve(request)
        if isinstance(found, web.Response):
            return found
        model, version = found

        def sig(specs: list[TensorSpec]) -> dict[str, Any]:
            return {s.name: {"dtype": KSERVE_TO_TF[s.datatype], "name": s.name,
                             "tensorShape": {"dim": [{"size": str(d), "name": ""} for d in s.shape],
                                             "unknownRank": False}} for s in specs}

        return web.json_response({
            "modelSpec": {"name": model.name, "signatureName": "", "version": version},
            "metadata": {"signature_def": {
                "@type": "type.googleapis.com/tensorflow.serving.SignatureDefMap",
                "signatureDef": {"serving_default": {
                    "inputs": sig(model.inputs), "outputs": sig(model.outputs), "methodName": "", "defaults": {},
                }},
            }},
        })

    async def v1_predict(self, request: web.Request, rec: Recorded, fault: Fault | None) -> web.StreamResponse:
        found = self._resolve(request)
        if isinstance(found, web.Response):
            return found
        model, _ = found
        body = _json(rec)
        if not isinstance(body, dict):
            return self._error(400, "Request body should be JSON object")
        if ("instances" in body) == ("inputs" in body):
            return self._error(400, "Invalid JSON structure. Could not detect row or column format")
        row = "instances" in body
        named = _tfs_named(model, body["instances"] if row else body["inputs"], row)
        if isinstance(named, str):
            return self._error(400, named)
        arrays: Arrays = {}
        specs = {s.name: s for s in model.inputs}
        for name, value in named.items():
            arr = _tfs_input(value, specs[name].datatype if name in specs else None)
            if arr is None:
                return self._error(400, f"Could not parse input content. Not valid ndarray detected - input: {name}")
            arrays[name] = arr
        problem = _check(model, arrays, typed=False)
        if problem:
            return self._error(400, problem)
        results = {n: _tfs_json(a) for n, a in model.fn(arrays).items()}
        if row:
            rows = len(next(iter(results.values())))
            preds: Any = ([{n: v[i] for n, v in results.items()} for i in range(rows)]
                          if len(results) > 1 else next(iter(results.values())))
            return web.json_response({"predictions": preds})
        return web.json_response({"outputs": results if len(results) > 1 else next(iter(results.values()))})

    # ---- OpenAI-compatible /v3 ------------------------------------------------------
    def _v3(self, handler: Callable[..., Any]) -> Callable[..., Any]:
        async def guarded(request: web.Request, rec: Recorded, fault: Fault | None) -> web.StreamResponse:
            body = _json(rec)
            name = body.get("model") if isinstance(body, dict) else None
            if self.openai_models is not None and name and name not in self.openai_models:
                return self._error(404, MODEL_NOT_FOUND)
            result: web.StreamResponse = await handler(request, rec, fault)
            return result

        return guarded


# ---- request checks -----------------------------------------------------------
def _json(rec: Recorded) -> Any:
    try:
        return rec.json
    except (ValueError, UnicodeDecodeError):
        return None


def _flatten(data: Any) -> list[Any]:
    if isinstance(data, list):
        return [x for d in data for x in _flatten(d)]
    return [data]


def _typed_ok(datatype: str, values: list[Any]) -> bool:
    if datatype == "BYTES":
        return all(isinstance(v, str) for v in values)
    if datatype == "BOOL":
        return all(isinstance(v, bool) for v in values)
    if datatype.startswith(("INT", "UINT")):
        return all(isinstance(v, int) and not isinstance(v, bool) for v in values)
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def _split_request(rec: Recorded) -> tuple[Any, bytes | None] | str:
    """The JSON object and the binary tensor bytes after it (None: a plain JSON body), or the 400 message."""
    length = rec.headers.get(HEADER_LENGTH)
    if length is None:
        return _json(rec), None
    try:
        n = int(length)
    except ValueError:
        return f"Unable to parse {HEADER_LENGTH}, got: {length}"
    if n < 0 or n > len(rec.body):
        return f"inference header size should be in range (0, {len(rec.body)}), got: {length}"
    try:
        return json.loads(rec.body[:n]), rec.body[n:]
    except (ValueError, UnicodeDecodeError):
        return "Invalid JSON in the inference header (check Inference-Header-Content-Length)"


def _binary_outputs(body: dict[str, Any], requested: list[dict[str, Any]]) -> Callable[[str], bool] | str:
    """Whether each output goes back binary: its own ``binary_data``, else the request's ``binary_data_output``."""
    default = (body.get("parameters") or {}).get("binary_data_output", False)
    if not isinstance(default, bool):
        return "Unable to parse 'binary_data_output'"
    own: dict[str, bool] = {}
    for o in requested:
        flag = (o.get("parameters") or {}).get("binary_data")
        if flag is not None:
            if not isinstance(flag, bool):
                return "Unable to parse 'binary_data'"
            own[str(o.get("name"))] = flag
    return lambda name: own.get(name, default)


def _v2_tensor(i: int, item: Any, binary: bytes | None, pos: int,
               model: str) -> tuple[str, np.ndarray, int] | str:
    """One KServe input as (name, array, next binary offset), or the 400 message (Triton's wording)."""
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        return f"Invalid JSON structure. inputs[{i}] must be an object with a string name"
    name = item["name"]
    datatype, shape = item.get("datatype"), item.get("shape")
    if datatype not in KSERVE_TO_NP:
        return f"Invalid input precision - input: {name}; datatype: {datatype!r}"
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        return f"Invalid input shape - input: {name}; shape must be a list of non-negative integers, got {shape!r}"
    params = item.get("parameters") or {}
    has_binary, has_data = "binary_data_size" in params, "data" in item
    if has_binary and has_data:
        return ("Input must set only one of the following fields: 'data', 'binary_data_size' in 'parameters', "
                "'shared_memory_region' in 'parameters'. But set 'data' 'binary_data_size'")
    count = math.prod(shape)
    if has_binary:
        size = params["binary_data_size"]
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            return f"Unable to parse 'binary_data_size' for input {name}"
        if binary is None:
            return ("must specify valid 'Infer-Header-Content-Length' in request header and 'binary_data_size' "
                    "when passing inputs in binary data format")
        if pos + size > len(binary):
            return (f"unexpected size for input '{name}', expecting {pos + size - len(binary)} additional bytes "
                    f"for model '{model}'")
        try:
            flat = tensor_from_bytes(binary[pos : pos + size], datatype, count)
        except ValueError as exc:
            return f"input byte size mismatch for input '{name}' for model '{model}': {exc}"
        return name, flat.reshape(shape), pos + size
    if not has_data:
        return f"No data found in the request - input: {name}"
    if datatype == "FP16":  # Triton's refusal, word for word (KServe's server says the same)
        return f"receiving FP16 data via JSON is not supported. Please use the binary data format for input {name}"
    values = _flatten(item["data"])
    if len(values) != count:
        return (f"Invalid number of values in tensor proto container - input: {name}; "
                f"shape {shape} needs {count} values, got {len(values)}")
    if not _typed_ok(datatype, values):
        return f"Invalid input precision - input: {name}; data does not match datatype {datatype}"
    if datatype == "BYTES":
        arr = np.empty(len(values), dtype=object)
        arr[:] = values
        return name, arr.reshape(shape), pos
    try:
        return name, np.asarray(values, dtype=KSERVE_TO_NP[datatype]).reshape(shape), pos
    except (OverflowError, ValueError):
        return f"Invalid input precision - input: {name}; values out of range for {datatype}"


def _check(model: SimModel, arrays: Arrays, *, typed: bool) -> str | None:
    """OVMS's request validation: count, names, precision, rank and dimensions."""
    if len(arrays) != len(model.inputs):
        return f"Invalid number of inputs - Expected: {len(model.inputs)}; Actual: {len(arrays)}"
    for spec in model.inputs:
        arr = arrays.get(spec.name)
        if arr is None:
            return f"Missing input with specific name - Required input: {spec.name}"
        if typed and arr.dtype != KSERVE_TO_NP[spec.datatype]:
            return f"Invalid input precision - input: {spec.name}; Expected: {spec.datatype}"
        if len(arr.shape) != len(spec.shape):
            return (f"Invalid number of shape dimensions - input: {spec.name}; Expected: {spec.shape}; "
                    f"Actual: {list(arr.shape)}")
        if not shape_matches(spec.shape, list(arr.shape)):
            return f"Invalid input shape - input: {spec.name}; Expected: {spec.shape}; Actual: {list(arr.shape)}"
    return None


def _json_flat(a: np.ndarray) -> list[Any]:
    flat = a.reshape(-1)
    if a.dtype == object:
        return [x.decode() if isinstance(x, bytes) else str(x) for x in flat]
    return flat.tolist()


def _tfs_named(model: SimModel, value: Any, row: bool) -> dict[str, Any] | str:
    """Input name -> nested value, from the row (instances) or columnar (inputs) format."""
    if not row:
        if isinstance(value, dict):
            return value
        if len(model.inputs) != 1:
            return "Could not detect neither named or nonamed format"
        return {model.inputs[0].name: value}
    if not isinstance(value, list) or not value:
        return "Invalid JSON structure. Missing instances in row format"
    if all(isinstance(r, dict) for r in value):
        keys = set(value[0])
        if any(set(r) != keys for r in value):
            return "Invalid JSON structure. One of named instances is not a JSON object."
        return {k: [r[k] for r in value] for k in value[0]}
    if len(model.inputs) != 1:
        return "Invalid JSON structure. Nonamed instance is not an array."
    return {model.inputs[0].name: value}


def _tfs_input(value: Any, datatype: str | None) -> np.ndarray | None:
    """A TF Serving JSON value as an array typed by the model's declaration (None: not rectangular)."""
    try:
        if datatype == "BYTES":
            flat = [base64.b64decode(x["b64"]) if isinstance(x, dict) else x for x in _flatten(value)]
            probe = np.asarray(_shape_only(value))
            arr = np.empty(len(flat), dtype=object)
            arr[:] = flat
            return arr.reshape(probe.shape)
        raw = np.asarray(value)
        if raw.dtype == object or raw.dtype.kind in "US":
            return None
        dtype = KSERVE_TO_NP.get(datatype or "", raw.dtype)
        return raw.astype(dtype)
    except (ValueError, TypeError, KeyError):
        return None


def _shape_only(value: Any) -> Any:
    return [_shape_only(v) for v in value] if isinstance(value, list) else 0


def _tfs_json(a: np.ndarray) -> Any:
    if a.dtype == object:
        return np.vectorize(lambda x: x.decode() if isinstance(x, bytes) else str(x), otypes=[object])(a).tolist()
    return a.tolist()
