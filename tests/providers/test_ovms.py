"""The OVMS simulator judged by the official clients (tritonclient for KServe v2,
ovmsclient for TF Serving, openai for /v3), then our adapter through
AsyncClient on each face, and the tensor encoding as pure functions."""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Iterator
from typing import Any

import numpy as np
import openai
import ovmsclient
import pytest
import requests
import tritonclient.http as th
from ovmsclient.tfs_compat.base.errors import InvalidInputError, ModelNotFoundError
from tritonclient.utils import InferenceServerException

from apimux import (
    AsyncClient,
    BadRequest,
    CircuitOpen,
    Endpoint,
    FakeClock,
    NotFound,
    RetrySettings,
    Settings,
    UpstreamError,
)
from apimux.providers import ovms_tensors as t
from apimux.providers.base import Call
from apimux.providers.ovms import OVMSProvider
from apimux.testing import Fault
from apimux.testing.ovms_sim import OVMSSim, SimModel, TensorSpec, default_models, doubler
from apimux.testing.server import Recorded
from apimux.transport import HttpResponse
from apimux.types import InferResponse

MSG = [{"role": "user", "content": "hello there"}]
X = np.arange(6, dtype=np.float32).reshape(2, 3)


@pytest.fixture
def osim(clock: FakeClock) -> Iterator[OVMSSim]:
    with OVMSSim(clock=clock) as s:
        yield s


def addr(sim: OVMSSim) -> str:
    return f"127.0.0.1:{sim.port}"


def ovms(sim: OVMSSim, protocol: str | None = None, **kw: object) -> Endpoint:
    return Endpoint("ovms", base_url=sim.url, protocol=protocol, **kw)  # type: ignore[arg-type]


def json_input(name: str, arr: np.ndarray, datatype: str) -> th.InferInput:
    i = th.InferInput(name, list(arr.shape), datatype)
    i.set_data_from_numpy(arr, binary_data=False)
    return i


def json_outputs(*names: str) -> list[th.InferRequestedOutput]:
    return [th.InferRequestedOutput(n, binary_data=False) for n in names]


def binary_input(name: str, arr: np.ndarray, datatype: str) -> th.InferInput:
    i = th.InferInput(name, list(arr.shape), datatype)
    i.set_data_from_numpy(arr)  # tritonclient's default: binary_data=True
    return i


def binary_outputs(*names: str) -> list[th.InferRequestedOutput]:
    return [th.InferRequestedOutput(n) for n in names]  # default binary_data=True


def split_request(rec: Recorded) -> tuple[dict[str, Any], bytes]:
    """A recorded KServe request as (JSON object, bytes after it)."""
    n = int(rec.headers.get(t.HEADER_LENGTH, len(rec.body)))
    return json.loads(rec.body[:n]), rec.body[n:]


# ---- KServe v2 face, judged by tritonclient ------------------------------------------------
def test_tritonclient_health_metadata_and_readiness(osim: OVMSSim) -> None:
    c = th.InferenceServerClient(url=addr(osim))
    assert c.is_server_live() and c.is_server_ready()
    assert c.is_model_ready("doubler") and c.is_model_ready("doubler", "2")
    assert not c.is_model_ready("nope") and not c.is_model_ready("doubler", "7")
    meta = c.get_model_metadata("doubler")
    assert meta["versions"] == ["1", "2"]
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, -1]}]
    assert [o["name"] for o in meta["outputs"]] == ["output", "sum"]
    osim.server_ready = False
    assert not c.is_server_ready()
    with pytest.raises(InferenceServerException, match="requested name is not found"):
        c.get_model_metadata("nope")


def test_tritonclient_infers_fp32_int64_bool_bytes_as_json(osim: OVMSSim) -> None:
    c = th.InferenceServerClient(url=addr(osim))
    r = c.infer("doubler", [json_input("input", X, "FP32")], outputs=json_outputs("output", "sum"))
    assert r.as_numpy("output").dtype == np.float32
    np.testing.assert_array_equal(r.as_numpy("output"), X * 2)
    np.testing.assert_array_equal(r.as_numpy("sum"), [6.0, 24.0])
    assert "parameters" not in r.get_output("output")  # JSON: the values are in "data"
    big = np.array([[2**40, -3]], dtype=np.int64)
    r = c.infer("doubler_i64", [json_input("input", big, "INT64")], outputs=json_outputs("output"))
    assert r.as_numpy("output").dtype == np.int64 and r.as_numpy("output")[0, 0] == 2**41
    r = c.infer("negate", [json_input("flags", np.array([True, False, True]), "BOOL")],
                outputs=json_outputs("inverted"))
    np.testing.assert_array_equal(r.as_numpy("inverted"), [False, True, False])
    r = c.infer("upper", [json_input("text", np.array(["ab", "héllo"], dtype=object), "BYTES")],
                outputs=json_outputs("upper", "length"))
    assert list(r.as_numpy("upper")) == ["AB", "HÉLLO"] and list(r.as_numpy("length")) == [2, 5]
    assert t.HEADER_LENGTH not in osim.requests[-1].headers  # a plain JSON request
    # a chosen version and one requested output
    r = c.infer("doubler", [json_input("input", X, "FP32")], model_version="1",
                outputs=[th.InferRequestedOutput("sum", binary_data=False)])
    assert r.get_response()["model_version"] == "1" and r.as_numpy("output") is None
    assert osim.requests[-1].path == "/v2/models/doubler/versions/1/infer"


