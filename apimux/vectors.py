"""Small vector helpers for embeddings: unit-normalize and cosine similarity.

Both accept plain lists or numpy arrays, one vector (1-D) or a batch (2-D),
and return numpy arrays, so ``EmbedResponse.vectors`` can be passed as is.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

# Below this norm a vector is treated as zero: it stays zero instead of
# being blown up (or turned into NaN) by the division.
_EPS = 1e-12


def _as_float_array(x: Any, name: str) -> NDArray[np.float64]:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim not in (1, 2):
        raise ValueError(f"{name} must be a vector or a list of vectors, got {arr.ndim} dimensions")
    return arr


def normalize(vectors: Any) -> NDArray[np.float64]:
    """Scale each vector to unit length (L2); zero vectors stay zero."""
    arr = _as_float_array(vectors, "vectors")
    norms = np.linalg.norm(arr, axis=-1, keepdims=True)
    out: NDArray[np.float64] = arr / np.where(norms < _EPS, 1.0, norms)
    return out


def cosine_similarity(a: Any, b: Any) -> float | NDArray[np.float64]:
    """Cosine similarity of ``a`` and ``b``.

    Two 1-D vectors give a float; a 1-D and a 2-D give one score per row;
    two 2-D give the ``len(a) x len(b)`` matrix. A zero vector scores 0.
    """
    x = _as_float_array(a, "a")
    y = _as_float_array(b, "b")
    if x.shape[-1] != y.shape[-1]:
        raise ValueError(f"vectors differ in length: {x.shape[-1]} and {y.shape[-1]}")
    sims = normalize(x) @ normalize(y).T
    if np.ndim(sims) == 0:
        return float(sims)
    result: NDArray[np.float64] = np.asarray(sims)
    return result
