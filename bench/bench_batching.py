"""Micro-batching: 1,000 concurrent single-text embed calls, batching on and off.

Same loopback TEI simulator (its batch limit 32), same client settings, one
run. Prints the upstream calls made and the throughput of each mode.
Targets: batching on makes at most 1.2 x 1000/32 upstream calls and reaches
at least 3 x the throughput of batching off.

    python bench/bench_batching.py [--calls 1000] [--rounds 3] [--latency 0]
"""

from __future__ import annotations

import argparse
import asyncio
import time

from apimux import AsyncClient, Endpoint, Settings
from apimux.testing import TEISim


async def run(sim: TEISim, calls: int, window: float) -> tuple[float, int]:
    before = len(sim.requests_to("/embed"))
    ep = Endpoint("hf_tei", base_url=sim.url, max_concurrent=8)
    async with AsyncClient([ep], settings=Settings(batch_window=window, queue_size=calls)) as client:
        await client.embed("hf_tei/bge", "warm up")  # reads /info once; not timed
        before = len(sim.requests_to("/embed"))
        start = time.perf_counter()
        results = await asyncio.gather(*(client.embed("hf_tei/bge", f"text number {i}") for i in range(calls)))
        elapsed = time.perf_counter() - start
    assert all(len(r.vectors) == 1 for r in results)
    return calls / elapsed, len(sim.requests_to("/embed")) - before


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds; the best of each is kept")
    ap.add_argument("--latency", type=float, default=0.0, help="added seconds per upstream request (model time)")
    args = ap.parse_args()
    on: list[tuple[float, int]] = []
    off: list[tuple[float, int]] = []
    with TEISim(max_client_batch_size=32) as sim:
        sim.faults.latency = args.latency
        for _ in range(args.rounds):
            on.append(await run(sim, args.calls, Settings().batch_window))
            off.append(await run(sim, args.calls, 0.0))
    best_on, best_off = max(on), max(off)
    limit = 1.2 * args.calls / 32
    print(f"calls={args.calls} rounds={args.rounds} server batch limit=32 added latency={args.latency}s")
    print(f"batching on : {best_on[0]:8.0f} calls/s  upstream requests {best_on[1]:5d}  (target <= {limit:.1f})")
    print(f"batching off: {best_off[0]:8.0f} calls/s  upstream requests {best_off[1]:5d}")
    print(f"speed-up    : {best_on[0] / best_off[0]:.1f} x (target >= 3)")


if __name__ == "__main__":
    asyncio.run(main())