def test_tritonclient_sees_errors_in_its_own_exception(osim: OVMSSim) -> None:
    c = th.InferenceServerClient(url=addr(osim))
    half = np.ones((1, 2), np.float16)
    # FP16 has no JSON form: refused both ways, in Triton's words.
    with pytest.raises(InferenceServerException, match=r"receiving FP16 data via JSON is not supported\. "
                       r"Please use the binary data format for input input") as e:
        c.infer("doubler_f16", [json_input("input", half, "FP16")])
    assert e.value.status() == "400"
    with pytest.raises(InferenceServerException, match="sending FP16 data via JSON is not supported") as e:
        c.infer("doubler_f16", [binary_input("input", half, "FP16")], outputs=json_outputs("output"))
    assert e.value.status() == "400"
    with pytest.raises(InferenceServerException, match="sending FP16 data via JSON"):
        c.infer("halver", [json_input("x", np.ones(2, np.float32), "FP32")], outputs=json_outputs("half"))
    with pytest.raises(InferenceServerException, match="requested name is not found") as e:
        c.infer("nope", [json_input("input", X, "FP32")])
    assert e.value.status() == "404"
    with pytest.raises(InferenceServerException, match="Invalid number of shape dimensions"):
        c.infer("doubler", [json_input("input", np.zeros(3, np.float32), "FP32")])
    with pytest.raises(InferenceServerException, match="Invalid input precision"):
        c.infer("doubler", [json_input("input", X.astype(np.int32), "INT32")])
    osim.faults.script(Fault(status=503))
    with pytest.raises(InferenceServerException) as e:
        c.infer("doubler", [json_input("input", X, "FP32")])
    assert e.value.status() == "503"


def test_tritonclient_binary_extension_with_its_defaults(osim: OVMSSim) -> None:
    """tritonclient's defaults (binary inputs, binary outputs) for FP32, FP16, INT64, BOOL and BYTES."""
    c = th.InferenceServerClient(url=addr(osim))
    r = c.infer("doubler", [binary_input("input", X, "FP32")], outputs=binary_outputs("output", "sum"))
    assert r.as_numpy("output").dtype == np.float32
    np.testing.assert_array_equal(r.as_numpy("output"), X * 2)
    np.testing.assert_array_equal(r.as_numpy("sum"), [6.0, 24.0])
    assert r.get_output("sum")["parameters"] == {"binary_data_size": 8}
    head, raw = split_request(osim.requests[-1])
    assert head["inputs"][0]["parameters"] == {"binary_data_size": 24} and "data" not in head["inputs"][0]
    assert raw == X.astype("<f4").tobytes()

    half = np.array([[0.5, -1.25, 1024.0], [1e-3, 0.0, -0.0]], np.float16)
    r = c.infer("doubler_f16", [binary_input("input", half, "FP16")], outputs=binary_outputs("output", "sum"))
    assert r.as_numpy("output").dtype == np.float16
    np.testing.assert_array_equal(r.as_numpy("output"), (half * 2).astype(np.float16))
    np.testing.assert_array_equal(r.as_numpy("sum"), (half * 2).sum(axis=-1).astype(np.float16))

    big = np.array([[2**40, -3], [7, -(2**62)]], np.int64)
    r = c.infer("doubler_i64", [binary_input("input", big, "INT64")], outputs=binary_outputs("output"))
    assert r.as_numpy("output").dtype == np.int64 and r.as_numpy("output").tolist() == (big * 2).tolist()
    assert r.as_numpy("sum") is None  # not asked for

    r = c.infer("negate", [binary_input("flags", np.array([True, False, True]), "BOOL")],
                outputs=binary_outputs("inverted"))
    assert r.as_numpy("inverted").dtype == np.bool_ and r.as_numpy("inverted").tolist() == [False, True, False]
    assert split_request(osim.requests[-1])[1] == b"\x01\x00\x01"  # one byte per BOOL

    text = np.array([b"ab", "héllo".encode(), b""], dtype=object)
    r = c.infer("upper", [binary_input("text", text, "BYTES")], outputs=binary_outputs("upper", "length"))
    assert r.as_numpy("upper").tolist() == [b"AB", "HÉLLO".encode(), b""]
    assert r.as_numpy("length").tolist() == [2, 5, 0]
    assert split_request(osim.requests[-1])[1] == b"\x02\x00\x00\x00ab\x06\x00\x00\x00h\xc3\xa9llo\x00\x00\x00\x00"


def test_tritonclient_binary_mixed_and_binary_data_output(osim: OVMSSim) -> None:
    c = th.InferenceServerClient(url=addr(osim))
    # No outputs listed: tritonclient sets the request's binary_data_output, so every output is binary.
    r = c.infer("doubler", [json_input("input", X, "FP32")])
    assert split_request(osim.requests[-1])[0]["parameters"] == {"binary_data_output": True}
    assert all("binary_data_size" in r.get_output(n)["parameters"] for n in ("output", "sum"))
    np.testing.assert_array_equal(r.as_numpy("output"), X * 2)
    # One output binary, one JSON, in one answer; a JSON input beside a binary one is fine too.
    r = c.infer("doubler", [binary_input("input", X, "FP32")],
                outputs=[th.InferRequestedOutput("output", binary_data=False), th.InferRequestedOutput("sum")])
    assert "data" in r.get_output("output") and "binary_data_size" in r.get_output("sum")["parameters"]
    np.testing.assert_array_equal(r.as_numpy("output"), X * 2)
    np.testing.assert_array_equal(r.as_numpy("sum"), [6.0, 24.0])
    # FP32 in, FP16 out: fine once the FP16 output is asked for binary.
    r = c.infer("halver", [json_input("x", np.array([1, 3], np.float32), "FP32")], outputs=binary_outputs("half"))
    assert r.as_numpy("half").dtype == np.float16 and r.as_numpy("half").tolist() == [0.5, 1.5]
    # A binary answer carries its JSON length and says it is not plain JSON.
    resp = requests.post(f"{osim.url}/v2/models/halver/infer", timeout=5,
                         data=json.dumps({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [4.0]}],
                                          "parameters": {"binary_data_output": True}}))
    n = int(resp.headers[t.HEADER_LENGTH])
    assert resp.headers["Content-Type"] == "application/octet-stream"
    assert json.loads(resp.content[:n])["outputs"][0]["parameters"] == {"binary_data_size": 2}
    assert np.frombuffer(resp.content[n:], "<f2").tolist() == [2.0]


