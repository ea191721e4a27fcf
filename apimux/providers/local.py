"""The ``local`` backend: all-MiniLM-L6-v2 embeddings computed in process.

A pure translator like every other provider; the model runs behind an
in-process transport (``local_transport``), so queueing, concurrency,
retries, stats and cost go through the same core as a remote service.
"""

from __future__ import annotations

from typing import Any, ClassVar

from apimux.providers.base import Call, Provider, load_json
from apimux.providers.local_transport import MODEL_ID, LocalTransport
from apimux.providers.openai import decode_embedding, usage_from
from apimux.providers.registry import register
from apimux.transport import HttpRequest, HttpResponse, Transport
from apimux.types import EmbedResponse, ModelInfo


@register
class LocalProvider(Provider):
    name = "local"
    needs_key = False
    sends_request_id = False  # nothing upstream to correlate with
    default_base_url = "local://"
    batch_limits: ClassVar[dict[str, int]] = {"embed": 32}

    @staticmethod
    def transport_factory(endpoint: Any) -> Transport:
        return LocalTransport()

    def embed_request(self, call: Call, key: str | None) -> HttpRequest:
        inputs = call.params.get("input")
        if isinstance(inputs, str):
            inputs = [inputs]
        return HttpRequest("POST", "local://embed", {}, json={"model": call.model, "input": inputs})

    def embed_response(self, call: Call, resp: HttpResponse) -> EmbedResponse:
        data = load_json(resp, self.name)
        items = sorted(data.get("data") or [], key=lambda d: d.get("index", 0))
        return EmbedResponse(
            vectors=[decode_embedding(d["embedding"]) for d in items],
            model=data.get("model", MODEL_ID),
            usage=usage_from(data.get("usage")),
        )

    def models_request(self, call: Call, key: str | None) -> HttpRequest:
        return HttpRequest("GET", "local://models", {})

    def models_response(self, call: Call, resp: HttpResponse) -> list[ModelInfo]:
        data = load_json(resp, self.name)
        return [ModelInfo(m["id"], m.get("owned_by"), m) for m in data.get("data") or []]
