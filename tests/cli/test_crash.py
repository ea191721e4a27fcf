"""Nothing lost, nothing twice: SIGKILL mid-run then resume; SIGINT drains."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from apimux.testing import OpenAISim
from tests.cli.conftest import read_results, write_config, write_jsonl

ROOT = Path(__file__).resolve().parents[2]
N = 120


# Runs the command with a cap on the size of any file it writes (RLIMIT_FSIZE):
# past it a write is cut short, then fails with EFBIG, as on a full disk.
LIMITED = (
    "import resource, runpy, sys; n = int(sys.argv.pop(1)); "
    "resource.setrlimit(resource.RLIMIT_FSIZE, (n, n)); sys.argv[0] = 'apimux'; "
    "runpy.run_module('apimux.cli.main', run_name='__main__')"
)


def start(workdir: Path, cfg: Path, *extra: str, file_limit: int | None = None) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.endswith(("_API_KEY", "_BASE_URL"))}
    env.update(SIM_OPENAI_KEY="sk-test-0123456789abcdef", HOME=str(workdir), PYTHONPATH=str(ROOT))
    launch = ["-m", "apimux.cli.main"] if file_limit is None else ["-c", LIMITED, str(file_limit)]
    return subprocess.Popen(
        [sys.executable, *launch, "run", "in.jsonl", "-o", "out.jsonl", "--config", str(cfg),
         "--no-progress", *extra],
        cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )


def finish(proc: subprocess.Popen[bytes], limit: float) -> bytes:
    try:
        _, err = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError(f"the run did not exit within {limit}s") from None
    return err


def lines_written(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def wait_for(path: Path, n: int, proc: subprocess.Popen[bytes], limit: float = 20.0) -> None:
    deadline = time.monotonic() + limit
    while lines_written(path) < n:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the run made no progress"
        time.sleep(0.01)


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path, OpenAISim]:
    sim = OpenAISim().start()
    assert isinstance(sim, OpenAISim)
    sim.faults.latency = 0.03  # slow enough to be mid-run when the signal lands
    cfg = write_config(tmp_path / "apimux.toml", sim)
    rows = [{"custom_id": f"r{i}", "model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": f"m{i}"}]}
            for i in range(N)]
    write_jsonl(tmp_path / "in.jsonl", rows)
    yield tmp_path, cfg, sim
    sim.stop()


def check_complete(out: Path) -> None:
    rows = read_results(out)
    counts = Counter(r["custom_id"] for r in rows)
    assert set(counts) == {f"r{i}" for i in range(N)}, "a line was lost"
    assert max(counts.values()) == 1, f"answered twice: {[k for k, v in counts.items() if v > 1]}"
    assert all(r["status"] == "ok" for r in rows)
    assert sorted(r["line"] for r in rows) == list(range(1, N + 1))


def test_sigkill_then_resume(setup: tuple[Path, Path, OpenAISim]) -> None:
    workdir, cfg, sim = setup
    out = workdir / "out.jsonl"
    proc = start(workdir, cfg)
    wait_for(out, 20, proc)
    proc.kill()
    proc.wait()
    done_before = lines_written(out)
    assert 20 <= done_before < N
    # simulate the crash landing mid-write: a partial last line
    with out.open("ab") as fh:
        fh.write(b'{"custom_id":"r999","line":5,"sta')
    proc = start(workdir, cfg)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()
    assert b"partial last line" in err
    check_complete(out)
    # requests sent again are at most those in flight at the kill
    assert len(sim.requests) < N + 2 * 4 * 4


# 128 + the signal, as a shell reports it: 130 for Ctrl-C, 143 for SIGTERM
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_stop_signal_drains_in_flight_and_exits_128_plus_it(
    setup: tuple[Path, Path, OpenAISim], sig: signal.Signals, code: int
) -> None:
    workdir, cfg, sim = setup
    out = workdir / "out.jsonl"
    proc = start(workdir, cfg)
    wait_for(out, 10, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == code, err.decode()
    assert b"stopping" in err
    time.sleep(0.1)
    # every request the simulator answered was written: nothing in flight was dropped
    assert sim.in_flight == 0
    answered = {r.json["messages"][0]["content"] for r in sim.requests}
    written = {r["custom_id"] for r in read_results(out)}
    assert {f"m{c[1:]}" for c in written} == answered
    assert len(written) < N
    # and the run can be finished
    proc = start(workdir, cfg)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()
    check_complete(out)


def test_second_sigint_aborts_at_once(setup: tuple[Path, Path, OpenAISim]) -> None:
    workdir, cfg, sim = setup
    sim.faults.latency = 2.0  # in-flight requests would take a long time to drain
    out = workdir / "out.jsonl"
    proc = start(workdir, cfg)
    deadline = time.monotonic() + 10
    while sim.in_flight < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.2)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 130, err.decode()
    assert time.monotonic() - t0 < 1.5
    assert lines_written(out) == 0


def test_first_sigint_does_not_wait_out_rate_limits(setup: tuple[Path, Path, OpenAISim]) -> None:
    """Requests queued behind an rpm budget were never sent: Ctrl-C leaves them
    for the next run instead of draining them at one every two seconds."""
    workdir, cfg, sim = setup
    out = workdir / "out.jsonl"
    proc = start(workdir, cfg, "--rpm", "30")
    wait_for(out, 1, proc)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    err = finish(proc, 10)
    assert proc.returncode == 130, err.decode()
    assert time.monotonic() - t0 < 3
    time.sleep(0.1)
    answered = {r.json["messages"][0]["content"] for r in sim.requests}
    written = {r["custom_id"] for r in read_results(out)}
    assert {f"m{c[1:]}" for c in written} == answered  # every answer sent was written, no more
    proc = start(workdir, cfg)
    err = finish(proc, 60)
    assert proc.returncode == 0, err.decode()
    check_complete(out)


@pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="needs RLIMIT_FSIZE")
def test_disk_full_stops_with_whole_lines_then_resumes(setup: tuple[Path, Path, OpenAISim]) -> None:
    workdir, cfg, sim = setup
    sim.faults.latency = 0.0
    out = workdir / "out.jsonl"
    proc = start(workdir, cfg, file_limit=4000)
    err = finish(proc, 30)
    assert proc.returncode == 1, err.decode()  # not 0: results are missing
    assert b"cannot write results" in err
    data = out.read_bytes()
    assert data.endswith(b"\n") and 0 < data.count(b"\n") < N  # whole lines only, nothing torn
    read_results(out)
    proc = start(workdir, cfg)
    err = finish(proc, 60)
    assert proc.returncode == 0, err.decode()
    assert b"partial last line" not in err
    check_complete(out)