def test_simulator_checks_binary_requests(osim: OVMSSim) -> None:
    url = f"{osim.url}/v2/models/doubler/infer"

    def post(inputs: list[dict[str, Any]], raw: bytes, header: int | str | None = None) -> requests.Response:
        head = json.dumps({"inputs": inputs}).encode()
        length = len(head) if header is None else header
        return requests.post(url, data=head + raw, headers={t.HEADER_LENGTH: str(length)}, timeout=5)

    def spec(size: int, **extra: object) -> dict[str, Any]:
        return {"name": "input", "shape": [1, 2], "datatype": "FP32", "parameters": {"binary_data_size": size},
                **extra}

    two = np.array([1.5, 2.5], "<f4").tobytes()
    r = post([spec(8)], two)
    assert r.status_code == 200 and r.json()["outputs"][0]["data"] == [3.0, 5.0]  # JSON out unless asked
    r = post([spec(8)], two[:6])
    assert r.status_code == 400 and "unexpected size for input 'input', expecting 2 additional bytes" in r.text
    r = post([spec(8)], two + b"\x00")
    assert r.status_code == 400 and "unexpected additional input data for model 'doubler'" in r.text
    r = post([spec(4)], two[:4])
    assert r.status_code == 400 and "input byte size mismatch for input 'input'" in r.text
    r = post([spec(8, data=[1.0, 2.0])], two)
    assert r.status_code == 400 and "Input must set only one of the following fields" in r.text
    r = post([spec(8)], two, header=10_000)
    assert r.status_code == 400 and "inference header size should be in range" in r.text
    r = requests.post(url, data=json.dumps({"inputs": [spec(8)]}), timeout=5)  # no header: nothing after the JSON
    assert r.status_code == 400 and "must specify valid 'Infer-Header-Content-Length'" in r.text
    neg = f"{osim.url}/v2/models/negate/infer"
    head = json.dumps({"inputs": [{"name": "flags", "shape": [2], "datatype": "BOOL",
                                   "parameters": {"binary_data_size": 2}}]}).encode()
    r = requests.post(neg, data=head + b"\x01\x07", headers={t.HEADER_LENGTH: str(len(head))}, timeout=5)
    assert r.status_code == 400 and "BOOL bytes must be 0 or 1" in r.text
    r = requests.post(neg, data=head + b"\x01\x00", headers={t.HEADER_LENGTH: str(len(head) - 1)}, timeout=5)
    assert r.status_code == 400 and "Invalid JSON in the inference header" in r.text


def test_simulator_validates_request_structure(osim: OVMSSim) -> None:
    url = f"{osim.url}/v2/models/doubler/infer"

    def post(body: object) -> requests.Response:
        return requests.post(url, data=json.dumps(body), timeout=5)

    r = post({"id": "1"})
    assert r.status_code == 400 and "missing inputs" in r.json()["error"]
    r = post({"inputs": [{"name": "input", "shape": [2, 3], "datatype": "FP32", "data": [1.0] * 5}]})
    assert r.status_code == 400 and "needs 6 values, got 5" in r.json()["error"]
    r = post({"inputs": [{"name": "other", "shape": [1, 1], "datatype": "FP32", "data": [1.0]}]})
    assert r.status_code == 400 and "Required input: input" in r.json()["error"]
    r = post({"inputs": [{"name": "input", "shape": [1, 1], "datatype": "FP32", "data": ["x"]}]})
    assert r.status_code == 400 and "Invalid input precision" in r.json()["error"]
    r = post({"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [[1.0, 2.0]]}],
              "outputs": [{"name": "nope"}]})
    assert r.status_code == 400 and "Requested output: nope" in r.json()["error"]
    r = requests.post(f"{osim.url}/v1/models/doubler:predict", data=json.dumps({"x": 1}), timeout=5)
    assert r.status_code == 400 and "row or column format" in r.json()["error"]


# ---- TF Serving face, judged by ovmsclient ---------------------------------------------------
def test_ovmsclient_status_metadata_predict(osim: OVMSSim) -> None:
    c = ovmsclient.make_http_client(addr(osim))
    status = c.get_model_status("doubler")
    assert set(status) == {1, 2} and status[2]["state"] == "AVAILABLE" and status[2]["error_code"] == 0
    assert list(c.get_model_status("doubler", model_version=1)) == [1]
    meta = c.get_model_metadata("doubler")
    assert meta["model_version"] == 2
    assert meta["inputs"] == {"input": {"dtype": "DT_FLOAT", "shape": [-1, -1]}}
    assert meta["outputs"]["sum"] == {"dtype": "DT_FLOAT", "shape": [-1]}
    out = c.predict({"input": X}, "doubler")
    np.testing.assert_array_equal(out["output"], X * 2)
    np.testing.assert_array_equal(out["sum"], [6.0, 24.0])
    out = c.predict({"input": np.array([[5, -7]], np.int64)}, "doubler_i64", model_version=1)
    np.testing.assert_array_equal(out["output"], [[10, -14]])
    out = c.predict({"text": [b"ab", b"xyz"]}, "upper")  # sent as {"b64": ...}
    assert list(out["upper"]) == ["AB", "XYZ"] and list(out["length"]) == [2, 3]
    single = c.predict({"flags": np.array([True, False])}, "negate")  # one output: TFS drops its name
    np.testing.assert_array_equal(single, [False, True])


def test_ovmsclient_errors(osim: OVMSSim) -> None:
    c = ovmsclient.make_http_client(addr(osim))
    with pytest.raises(ModelNotFoundError, match="requested name is not found"):
        c.get_model_status("nope")
    with pytest.raises(ModelNotFoundError, match="requested version is not found"):
        c.get_model_metadata("doubler", model_version=9)
    with pytest.raises(InvalidInputError, match="shape dimensions"):
        c.predict({"input": np.zeros(3, np.float32)}, "doubler")
    osim.faults.script(Fault(status=503))
    with pytest.raises(ConnectionError):
        c.predict({"input": X}, "doubler")


