"""The LLVM inference REST service: its JSON contract checked directly against
the simulator (there is no official client), our adapter through AsyncClient,
and the pure translation and coalescing helpers."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from apimux import (
    AsyncClient,
    AuthError,
    BadRequest,
    CircuitOpen,
    Endpoint,
    FakeClock,
    NotFound,
    Overloaded,
    RateLimited,
    RetrySettings,
    Settings,
    UpstreamError,
)
from apimux.providers import registry
from apimux.providers.base import Call
from apimux.providers.llvm import LLVMProvider, batch_outputs, error_text, llvm_error, model_info, parameters_of
from apimux.testing import Fault, LLVMSim, SimServer
from apimux.transport import HttpResponse
from apimux.types import InferResponse


@pytest.fixture
def llvm(clock: FakeClock) -> Iterator[LLVMSim]:
    sim = LLVMSim(clock=clock, max_batch_size=4)
    sim.start()
    try:
        yield sim
    finally:
        sim.stop()


def client(sim: SimServer, clock: FakeClock, keys: list[str] | None = None, **kw: Any) -> AsyncClient:
    return AsyncClient([Endpoint("llvm", base_url=sim.url, api_keys=keys)], clock=clock, **kw)


def http(sim: SimServer, method: str, path: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
    """A plain urllib call: what any client of the documented contract would send."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(sim.url + path, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


# ---- the documented JSON contract, checked without our adapter ----------------------------------
def test_contract_models_infer_batch_statistics_status(llvm: LLVMSim) -> None:
    status, models = http(llvm, "GET", "/models")
    assert status == 200 and [m["id"] for m in models["models"]] == ["echo", "sum", "upper"]
    assert models["models"][1]["max_batch_size"] == 4 and models["models"][1]["status"] == "ready"
    assert http(llvm, "GET", "/models/sum")[1]["id"] == "sum"
    status, one = http(llvm, "POST", "/models/sum/infer", {"input": [1, 2, 3], "parameters": {"scale": 10}})
    assert status == 200 and one["output"] == 60 and one["model"] == "sum"
    status, batch = http(llvm, "POST", "/models/upper/batch_infer", {"inputs": ["a", "b"]})
    assert status == 200 and batch["results"] == [{"index": 0, "output": "A"}, {"index": 1, "output": "B"}]
    stats = http(llvm, "GET", "/models/upper/statistics")[1]
    assert stats == {"model": "upper", "requests": 1, "inferences": 2, "batches": 1, "failures": 0,
                     "avg_batch_size": 2.0, "avg_latency_ms": 0.1}
    status, health = http(llvm, "GET", "/status")
    assert status == 200 and health["status"] == "ok" and health["models_loaded"] == 3


def test_contract_error_envelopes(llvm: LLVMSim) -> None:
    assert http(llvm, "GET", "/models/nope") == (404, {"error": {"code": "model_not_found",
                                                                "message": "model 'nope' not found"}})
    status, missing = http(llvm, "POST", "/models/echo/infer", {"inputs": 1})
    assert status == 422 and missing["detail"][0]["loc"] == ["body", "input"]
    status, bad = http(llvm, "POST", "/models/sum/batch_infer", {"inputs": [[1], ["x"]]})
    assert status == 400 and bad["error"]["code"] == "invalid_input" and "index 1" in bad["error"]["message"]
    status, big = http(llvm, "POST", "/models/echo/batch_infer", {"inputs": [1, 2, 3, 4, 5]})
    assert status == 413 and big["error"]["code"] == "batch_too_large"
    llvm.faults.script(Fault(status=503, retry_after=4))
    assert http(llvm, "GET", "/status") == (503, {"error": {"code": "overloaded", "message": "Service unavailable"}})


def test_contract_bearer_token_enforced(clock: FakeClock) -> None:
    with LLVMSim(keys={"llvm-good-0001"}, clock=clock) as s:
        assert http(s, "GET", "/status", token="llvm-good-0001")[0] == 200
        status, body = http(s, "GET", "/status", token="llvm-bad-0002")
        assert status == 401 and body["error"]["code"] == "unauthorized"
        assert http(s, "GET", "/status")[0] == 401


# ---- our adapter through AsyncClient ----------------------------------------------------------
async def test_models_model_info_status_statistics(llvm: LLVMSim, clock: FakeClock) -> None:
    async with client(llvm, clock) as c:
        models = await c.models("llvm")
        info = await c.call("model_info", "llvm/sum", {})
        await c.infer("llvm/sum", [1, 2])
        stats = await c.call("statistics", "llvm/sum", {})
        status = await c.call("status", "llvm/-", {})
    assert [m.id for m in models] == ["echo", "sum", "upper"] and models[0].owned_by == "llvm-sim"
    assert info.id == "sum" and info.raw["parameters"] == {"scale": 1}
    assert stats["inferences"] == 1 and stats["model"] == "sum"
    assert status["status"] == "ok"
    assert [r.path for r in llvm.requests] == ["/models", "/models/sum", "/models/sum/infer",
                                               "/models/sum/statistics", "/status"]


