"""The in-process "server" behind the ``local`` backend.

It speaks a tiny JSON protocol (``POST local://embed``, ``GET local://models``)
so the local model goes through the core exactly like a remote backend: the
provider builds a request, this transport answers it, the provider parses the
answer. The model runs in a worker thread so the event loop keeps serving
other calls; it is loaded once per process, lazily, under a lock.

Model calls run one at a time on a single worker thread: numpy's BLAS
already uses every core, and overlapping calls made each one 5-7x slower
(measured on 2 cores: 7 ms per sentence alone, 35-50 ms with 2-5 at once).
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from apimux.errors import BadRequest
from apimux.transport import HttpRequest, HttpResponse, Timeouts

# The served model and the names it answers to.
MODEL_ID = "all-MiniLM-L6-v2"
MODEL_NAMES = frozenset({MODEL_ID, "all-minilm-l6-v2", "sentence-transformers/all-MiniLM-L6-v2"})

_model: Any = None
_model_lock = threading.Lock()
_worker: ThreadPoolExecutor | None = None


def _model_thread() -> ThreadPoolExecutor:
    global _worker
    if _worker is None:
        with _model_lock:
            if _worker is None:
                _worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="apimux-local")
    return _worker


def load_model() -> Any:
    """The process-wide MiniLM, loaded on first use (thread-safe)."""
    global _model
    if _model is None:
        with _model_lock:
            if _model is None:
                # Imported here: numpy MiniLM pulls in tokenizers/safetensors,
                # which a client that never uses the local backend should not pay for.
                from apimux.local.minilm import MiniLM

                _model = MiniLM.load()
    return _model


def _json(status: int, body: Any) -> HttpResponse:
    return HttpResponse(status, {"content-type": "application/json"}, json.dumps(body).encode())


def _error(status: int, message: str) -> HttpResponse:
    return _json(status, {"error": {"message": message, "code": status}})


def embed_body(model: str, texts: list[str]) -> dict[str, Any]:
    """Run the model (blocking) and build the answer: base64 little-endian float32 vectors."""
    m = load_model()
    vectors = np.asarray(m.embed(texts), dtype="<f4")
    tokens = sum(m.count_tokens(texts)) if texts else 0
    data = [
        {"index": i, "embedding": base64.b64encode(vectors[i].tobytes()).decode("ascii")}
        for i in range(len(texts))
    ]
    return {"model": model, "data": data, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


class LocalTransport:
    """``send`` answers in process; there is no network and nothing to stream."""

    def __init__(self) -> None:
        self.closed = False

    async def send(self, req: HttpRequest, timeouts: Timeouts) -> HttpResponse:
        if req.url == "local://models" and req.method == "GET":
            return _json(200, {"data": [{"id": MODEL_ID, "owned_by": "apimux-local"}]})
        if req.url != "local://embed" or req.method != "POST":
            return _error(404, f"the local backend has no route {req.method} {req.url}")
        body = req.json if isinstance(req.json, dict) else {}
        model = body.get("model")
        if model not in MODEL_NAMES:
            return _error(404, f"the local backend serves only {MODEL_ID!r}, not {model!r}")
        texts = body.get("input")
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            return _error(400, "'input' must be a list of strings")
        if not texts:
            return _error(400, "'input' must not be empty")
        # ConfigError (model package missing) propagates: not retryable, names the fix.
        loop = asyncio.get_running_loop()
        return _json(200, await loop.run_in_executor(_model_thread(), embed_body, MODEL_ID, texts))

    def stream(self, req: HttpRequest, timeouts: Timeouts) -> Any:
        raise BadRequest("the local backend cannot stream", backend="local")

    async def close(self) -> None:
        self.closed = True