# ---- /v3, judged by openai -------------------------------------------------------------------
def test_openai_sdk_on_v3_routes(clock: FakeClock) -> None:
    with OVMSSim(clock=clock, openai_models={"llama", "bge"}) as s:
        oc = openai.OpenAI(base_url=s.url + "/v3", api_key="unused", max_retries=0)
        r = oc.chat.completions.create(model="llama", messages=MSG)  # type: ignore[arg-type]
        assert r.choices[0].message.content == "echo: hello there"
        chunks = list(oc.chat.completions.create(model="llama", messages=MSG, stream=True))  # type: ignore[arg-type]
        text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)  # type: ignore[attr-defined]
        assert text == "echo: hello there"
        assert len(oc.embeddings.create(model="bge", input=["a", "b"]).data) == 2
        # OVMS's envelope is {"error": "<text>"}: the SDK keeps the text as the error body.
        with pytest.raises(openai.NotFoundError) as nf:
            oc.chat.completions.create(model="nope", messages=MSG)  # type: ignore[arg-type]
        assert nf.value.body == "Model with requested name is not found"
        with pytest.raises(openai.BadRequestError) as bad:
            oc.chat.completions.create(model="llama", messages=[])
        assert "messages" in str(bad.value.body)
        assert s.requests[0].path == "/v3/chat/completions"


# ---- our adapter: KServe v2 -------------------------------------------------------------------
DTYPES = {"FP16": np.float16, "FP32": np.float32, "FP64": np.float64, "INT8": np.int8, "INT16": np.int16,
          "INT32": np.int32, "INT64": np.int64, "UINT8": np.uint8}


@pytest.mark.parametrize("protocol", ["kserve", "tfserving"])
async def test_dtype_round_trips(clock: FakeClock, protocol: str) -> None:
    models = [doubler(f"d_{k.lower()}", k) for k in DTYPES] + default_models()
    with OVMSSim(clock=clock, models=models) as s:
        async with AsyncClient([ovms(s, protocol)], clock=clock) as c:
            for datatype, np_type in DTYPES.items():
                x = np.array([[1, 2, 3], [4, 5, 60]], dtype=np_type)
                meta = await c.call("metadata", f"ovms/d_{datatype.lower()}", {})
                out = await c.infer(f"ovms/d_{datatype.lower()}", {"input": x}, metadata=meta)
                assert out["output"].dtype == np_type, datatype
                np.testing.assert_array_equal(out["output"], x * 2)
            flags = await c.infer("ovms/negate", {"flags": np.array([True, False])},
                                  metadata=await c.call("metadata", "ovms/negate", {}))
            assert flags["inverted"].dtype == np.bool_ and flags["inverted"].tolist() == [False, True]
            text = await c.infer("ovms/upper", {"text": np.array(["ab", "cd e"])})
            assert text["upper"].tolist() == ["AB", "CD E"] and text["length"].tolist() == [2, 4]


async def test_kserve_infer_version_outputs_and_request_shape(osim: OVMSSim, clock: FakeClock) -> None:
    async with AsyncClient([ovms(osim)], clock=clock) as c:
        out = await c.infer("ovms/doubler", {"input": X}, version="2", outputs=["sum"])
    assert list(out) == ["sum"] and out["sum"].tolist() == [6.0, 24.0] and out.model == "doubler"
    rec = osim.requests[-1]
    assert rec.path == "/v2/models/doubler/versions/2/infer"
    body = rec.json
    assert body["outputs"] == [{"name": "sum"}] and body["id"] == out.request_id
    assert body["inputs"] == [{"name": "input", "shape": [2, 3], "datatype": "FP32",
                               "data": [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]}]


async def test_fp16_round_trip_is_binary_never_json(osim: OVMSSim, clock: FakeClock) -> None:
    half = np.array([[0.5, -1.25, 1024.0], [1e-3, 0.0, 7.0]], np.float16)
    async with AsyncClient([ovms(osim)], clock=clock) as c:
        meta = await c.call("metadata", "ovms/doubler_f16", {})
        for kwargs in ({"metadata": meta}, {}):  # with metadata, and without it
            osim.reset()
            out = await c.infer("ovms/doubler_f16", {"input": half}, **kwargs)  # type: ignore[arg-type]
            assert out["output"].dtype == np.float16 and out["sum"].dtype == np.float16
            np.testing.assert_array_equal(out["output"], half * 2)
            np.testing.assert_array_equal(out["sum"], (half * 2).sum(axis=-1))
            rec = osim.requests[-1]
            assert rec.headers["Content-Type"] == "application/octet-stream"
            head, raw = split_request(rec)
            assert head["inputs"] == [{"name": "input", "shape": [2, 3], "datatype": "FP16",
                                       "parameters": {"binary_data_size": 12}}]  # no "data": never JSON
            assert raw == half.astype("<f2").tobytes()
            assert head["parameters"] == {"binary_data_output": True}
        # one FP16 output asked by name: it alone is asked binary
        await c.infer("ovms/doubler_f16", {"input": half}, outputs=["sum"], metadata=meta)
        head, _ = split_request(osim.requests[-1])
        assert head["outputs"] == [{"name": "sum", "parameters": {"binary_data": True}}]
        assert "parameters" not in head


async def test_fp16_outputs_of_an_fp32_model_follow_the_metadata(osim: OVMSSim, clock: FakeClock) -> None:
    x = np.array([1.0, 3.0], np.float32)
    async with AsyncClient([ovms(osim)], clock=clock) as c:
        # Without metadata nothing says the output is FP16: the server refuses to send it as JSON.
        with pytest.raises(BadRequest, match="sending FP16 data via JSON is not supported"):
            await c.infer("ovms/halver", {"x": x})
        meta = await c.call("metadata", "ovms/halver", {})
        out = await c.infer("ovms/halver", {"x": x}, metadata=meta)
        assert out["half"].dtype == np.float16 and out["half"].tolist() == [0.5, 1.5]
        rec = osim.requests[-1]
        assert t.HEADER_LENGTH not in rec.headers  # the FP32 input still travels as JSON
        assert rec.json["parameters"] == {"binary_data_output": True}
        assert rec.json["inputs"][0]["data"] == [1.0, 3.0]
        out = await c.infer("ovms/halver", {"x": x}, metadata=meta, outputs=["half"], parameters={"p": 1})
        assert osim.requests[-1].json["outputs"] == [{"name": "half", "parameters": {"binary_data": True}}]
        assert osim.requests[-1].json["parameters"] == {"p": 1}