async def test_infer_any_json_with_parameters(llvm: LLVMSim, clock: FakeClock) -> None:
    async with client(llvm, clock) as c:
        r = await c.infer("llvm/sum", [1, 2, 3], parameters={"scale": 2})
        echoed = await c.infer("llvm/echo", {"nested": [1, {"a": None}]})
        kw = await c.infer("llvm/upper", "hi", repeat=2)  # extra keywords become parameters
    assert isinstance(r, InferResponse) and r == {"output": 12} and r.model == "sum" and r.request_id
    assert echoed["output"] == {"nested": [1, {"a": None}]}
    assert kw["output"] == "HI HI"
    assert llvm.requests[0].json == {"input": [1, 2, 3], "parameters": {"scale": 2}}
    assert llvm.requests[2].json == {"input": "hi", "parameters": {"repeat": 2}}


async def test_batch_infer_outputs_in_order(llvm: LLVMSim, clock: FakeClock) -> None:
    async with client(llvm, clock) as c:
        r = await c.call("batch_infer", "llvm/sum", {"inputs": [[1], [2, 3], []], "parameters": {"scale": 3}})
    assert r == {"outputs": [3, 15, 0]}
    assert llvm.requests[0].json == {"inputs": [[1], [2, 3], []], "parameters": {"scale": 3}}


async def test_coalescing_helpers_round_trip_through_batch_infer(llvm: LLVMSim, clock: FakeClock) -> None:
    calls = [Call("infer", "upper", {"inputs": t, "parameters": {"repeat": 2}}, f"r{i}") for i, t in enumerate("abc")]
    keys = {LLVMProvider.coalesce_key(c) for c in calls}
    assert len(keys) == 1 and None not in keys
    other = Call("infer", "upper", {"inputs": "d", "parameters": {"repeat": 3}})
    assert LLVMProvider.coalesce_key(other) not in keys  # different parameters never share a batch
    batch = LLVMProvider.coalesce(calls)
    assert batch.op == "batch_infer" and batch.params == {"inputs": ["a", "b", "c"], "parameters": {"repeat": 2}}
    async with client(llvm, clock) as c:
        merged = await c.call("batch_infer", "llvm/upper", batch.params)
        singles = [await c.infer("llvm/upper", t, parameters={"repeat": 2}) for t in "abc"]
    parts = LLVMProvider.uncoalesce(merged, calls)
    assert [dict(p) for p in parts] == [dict(s) for s in singles] == [{"output": "A A"}, {"output": "B B"},
                                                                       {"output": "C C"}]
    with pytest.raises(ValueError):
        LLVMProvider.coalesce([*calls, other])
    with pytest.raises(UpstreamError):
        LLVMProvider.uncoalesce(merged, calls[:2])
    assert LLVMProvider.batch_limits == {"infer": 64}


async def test_caller_errors_are_not_retried(llvm: LLVMSim, clock: FakeClock) -> None:
    async with client(llvm, clock) as c:
        with pytest.raises(NotFound, match="model 'nope' not found"):
            await c.infer("llvm/nope", 1)
        with pytest.raises(BadRequest, match="sum expects a list of numbers") as bad:
            await c.infer("llvm/sum", "x")
        with pytest.raises(BadRequest, match="exceeds max_batch_size 4") as big:
            await c.call("batch_infer", "llvm/echo", {"inputs": [1, 2, 3, 4, 5]})
        with pytest.raises(BadRequest, match="needs inputs as a list") as invalid:
            await c.call("batch_infer", "llvm/echo", {"inputs": "not-a-list-but-the-adapter-refuses"})
    assert bad.value.status == 400 and big.value.status == 413 and invalid.value.status is None
    assert len(llvm.requests) == 3 and clock.sleeps == []  # the last one never left the adapter


async def test_rate_limit_and_overload_are_retried_on_virtual_time(llvm: LLVMSim, clock: FakeClock) -> None:
    llvm.faults.script(Fault(status=429, retry_after=5), Fault(status=503, retry_after=2), Fault(malformed=True))
    async with client(llvm, clock, keys=["llvm-key-00001"]) as c:
        r = await c.infer("llvm/echo", "ok")
    assert r["output"] == "ok" and r.info.attempts == 4 and len(llvm.requests) == 4
    assert 2 in clock.sleeps  # the 503's retry-after
    assert llvm.requests[1].at - llvm.requests[0].at >= 5  # the key cooled down for the 429's delay


