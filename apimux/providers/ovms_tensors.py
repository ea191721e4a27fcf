"""numpy <-> wire tensors for the KServe v2 (open inference) and TF Serving REST faces.

Pure functions: the OVMS provider and its simulator both use them, so a dtype
rule lives in one place. Every check runs before anything is sent and names
the input, what was expected and what was given.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from apimux.errors import BadRequest, UpstreamError

# KServe datatype <-> numpy dtype. BYTES travels as strings in JSON and comes
# back as an object array of str (tritonclient's JSON path does the same).
KSERVE_TO_NP: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
_NP_TO_KSERVE: dict[np.dtype[Any], str] = {v: k for k, v in KSERVE_TO_NP.items() if k != "BYTES"}

# TF Serving's DataType enum names as OVMS/TFS report them in model metadata.
TF_TO_KSERVE: dict[str, str] = {
    "DT_BOOL": "BOOL",
    "DT_UINT8": "UINT8",
    "DT_UINT16": "UINT16",
    "DT_UINT32": "UINT32",
    "DT_UINT64": "UINT64",
    "DT_INT8": "INT8",
    "DT_INT16": "INT16",
    "DT_INT32": "INT32",
    "DT_INT64": "INT64",
    "DT_HALF": "FP16",
    "DT_FLOAT": "FP32",
    "DT_DOUBLE": "FP64",
    "DT_STRING": "BYTES",
}
KSERVE_TO_TF: dict[str, str] = {v: k for k, v in TF_TO_KSERVE.items()}


# ---- numpy -> datatype ------------------------------------------------------
def as_array(name: str, value: Any) -> np.ndarray:
    """An input as an ndarray; lists and scalars are converted, objects must be strings."""
    try:
        arr = value if isinstance(value, np.ndarray) else np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise BadRequest(f"input {name!r} cannot be converted to a numpy array: {exc}") from None
    if arr.dtype == object:
        bad = next((x for x in arr.flat if not isinstance(x, (str, bytes))), None)
        if bad is not None:
            raise BadRequest(
                f"input {name!r} has dtype object holding {type(bad).__name__}; only str/bytes "
                "elements (datatype BYTES) may be object-typed"
            )
    return arr


def datatype_of(name: str, arr: np.ndarray) -> str:
    """The KServe datatype for an array's dtype, or BadRequest naming the dtype."""
    if arr.dtype.kind in "USO":
        return "BYTES"
    dt = _NP_TO_KSERVE.get(arr.dtype.newbyteorder("=") if arr.dtype.byteorder == ">" else arr.dtype)
    if dt is None:
        known = ", ".join(sorted({str(d) for d in _NP_TO_KSERVE}))
        raise BadRequest(f"input {name!r} has dtype {arr.dtype} which no KServe datatype carries (use one of: {known})")
    return dt


def _text(name: str, x: Any) -> str:
    if isinstance(x, bytes):
        try:
            return x.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest(
                f"input {name!r} holds bytes that are not UTF-8; KServe JSON carries BYTES as strings "
                "(options={'binary_tensors': True} sends them as binary data)"
            ) from None
    return str(x)


def _json_values(name: str, arr: np.ndarray, datatype: str) -> list[Any]:
    flat = arr.reshape(-1)
    if datatype == "BYTES":
        return [_text(name, x) for x in flat]
    if arr.dtype.kind == "f" and flat.size and not bool(np.isfinite(flat).all()):
        raise BadRequest(f"input {name!r} contains NaN or infinity, which JSON cannot carry "
                         "(options={'binary_tensors': True} sends tensors as binary data)")
    return flat.tolist()


def kserve_input(name: str, value: Any) -> dict[str, Any]:
    """One ``inputs[]`` entry: ``{"name", "shape", "datatype", "data"}`` (data flattened, row-major).

    FP16 is refused: the open inference protocol has no JSON form for it
    (Triton and KServe answer 400); send it with ``kserve_binary_input``.
    """
    arr = as_array(name, value)
    datatype = datatype_of(name, arr)
    if datatype == "FP16":
        raise BadRequest(f"input {name!r} is FP16, which KServe v2 servers only accept as binary tensor data")
    return {"name": name, "shape": list(arr.shape), "datatype": datatype, "data": _json_values(name, arr, datatype)}


# ---- binary tensor data extension ------------------------------------------------
# Triton's docs/protocol/extension_binary_data.md (also KServe's): tensors go
# after the JSON object, little-endian, row-major, no padding; BOOL is one byte
# 0/1; a BYTES element is a 4-byte little-endian length then its bytes. The
# header ``Inference-Header-Content-Length`` gives the JSON object's length.
HEADER_LENGTH = "Inference-Header-Content-Length"


def tensor_bytes(name: str, arr: np.ndarray, datatype: str) -> bytes:
    """An array's bytes in the extension's layout."""
    if datatype == "BYTES":
        parts: list[bytes] = []
        for x in arr.reshape(-1):
            raw = x if isinstance(x, bytes) else str(x).encode("utf-8")
            parts.append(len(raw).to_bytes(4, "little") + raw)
        return b"".join(parts)
    if datatype == "BOOL":
        return np.ascontiguousarray(arr, dtype=np.bool_).tobytes()
    return np.ascontiguousarray(arr, dtype=KSERVE_TO_NP[datatype].newbyteorder("<")).tobytes()