async def test_binary_tensors_option_sends_and_asks_everything_binary(clock: FakeClock) -> None:
    models = [doubler(f"d_{k.lower()}", k) for k in DTYPES] + default_models()
    with OVMSSim(clock=clock, models=models) as s:
        async with AsyncClient([ovms(s, options={"binary_tensors": True})], clock=clock) as c:
            for datatype, np_type in DTYPES.items():
                x = np.array([[1, 2, 3], [4, 5, 60]], dtype=np_type)
                out = await c.infer(f"ovms/d_{datatype.lower()}", {"input": x})
                assert out["output"].dtype == np_type, datatype
                np.testing.assert_array_equal(out["output"], x * 2)
                head, raw = split_request(s.requests[-1])
                assert "data" not in head["inputs"][0] and raw == x.astype(x.dtype.newbyteorder("<")).tobytes()
                assert head["parameters"] == {"binary_data_output": True}
            flags = await c.infer("ovms/negate", {"flags": np.array([True, False])})
            assert flags["inverted"].dtype == np.bool_ and flags["inverted"].tolist() == [False, True]
            # bytes that are not UTF-8, which JSON cannot carry
            text = await c.infer("ovms/upper", {"text": np.array([b"ab", b"\xffz"], dtype=object)}, outputs=["length"])
            assert text["length"].tolist() == [2, 2]
            assert split_request(s.requests[-1])[0]["outputs"] == [{"name": "length",
                                                                    "parameters": {"binary_data": True}}]
            # NaN and infinity, which JSON cannot carry either
            odd = np.array([[np.nan, np.inf]], np.float32)
            out = await c.infer("ovms/d_fp32", {"input": odd})
            assert np.isnan(out["output"][0, 0]) and out["output"][0, 1] == np.inf
        async with AsyncClient([ovms(s)], clock=clock) as c:  # without the option they are refused at home
            with pytest.raises(BadRequest, match="binary_tensors"):
                await c.infer("ovms/d_fp32", {"input": odd})


async def test_ready_live_metadata_and_status_ops(osim: OVMSSim, clock: FakeClock) -> None:
    async with AsyncClient([ovms(osim)], clock=clock) as c:
        assert await c.call("ready", "ovms/-", {}) is True
        assert await c.call("ready", "ovms/-", {"live": True}) is True
        assert await c.call("ready", "ovms/doubler", {"version": "1"}) is True
        meta = await c.call("metadata", "ovms/doubler", {})
        assert meta["inputs"][0] == {"name": "input", "datatype": "FP32", "shape": [-1, -1]}
        status = await c.call("model_status", "ovms/doubler", {})
        assert status[1]["state"] == "AVAILABLE" and set(status) == {1, 2}
        with pytest.raises(NotFound):
            await c.call("ready", "ovms/nope", {})
        osim.server_ready = False
        assert await c.call("ready", "ovms/-", {}) is False  # "not ready" is an answer, not a failure
        assert c.stats()["groups"]["ovms"]["servers"][0]["breaker"] == "closed"
    assert [r.path for r in osim.requests[:3]] == ["/v2/health/ready", "/v2/health/live",
                                                   "/v2/models/doubler/versions/1/ready"]


async def test_validation_happens_before_sending(osim: OVMSSim, clock: FakeClock) -> None:
    async with AsyncClient([ovms(osim)], clock=clock) as c:
        meta = await c.call("metadata", "ovms/doubler", {})
        osim.reset()
        with pytest.raises(BadRequest, match=r"input 'input': expected datatype FP32, given INT64"):
            await c.infer("ovms/doubler", {"input": np.ones((2, 2), np.int64)}, metadata=meta)
        with pytest.raises(BadRequest, match=r"expected shape \[-1, -1\] \(-1 = any\), given \[4\]"):
            await c.infer("ovms/doubler", {"input": np.ones(4, np.float32)}, expect=meta)
        with pytest.raises(BadRequest, match="'extra' is not an input of the model"):
            await c.infer("ovms/doubler", {"input": X, "extra": X}, metadata=meta)
        with pytest.raises(BadRequest, match="dtype complex64"):
            await c.infer("ovms/doubler", {"input": np.ones(2, np.complex64)})
        with pytest.raises(BadRequest, match="dtype object holding int"):
            await c.infer("ovms/doubler", {"input": np.array([1, "a"], dtype=object)})
        with pytest.raises(BadRequest, match="does not take batch"):
            await c.infer("ovms/doubler", {"input": X}, batch=4)
        # a bare array is fine when metadata names the single input
        out = await c.infer("ovms/doubler", X, metadata=meta)
        assert out["sum"].tolist() == [6.0, 24.0]
    assert len(osim.requests) == 1


async def test_errors_not_found_bad_shape_retry_and_breaker(osim: OVMSSim, clock: FakeClock) -> None:
    async with AsyncClient([ovms(osim)], clock=clock) as c:
        with pytest.raises(NotFound, match="requested name is not found") as nf:
            await c.infer("ovms/nope", {"input": X})
        assert nf.value.attempts == 1 and nf.value.status == 404
        with pytest.raises(BadRequest, match="Invalid number of shape dimensions") as br:
            await c.infer("ovms/doubler", {"input": np.ones(3, np.float32)})
        assert br.value.attempts == 1
        osim.reset()
        osim.faults.script(Fault(status=503, retry_after=2), Fault(status=503))
        out = await c.infer("ovms/doubler", {"input": X})
        assert out.info.attempts == 3 and len(osim.requests) == 3
        assert clock.sleeps[0] == 2  # the server's Retry-After was honoured
    settings = Settings(retry=RetrySettings(max_retries=0), breaker_threshold=2)
    async with AsyncClient([ovms(osim)], clock=clock, settings=settings) as c:
        osim.reset()
        osim.faults.script(*[Fault(status=503)] * 2)
        for _ in range(2):
            with pytest.raises(UpstreamError):
                await c.infer("ovms/doubler", {"input": X})
        with pytest.raises(CircuitOpen):
            await c.infer("ovms/doubler", {"input": X})
    assert len(osim.requests) == 2  # the open breaker kept the third call home


