"""``apimux run`` in process (main(argv)) against the OpenAI simulator."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from apimux.cli.main import main
from apimux.cli.results import last_per_id
from apimux.testing import Fault, OpenAISim
from tests.cli.conftest import read_results, write_config, write_jsonl

KEY = "sk-test-0123456789abcdef"


@pytest.fixture
def cfg(workdir: Path, sim: OpenAISim, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SIM_OPENAI_KEY", KEY)
    return write_config(workdir / "apimux.toml", sim, '\n[prices."openai/priced"]\ninput_per_mtok = 1e6\n')


def chat(cid: str, text: str, **extra: object) -> dict[str, object]:
    return {"custom_id": cid, "model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": text}], **extra}


def run(*args: str) -> int:
    return main(["run", *args, "--no-progress"])


def test_mixed_batch_all_ok(workdir: Path, cfg: Path, sim: OpenAISim) -> None:
    inp = write_jsonl(workdir / "in.jsonl", [
        chat("c1", "hello there", max_tokens=50),
        chat("c2", "second", priority="low"),
        {"custom_id": "e1", "model": "openai/text-embedding-3-small", "input": ["a b", "c"]},
        {"custom_id": "b1", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "batch shape"}]}},
        "",
        chat("p1", "one two three", model="openai/priced"),
        chat("u1", "unpriced", model="openai/house-model"),
    ])
    out = workdir / "out.jsonl"
    assert run(str(inp), "-o", str(out), "--config", str(cfg), "--summary-json", str(workdir / "s.json")) == 0
    rows = {r["custom_id"]: r for r in read_results(out)}
    assert set(rows) == {"c1", "c2", "e1", "b1", "p1", "u1"}
    assert all(r["status"] == "ok" and r["error"] is None for r in rows.values())
    assert rows["c1"]["response"]["text"] == "echo: hello there"
    assert rows["c1"]["response"]["finish_reason"] == "stop"
    assert rows["c1"]["line"] == 1 and rows["u1"]["line"] == 7
    assert rows["b1"]["response"]["text"] == "echo: batch shape" and rows["b1"]["model"] == "openai/gpt-4o-mini"
    assert len(rows["e1"]["response"]["vectors"]) == 2
    assert rows["c1"]["usage"]["prompt_tokens"] == 2
    assert rows["c1"]["cost"] > 0  # genai-prices knows gpt-4o-mini
    assert rows["p1"]["cost"] == pytest.approx(rows["p1"]["usage"]["prompt_tokens"])  # the override: $1 a token
    assert rows["u1"]["cost"] is None  # unknown, not $0
    for r in rows.values():
        assert r["attempts"] == 1 and r["request_id"] and r["backend"] == "openai"
        assert KEY not in json.dumps(r) and r["endpoint"].startswith("openai@http://127.0.0.1")
    summary = json.loads((workdir / "s.json").read_text())
    assert summary == json.loads((workdir / "out.jsonl.summary.json").read_text())
    assert summary["ok"] == 6 and summary["failed"] == 0 and summary["lines"] == 7
    assert summary["cost_unknown_results"] == 1 and summary["cost_usd"] > 0
    assert summary["backends"]["openai"]["ok"] == 6
    # the simulator saw our request ids
    assert {r.headers.get("x-request-id") for r in sim.requests} >= {r["request_id"] for r in rows.values()}


def test_rerun_skips_everything_already_answered(workdir: Path, cfg: Path, sim: OpenAISim) -> None:
    inp = write_jsonl(workdir / "in.jsonl", [chat(f"c{i}", f"m {i}") for i in range(5)])
    out = workdir / "out.jsonl"
    assert run(str(inp), "-o", str(out), "--config", str(cfg)) == 0
    sent = len(sim.requests)
    assert run(str(inp), "-o", str(out), "--config", str(cfg)) == 0
    assert len(sim.requests) == sent
    assert len(read_results(out)) == 5
    assert json.loads((workdir / "out.jsonl.summary.json").read_text())["skipped"] == 5


def test_bad_input_is_an_error_result_and_the_run_goes_on(workdir: Path, cfg: Path) -> None:
    inp = write_jsonl(workdir / "in.jsonl", [
        chat("ok1", "fine"),
        "{broken json",
        {"custom_id": "nomodel", "messages": [{"role": "user", "content": "x"}]},
        chat("unknown-backend", "x", model="nosuch/model"),
        chat("ok2", "fine too"),
        chat("ok1", "duplicate id"),
    ])
    out = workdir / "out.jsonl"
    assert run(str(inp), "-o", str(out), "--config", str(cfg)) == 1
    rows = read_results(out)
    assert len(rows) == 6
    by_line = {r["line"]: r for r in rows}
    assert by_line[2]["custom_id"] == "line-2" and "line 2: not valid JSON" in by_line[2]["error"]["message"]
    assert "line 3: missing field: 'model'" in by_line[3]["error"]["message"]
    assert by_line[4]["error"]["type"] == "ConfigError" and "line 4:" in by_line[4]["error"]["message"]
    assert "nosuch" in by_line[4]["error"]["message"]
    assert by_line[6]["duplicate"] is True and "duplicate custom_id 'ok1'" in by_line[6]["error"]["message"]
    assert last_per_id(out)["ok1"]["status"] == "ok"  # the duplicate does not supersede
    summary = json.loads((workdir / "out.jsonl.summary.json").read_text())
    assert (summary["ok"], summary["bad_input"], summary["duplicates"]) == (2, 3, 1)
    # a rerun does not answer any line twice, duplicates included
    assert run(str(inp), "-o", str(out), "--config", str(cfg)) == 1
    assert len(read_results(out)) == 6


def test_strict_stops_at_the_first_bad_line(workdir: Path, cfg: Path) -> None:
    inp = write_jsonl(workdir / "in.jsonl", [chat("a", "x"), "nope", *[chat(f"z{i}", "y") for i in range(50)]])
    out = workdir / "out.jsonl"
    assert run(str(inp), "-o", str(out), "--config", str(cfg), "--strict") == 1
    rows = read_results(out)
    assert {r["custom_id"] for r in rows} == {"a", "line-2"}
    assert json.loads((workdir / "out.jsonl.summary.json").read_text())["strict_stop"] is True


def test_retry_failed_supersedes_old_errors(workdir: Path, cfg: Path, sim: OpenAISim) -> None:
    inp = write_jsonl(workdir / "in.jsonl", [chat("a", "x"), chat("b", "y")])
    out = workdir / "out.jsonl"
    sim.faults.script(Fault(status=400, message="bad thing"))
    assert run(str(inp), "-o", str(out), "--config", str(cfg), "--concurrency", "1") == 1
    first = last_per_id(out)
    failed = [k for k, v in first.items() if v["status"] == "error"]
    assert len(failed) == 1 and first[failed[0]]["error"]["type"] == "BadRequest"
    assert first[failed[0]]["error"]["status"] == 400 and first[failed[0]]["attempts"] == 1
    # without --retry-failed the error is kept (and the run still reports a failure)
    assert run(str(inp), "-o", str(out), "--config", str(cfg)) == 1
    assert len(read_results(out)) == 2
    assert run(str(inp), "-o", str(out), "--config", str(cfg), "--retry-failed") == 0
    assert len(read_results(out)) == 3
    assert {v["status"] for v in last_per_id(out).values()} == {"ok"}


def test_retries_are_counted(workdir: Path, cfg: Path, sim: OpenAISim) -> None:
    inp = write_jsonl(workdir / "in.jsonl", [chat("a", "x")])
    out = workdir / "out.jsonl"
    sim.faults.script(Fault(status=503), Fault(status=429, retry_after=0))
    assert run(str(inp), "-o", str(out), "--config", str(cfg)) == 0
    (row,) = read_results(out)
    assert row["attempts"] == 3
    summary = json.loads((workdir / "out.jsonl.summary.json").read_text())
    assert summary["retries"] == 2 and summary["rate_limit_waits"] >= 1


def test_max_retries_zero_gives_up_at_once(workdir: Path, cfg: Path, sim: OpenAISim) -> None:
    inp = write_jsonl(workdir / "in.jsonl", [chat("a", "x")])
    out = workdir / "out.jsonl"
    sim.faults.script(Fault(status=503))
    assert run(str(inp), "-o", str(out), "--config", str(cfg), "--max-retries", "0") == 1
    (row,) = read_results(out)
    assert row["error"]["type"] == "UpstreamError" and row["attempts"] == 1 and row["error"]["status"] == 503


def test_concurrency_override_caps_in_flight(workdir: Path, cfg: Path, sim: OpenAISim) -> None:
    sim.faults.latency = 0.02
    inp = write_jsonl(workdir / "in.jsonl", [chat(f"c{i}", "x") for i in range(24)])
    out = workdir / "out.jsonl"
    assert run(str(inp), "-o", str(out), "--config", str(cfg), "--concurrency", "2") == 0
    assert sim.peak_in_flight == 2
    sim.reset()
    sim.faults.latency = 0.02
    out2 = workdir / "out2.jsonl"
    assert run(str(inp), "-o", str(out2), "--config", str(cfg)) == 0
    assert sim.peak_in_flight == 4  # the config's max_concurrent


def test_local_backend_needs_no_config(workdir: Path) -> None:
    inp = write_jsonl(workdir / "in.jsonl", [
        {"custom_id": f"e{i}", "model": "local/all-MiniLM-L6-v2", "input": f"text {i}"} for i in range(3)
    ])
    out = workdir / "out.jsonl"
    assert run(str(inp), "-o", str(out)) == 0
    rows = read_results(out)
    assert all(len(r["response"]["vectors"][0]) == 384 and r["cost"] == 0 for r in rows)
    assert json.loads((workdir / "out.jsonl.summary.json").read_text())["cost_usd"] == 0


@pytest.mark.parametrize("case", ["missing input", "no output dir", "bad config", "missing config", "output is dir"])
def test_usage_errors_exit_2_and_write_nothing(
    workdir: Path, cfg: Path, case: str, capsys: pytest.CaptureFixture[str]
) -> None:
    inp = write_jsonl(workdir / "in.jsonl", [chat("a", "x")])
    out = workdir / "out.jsonl"
    args = [str(inp), "-o", str(out), "--config", str(cfg)]
    if case == "missing input":
        args[0] = str(workdir / "nope.jsonl")
    elif case == "no output dir":
        args[2] = str(workdir / "missing" / "out.jsonl")
    elif case == "bad config":
        (workdir / "bad.toml").write_text("[[endpoints]]\nbackend = 'openai'\nmax_concurrent = 0\n")
        args[4] = str(workdir / "bad.toml")
    elif case == "missing config":
        args[4] = str(workdir / "absent.toml")
    else:
        out.mkdir()
    assert run(*args) == 2
    err = capsys.readouterr().err
    assert "apimux run:" in err and len(err.strip().splitlines()) <= 2
    if case != "output is dir":
        assert not out.exists()
    assert not (workdir / "out.jsonl.summary.json").exists()


def test_open_breaker_is_a_failure_not_bad_input(workdir: Path, sim: OpenAISim,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIM_OPENAI_KEY", KEY)
    # breaker_wait near 0: lines fail fast with CircuitOpen instead of waiting out the breaker
    cfg = write_config(workdir / "apimux.toml", sim,
                       "breaker_threshold = 1\nbreaker_recovery = 60\nbreaker_wait = 0.001\n")
    inp = write_jsonl(workdir / "in.jsonl", [chat(f"c{i}", "x") for i in range(4)])
    out = workdir / "out.jsonl"
    sim.faults.script(Fault(status=503))
    # --strict stops at bad input only: an open breaker is the service's state, not the line's fault
    assert run(str(inp), "-o", str(out), "--config", str(cfg), "--concurrency", "1", "--max-retries", "0",
               "--strict") == 1
    rows = read_results(out)
    assert len(rows) == 4 and len(sim.requests) == 1
    assert sorted(r["error"]["type"] for r in rows) == ["CircuitOpen"] * 3 + ["UpstreamError"]
    assert not any(r["error"]["message"].startswith("line ") for r in rows)
    summary = json.loads((workdir / "out.jsonl.summary.json").read_text())
    assert (summary["failed"], summary["bad_input"], summary["strict_stop"]) == (4, 0, False)


def test_a_run_waits_out_an_open_breaker_instead_of_failing_the_rest(
    workdir: Path, sim: OpenAISim, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SIM_OPENAI_KEY", KEY)
    cfg = write_config(workdir / "apimux.toml", sim, "breaker_threshold = 1\nbreaker_recovery = 0.3\n")
    inp = write_jsonl(workdir / "in.jsonl", [chat(f"c{i}", "x") for i in range(6)])
    out = workdir / "out.jsonl"
    sim.faults.script(Fault(status=503))
    assert run(str(inp), "-o", str(out), "--config", str(cfg), "--concurrency", "1", "--max-retries", "0") == 1
    rows = read_results(out)
    # The first line met the outage; the others waited for the breaker's probe and succeeded.
    assert sorted(r["status"] for r in rows) == ["error"] + ["ok"] * 5
    assert len(sim.requests) == 6


def test_rpm_override_takes_effect(workdir: Path, cfg: Path) -> None:
    inp = write_jsonl(workdir / "in.jsonl", [chat(f"c{i}", "x") for i in range(6)])
    assert run(str(inp), "-o", str(workdir / "free.jsonl"), "--config", str(cfg)) == 0
    assert json.loads((workdir / "free.jsonl.summary.json").read_text())["rate_limit_waits"] == 0
    # 240 a minute is 4 at once then one every 0.25 s: the 5th and 6th wait for the budget
    assert run(str(inp), "-o", str(workdir / "rpm.jsonl"), "--config", str(cfg), "--rpm", "240") == 0
    summary = json.loads((workdir / "rpm.jsonl.summary.json").read_text())
    assert summary["rate_limit_waits"] >= 1 and summary["ok"] == 6
    assert summary["elapsed_s"] >= 0.2


def test_tpm_override_takes_effect(workdir: Path, cfg: Path) -> None:
    # each line is estimated at ~91 tokens; 600 a minute allows a 100-token burst: one at a time
    inp = write_jsonl(workdir / "in.jsonl", [chat(f"c{i}", "x", max_tokens=90) for i in range(3)])
    assert run(str(inp), "-o", str(workdir / "free.jsonl"), "--config", str(cfg)) == 0
    assert json.loads((workdir / "free.jsonl.summary.json").read_text())["rate_limit_waits"] == 0
    assert run(str(inp), "-o", str(workdir / "tpm.jsonl"), "--config", str(cfg), "--tpm", "600") == 0
    summary = json.loads((workdir / "tpm.jsonl.summary.json").read_text())
    assert summary["rate_limit_waits"] >= 1 and summary["ok"] == 3
