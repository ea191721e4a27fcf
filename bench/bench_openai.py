"""Throughput of AsyncClient against raw aiohttp, same loopback server, one run.

Both sides send the same chat request N times with 64 in flight to one
OpenAI-compatible simulator in this process. apimux runs with 3 keys, its
queue, breaker, retry policy and stats on. Prints both rates and the ratio.

    python bench/bench_openai.py [--requests 4000] [--concurrency 64] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import aiohttp

from apimux import AsyncClient, Endpoint, Settings
from apimux.testing import OpenAISim

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello world"}], "max_tokens": 16}


async def raw_aiohttp(url: str, n: int, concurrency: int) -> float:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        sem = asyncio.Semaphore(concurrency)
        headers = {"Authorization": "Bearer sk-bench-raw", "Content-Type": "application/json"}

        async def one() -> None:
            # The same work a hand-written client does per call: encode, send, read, decode.
            payload = json.dumps(BODY).encode()
            async with sem, session.post(f"{url}/chat/completions", data=payload, headers=headers) as resp:
                data = json.loads(await resp.read())
                assert data["choices"][0]["message"]["content"]

        start = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(n)))
        return n / (time.perf_counter() - start)


async def with_apimux(url: str, n: int, concurrency: int) -> float:
    keys = ["sk-bench-key-0001", "sk-bench-key-0002", "sk-bench-key-0003"]
    per_key = -(-concurrency // len(keys))
    ep = Endpoint("openai", base_url=url, api_keys=keys, max_concurrent=per_key)
    async with AsyncClient([ep], settings=Settings(queue_size=concurrency)) as client:
        sem = asyncio.Semaphore(concurrency)

        async def one() -> None:
            async with sem:
                r = await client.chat("openai/gpt-4o-mini", BODY["messages"], max_tokens=16)  # type: ignore[arg-type]
                assert r.text

        start = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(n)))
        rate = n / (time.perf_counter() - start)
        assert client.stats()["totals"]["successes"] == n
        return rate


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=4000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds; the best of each is kept")
    args = ap.parse_args()
    with OpenAISim() as sim:
        await raw_aiohttp(sim.base_url, 200, args.concurrency)  # warm up both paths
        await with_apimux(sim.base_url, 200, args.concurrency)
        raw, mux = [], []
        for _ in range(args.rounds):
            raw.append(await raw_aiohttp(sim.base_url, args.requests, args.concurrency))
            mux.append(await with_apimux(sim.base_url, args.requests, args.concurrency))
    best_raw, best_mux = max(raw), max(mux)
    print(f"requests={args.requests} concurrency={args.concurrency} rounds={args.rounds}")
    print(f"raw aiohttp : {best_raw:8.0f} req/s   (rounds: {', '.join(f'{r:.0f}' for r in raw)})")
    print(f"apimux      : {best_mux:8.0f} req/s   (rounds: {', '.join(f'{r:.0f}' for r in mux)})")
    print(f"ratio       : {best_mux / best_raw:.2f} x raw aiohttp (target >= 0.80)")


if __name__ == "__main__":
    asyncio.run(main())
