"""Hugging Face Text Embeddings Inference (TEI): ``/embed``, ``/rerank``, ``/info``.

Wire format (text-embeddings-inference ``router/src/http``):

- ``POST /embed`` ``{"inputs": str | [str], "normalize": true, "truncate", "truncation_direction",
  "prompt_name", "dimensions"}`` -> ``[[float, ...], ...]`` (always a list of vectors). The body
  has no usage; the token count comes in the ``x-compute-tokens`` header.
- ``POST /rerank`` ``{"query", "texts", "raw_scores", "return_text", "truncate"}`` ->
  ``[{"index", "score", "text"?}]`` sorted by score, highest first.
- ``GET /info`` -> ``{"model_id", "max_client_batch_size", "max_input_length", ...}``.
- Errors: ``{"error": "...", "error_type": "validation" | "tokenizer" | "backend" |
  "overloaded" | "unhealthy" | "empty"}`` with 413, 422, 424, 429, 503, 400. Body
  deserialization failures are axum's plain-text 422; ``--api-key`` refusals an empty 401.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from apimux.core.retry import parse_retry_after
from apimux.errors import (
    ApimuxError,
    BadRequest,
    NotRetryableUpstream,
    Overloaded,
    RateLimited,
    UpstreamError,
    error_for_status,
)
from apimux.providers.base import Call, Provider, bearer_headers, error_message, load_json, safe_json
from apimux.providers.registry import register
from apimux.transport import HttpRequest, HttpResponse
from apimux.types import EmbedResponse, RerankResponse, RerankResult, Usage

# What each 4xx means on TEI, for a message that names the limit hit.
_LIMIT_HINTS = {
    413: "TEI refused the request: batch or input over the server's limits (max_client_batch_size / "
    "max_input_length; see GET /info)",
    422: "TEI could not process the input (tokenization or request body)",
    400: "TEI refused the request",
}


@register
class TEIProvider(Provider):
    name = "hf_tei"
    aliases = ("tei",)
    env_keys = ("HF_TOKEN", "HF_API_KEY")
    env_base_url = ("TEI_BASE_URL",)
    default_base_url = "http://localhost:8080"
    needs_key = False
    # TEI's default --max-client-batch-size; the core may learn the real one from ``info``.
    batch_limits: ClassVar[dict[str, int]] = {"embed": 32, "rerank": 32}  # until /info says otherwise

    def headers(self, key: str | None) -> dict[str, str]:
        return bearer_headers(key)

    # ---- embed ---------------------------------------------------------------
    def embed_request(self, call: Call, key: str | None) -> HttpRequest:
        body = embed_body(call.params)
        return HttpRequest("POST", self.url("/embed"), self.headers(key), json=body)

    def embed_response(self, call: Call, resp: HttpResponse) -> EmbedResponse:
        data = load_json(resp, self.name)
        vectors = parse_vectors(data, self.name)
        expected = len(call.params.get("input") or ())
        if expected and len(vectors) != expected:
            raise UpstreamError(
                f"{self.name} returned {len(vectors)} vectors for {expected} inputs", status=resp.status
            )
        return EmbedResponse(vectors=vectors, model=call.model, usage=usage_from_headers(resp.headers))

    # ---- rerank --------------------------------------------------------------
    def rerank_request(self, call: Call, key: str | None) -> HttpRequest:
        return HttpRequest("POST", self.url("/rerank"), self.headers(key), json=rerank_body(call.params))

    def rerank_response(self, call: Call, resp: HttpResponse) -> RerankResponse:
        data = load_json(resp, self.name)
        return RerankResponse(results=parse_ranks(data, self.name), model=call.model)

    # ---- info ------------------------------------------------------------------
    def info_request(self, call: Call, key: str | None) -> HttpRequest:
        return HttpRequest("GET", self.url("/info"), self.headers(key))

    def info_response(self, call: Call, resp: HttpResponse) -> dict[str, Any]:
        data = load_json(resp, self.name)
        if not isinstance(data, dict):
            raise UpstreamError(f"{self.name} /info is not a JSON object: {str(data)[:120]}", status=resp.status)
        return parse_info(data)

    # ---- errors --------------------------------------------------------------
    def error(self, call: Call, resp: HttpResponse) -> ApimuxError:
        return tei_error(resp)

    def estimate_tokens(self, call: Call) -> int:
        p = call.params
        if "query" in p and isinstance(p.get("texts"), list):
            text = sum(len(str(t)) for t in p["texts"]) + len(str(p["query"])) * len(p["texts"])
            return max(1, text // 4)
        return super().estimate_tokens(call)


# ---- pure translation helpers (unit-tested directly) --------------------------
def embed_body(params: Mapping[str, Any]) -> dict[str, Any]:
    """The ``/embed`` body: ``inputs`` is the list as given (the core splits big batches)."""
    inputs = params.get("input")
    if isinstance(inputs, str):
        inputs = [inputs]
    if not isinstance(inputs, list) or not all(isinstance(x, str) for x in inputs):
        raise BadRequest("TEI embed input must be a string or a list of strings")
    body: dict[str, Any] = {"inputs": inputs}
    # TEI fields (normalize, truncate, truncation_direction, prompt_name, dimensions)
    # and anything newer pass through; None means "server default", so it is left out.
    body.update({k: v for k, v in params.items() if k != "input" and v is not None})
    return body


def rerank_body(params: Mapping[str, Any]) -> dict[str, Any]:
    query, texts = params.get("query"), params.get("texts")
    if not isinstance(query, str) or not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise BadRequest("TEI rerank needs a query string and a list of text strings")
    return {k: v for k, v in params.items() if v is not None}


def parse_vectors(data: Any, backend: str = "hf_tei") -> list[list[float]]:
    if not isinstance(data, list) or not all(isinstance(v, list) for v in data):
        raise UpstreamError(f"{backend} /embed did not return a list of vectors: {str(data)[:120]}")
    return [[float(x) for x in v] for v in data]


def parse_ranks(data: Any, backend: str = "hf_tei") -> list[RerankResult]:
    if not isinstance(data, list):
        raise UpstreamError(f"{backend} /rerank did not return a list: {str(data)[:120]}")
    try:
        results = [RerankResult(int(r["index"]), float(r["score"]), r.get("text")) for r in data]
    except (KeyError, TypeError, ValueError):
        raise UpstreamError(f"{backend} /rerank entries need index and score: {str(data)[:120]}") from None
    # TEI already sorts highest first; a stable sort keeps its order and guards a server that does not.
    results.sort(key=lambda r: -r.score)
    return results


def parse_info(data: dict[str, Any]) -> dict[str, Any]:
    """``/info`` as a plain dict; the limits the core reads are made ints when present."""
    out = dict(data)
    for k in ("max_client_batch_size", "max_input_length", "max_batch_tokens", "max_concurrent_requests"):
        v = out.get(k)
        if v is not None:
            try:
                out[k] = int(v)
            except (TypeError, ValueError):
                out.pop(k)
    return out


def usage_from_headers(headers: Mapping[str, str]) -> Usage:
    """TEI counts the tokens it computed in ``x-compute-tokens``; no header, no usage."""
    raw = headers.get("x-compute-tokens")
    try:
        tokens = int(raw) if raw is not None else 0
    except ValueError:
        tokens = 0
    return Usage(prompt_tokens=max(0, tokens))


def tei_error(resp: HttpResponse) -> ApimuxError:
    """Map TEI's ``{"error", "error_type"}`` (or a plain-text body) to the typed tree."""
    body = safe_json(resp.body)
    kind = str(body.get("error_type") or "").lower() if isinstance(body, dict) else ""
    message = error_message(resp.body) or f"HTTP {resp.status}"
    retry_after = parse_retry_after(resp.headers, resp.wall)
    status = resp.status
    cls: type[ApimuxError]
    if status in _LIMIT_HINTS:
        cls = BadRequest
        message = f"{_LIMIT_HINTS[status]}: {message}"
    elif status == 424:
        # The model itself failed on this input (or is the wrong kind of model): the
        # same request fails the same way again, so it is not retried.
        cls = NotRetryableUpstream
    elif status == 429:
        # TEI's own 429 is "overloaded" (its queue is full); a 429 without that type
        # comes from a proxy's rate limiter in front of it and cools the key instead.
        cls = Overloaded if kind == "overloaded" else RateLimited
    elif status == 503 and kind == "overloaded":
        cls = Overloaded
    else:
        cls = error_for_status(status)
    return cls(message, status=status, retry_after=retry_after, body=body)