def kserve_binary_input(name: str, value: Any) -> tuple[dict[str, Any], bytes]:
    """One ``inputs[]`` entry carrying ``parameters.binary_data_size`` (and no ``data``), plus its bytes."""
    arr = as_array(name, value)
    datatype = datatype_of(name, arr)
    raw = tensor_bytes(name, arr, datatype)
    entry = {"name": name, "shape": list(arr.shape), "datatype": datatype,
             "parameters": {"binary_data_size": len(raw)}}
    return entry, raw


def binary_body(header: Mapping[str, Any], tensors: Sequence[bytes]) -> tuple[bytes, int]:
    """The JSON object followed by the tensors' bytes, and the JSON's length (for ``HEADER_LENGTH``)."""
    head = json.dumps(header, separators=(",", ":")).encode()
    return head + b"".join(tensors), len(head)


def tensor_from_bytes(raw: bytes, datatype: str, count: int) -> np.ndarray:
    """A flat array of ``count`` elements from the extension's bytes; ValueError if they do not fit."""
    if datatype == "BYTES":
        arr = _bytes_tensor(raw)
        if arr.size != count:
            raise ValueError(f"{arr.size} BYTES elements, expected {count}")
        return arr
    dtype = KSERVE_TO_NP[datatype]
    if len(raw) != count * dtype.itemsize:
        raise ValueError(f"{len(raw)} bytes, expected {count * dtype.itemsize} for {count} {datatype} values")
    if datatype == "BOOL" and any(b > 1 for b in raw):
        raise ValueError("BOOL bytes must be 0 or 1")
    return np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype)


# ---- checking against model metadata ------------------------------------------
def check_against(inputs: Mapping[str, np.ndarray], metadata: Mapping[str, Any]) -> None:
    """Names, datatypes and shapes (-1 = any size) against metadata as the "metadata" op returns it."""
    specs = {str(s["name"]): s for s in metadata.get("inputs") or ()}
    if not specs:
        return
    unknown = [n for n in inputs if n not in specs]
    if unknown:
        raise BadRequest(f"input {unknown[0]!r} is not an input of the model (expected: {', '.join(specs)})")
    missing = [n for n in specs if n not in inputs]
    if missing:
        raise BadRequest(f"input {missing[0]!r} is missing (the model expects: {', '.join(specs)})")
    for n, arr in inputs.items():
        spec = specs[n]
        want_dt = str(spec.get("datatype", ""))
        got_dt = datatype_of(n, arr)
        if want_dt and want_dt != got_dt:
            raise BadRequest(f"input {n!r}: expected datatype {want_dt}, given {got_dt} (numpy {arr.dtype})")
        want = [int(d) for d in spec.get("shape") or ()]
        if "shape" in spec and not shape_matches(want, list(arr.shape)):
            raise BadRequest(f"input {n!r}: expected shape {want} (-1 = any), given {list(arr.shape)}")


def shape_matches(want: Sequence[int], got: Sequence[int]) -> bool:
    return len(want) == len(got) and all(w < 0 or w == g for w, g in zip(want, got, strict=True))


# ---- wire -> numpy -----------------------------------------------------------
def kserve_output(out: Mapping[str, Any], binary: bytes | None = None) -> np.ndarray:
    """One ``outputs[]`` entry as an ndarray of its datatype, reshaped to its shape.

    ``binary`` is this output's slice of the body when the server used the
    binary tensor extension (``parameters.binary_data_size``).
    """
    name = out.get("name", "?")
    datatype = str(out.get("datatype", ""))
    dtype = KSERVE_TO_NP.get(datatype)
    if dtype is None:
        raise UpstreamError(f"output {name!r} has unknown datatype {datatype!r}")
    try:
        shape = [int(d) for d in out.get("shape") or ()]
    except (TypeError, ValueError):
        raise UpstreamError(f"output {name!r} has an invalid shape {out.get('shape')!r}") from None
    if binary is not None:
        try:
            arr = tensor_from_bytes(binary, datatype, math.prod(shape))
        except ValueError as exc:
            raise UpstreamError(f"output {name!r} has unreadable binary data: {exc}") from None
    else:
        data = out.get("data")
        if data is None:
            raise UpstreamError(f"output {name!r} carries no data")
        arr = np.asarray(data, dtype=dtype).reshape(-1)
    if arr.size != math.prod(shape):
        raise UpstreamError(f"output {name!r} has {arr.size} values for shape {shape}")
    return arr.reshape(shape)


def _bytes_tensor(raw: bytes) -> np.ndarray:
    """The binary extension's BYTES layout: each element is a 4-byte little-endian length + bytes."""
    items: list[bytes] = []
    i = 0
    while i < len(raw):
        if i + 4 > len(raw):
            raise ValueError(f"a BYTES element's length prefix is cut at byte {i}")
        n = int.from_bytes(raw[i : i + 4], "little")
        if i + 4 + n > len(raw):
            raise ValueError(f"a BYTES element of {n} bytes at byte {i} runs past the data")
        items.append(raw[i + 4 : i + 4 + n])
        i += 4 + n
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out