# ---- our adapter: TF Serving ------------------------------------------------------------------
async def test_tfserving_columnar_and_row(osim: OVMSSim, clock: FakeClock) -> None:
    async with AsyncClient([ovms(osim, "tfserving")], clock=clock) as c:
        out = await c.infer("ovms/doubler", {"input": X})
        assert osim.requests[-1].path == "/v1/models/doubler:predict"
        assert osim.requests[-1].json == {"inputs": {"input": X.tolist()}}
        np.testing.assert_array_equal(out["output"], X * 2)
        row = await c.infer("ovms/doubler", {"input": X}, format="row", version="1")
        assert osim.requests[-1].path == "/v1/models/doubler/versions/1:predict"
        assert osim.requests[-1].json == {"instances": [{"input": [0.0, 1.0, 2.0]}, {"input": [3.0, 4.0, 5.0]}]}
        np.testing.assert_array_equal(row["sum"], [6.0, 24.0])
        only = await c.infer("ovms/doubler", {"input": X}, outputs=["sum"])
        assert list(only) == ["sum"]
        meta = await c.call("metadata", "ovms/negate", {})
        assert meta["inputs"] == [{"name": "flags", "datatype": "BOOL", "shape": [-1]}]
        single = await c.infer("ovms/negate", {"flags": np.array([True, False])}, metadata=meta)
        assert single["inverted"].dtype == np.bool_ and single["inverted"].tolist() == [False, True]
        unnamed = await c.infer("ovms/negate", {"flags": np.array([True])}, format="row")
        assert list(unnamed) == ["predictions"]
        text = await c.infer("ovms/upper", {"text": np.array([b"ab", b"c"], dtype=object)})
        assert osim.requests[-1].json["inputs"]["text"][0] == {"b64": base64.b64encode(b"ab").decode()}
        assert text["upper"].tolist() == ["AB", "C"]
        assert await c.call("ready", "ovms/doubler", {}) is True
        assert (await c.call("model_status", "ovms/doubler", {"version": "2"}))[2]["state"] == "AVAILABLE"
        with pytest.raises(NotFound, match="requested name is not found"):
            await c.infer("ovms/nope", {"input": X})
        with pytest.raises(BadRequest, match="Invalid number of shape dimensions"):
            await c.infer("ovms/doubler", {"input": np.ones(3, np.float32)})
        with pytest.raises(BadRequest, match="one size"):
            await c.infer("ovms/doubler", {"input": X, "b": np.ones(5)}, format="row")


# ---- our adapter: /v3 chat and embeddings -------------------------------------------------------
async def test_v3_chat_embed_through_ovms_and_ovms_openai(clock: FakeClock) -> None:
    with OVMSSim(clock=clock, openai_models={"llama", "bge"}) as s:
        eps = [ovms(s), Endpoint("ovms_openai", base_url=s.url + "/v3")]
        async with AsyncClient(eps, clock=clock) as c:
            r = await c.chat("ovms/llama", MSG)
            assert r.text == "echo: hello there" and r.usage.completion_tokens == 3
            chunks = [ch.text async for ch in c.chat_stream("ovms/llama", MSG)]
            assert "".join(chunks) == "echo: hello there"
            e = await c.embed("ovms/bge", ["a", "b"])
            assert len(e.vectors) == 2 and len(e.vectors[0]) == 8
            assert (await c.chat("ovms_openai/llama", MSG)).text == "echo: hello there"
            with pytest.raises(NotFound):
                await c.chat("ovms/nope", MSG)
        assert {r.path for r in s.requests} == {"/v3/chat/completions", "/v3/embeddings"}


def test_ovms_config_from_env() -> None:
    from apimux.config import endpoints_from_env

    eps = [e for e in endpoints_from_env({"OVMS_API_URL": "http://ovms:9000"}) if e.backend == "ovms"]
    assert len(eps) == 1 and eps[0].base_url == "http://ovms:9000"
    p = OVMSProvider(Endpoint("ovms", base_url="http://h:1/v3"))
    assert p.url("/chat/completions") == "http://h:1/v3/chat/completions" and p.root("/v2") == "http://h:1/v2"
    assert OVMSProvider(Endpoint("ovms")).base_url == "http://localhost:8000"
    with pytest.raises(BadRequest, match="protocol"):
        OVMSProvider(Endpoint("ovms", protocol="grpc"))


# ---- pure tensor encoding -----------------------------------------------------------------------
@pytest.mark.parametrize(("np_type", "datatype"), [
    (np.float16, "FP16"), (np.float32, "FP32"), (np.float64, "FP64"), (np.int8, "INT8"), (np.int16, "INT16"),
    (np.int32, "INT32"), (np.int64, "INT64"), (np.uint8, "UINT8"), (np.uint16, "UINT16"),
    (np.uint32, "UINT32"), (np.uint64, "UINT64"), (np.bool_, "BOOL"),
])
def test_kserve_encode_decode_every_numeric_datatype(np_type: type, datatype: str) -> None:
    x: np.ndarray = np.array([[1, 0, 1], [0, 1, 1]]).astype(np_type)
    # binary: every datatype, little-endian whatever the array's byte order
    entry, raw = t.kserve_binary_input("x", x.astype(x.dtype.newbyteorder(">")))
    assert entry == {"name": "x", "shape": [2, 3], "datatype": datatype,
                     "parameters": {"binary_data_size": 6 * x.itemsize}}
    assert raw == x.astype(x.dtype.newbyteorder("<")).tobytes()
    back = t.kserve_output({**entry, "name": "y"}, raw)
    assert back.dtype == np.dtype(np_type) and back.shape == (2, 3)
    np.testing.assert_array_equal(back, x)
    if datatype == "FP16":  # no JSON form: refused before anything is sent
        with pytest.raises(BadRequest, match="FP16, which KServe v2 servers only accept as binary"):
            t.kserve_input("x", x)
        return
    enc = t.kserve_input("x", x)
    assert enc["datatype"] == datatype and enc["shape"] == [2, 3] and len(enc["data"]) == 6
    back = t.kserve_output(json.loads(json.dumps({**enc, "name": "y"})))
    assert back.dtype == np.dtype(np_type) and back.shape == (2, 3)
    np.testing.assert_array_equal(back, x)


