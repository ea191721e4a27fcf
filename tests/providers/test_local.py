"""The local backend goes through the core like any other and reproduces the reference vectors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from apimux import AsyncClient, BadRequest, NotFound
from apimux.providers import registry
from apimux.providers.local import LocalProvider

REFERENCE = Path(__file__).resolve().parent.parent / "data" / "minilm_reference.json"


@pytest.fixture
async def client() -> AsyncClient:
    c = AsyncClient(env={}, config={})
    yield c  # type: ignore[misc]
    await c.close()


def test_registered() -> None:
    assert registry.get("local") is LocalProvider
    assert not LocalProvider.needs_key
    assert LocalProvider.batch_limits == {"embed": 32}


async def test_vectors_match_reference(client: AsyncClient) -> None:
    ref = json.loads(REFERENCE.read_text(encoding="utf-8"))
    texts = ref["texts"]
    resp = await client.embed("local/all-MiniLM-L6-v2", texts)
    ours = np.asarray(resp.vectors, dtype=np.float64)
    theirs = np.asarray(ref["embeddings"], dtype=np.float64)
    assert ours.shape == theirs.shape == (len(texts), 384)
    cos = (ours * theirs).sum(1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(theirs, axis=1))
    assert cos.min() >= 0.999
    # usage is the tokenizer's count, [CLS] and [SEP] included
    assert resp.usage.prompt_tokens >= 2 * len(texts)
    assert resp.info.backend == "local"
    assert resp.info.attempts == 1
    assert resp.request_id


async def test_aliases_and_stats(client: AsyncClient) -> None:
    a = await client.embed("local/all-minilm-l6-v2", "a cat sat on the mat")
    b = await client.embed("local/sentence-transformers/all-MiniLM-L6-v2", ["a cat sat on the mat"])
    assert np.allclose(a.vectors[0], b.vectors[0], atol=1e-6)
    totals = client.stats()["totals"]
    assert totals["successes"] == 2
    assert totals["prompt_tokens"] == 2 * a.usage.prompt_tokens


async def test_unknown_model_is_not_found(client: AsyncClient) -> None:
    with pytest.raises(NotFound) as info:
        await client.embed("local/bge-small", "x")
    assert "all-MiniLM-L6-v2" in info.value.message
    assert info.value.backend == "local"
    assert info.value.attempts == 1  # not retried


async def test_no_chat_and_no_stream(client: AsyncClient) -> None:
    with pytest.raises(BadRequest):
        await client.chat("local/all-MiniLM-L6-v2", [{"role": "user", "content": "hi"}])


async def test_models(client: AsyncClient) -> None:
    models = await client.models("local")
    assert [m.id for m in models] == ["all-MiniLM-L6-v2"]