async def test_breaker_opens_on_repeated_503(llvm: LLVMSim) -> None:
    clock = FakeClock(autojump=False)
    settings = Settings(retry=RetrySettings(max_retries=0), breaker_threshold=3, breaker_recovery=30)
    llvm.faults.script(*[Fault(status=503) for _ in range(3)])
    async with client(llvm, clock, settings=settings) as c:
        for _ in range(3):
            with pytest.raises(Overloaded):
                await c.infer("llvm/echo", 1)
        with pytest.raises(CircuitOpen):
            await c.infer("llvm/echo", 1)
        assert len(llvm.requests) == 3
        clock.advance(30)
        assert (await c.infer("llvm/echo", 1))["output"] == 1


async def test_token_from_env_and_refused_token(clock: FakeClock) -> None:
    with LLVMSim(keys={"llvm-env-token-01"}, clock=clock) as s:
        env = {"LLVM_API_KEY": "llvm-env-token-01", "LLVM_API_URL": s.url}
        async with AsyncClient(env=env, clock=clock) as c:
            assert (await c.call("status", "llvm/-", {}))["status"] == "ok"
        assert s.requests[0].headers["Authorization"] == "Bearer llvm-env-token-01"
        async with client(s, clock, keys=["llvm-wrong-token-9"]) as c:
            with pytest.raises(AuthError) as info:
                await c.call("status", "llvm/-", {})
        assert info.value.attempts == 1 and "llvm-wrong-token-9" not in str(info.value)


# ---- pure translation -----------------------------------------------------------------------
def test_registry_and_request_shapes() -> None:
    assert registry.get("llvm") is LLVMProvider and not LLVMProvider.needs_key
    p = LLVMProvider(Endpoint("llvm"))
    req = p.infer_request(Call("infer", "my/model", {"inputs": [1], "parameters": {"t": 1}}), "tok")
    assert req.url == "http://localhost:8090/models/my%2Fmodel/infer" and req.method == "POST"
    assert req.json == {"input": [1], "parameters": {"t": 1}} and req.headers["Authorization"] == "Bearer tok"
    assert "Authorization" not in p.status_request(Call("status", "-"), None).headers
    with pytest.raises(BadRequest, match="needs a model id"):
        p.statistics_request(Call("statistics", "-"), None)
    with pytest.raises(BadRequest):
        p.batch_infer_request(Call("batch_infer", "m", {"inputs": 3}), None)
    assert parameters_of({"inputs": 1, "parameters": {"a": 1}, "b": 2, "c": None}) == {"a": 1, "b": 2}


def test_response_parsing() -> None:
    assert batch_outputs({"results": [{"index": 1, "output": "b"}, {"index": 0, "output": "a"}]}, 2) == ["a", "b"]
    assert batch_outputs({"results": ["a", "b"]}, 2) == ["a", "b"]  # bare outputs accepted
    with pytest.raises(UpstreamError, match="1 results for 2 inputs"):
        batch_outputs({"results": ["a"]}, 2)
    with pytest.raises(UpstreamError):
        batch_outputs([1, 2], 2)
    assert model_info({"name": "m", "owner": "o"}).id == "m" and model_info("x").id == "x"
    p = LLVMProvider(Endpoint("llvm"))
    with pytest.raises(UpstreamError, match="no output"):
        p.infer_response(Call("infer", "m", {"inputs": 1}), HttpResponse(200, {}, b'{"result": 1}'))
    with pytest.raises(UpstreamError, match="not JSON"):
        p.status_response(Call("status", "-"), HttpResponse(200, {}, b"<html>"))


@pytest.mark.parametrize(
    ("status", "body", "cls", "message"),
    [
        (404, b'{"error": {"code": "model_not_found", "message": "no such model"}}', NotFound, "no such model"),
        (422, b'{"detail": [{"loc": ["body", "input"], "msg": "Field required", "type": "missing"}]}',
         BadRequest, "body.input: Field required"),
        (400, b'{"detail": "bad things"}', BadRequest, "bad things"),
        (413, b'{"error": {"code": "batch_too_large", "message": "too many"}}', BadRequest, "too many"),
        (401, b'{"error": {"code": "unauthorized", "message": "no"}}', AuthError, "no"),
        (429, b'{"error": {"code": "rate_limited", "message": "slow down"}}', RateLimited, "slow down"),
        (429, b'{"error": {"code": "overloaded", "message": "busy"}}', Overloaded, "busy"),
        (503, b'{"error": {"code": "overloaded", "message": "busy"}}', Overloaded, "busy"),
        (500, b"Internal Server Error", UpstreamError, "Internal Server Error"),
    ],
)
def test_error_mapping(status: int, body: bytes, cls: type, message: str) -> None:
    err = llvm_error(HttpResponse(status, {"retry-after": "7"}, body, wall=1.7e9))
    assert type(err) is cls and err.message == message and err.status == status and err.retry_after == 7
    assert error_text(json.loads(body) if body.startswith(b"{") else None, body)[0] == message
