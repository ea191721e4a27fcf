"""A loopback server speaking Hugging Face Text Embeddings Inference (TEI).

Validated in the tests by ``huggingface_hub.InferenceClient``. Like a real
TEI it serves ONE model, either an embedding model (``/embed``, and ``/`` as
the default route) or a re-ranker (``/rerank``, and ``/`` as ``/predict``);
asking the wrong kind gives TEI's 424 "backend" error.

- Vectors are deterministic: a normal sample seeded by the SHA-256 of the
  (prompt-prefixed, truncated) text, unit-length when ``normalize`` (the
  default), cut to ``dimensions`` when asked.
- Tokens are whitespace words (``words``); the count comes back in
  ``x-compute-tokens`` as TEI sends it, never in the body.
- Limits as TEI enforces them: more than ``max_client_batch_size`` inputs is
  413 ``validation`` ("batch size N > maximum allowed batch size M"); an
  input over ``max_input_length`` tokens without ``truncate`` is 413
  ``validation`` ("Input validation error: `inputs` must have less than M
  tokens. Given: N"); an empty batch is 400 ``empty``; a body that does not
  deserialize is axum's plain-text 422; a refused ``--api-key`` an empty 401.
- Rerank scores are deterministic: the share of query words found in the
  text, plus a small tie-breaker from the hash; ``raw_scores`` gives the
  logit instead of the sigmoid-like value.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import numpy as np
from aiohttp import web

from apimux.testing.server import Fault, Recorded, SimServer, words

# TEI's ErrorType -> status (router/src/http/server.rs `impl From<&ErrorType> for StatusCode`).
ERROR_TYPES = {
    400: "empty",
    413: "validation",
    422: "tokenizer",
    424: "backend",
    429: "overloaded",
    503: "unhealthy",
}


def tei_vector(text: str, dims: int, normalize: bool = True, keep: int | None = None) -> list[float]:
    """The simulator's embedding of ``text``: deterministic, cut to the first ``keep``
    dimensions (matryoshka ``dimensions``), unit-length if ``normalize``; float32 values."""
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    vec = np.random.default_rng(seed).standard_normal(dims)[:keep]
    if normalize:
        vec = vec / np.linalg.norm(vec)
    return [float(np.float32(x)) for x in vec]


def overlap_logit(query: str, text: str) -> float:
    """The raw rerank score: query-word overlap in [-4, 4], plus a tiny stable tie-breaker."""
    q = {w.lower() for w in query.split()}
    t = {w.lower() for w in text.split()}
    share = len(q & t) / len(q) if q else 0.0
    tie = hashlib.sha256(text.encode()).digest()[0] / 255 / 1000
    return 8.0 * share - 4.0 + tie


class TEISim(SimServer):
    name = "tei"

    def __init__(
        self,
        *,
        model_id: str = "BAAI/bge-small-en-v1.5",
        reranker: bool = False,
        dims: int = 16,
        max_client_batch_size: int = 32,
        max_input_length: int = 512,
        max_batch_tokens: int = 16384,
        auto_truncate: bool = False,
        prompts: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.model_id = model_id
        self.reranker = reranker
        self.dims = dims
        self.max_client_batch_size = max_client_batch_size
        self.max_input_length = max_input_length
        self.max_batch_tokens = max_batch_tokens
        self.auto_truncate = auto_truncate
        self.prompts = {"query": "query: ", "passage": "passage: "} if prompts is None else prompts

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/embed", self.route(self.embed))
        app.router.add_post("/rerank", self.route(self.rerank))
        app.router.add_get("/info", self.route(self.info))
        app.router.add_get("/health", self.route(self.health))
        app.router.add_post("/", self.route(self.rerank_or_predict if self.reranker else self.embed))

    @property
    def base_url(self) -> str:
        return self.url

    # ---- protocol plumbing --------------------------------------------------
    def error_response(self, status: int, message: str, fault: Fault | None) -> web.Response:
        if status == 401:
            # TEI's api-key middleware answers a bare 401 with no body.
            return web.Response(status=401)
        kind = fault.error_type if fault and fault.error_type else ERROR_TYPES.get(status, "backend")
        return web.json_response({"error": message, "error_type": kind}, status=status)

    def _error(self, status: int, message: str) -> web.Response:
        return web.json_response({"error": message, "error_type": ERROR_TYPES[status]}, status=status)

    @staticmethod
    def _rejection(message: str) -> web.Response:
        # axum's Json extractor rejects an undeserializable body with plain text 422.
        return web.Response(
            status=422, text=f"Failed to deserialize the JSON body into the target type: {message}",
            content_type="text/plain",
        )

    def _headers(self, tokens: int, chars: int) -> dict[str, str]:
        return {
            "x-compute-type": "cpu", "x-compute-time": "1", "x-compute-characters": str(chars),
            "x-compute-tokens": str(tokens), "x-total-time": "1", "x-tokenization-time": "0",
            "x-queue-time": "0", "x-inference-time": "1",
        }

    def _truncate(self, text: str, truncate: bool, direction: str) -> tuple[str | None, int]:
        """The text the model sees and its token count, or None when it is too long."""
        toks = text.split()
        if len(toks) <= self.max_input_length:
            return text, words(text)
        if not truncate:
            return None, len(toks)
        kept = toks[-self.max_input_length:] if direction == "left" else toks[: self.max_input_length]
        return " ".join(kept), len(kept)

    # ---- routes ----------------------------------------------------------------
    async def embed(self, request: web.Request, rec: Recorded, fault: Fault | None) -> web.StreamResponse:
        try:
            body = rec.json
        except ValueError as exc:
            return self._rejection(f"expected value: {exc}")
        if not isinstance(body, dict) or "inputs" not in body:
            return self._rejection("missing field `inputs` at line 1 column 2")
        inputs = body["inputs"]
        if isinstance(inputs, str):
            inputs = [inputs]
        if not isinstance(inputs, list) or not all(isinstance(x, str) for x in inputs):
            return self._rejection("inputs: data did not match any variant of untagged enum Input")
        direction = body.get("truncation_direction", "Right")
        if direction not in ("Left", "Right", "left", "right"):
            return self._rejection(f"truncation_direction: unknown variant `{direction}`, expected `Left` or `Right`")
        for flag in ("normalize", "truncate"):
            if body.get(flag) is not None and not isinstance(body[flag], bool):
                return self._rejection(f"{flag}: invalid type: expected a boolean")
        if self.reranker:
            return self._error(424, "Backend error: Inference failed: model is not an embedding model")
        if not inputs:
            return self._error(400, "`inputs` cannot be empty")
        if len(inputs) > self.max_client_batch_size:
            return self._error(
                413, f"batch size {len(inputs)} > maximum allowed batch size {self.max_client_batch_size}"
            )
        prompt = ""
        if body.get("prompt_name") is not None:
            if body["prompt_name"] not in self.prompts:
                return self._error(
                    413, f"Input validation error: Prompt name `{body['prompt_name']}` was not found in the "
                    f"model prompts"
                )
            prompt = self.prompts[body["prompt_name"]]
        truncate = body.get("truncate")
        truncate = self.auto_truncate if truncate is None else truncate
        normalize = body.get("normalize", True)
        dims = body.get("dimensions") or self.dims
        if not isinstance(dims, int) or dims < 1 or dims > self.dims:
            return self._error(413, f"Input validation error: `dimensions` must be between 1 and {self.dims}")
        vectors, tokens = [], 0
        for text in inputs:
            seen, count = self._truncate(prompt + text, truncate, direction.lower())
            if seen is None:
                return self._error(
                    413, f"Input validation error: `inputs` must have less than {self.max_input_length} tokens. "
                    f"Given: {count}"
                )
            tokens += count
            vectors.append(tei_vector(seen, self.dims, normalize=bool(normalize), keep=dims))
        chars = sum(len(t) for t in inputs)
        return web.json_response(vectors, headers=self._headers(tokens, chars))

    async def rerank(self, request: web.Request, rec: Recorded, fault: Fault | None) -> web.StreamResponse:
        try:
            body = rec.json
        except ValueError as exc:
            return self._rejection(f"expected value: {exc}")
        if not isinstance(body, dict):
            return self._rejection("invalid type: expected struct RerankRequest")
        for field in ("query", "texts"):
            if field not in body:
                return self._rejection(f"missing field `{field}` at line 1 column 2")
        query, texts = body["query"], body["texts"]
        if not isinstance(query, str):
            return self._rejection("query: invalid type: expected a string")
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            return self._rejection("texts: invalid type: expected a sequence of strings")
        if not texts:
            return self._error(400, "`texts` cannot be empty")
        if not self.reranker:
            return self._error(424, "Backend error: Inference failed: model is not a re-ranker model")
        if len(texts) > self.max_client_batch_size:
            return self._error(
                413, f"batch size {len(texts)} > maximum allowed batch size {self.max_client_batch_size}"
            )
        truncate = body.get("truncate")
        truncate = self.auto_truncate if truncate is None else truncate
        ranks, tokens = [], 0
        for i, text in enumerate(texts):
            seen, count = self._truncate(f"{query} {text}", bool(truncate), "right")
            if seen is None:
                return self._error(
                    413, f"Input validation error: `inputs` must have less than {self.max_input_length} tokens. "
                    f"Given: {count}"
                )
            tokens += count
            logit = overlap_logit(query, text)
            score = logit if body.get("raw_scores") else 1.0 / (1.0 + math.exp(-logit))
            rank: dict[str, Any] = {"index": i, "score": float(np.float32(score))}
            if body.get("return_text"):
                rank["text"] = text
            ranks.append(rank)
        ranks.sort(key=lambda r: r["score"], reverse=True)
        chars = sum(len(t) + len(query) for t in texts)
        return web.json_response(ranks, headers=self._headers(tokens, chars))

    async def rerank_or_predict(self, request: web.Request, rec: Recorded, fault: Fault | None) -> web.StreamResponse:
        # A re-ranker's default route is /predict (classification), which the
        # simulator does not model; say so the way TEI reports a wrong route use.
        return self._error(424, "Backend error: Inference failed: /predict is not simulated; use /rerank")

    async def info(self, request: web.Request, rec: Recorded, fault: Fault | None) -> web.StreamResponse:
        model_type: dict[str, Any] = (
            {"reranker": {"id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}}}
            if self.reranker
            else {"embedding": {"pooling": "cls"}}
        )
        return web.json_response({
            "model_id": self.model_id,
            "model_sha": None,
            "model_dtype": "float32",
            "model_type": model_type,
            "prompts": self.prompts or None,
            "max_concurrent_requests": 512,
            "max_input_length": self.max_input_length,
            "max_batch_tokens": self.max_batch_tokens,
            "max_batch_requests": None,
            "max_client_batch_size": self.max_client_batch_size,
            "auto_truncate": self.auto_truncate,
            "tokenization_workers": 1,
            "version": "1.5.0",
            "sha": None,
            "docker_label": None,
        })

    async def health(self, request: web.Request, rec: Recorded, fault: Fault | None) -> web.StreamResponse:
        return web.Response(status=200)
