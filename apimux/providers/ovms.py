"""OpenVINO Model Server: its three REST faces behind one backend name.

* KServe v2 / open inference protocol (default, ``protocol="kserve"``): also
  fits Triton, KServe and MLServer.
* TensorFlow Serving REST (``protocol="tfserving"``).
* The OpenAI-compatible ``/v3`` routes for chat and embeddings: inherited from
  ``OpenAIProvider``, only the path prefix differs.

Tensor ops: ``infer`` (name -> numpy arrays in and out; on the KServe face FP16
tensors travel with the binary tensor data extension, and every tensor does with
``options={"binary_tensors": True}``), ``ready`` (server or
model readiness -> bool), ``metadata`` (model metadata dict, in the KServe
shape on both faces) and ``model_status`` (TF Serving version states).

TF Serving JSON carries no dtypes: pass ``metadata=`` (from the "metadata" op)
to get outputs in the declared dtypes, else numpy's defaults (int64/float64).
A single output comes back unnamed; it is keyed by the one name in
``outputs=``/metadata, else by the wire key ("outputs" or "predictions").
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Mapping
from typing import Any, ClassVar
from urllib.parse import quote

import numpy as np

from apimux.errors import ApimuxError, BadRequest, NotFound, UpstreamError
from apimux.providers import ovms_tensors as t
from apimux.providers.base import Call, error_message, load_json
from apimux.providers.openai import OpenAIProvider
from apimux.providers.registry import register
from apimux.transport import HttpRequest, HttpResponse
from apimux.types import InferResponse

PROTOCOLS = ("kserve", "tfserving")
_PROTOCOL_ALIASES = {"kserve": "kserve", "v2": "kserve", "kfs": "kserve", "oip": "kserve", "triton": "kserve",
                     "tfserving": "tfserving", "tfs": "tfserving", "tensorflow": "tfserving", "v1": "tfserving"}
# infer params that shape the request; anything else is a caller typo.
_INFER_PARAMS = {"inputs", "version", "outputs", "metadata", "expect", "format", "parameters"}
_SERVER = ("", "-")  # model names meaning "the server itself" (client.call("ready", "ovms/-", {}))


@register
class OVMSProvider(OpenAIProvider):
    name = "ovms"
    aliases = ("openvino",)
    env_keys = ("OVMS_API_KEY",)  # optional: OVMS's /v3 routes can require one
    env_base_url = ("OVMS_API_URL",)
    default_base_url = "http://localhost:8000"
    needs_key = False
    batch_limits: ClassVar[dict[str, int]] = {"embed": 2048, "infer": 32}

    def __init__(self, endpoint: Any) -> None:
        super().__init__(endpoint)
        # One server root serves all faces; tolerate a base URL given with /v3.
        self.base_url = self.base_url.removesuffix("/v3")
        proto = (self.protocol or "kserve").lower()
        if proto not in _PROTOCOL_ALIASES:
            raise BadRequest(f"ovms protocol must be one of {', '.join(PROTOCOLS)}, got {self.protocol!r}")
        self.face = _PROTOCOL_ALIASES[proto]

    def url(self, path: str) -> str:
        """OpenAI-style paths (``/chat/completions``...) live under ``/v3``."""
        return f"{self.base_url}/v3{path}"

    def root(self, path: str) -> str:
        return f"{self.base_url}{path}"

    def estimate_tokens(self, call: Call) -> int:
        return 1 if call.op in ("infer", "ready", "metadata", "model_status") else super().estimate_tokens(call)

    # ---- paths -----------------------------------------------------------
    @staticmethod
    def _model_path(prefix: str, call: Call, version: Any) -> str:
        path = f"{prefix}/models/{quote(call.model, safe='')}"
        return f"{path}/versions/{quote(str(version), safe='')}" if version not in (None, "") else path

    # ---- infer -----------------------------------------------------------
    def infer_request(self, call: Call, key: str | None) -> HttpRequest:
        p = call.params
        unknown = set(p) - _INFER_PARAMS
        if unknown:
            raise BadRequest(
                f"ovms infer does not take {', '.join(sorted(unknown))} (it takes {', '.join(sorted(_INFER_PARAMS))})"
            )
        metadata = p.get("metadata") or p.get("expect")
        inputs = _named_arrays(p.get("inputs"), metadata, self.face)
        if metadata:
            t.check_against(inputs, metadata)
        outputs = p.get("outputs")
        if outputs is not None and (
            not isinstance(outputs, (list, tuple)) or not all(isinstance(o, str) for o in outputs)
        ):
            raise BadRequest("outputs must be a list of output names")
        if self.face == "tfserving":
            return self._tfs_predict(call, key, inputs)
        return self._kserve_infer(call, key, inputs, outputs, metadata)

    def _kserve_infer(self, call: Call, key: str | None, inputs: dict[str, np.ndarray],
                      outputs: list[str] | tuple[str, ...] | None, metadata: Mapping[str, Any] | None) -> HttpRequest:
        """JSON, or the binary tensor data extension when any tensor needs it.

        FP16 always travels binary (JSON has no 16-bit float; Triton and
        KServe refuse it); every tensor does with ``options={"binary_tensors": True}``.
        """
        p = call.params
        all_binary = bool(self.options.get("binary_tensors"))
        entries: list[dict[str, Any]] = []
        tensors: list[bytes] = []
        for n, a in inputs.items():
            if all_binary or t.datatype_of(n, a) == "FP16":
                entry, raw = t.kserve_binary_input(n, a)
                tensors.append(raw)
            else:
                entry = t.kserve_input(n, a)
            entries.append(entry)
        # Outputs come back binary when asked: always with binary_tensors, for
        # outputs the metadata declares FP16 (no server returns those as JSON),
        # and for all when the request is binary anyway (an FP16 model's
        # outputs are FP16 too, and the server has shown it speaks the extension).
        fp16_out = {str(o.get("name")) for o in (metadata or {}).get("outputs") or () if o.get("datatype") == "FP16"}
        params: dict[str, Any] = dict(p.get("parameters") or {})
        body: dict[str, Any] = {"id": call.request_id, "inputs": entries}
        everything = all_binary or bool(tensors)
        if outputs:
            body["outputs"] = [
                {"name": o, "parameters": {"binary_data": True}} if everything or o in fp16_out else {"name": o}
                for o in outputs
            ]
        elif everything or fp16_out:
            params.setdefault("binary_data_output", True)
        if params:
            body["parameters"] = params
        url = self.root(self._model_path("/v2", call, p.get("version")) + "/infer")
        if not tensors:
            return HttpRequest("POST", url, self.headers(key), json=body)
        data, header_length = t.binary_body(body, tensors)
        headers = {**self.headers(key), "Content-Type": "application/octet-stream",
                   t.HEADER_LENGTH: str(header_length)}
        return HttpRequest("POST", url, headers, data=data)

    # ---- micro-batching of single infers (used by the core's batcher) --------
    def coalesce_key(self, call: Call) -> Hashable | None:
        """Infers may share one request only when the caller's ``metadata=``
        declares a dynamic batch dimension (-1 first) on every input and
        output: then stacking along axis 0 and splitting the outputs back is
        exactly what the model would compute one by one."""
        p = call.params
        meta = p.get("metadata") or p.get("expect")
        inputs = p.get("inputs")
        if call.op != "infer" or self.face != "kserve" or p.get("parameters") or not isinstance(meta, Mapping):
            return None
        if not isinstance(inputs, Mapping) or not all(isinstance(a, np.ndarray) and a.ndim for a in inputs.values()):
            return None
        specs = list(meta.get("inputs") or ()) + list(meta.get("outputs") or ())
        if not specs or any((s.get("shape") or [0])[0] != -1 for s in specs):
            return None
        if len({a.shape[0] for a in inputs.values()}) != 1:
            return None
        layout = tuple(sorted((n, a.dtype.str, a.shape[1:]) for n, a in inputs.items()))
        outputs = tuple(p.get("outputs") or ())
        # default=str: metadata built by hand may hold numpy ints; it is only a key here.
        return (call.model, str(p.get("version") or ""), outputs, layout,
                json.dumps(meta, sort_keys=True, default=str))

    @staticmethod
    def coalesce(calls: list[Call]) -> Call:
        """One infer whose inputs are every call's inputs stacked along axis 0, in order."""
        first = calls[0]
        names = list(first.params["inputs"])
        stacked = {n: np.concatenate([c.params["inputs"][n] for c in calls], axis=0) for n in names}
        return Call("infer", first.model, {**first.params, "inputs": stacked}, first.request_id)

    @staticmethod
    def uncoalesce(response: InferResponse, calls: list[Call]) -> list[InferResponse]:
        """Split every output back along axis 0 by each call's batch size."""
        sizes = [next(iter(c.params["inputs"].values())).shape[0] for c in calls]
        total = sum(sizes)
        cuts = np.cumsum(sizes)[:-1]
        parts: list[dict[str, Any]] = [{} for _ in calls]
        for name, arr in response.items():
            if not isinstance(arr, np.ndarray) or not arr.ndim or arr.shape[0] != total:
                raise UpstreamError(f"ovms output {name!r} does not have the batch's {total} rows to split")
            for i, piece in enumerate(np.split(arr, cuts, axis=0)):
                parts[i][name] = piece
        return [InferResponse(out, model=response.model, raw=response.raw) for out in parts]

    def _tfs_predict(self, call: Call, key: str | None, inputs: dict[str, np.ndarray]) -> HttpRequest:
        fmt = call.params.get("format", "columnar")
        if fmt not in ("columnar", "row"):
            raise BadRequest(f"ovms TF Serving format must be 'columnar' or 'row', got {fmt!r}")
        if fmt == "columnar":
            body: dict[str, Any] = {"inputs": {n: t.tfs_value(n, a) for n, a in inputs.items()}}
        else:
            batches = {n: (a.shape[0] if a.ndim else None) for n, a in inputs.items()}
            sizes = set(batches.values())
            if None in sizes or len(sizes) != 1:
                raise BadRequest(f"row format needs every input batched along dimension 0 with one size, got {batches}")
            cols = {n: t.tfs_value(n, a) for n, a in inputs.items()}
            rows = [{n: col[i] for n, col in cols.items()} for i in range(sizes.pop() or 0)]
            body = {"instances": rows}
        url = self.root(self._model_path("/v1", call, call.params.get("version")) + ":predict")
        return HttpRequest("POST", url, self.headers(key), json=body)

    def infer_response(self, call: Call, resp: HttpResponse) -> InferResponse:
        if self.face == "tfserving":
            return self._tfs_response(call, resp)
        header_len = resp.headers.get(t.HEADER_LENGTH)
        if header_len is not None:
            try:
                n = int(header_len)
                if not 0 <= n <= len(resp.body):
                    raise ValueError(n)
                data = json.loads(resp.body[:n])
            except (ValueError, UnicodeDecodeError):
                raise UpstreamError(f"{self.name} sent an unreadable binary inference header "
                                    f"({t.HEADER_LENGTH}: {header_len}, body of {len(resp.body)} bytes)") from None
            outs_meta = data.get("outputs") if isinstance(data, dict) else None
            slices = t.split_binary(resp.body, n, outs_meta if isinstance(outs_meta, list) else [])
        else:
            data = load_json(resp, self.name)
            slices = {}
        if not isinstance(data, dict) or not isinstance(data.get("outputs"), list):
            raise UpstreamError(f"{self.name} infer response has no outputs list: {str(data)[:200]}")
        outs = {str(o.get("name")): t.kserve_output(o, slices.get(str(o.get("name")))) for o in data["outputs"]}
        return InferResponse(outs, model=str(data.get("model_name", call.model)), raw=data)

    def _tfs_response(self, call: Call, resp: HttpResponse) -> InferResponse:
        data = load_json(resp, self.name)
        if not isinstance(data, dict) or not ("outputs" in data or "predictions" in data):
            raise UpstreamError(f"{self.name} predict response has neither outputs nor predictions: {str(data)[:200]}")
        metadata = call.params.get("metadata") or call.params.get("expect") or {}
        types = {str(o["name"]): o.get("datatype") for o in metadata.get("outputs") or ()}
        wanted = call.params.get("outputs")
        outs: dict[str, np.ndarray] = {}
        if "outputs" in data:
            value = data["outputs"]
            if isinstance(value, dict) and not _is_b64(value):
                outs = {n: t.tfs_array(v, types.get(n)) for n, v in value.items()}
            else:  # one output: TF Serving drops its name
                name = _single_name(types, wanted, "outputs")
                outs = {name: t.tfs_array(value, types.get(name))}
        else:
            preds = data["predictions"]
            # Rows of named outputs; a row that is only {"b64": ...} is one unnamed binary output.
            if isinstance(preds, list) and preds and all(isinstance(r, dict) and not _is_b64(r) for r in preds):
                names = list(preds[0])
                outs = {n: t.tfs_array([r[n] for r in preds], types.get(n)) for n in names}
            else:
                name = _single_name(types, wanted, "predictions")
                outs = {name: t.tfs_array(preds, types.get(name))}
        if wanted:  # TF Serving REST has no output filter; apply it here
            missing = [w for w in wanted if w not in outs]
            if missing and len(outs) > 1:
                raise BadRequest(f"model {call.model!r} has no output {missing[0]!r} (it has {', '.join(outs)})")
            outs = {n: v for n, v in outs.items() if n in wanted} or outs
        return InferResponse(outs, model=call.model, raw=data)

    # ---- readiness, metadata, status ----------------------------------------
    def ready_request(self, call: Call, key: str | None) -> HttpRequest:
        version = call.params.get("version")
        if self.face == "tfserving":
            if call.model in _SERVER:
                raise BadRequest("TF Serving REST has no server readiness route; ask about a model ('ovms/<model>')")
            return HttpRequest("GET", self.root(self._model_path("/v1", call, version)), self.headers(key))
        if call.model in _SERVER:
            which = "live" if call.params.get("live") else "ready"
            return HttpRequest("GET", self.root(f"/v2/health/{which}"), self.headers(key))
        return HttpRequest("GET", self.root(self._model_path("/v2", call, version) + "/ready"), self.headers(key))

    def ready_response(self, call: Call, resp: HttpResponse) -> bool:
        # OVMS and Triton answer 200 with an empty body; the spec's body is {"ready": bool}.
        data = _json_or_none(resp.body)
        if self.face == "tfserving" and call.model not in _SERVER:
            states = [v.get("state") for v in (data or {}).get("model_version_status") or ()]
            return "AVAILABLE" in states
        if isinstance(data, dict) and "ready" in data:
            return bool(data["ready"])
        return resp.status == 200

    def metadata_request(self, call: Call, key: str | None) -> HttpRequest:
        version = call.params.get("version")
        if self.face == "tfserving":
            url = self.root(self._model_path("/v1", call, version) + "/metadata")
            return HttpRequest("GET", url, self.headers(key))
        return HttpRequest("GET", self.root(self._model_path("/v2", call, version)), self.headers(key))

    def metadata_response(self, call: Call, resp: HttpResponse) -> dict[str, Any]:
        data = load_json(resp, self.name)
        if not isinstance(data, dict):
            raise UpstreamError(f"{self.name} metadata is not a JSON object: {str(data)[:200]}")
        return t.tfs_metadata(data) if self.face == "tfserving" else data

    def model_status_request(self, call: Call, key: str | None) -> HttpRequest:
        # The TF Serving route; OVMS serves it whatever face infer uses.
        url = self.root(self._model_path("/v1", call, call.params.get("version")))
        return HttpRequest("GET", url, self.headers(key))

    def model_status_response(self, call: Call, resp: HttpResponse) -> dict[int, dict[str, Any]]:
        """``{version: {"state", "error_code", "error_message"}}`` (as ovmsclient returns it)."""
        data = load_json(resp, self.name)
        out: dict[int, dict[str, Any]] = {}
        for v in (data or {}).get("model_version_status") or ():
            status = v.get("status") or {}
            out[int(v.get("version", 0))] = {
                "state": v.get("state"),
                "error_code": status.get("error_code", "OK"),
                "error_message": status.get("error_message", ""),
            }
        return out

    # ---- errors ----------------------------------------------------------
    def error(self, call: Call, resp: HttpResponse) -> ApimuxError:
        err = super().error(call, resp)
        msg = error_message(resp.body).lower()
        # Triton answers 400 for a model it does not know; that is a 404 in meaning.
        if resp.status == 400 and ("unknown model" in msg or "is not found" in msg):
            return NotFound(err.message, status=resp.status, body=err.body)
        if call.op == "ready" and not isinstance(err, NotFound):
            # A "not ready" answer is the probe's result; retrying it would only delay it.
            err.retryable = False
        return err

    def is_answer(self, call: Call, resp: HttpResponse) -> bool:
        # A readiness probe's 503 (or Triton's 400) means "not ready": the answer
        # False, not a failure, so it neither raises nor counts against the breaker.
        return call.op == "ready" and resp.status in (400, 503) and not isinstance(self.error(call, resp), NotFound)