def test_binary_tensor_bytes_and_bad_binary_answers() -> None:
    entry, raw = t.kserve_binary_input("s", np.array([[b"\xff\x00", "é"]], dtype=object))
    assert entry["shape"] == [1, 2] and entry["datatype"] == "BYTES"
    assert raw == b"\x02\x00\x00\x00\xff\x00\x02\x00\x00\x00\xc3\xa9"
    assert t.kserve_output({**entry, "name": "o"}, raw).tolist() == [[b"\xff\x00", "é".encode()]]
    body, n = t.binary_body({"inputs": [entry]}, [raw])
    assert json.loads(body[:n]) == {"inputs": [entry]} and body[n:] == raw
    f32 = {"name": "o", "datatype": "FP32", "shape": [2], "parameters": {"binary_data_size": 8}}
    with pytest.raises(UpstreamError, match="unreadable binary data: 4 bytes, expected 8"):
        t.kserve_output(f32, b"\x00" * 4)
    with pytest.raises(UpstreamError, match="runs past the data"):
        t.kserve_output({"name": "o", "datatype": "BYTES", "shape": [1]}, b"\x09\x00\x00\x00ab")
    with pytest.raises(UpstreamError, match="declares 8 binary bytes but the body ends 3 bytes"):
        t.split_binary(b"{}abc", 2, [f32])
    with pytest.raises(UpstreamError, match="invalid binary_data_size"):
        t.split_binary(b"{}", 2, [{**f32, "parameters": {"binary_data_size": -1}}])
    p = OVMSProvider(Endpoint("ovms"))
    call = Call("infer", "m", {"inputs": {}})
    with pytest.raises(UpstreamError, match="unreadable binary inference header"):
        p.response(call, HttpResponse(200, {t.HEADER_LENGTH: "99"}, b"{}"))


def test_kserve_bytes_and_rejections() -> None:
    enc = t.kserve_input("s", np.array([b"ab", "cd"], dtype=object))
    assert enc == {"name": "s", "shape": [2], "datatype": "BYTES", "data": ["ab", "cd"]}
    assert t.kserve_input("u", np.array([["x", "yz"]]))["shape"] == [1, 2]
    with pytest.raises(BadRequest, match="not UTF-8"):
        t.kserve_input("s", np.array([b"\xff"], dtype=object))
    with pytest.raises(BadRequest, match="NaN or infinity"):
        t.kserve_input("f", np.array([1.0, np.nan]))
    with pytest.raises(BadRequest, match="input 'c' has dtype complex128"):
        t.kserve_input("c", np.array([1j]))
    with pytest.raises(BadRequest, match="dtype object holding float"):
        t.kserve_input("o", np.array(["a", 1.5], dtype=object))
    assert t.kserve_input("l", [[1, 2]])["datatype"] == "INT64"  # lists are converted


def test_kserve_output_checks_and_nested_data() -> None:
    out = t.kserve_output({"name": "o", "datatype": "FP32", "shape": [2, 2], "data": [[1, 2], [3, 4]]})
    assert out.dtype == np.float32 and out.tolist() == [[1, 2], [3, 4]]
    with pytest.raises(UpstreamError, match="has 3 values for shape"):
        t.kserve_output({"name": "o", "datatype": "FP32", "shape": [2, 2], "data": [1, 2, 3]})
    with pytest.raises(UpstreamError, match="unknown datatype"):
        t.kserve_output({"name": "o", "datatype": "BF17", "shape": [1], "data": [1]})
    text = t.kserve_output({"name": "o", "datatype": "BYTES", "shape": [1, 2], "data": ["a", "b"]})
    assert text.dtype == object and text.tolist() == [["a", "b"]]


def test_binary_extension_responses_are_decoded() -> None:
    header = {"model_name": "m", "outputs": [
        {"name": "f", "datatype": "FP32", "shape": [2], "parameters": {"binary_data_size": 8}},
        {"name": "s", "datatype": "BYTES", "shape": [2], "parameters": {"binary_data_size": 11}},
        {"name": "j", "datatype": "INT32", "shape": [1], "data": [7]},
    ]}
    head = json.dumps(header).encode()
    raw = struct.pack("<2f", 1.5, -2.0) + struct.pack("<I", 2) + b"ab" + struct.pack("<I", 1) + b"c"
    p = OVMSProvider(Endpoint("ovms"))
    resp = HttpResponse(200, {"Inference-Header-Content-Length": str(len(head))}, head + raw)
    out = p.response(Call("infer", "m", {"inputs": {}}), resp)
    assert out["f"].tolist() == [1.5, -2.0] and out["s"].tolist() == [b"ab", b"c"] and out["j"].tolist() == [7]