def split_binary(body: bytes, header_length: int, outputs: Sequence[Mapping[str, Any]]) -> dict[str, bytes]:
    """Slices of the binary part of a response, by output name.

    The tensors follow the JSON object in the order of the outputs that carry
    ``binary_data_size``; outputs without it are JSON and take no bytes.
    """
    out: dict[str, bytes] = {}
    pos = header_length
    for o in outputs:
        params = o.get("parameters") if isinstance(o, Mapping) else None
        size = (params or {}).get("binary_data_size") if isinstance(params, Mapping) else None
        if size is None:
            continue
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise UpstreamError(f"output {o.get('name')!r} has an invalid binary_data_size {size!r}")
        if pos + size > len(body):
            raise UpstreamError(f"output {o.get('name')!r} declares {size} binary bytes but the body ends "
                                f"{len(body) - pos} bytes after its start")
        out[str(o.get("name"))] = body[pos : pos + size]
        pos += size
    return out


# ---- TF Serving -----------------------------------------------------------------
def tfs_value(name: str, value: Any) -> Any:
    """A nested JSON list for TF Serving; bytes as ``{"b64": ...}``, str as text."""
    arr = as_array(name, value)
    datatype = datatype_of(name, arr)
    if datatype == "BYTES":
        return _nest(arr, lambda x: {"b64": base64.b64encode(x).decode()} if isinstance(x, bytes) else str(x))
    if arr.dtype.kind == "f" and arr.size and not bool(np.isfinite(arr).all()):
        raise BadRequest(f"input {name!r} contains NaN or infinity, which JSON cannot carry")
    return arr.tolist()


def _nest(arr: np.ndarray, conv: Any) -> Any:
    def walk(v: Any) -> Any:
        return [walk(x) for x in v] if isinstance(v, list) else conv(v)

    return walk(arr.tolist())


def tfs_array(value: Any, datatype: str | None = None) -> np.ndarray:
    """A TF Serving JSON value as an ndarray (typed when the datatype is known)."""
    if datatype == "BYTES" or _has_text(value):
        return _object_array(value)
    dtype = KSERVE_TO_NP.get(datatype or "")
    try:
        return np.asarray(value, dtype=dtype)
    except (ValueError, TypeError) as exc:
        raise UpstreamError(f"TF Serving output is not a rectangular numeric array: {exc}") from None


def _has_text(value: Any) -> bool:
    while isinstance(value, list) and value:
        value = value[0]
    return isinstance(value, (str, dict))


def _object_array(value: Any) -> np.ndarray:
    def conv(x: Any) -> Any:
        if isinstance(x, dict) and "b64" in x:
            return base64.b64decode(x["b64"])
        return x

    def shape_of(v: Any) -> list[int]:
        return [len(v), *shape_of(v[0])] if isinstance(v, list) and v else ([0] if isinstance(v, list) else [])

    shape = shape_of(value)
    flat: list[Any] = []

    def walk(v: Any) -> None:
        if isinstance(v, list):
            for x in v:
                walk(x)
        else:
            flat.append(conv(v))

    walk(value)
    out = np.empty(len(flat), dtype=object)
    out[:] = flat
    try:
        return out.reshape(shape)
    except ValueError:
        raise UpstreamError(f"TF Serving output is not rectangular (shape guess {shape})") from None


def tfs_metadata(data: Mapping[str, Any]) -> dict[str, Any]:
    """TF Serving metadata (OVMS camelCase or TFS snake_case) in the KServe metadata shape.

    ``{"name", "versions", "platform", "inputs": [{"name","datatype","shape"}], "outputs": [...], "raw"}``,
    so the same dict can be passed back as ``metadata=`` for checks on either face.
    """
    spec = data.get("modelSpec") or data.get("model_spec") or {}
    sig_map = (data.get("metadata") or {}).get("signature_def") or {}
    sigs = sig_map.get("signatureDef") or sig_map.get("signature_def") or {}
    sig = sigs.get("serving_default") or (next(iter(sigs.values())) if sigs else {})

    def tensors(kind: str) -> list[dict[str, Any]]:
        out = []
        for name, info in (sig.get(kind) or {}).items():
            shape_info = info.get("tensorShape") or info.get("tensor_shape") or {}
            dims = [int(d.get("size", -1)) for d in shape_info.get("dim") or ()]
            dtype = str(info.get("dtype", ""))
            out.append({"name": name, "datatype": TF_TO_KSERVE.get(dtype, dtype), "shape": dims})
        return out

    version = spec.get("version")
    return {
        "name": spec.get("name", ""),
        "versions": [str(version)] if version is not None else [],
        "platform": "tensorflow_serving",
        "inputs": tensors("inputs"),
        "outputs": tensors("outputs"),
        "raw": dict(data),
    }