@register
class OVMSOpenAIProvider(OpenAIProvider):
    """Only OVMS's OpenAI-compatible routes, for a base URL that already ends in /v3."""

    name = "ovms_openai"
    env_keys = ("OVMS_API_KEY",)
    env_base_url = ("OVMS_OPENAI_BASE_URL",)  # a URL ending in /v3
    default_base_url = "http://localhost:8000/v3"
    needs_key = False


# ---- helpers ------------------------------------------------------------------
def _named_arrays(inputs: Any, metadata: Mapping[str, Any] | None, face: str) -> dict[str, np.ndarray]:
    """``{"name": array}``; a bare array is allowed when the input name is unambiguous."""
    if isinstance(inputs, Mapping):
        if not inputs:
            raise BadRequest("infer needs at least one input")
        out = {}
        for n, v in inputs.items():
            if not isinstance(n, str) or not n:
                raise BadRequest(f"input names must be non-empty strings, got {n!r}")
            out[n] = t.as_array(n, v)
        return out
    if inputs is None:
        raise BadRequest("infer needs inputs: a dict of input name -> numpy array")
    specs = list((metadata or {}).get("inputs") or ())
    if len(specs) == 1:
        name = str(specs[0]["name"])
        return {name: t.as_array(name, inputs)}
    raise BadRequest(
        "infer inputs must be a dict of input name -> numpy array"
        + ("" if face == "kserve" else " (or pass metadata= of a one-input model)")
    )


def _single_name(types: Mapping[str, Any], wanted: Any, fallback: str) -> str:
    if wanted and len(wanted) == 1:
        return str(wanted[0])
    if len(types) == 1:
        return next(iter(types))
    return fallback


def _is_b64(value: Mapping[str, Any]) -> bool:
    """TF Serving's wrapper for a binary string value (outputs named ``*_bytes``)."""
    return len(value) == 1 and isinstance(value.get("b64"), str)


def _json_or_none(body: bytes) -> Any:
    try:
        return json.loads(body) if body.strip() else None
    except (ValueError, UnicodeDecodeError):
        return None

