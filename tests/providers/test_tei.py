"""TEI: the simulator judged by huggingface_hub's InferenceClient, our adapter
through AsyncClient against it, and the pure translation pieces."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import numpy as np
import pytest
from huggingface_hub import InferenceClient
from huggingface_hub.errors import HfHubHTTPError

from apimux import (
    AsyncClient,
    AuthError,
    BadRequest,
    CircuitOpen,
    Endpoint,
    FakeClock,
    Overloaded,
    RateLimited,
    RetrySettings,
    Settings,
    UpstreamError,
)
from apimux.errors import NotRetryableUpstream
from apimux.providers import registry
from apimux.providers.base import Call, error_message
from apimux.providers.hf_tei import (
    TEIProvider,
    embed_body,
    parse_info,
    parse_ranks,
    rerank_body,
    tei_error,
    usage_from_headers,
)
from apimux.testing import Fault, SimServer, TEISim
from apimux.testing.tei_sim import tei_vector
from apimux.transport import HttpResponse
from apimux.vectors import cosine_similarity, normalize

DOCS = ["paris is the capital of france", "bananas are yellow", "the capital of spain is madrid"]


@pytest.fixture
def tei(clock: FakeClock) -> Iterator[TEISim]:
    yield from running(TEISim(clock=clock, max_client_batch_size=4, max_input_length=8))


@pytest.fixture
def reranker(clock: FakeClock) -> Iterator[TEISim]:
    yield from running(TEISim(clock=clock, reranker=True, model_id="BAAI/bge-reranker-base"))


def running(sim: TEISim) -> Iterator[TEISim]:
    sim.start()
    try:
        yield sim
    finally:
        sim.stop()


def client(sim: SimServer, clock: FakeClock, **kw: object) -> AsyncClient:
    return AsyncClient([Endpoint("tei", base_url=sim.url)], clock=clock, **kw)  # type: ignore[arg-type]


# ---- the simulator, judged by the official client ---------------------------------------------
def test_inference_client_feature_extraction_returns_the_sims_vectors(tei: TEISim) -> None:
    root = InferenceClient(model=tei.url)  # TEI's "/" is /embed for an embedding model
    one = root.feature_extraction("hello world")
    assert one.dtype == np.float32 and one.shape == (1, 16)
    np.testing.assert_allclose(one[0], tei_vector("hello world", 16), rtol=1e-6)
    assert np.linalg.norm(one[0]) == pytest.approx(1.0, abs=1e-5)  # normalize defaults to true
    embed = InferenceClient(model=tei.url + "/embed")
    raw = embed.feature_extraction(["a b", "c"], normalize=False, prompt_name="query")
    assert raw.shape == (2, 16)
    np.testing.assert_allclose(raw[1], tei_vector("query: c", 16, normalize=False), rtol=1e-6)
    assert tei.requests[-1].json == {"inputs": ["a b", "c"], "normalize": False, "prompt_name": "query"}
    long = "w " * 20
    cut = embed.feature_extraction(long, truncate=True, truncation_direction="left")
    np.testing.assert_allclose(cut[0], tei_vector(" ".join(["w"] * 8), 16), rtol=1e-6)


def test_inference_client_raises_its_http_error_on_413_and_422(tei: TEISim) -> None:
    ic = InferenceClient(model=tei.url + "/embed")
    with pytest.raises(HfHubHTTPError, match="maximum allowed batch size 4") as big:
        ic.feature_extraction(["a", "b", "c", "d", "e"])
    assert big.value.response.status_code == 413
    with pytest.raises(HfHubHTTPError, match="must have less than 8 tokens") as long:
        ic.feature_extraction("one two three four five six seven eight nine")
    assert long.value.response.status_code == 413
    tei.faults.script(Fault(status=422, message="Tokenization error: unknown token"))
    with pytest.raises(HfHubHTTPError, match="Tokenization error") as tok:
        ic.feature_extraction("x")
    assert tok.value.response.status_code == 422
    assert tok.value.response.json() == {"error": "Tokenization error: unknown token", "error_type": "tokenizer"}


def test_inference_client_with_token_and_refused_token(clock: FakeClock) -> None:
    with TEISim(keys={"hf_good_token_0001"}, clock=clock) as s:
        ok = InferenceClient(model=s.url + "/embed", token="hf_good_token_0001").feature_extraction("x")
        assert ok.shape == (1, 16)
        with pytest.raises(HfHubHTTPError) as refused:
            InferenceClient(model=s.url + "/embed", token="hf_bad_token_0002").feature_extraction("x")
        assert refused.value.response.status_code == 401


# ---- our adapter through AsyncClient ----------------------------------------------------------
async def test_embed_vectors_usage_from_header_and_passthrough(tei: TEISim, clock: FakeClock) -> None:
    async with client(tei, clock) as c:
        r = await c.embed("tei/bge", ["a b c", "d"])
        raw = await c.embed("tei/bge", "x y", normalize=False, truncate=True, dimensions=4)
    assert r.vectors == [pytest.approx(tei_vector("a b c", 16)), pytest.approx(tei_vector("d", 16))]
    assert r.usage.prompt_tokens == 4 and r.usage.completion_tokens == 0  # from x-compute-tokens
    assert [r.path for r in tei.requests] == ["/info", "/embed", "/embed"]  # the batch limit is read once
    embeds = tei.requests_to("/embed")
    assert embeds[0].json == {"inputs": ["a b c", "d"]}
    assert embeds[1].json == {"inputs": ["x y"], "normalize": False, "truncate": True, "dimensions": 4}
    assert raw.vectors[0] == pytest.approx(tei_vector("x y", 16, normalize=False, keep=4))


async def test_a_list_over_the_servers_batch_limit_is_split_in_order(clock: FakeClock) -> None:
    with TEISim(max_client_batch_size=4, clock=clock) as s:
        texts = [f"text {i}" for i in range(10)]
        async with client(s, clock) as c:
            r = await c.embed("tei/bge", texts)
            singles = await asyncio.gather(*(c.embed("tei/bge", t) for t in texts))
    assert r.vectors == [pytest.approx(tei_vector(t, 16)) for t in texts]
    assert [len(q.json["inputs"]) for q in s.requests_to("/embed")] == [4, 4, 2, 4, 4, 2]
    assert [x.vectors[0] for x in singles] == r.vectors  # coalesced, each caller its own vector


async def test_embed_takes_the_list_as_given_and_tei_refuses_too_many(tei: TEISim, clock: FakeClock) -> None:
    async with client(tei, clock) as c:
        with pytest.raises(BadRequest, match="maximum allowed batch size 4") as info:
            # c.call bypasses the client's splitting: the adapter sends what it is given
            await c.call("embed", "tei/bge", {"input": ["t"] * 5})
    assert info.value.status == 413 and info.value.attempts == 1 and len(tei.requests_to("/embed")) == 1
    assert "max_client_batch_size" in info.value.message  # names the limit, and the server's words
    assert TEIProvider.batch_limits == {"embed": 32, "rerank": 32}  # TEI's default max_client_batch_size


async def test_input_too_long_and_422_are_bad_requests_never_retried(tei: TEISim, clock: FakeClock) -> None:
    async with client(tei, clock) as c:
        with pytest.raises(BadRequest, match=r"less than 8 tokens\. Given: 9"):
            await c.embed("tei/bge", "one two three four five six seven eight nine")
        tei.faults.script(Fault(status=422, message="Tokenization error: bad input", path="/embed"))
        with pytest.raises(BadRequest, match="Tokenization error") as tok:
            await c.embed("tei/bge", "x")
    assert tok.value.status == 422 and len(tei.requests_to("/embed")) == 2 and clock.sleeps == []


async def test_overloaded_429_is_retried_after_the_servers_delay(tei: TEISim, clock: FakeClock) -> None:
    tei.faults.script(
        Fault(status=429, retry_after=2, message="Model is overloaded", path="/embed"), Fault(status=429, path="/embed")
    )
    async with client(tei, clock, settings=Settings(retry=RetrySettings(jitter=0))) as c:
        r = await c.embed("tei/bge", "x")
    assert r.vectors[0] == pytest.approx(tei_vector("x", 16))
    assert r.info.attempts == 3 and len(tei.requests_to("/embed")) == 3
    assert 2 in clock.sleeps  # the server's retry-after, honoured on virtual time


async def test_malformed_body_and_5xx_are_retried(tei: TEISim, clock: FakeClock) -> None:
    tei.faults.script(Fault(malformed=True, path="/embed"), Fault(status=500, path="/embed"))
    async with client(tei, clock) as c:
        r = await c.embed("tei/bge", "x")
    assert len(r.vectors) == 1 and r.info.attempts == 3


async def test_424_backend_error_is_not_retried(tei: TEISim, clock: FakeClock) -> None:
    async with client(tei, clock) as c:  # an embedding model asked to rerank: TEI's 424
        with pytest.raises(NotRetryableUpstream, match="not a re-ranker") as info:
            await c.rerank("tei/bge", "q", ["a"])
    assert info.value.status == 424 and info.value.attempts == 1 and len(tei.requests_to("/rerank")) == 1


async def test_breaker_opens_on_repeated_503(tei: TEISim) -> None:
    clock = FakeClock(autojump=False)
    settings = Settings(retry=RetrySettings(max_retries=0), breaker_threshold=3, breaker_recovery=30)
    tei.faults.script(*[Fault(status=503, message="unhealthy", path="/embed") for _ in range(3)])
    async with client(tei, clock, settings=settings) as c:
        for _ in range(3):
            with pytest.raises(UpstreamError) as info:
                await c.embed("tei/bge", "x")
            assert info.value.status == 503 and info.value.retryable
        with pytest.raises(CircuitOpen):
            await c.embed("tei/bge", "x")
        assert len(tei.requests_to("/embed")) == 3
        clock.advance(30)
        assert (await c.embed("tei/bge", "x")).vectors  # the half-open probe succeeds


async def test_rerank_sorted_with_text_and_raw_scores(reranker: TEISim, clock: FakeClock) -> None:
    async with client(reranker, clock) as c:
        r = await c.rerank("tei/rr", "capital of france", DOCS, return_text=True)
        raw = await c.rerank("tei/rr", "capital of france", DOCS, raw_scores=True)
    assert [x.index for x in r.results] == [0, 2, 1]
    assert r.results[0].text == DOCS[0]
    scores = [x.score for x in r.results]
    assert scores == sorted(scores, reverse=True) and all(0 < s < 1 for s in scores)
    assert raw.results[0].text is None and raw.results[-1].score < 0  # logits, not probabilities
    assert reranker.requests_to("/rerank")[0].json == {"query": "capital of france", "texts": DOCS, "return_text": True}


async def test_info_reports_the_servers_limits(tei: TEISim, clock: FakeClock) -> None:
    async with client(tei, clock) as c:
        info = await c.call("info", "tei/-", {})
    assert isinstance(info, dict) and info["max_client_batch_size"] == 4 and info["max_input_length"] == 8
    assert info["model_id"] == "BAAI/bge-small-en-v1.5" and tei.requests[0].method == "GET"


async def test_token_from_env_is_sent_and_a_refused_one_is_an_auth_error(clock: FakeClock) -> None:
    with TEISim(keys={"hf_env_token_0001"}, clock=clock) as s:
        async with AsyncClient(env={"HF_TOKEN": "hf_env_token_0001", "TEI_BASE_URL": s.url}, clock=clock) as c:
            assert (await c.embed("hf_tei/bge", "x")).vectors
        assert s.requests[0].headers["Authorization"] == "Bearer hf_env_token_0001"
        async with AsyncClient([Endpoint("tei", base_url=s.url, api_keys=["hf_wrong_token_9"])], clock=clock) as c:
            with pytest.raises(AuthError) as info:
                await c.embed("tei/bge", "x")
        assert info.value.status == 401 and "hf_wrong_token_9" not in str(info.value)


# ---- pure translation -----------------------------------------------------------------------
def test_registry_names_and_defaults() -> None:
    assert registry.get("tei") is TEIProvider and registry.get("hf_tei") is TEIProvider
    assert TEIProvider.default_base_url == "http://localhost:8080" and not TEIProvider.needs_key
    assert TEIProvider.supports("info") and TEIProvider.supports("rerank") and not TEIProvider.supports("chat")


def test_request_bodies() -> None:
    assert embed_body({"input": "a"}) == {"inputs": ["a"]}
    body = embed_body({"input": ["a", "b"], "normalize": False, "truncate": None, "truncation_direction": "Left"})
    assert body == {"inputs": ["a", "b"], "normalize": False, "truncation_direction": "Left"}
    with pytest.raises(BadRequest):
        embed_body({"input": [1, 2]})
    assert rerank_body({"query": "q", "texts": ["a"], "truncate": None}) == {"query": "q", "texts": ["a"]}
    with pytest.raises(BadRequest):
        rerank_body({"query": "q"})
    req = TEIProvider(Endpoint("tei", base_url="http://h:1/")).embed_request(Call("embed", "m", {"input": ["x"]}), "k")
    assert req.url == "http://h:1/embed" and req.headers["Authorization"] == "Bearer k"
    anon = TEIProvider(Endpoint("tei")).info_request(Call("info", "m"), None)
    assert anon.url == "http://localhost:8080/info" and "Authorization" not in anon.headers


def test_response_parsing() -> None:
    ranks = parse_ranks([{"index": 2, "score": 0.1}, {"index": 0, "score": 0.9, "text": "t"}])
    assert [(r.index, r.score, r.text) for r in ranks] == [(0, 0.9, "t"), (2, 0.1, None)]
    with pytest.raises(UpstreamError):
        parse_ranks({"error": "x"})
    assert parse_info({"max_client_batch_size": "16", "max_batch_tokens": None})["max_client_batch_size"] == 16
    assert usage_from_headers({"x-compute-tokens": "7"}).prompt_tokens == 7
    assert usage_from_headers({}).total_tokens == 0  # no header: no invented usage
    p = TEIProvider(Endpoint("tei"))
    with pytest.raises(UpstreamError, match="2 vectors for 3 inputs"):
        p.embed_response(Call("embed", "m", {"input": ["a", "b", "c"]}), HttpResponse(200, {}, b"[[1.0],[2.0]]"))


def _resp(status: int, body: bytes, headers: dict[str, str] | None = None) -> HttpResponse:
    return HttpResponse(status, headers or {}, body, wall=1.7e9)


@pytest.mark.parametrize(
    ("status", "body", "cls", "retryable"),
    [
        (413, b'{"error": "batch size 40 > maximum allowed batch size 32", "error_type": "validation"}',
         BadRequest, False),
        (422, b'{"error": "Tokenization error", "error_type": "tokenizer"}', BadRequest, False),
        (422, b"Failed to deserialize the JSON body into the target type: missing field `inputs`", BadRequest, False),
        (400, b'{"error": "`inputs` cannot be empty", "error_type": "empty"}', BadRequest, False),
        (424, b'{"error": "Inference failed", "error_type": "backend"}', NotRetryableUpstream, False),
        (429, b'{"error": "Model is overloaded", "error_type": "overloaded"}', Overloaded, True),
        (429, b'{"error": "Too many requests"}', RateLimited, True),  # a proxy's limiter, not TEI
        (503, b'{"error": "unhealthy", "error_type": "unhealthy"}', UpstreamError, True),
        (500, b"oops", UpstreamError, True),
        (401, b"", AuthError, False),
    ],
)
def test_error_mapping(status: int, body: bytes, cls: type, retryable: bool) -> None:
    err = tei_error(_resp(status, body, {"retry-after": "3"}))
    assert type(err) is cls and err.retryable is retryable and err.status == status and err.retry_after == 3
    if status in (413, 422, 400):  # the server's own words survive, after a hint naming the limit
        assert error_message(body) in err.message and err.message.startswith("TEI")


# ---- vector helpers ---------------------------------------------------------------------------
def test_normalize_lists_and_arrays() -> None:
    np.testing.assert_allclose(normalize([3.0, 4.0]), [0.6, 0.8])
    np.testing.assert_allclose(normalize(np.array([[3.0, 4.0], [0.0, 0.0]])), [[0.6, 0.8], [0.0, 0.0]])
    with pytest.raises(ValueError):
        normalize(np.zeros((2, 2, 2)))


def test_cosine_similarity_shapes() -> None:
    assert cosine_similarity([1, 0], [1, 0]) == pytest.approx(1.0)
    assert cosine_similarity([1, 0], [0, 2]) == pytest.approx(0.0)
    assert cosine_similarity([1, 1], [-1, -1]) == pytest.approx(-1.0)
    assert cosine_similarity([0, 0], [1, 0]) == 0.0
    rows = cosine_similarity([1, 0], [[1, 0], [0, 1], [1, 1]])
    np.testing.assert_allclose(rows, [1.0, 0.0, 2**-0.5])
    mat = cosine_similarity([[1, 0], [0, 1]], [[1, 0], [0, 1], [1, 1]])
    assert np.shape(mat) == (2, 3)
    with pytest.raises(ValueError, match="differ in length"):
        cosine_similarity([1, 0, 0], [1, 0])


async def test_sim_vectors_rank_by_cosine_like_the_client_would(tei: TEISim, clock: FakeClock) -> None:
    async with client(tei, clock) as c:
        r = await c.embed("tei/bge", ["same text", "same text", "other"])
    sims = cosine_similarity(r.vectors[0], r.vectors[1:])
    assert sims[0] == pytest.approx(1.0) and sims[1] < 0.99  # type: ignore[index]


async def test_rerank_over_the_servers_limit_is_split_and_merged(clock: FakeClock) -> None:
    docs = [f"doc {i} about {'the capital of france' if i % 4 == 0 else 'fruit'}" for i in range(10)]
    with TEISim(clock=clock, reranker=True, max_client_batch_size=4) as s:
        async with client(s, clock) as c:
            split = await c.rerank("tei/rr", "capital of france", docs, return_text=True)
            whole = await c.call("rerank", "tei/rr", {"query": "capital of france", "texts": docs[:4]})
    assert [len(r.json["texts"]) for r in s.requests_to("/rerank")][:3] == [4, 4, 2]
    assert sorted(r.index for r in split.results) == list(range(10))  # every text, once, its own index
    assert all(docs[r.index] == r.text for r in split.results)
    scores = [r.score for r in split.results]
    assert scores == sorted(scores, reverse=True)
    # The first slice's scores are exactly what the server gives for it alone.
    assert {r.index: r.score for r in whole.results} == {r.index: r.score for r in split.results if r.index < 4}