def test_tfserving_values_and_metadata_both_spellings() -> None:
    assert t.tfs_value("b", np.array([b"\x00\x01"], dtype=object)) == [{"b64": "AAE="}]
    assert t.tfs_value("s", np.array([["a"]])) == [["a"]]
    arr = t.tfs_array([[{"b64": "AAE="}], [{"b64": "Ag=="}]])
    assert arr.shape == (2, 1) and arr[1, 0] == b"\x02"
    assert t.tfs_array([[1, 2]], "INT16").dtype == np.int16
    # TF Serving itself answers in snake_case; OVMS in protobuf's camelCase.
    snake = {"model_spec": {"name": "m", "version": "3"}, "metadata": {"signature_def": {"signature_def": {
        "serving_default": {"inputs": {"x": {"dtype": "DT_HALF", "tensor_shape": {"dim": [{"size": "-1"}]}}},
                            "outputs": {"y": {"dtype": "DT_STRING", "tensor_shape": {"dim": []}}}}}}}}
    meta = t.tfs_metadata(snake)
    assert meta["versions"] == ["3"]
    assert meta["inputs"] == [{"name": "x", "datatype": "FP16", "shape": [-1]}]
    assert meta["outputs"] == [{"name": "y", "datatype": "BYTES", "shape": []}]


def test_tfserving_single_binary_output_is_not_read_as_an_output_named_b64() -> None:
    # TF Serving drops a lone output's name and wraps binary strings (outputs
    # named *_bytes) as {"b64": ...}: a row or value that is only that wrapper
    # is the one unnamed output, in both the row and the columnar answer.
    p = OVMSProvider(Endpoint("ovms", protocol="tfserving"))
    call = Call("infer", "m", {"inputs": {"x": X}})
    rows = {"predictions": [{"b64": "AAE="}, {"b64": "Ag=="}]}
    out = p.response(call, HttpResponse(200, {}, json.dumps(rows).encode()))
    assert list(out) == ["predictions"] and out["predictions"].tolist() == [b"\x00\x01", b"\x02"]
    named = Call("infer", "m", {"inputs": {"x": X}, "outputs": ["png_bytes"]})
    col = p.response(named, HttpResponse(200, {}, json.dumps({"outputs": {"b64": "AAE="}}).encode()))
    assert list(col) == ["png_bytes"] and col["png_bytes"].item() == b"\x00\x01"
    multi = {"predictions": [{"png_bytes": {"b64": "AAE="}, "score": 0.5}]}
    both = p.response(call, HttpResponse(200, {}, json.dumps(multi).encode()))
    assert both["png_bytes"].tolist() == [b"\x00\x01"] and both["score"].tolist() == [0.5]


def test_coalesce_hooks_mixed_dtypes_params_and_empty_batches() -> None:
    p = OVMSProvider(Endpoint("ovms"))
    meta = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, np.int64(3)]}],
            "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}]}

    def call(arr: np.ndarray, **extra: object) -> Call:
        return Call("infer", "m", {"inputs": {"x": arr}, "metadata": meta, **extra})

    rows = [call(np.full((n, 3), i, np.float32)) for i, n in enumerate((2, 0, 1))]
    keys = {p.coalesce_key(c) for c in rows}  # numpy ints in hand-made metadata are fine
    assert len(keys) == 1 and None not in keys
    assert p.coalesce_key(call(np.zeros((1, 3), np.float64))) not in keys  # another dtype: another batch
    assert p.coalesce_key(call(np.zeros((1, 3), np.float32), version="2")) not in keys
    assert p.coalesce_key(call(np.zeros((1, 3), np.float32), parameters={"p": 1})) is None
    tfs = OVMSProvider(Endpoint("ovms", protocol="tfserving"))
    assert tfs.coalesce_key(rows[0]) is None
    merged = p.coalesce(rows)
    assert merged.params["inputs"]["x"].shape == (3, 3)
    out = InferResponse({"y": merged.params["inputs"]["x"] * 2}, model="m")
    parts = p.uncoalesce(out, rows)
    assert [part["y"].shape for part in parts] == [(2, 3), (0, 3), (1, 3)]  # the empty call gets 0 rows
    assert parts[2]["y"].tolist() == [[4.0, 4.0, 4.0]]
    with pytest.raises(UpstreamError, match="3 rows"):
        p.uncoalesce(InferResponse({"y": np.zeros((2, 3))}, model="m"), rows)


def test_check_against_messages() -> None:
    meta = {"inputs": [{"name": "a", "datatype": "FP32", "shape": [-1, 3]}, {"name": "b", "datatype": "BYTES"}]}
    ok = {"a": np.zeros((5, 3), np.float32), "b": np.array(["x"])}
    t.check_against(ok, meta)
    with pytest.raises(BadRequest, match="input 'b' is missing"):
        t.check_against({"a": ok["a"]}, meta)
    with pytest.raises(BadRequest, match=r"expected shape \[-1, 3\] \(-1 = any\), given \[5, 4\]"):
        t.check_against({**ok, "a": np.zeros((5, 4), np.float32)}, meta)


def test_error_mapping_for_other_kserve_servers() -> None:
    p = OVMSProvider(Endpoint("ovms"))
    call = Call("infer", "m", {"inputs": {"x": X}})
    triton = HttpResponse(400, {}, b'{"error":"Request for unknown model: \'m\' is not found"}')
    assert isinstance(p.error(call, triton), NotFound)
    shape = HttpResponse(400, {}, b'{"error":"Invalid input shape"}')
    assert type(p.error(call, shape)) is BadRequest
    busy = p.error(call, HttpResponse(503, {"retry-after": "4"}, b'{"error":"busy"}'))
    assert isinstance(busy, UpstreamError) and busy.retryable and busy.retry_after == 4


def test_sim_models_are_configurable(clock: FakeClock) -> None:
    triple = SimModel("triple", [TensorSpec("x", "INT32", [2])], [TensorSpec("y", "INT32", [2])],
                      lambda a: {"y": a["x"] * 3}, versions=["5"])
    with OVMSSim(clock=clock, models=[triple]) as s:
        c = th.InferenceServerClient(url=addr(s))
        r = c.infer("triple", [json_input("x", np.array([1, 2], np.int32), "INT32")])
        assert r.as_numpy("y").tolist() == [3, 6] and r.get_response()["model_version"] == "5"
        with pytest.raises(InferenceServerException, match="Invalid input shape"):
            c.infer("triple", [json_input("x", np.array([1, 2, 3], np.int32), "INT32")])
