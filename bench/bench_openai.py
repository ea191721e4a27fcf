"""Throughput of AsyncClient against raw aiohttp, same loopback server, one run.

Both sides send the same chat request (same headers and request id; the same
JSON body) N times with 64 in flight to one OpenAI-compatible simulator running
in a child process on loopback. apimux runs with 3 keys, its
queue, breaker, retry policy and stats on. Prints both rates and the ratio.

    python bench/bench_openai.py [--requests 4000] [--concurrency 64] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import statistics
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing.connection import Connection
from typing import Any

import aiohttp

from apimux import AsyncClient, Endpoint, Settings
from apimux.testing import OpenAISim

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello world"}], "max_tokens": 16}


def _serve(conn: Connection) -> None:
    with OpenAISim() as sim:
        conn.send(sim.base_url)
        conn.recv()  # until the parent says stop


@contextmanager
def sim_process() -> Iterator[str]:
    """The simulator in its own process: the clients measured here do not
    share a GIL (or a core) with the server they talk to."""
    parent, child = multiprocessing.get_context("spawn").Pipe()
    proc = multiprocessing.get_context("spawn").Process(target=_serve, args=(child,), daemon=True)
    proc.start()
    try:
        yield parent.recv()
    finally:
        parent.send("stop")
        proc.join(10)


Result = tuple[float, float]  # (requests per wall second, process CPU seconds per request)


async def timed(n: int, calls: Any) -> Result:
    """Wall rate and the client's CPU cost per call (this process only: the
    server runs in its own); CPU time is steadier than wall time on a shared machine."""
    wall, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*calls)
    return n / (time.perf_counter() - wall), (time.process_time() - cpu) / n


async def raw_aiohttp(url: str, n: int, concurrency: int) -> Result:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        sem = asyncio.Semaphore(concurrency)
        async def one() -> None:
            # The same headers and request id as apimux sends, and the work a
            # hand-written client does per call: encode, send, read, decode.
            headers = {"Accept": "application/json", "Authorization": "Bearer sk-bench-raw",
                       "x-request-id": str(uuid.uuid4()), "Content-Type": "application/json"}
            payload = json.dumps(BODY).encode()
            async with sem, session.post(f"{url}/chat/completions", data=payload, headers=headers) as resp:
                data = json.loads(await resp.read())
                assert data["choices"][0]["message"]["content"]

        return await timed(n, [one() for _ in range(n)])


async def with_apimux(url: str, n: int, concurrency: int) -> Result:
    keys = ["sk-bench-key-0001", "sk-bench-key-0002", "sk-bench-key-0003"]
    per_key = -(-concurrency // len(keys))
    ep = Endpoint("openai", base_url=url, api_keys=keys, max_concurrent=per_key)
    async with AsyncClient([ep], settings=Settings(queue_size=concurrency)) as client:
        sem = asyncio.Semaphore(concurrency)

        async def one() -> None:
            async with sem:
                r = await client.chat("openai/gpt-4o-mini", BODY["messages"], max_tokens=16)  # type: ignore[arg-type]
                assert r.text

        result = await timed(n, [one() for _ in range(n)])
        assert client.stats()["totals"]["successes"] == n
        return result


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=4000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=9, help="alternating rounds (the machine's noise averages out)")
    args = ap.parse_args()
    with sim_process() as url:
        await raw_aiohttp(url, 200, args.concurrency)  # warm up both paths
        await with_apimux(url, 200, args.concurrency)
        raw: list[Result] = []
        mux: list[Result] = []
        for _ in range(args.rounds):
            raw.append(await raw_aiohttp(url, args.requests, args.concurrency))
            mux.append(await with_apimux(url, args.requests, args.concurrency))
    best_raw, best_mux = max(r for r, _ in raw), max(r for r, _ in mux)
    paired = sorted(m[0] / r[0] for r, m in zip(raw, mux, strict=True))
    cpu = sorted(r[1] / m[1] for r, m in zip(raw, mux, strict=True))
    print(f"requests={args.requests} concurrency={args.concurrency} rounds={args.rounds}")
    print(f"raw aiohttp : {best_raw:8.0f} req/s  {1e6 * min(c for _, c in raw):6.0f} us CPU/req"
          f"   (rounds: {', '.join(f'{r:.0f}' for r, _ in raw)})")
    print(f"apimux      : {best_mux:8.0f} req/s  {1e6 * min(c for _, c in mux):6.0f} us CPU/req"
          f"   (rounds: {', '.join(f'{r:.0f}' for r, _ in mux)})")
    print(f"ratio       : {statistics.median(paired):.2f} x raw aiohttp, median of paired rounds (target >= 0.80)")
    print(f"              {min(paired):.2f}-{max(paired):.2f} over the rounds; best against best "
          f"{best_mux / best_raw:.2f}; in CPU per request {statistics.median(cpu):.2f} (median)")


if __name__ == "__main__":
    asyncio.run(main())
