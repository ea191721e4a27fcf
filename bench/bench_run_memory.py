"""Peak memory and throughput of ``apimux run`` on large embedding files.

    .venv/bin/python bench/bench_run_memory.py                 # 10k and 1M lines
    .venv/bin/python bench/bench_run_memory.py --lines 10000 100000

Each size: write an N-line embeddings file in a temp dir, start the OpenAI
simulator (loopback, in this process), run ``apimux run`` as a child process
against it and read the child's peak RSS from ``os.wait4`` (no psutil). The
target is flat memory: only the set of answered ids (64-bit hashes) grows with
N; 1M lines should stay under 300 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from apimux.testing import OpenAISim  # noqa: E402


def make_input(path: Path, n: int) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for i in range(n):
            fh.write(json.dumps({"custom_id": f"doc-{i:08d}", "model": "openai/text-embedding-3-small",
                                 "input": f"document number {i} about topic {i % 97}"}) + "\n")


def run_once(n: int, concurrency: int, workdir: Path, sim: OpenAISim) -> dict[str, float]:
    inp, out = workdir / f"in-{n}.jsonl", workdir / f"out-{n}.jsonl"
    make_input(inp, n)
    cfg = workdir / "apimux.toml"
    cfg.write_text(f'[[endpoints]]\nbackend = "openai"\nbase_url = "{sim.base_url}"\n'
                   f'api_key_env = "BENCH_KEY"\nmax_concurrent = {concurrency}\n', encoding="utf-8")
    env = {**os.environ, "BENCH_KEY": "sk-bench-0123456789", "PYTHONPATH": str(ROOT)}
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "apimux.cli.main", "run", str(inp), "-o", str(out), "--config", str(cfg),
         "--no-progress"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=workdir,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.monotonic() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"apimux run failed ({proc.returncode}): {proc.stderr.read().decode() if proc.stderr else ''}")
    lines = out.read_bytes().count(b"\n")
    assert lines == n, f"{lines} results for {n} lines"
    for p in (inp, out):
        p.unlink()
    return {"lines": n, "peak_rss_mb": usage.ru_maxrss / 1024, "seconds": elapsed, "lines_per_s": n / elapsed}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lines", type=int, nargs="+", default=[10_000, 1_000_000])
    ap.add_argument("--concurrency", type=int, default=16)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, OpenAISim() as sim:
        assert isinstance(sim, OpenAISim)
        stop = threading.Event()

        def forget() -> None:  # the simulator records every request; keep this process small
            while not stop.wait(0.5):
                with sim._lock:
                    sim.requests.clear()

        threading.Thread(target=forget, daemon=True).start()
        print(f"{'lines':>10} {'peak RSS':>10} {'seconds':>9} {'lines/s':>9}")
        for n in args.lines:
            r = run_once(n, args.concurrency, Path(tmp), sim)
            print(f"{r['lines']:>10,} {r['peak_rss_mb']:>8.1f}MB {r['seconds']:>9.1f} {r['lines_per_s']:>9,.0f}",
                  flush=True)
        stop.set()


if __name__ == "__main__":
    main()
