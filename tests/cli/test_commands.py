"""--help everywhere, ``apimux check`` and ``apimux stats``."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from apimux.cli.main import main
from apimux.testing import OpenAISim
from apimux.testing.tei_sim import TEISim
from tests.cli.conftest import write_config, write_jsonl


def help_text(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as info:
        main([*args, "--help"])
    assert info.value.code == 0
    return capsys.readouterr().out


def test_top_level_help_lists_commands(capsys: pytest.CaptureFixture[str]) -> None:
    text = help_text([], capsys)
    for cmd in ("run", "check", "stats"):
        assert cmd in text


def test_run_help_documents_every_option_and_the_formats(capsys: pytest.CaptureFixture[str]) -> None:
    text = help_text(["run"], capsys)
    for opt in ("-o OUTPUT", "--config", "--concurrency", "--rpm", "--tpm", "--max-retries", "--retry-failed",
                "--strict", "--summary-json", "--no-progress"):
        assert opt in text
    for words in ('"custom_id"', "/v1/chat/completions", "LAST line per custom_id", "exit 130", "Exit codes",
                  "priority", "summary.json"):
        assert words in text


def test_check_and_stats_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert "--timeout" in help_text(["check"], capsys)
    assert "RESULTS" in help_text(["stats"], capsys)


def test_entry_point_runs_as_a_module() -> None:
    out = subprocess.run([sys.executable, "-m", "apimux.cli.main", "--help"], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[2])
    assert "usage: apimux" in out.stdout


def test_missing_subcommand_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2


def test_check_ok_and_refused_key(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with OpenAISim(keys={"sk-good-0123456789"}) as sim:
        monkeypatch.setenv("SIM_OPENAI_KEY", "sk-good-0123456789")
        cfg = write_config(workdir / "ok.toml", sim)
        assert main(["check", "--config", str(cfg)]) == 0
        out = capsys.readouterr().out
        assert "gpt-4o-mini" in out and "closed" in out and "sk-good-0123456789" not in out
        monkeypatch.setenv("SIM_OPENAI_KEY", "sk-good-0123456789,sk-bad-00000000000")
        assert main(["check", "--config", str(cfg)]) == 1
        out = capsys.readouterr().out
        assert "Incorrect API key" in out


def test_check_unreachable(workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SIM_OPENAI_KEY", "sk-x-0123456789abc")
    sim = OpenAISim().start()
    sim.stop()  # nothing listens on its port now
    cfg = write_config(workdir / "c.toml", sim)
    assert main(["check", "--config", str(cfg), "--timeout", "5"]) == 1
    assert "no" in capsys.readouterr().out


def test_check_without_endpoints(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check"]) == 1
    assert "no endpoints configured" in capsys.readouterr().err


def test_stats_reads_the_last_summary(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stats", str(workdir / "r.jsonl")]) == 2
    assert "no summary" in capsys.readouterr().err
    inp = write_jsonl(workdir / "in.jsonl", [{"custom_id": "a", "model": "local/all-MiniLM-L6-v2", "input": "hi"}])
    assert main(["run", str(inp), "-o", str(workdir / "r.jsonl"), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["stats", str(workdir / "r.jsonl")]) == 0
    assert "local" in capsys.readouterr().out
    assert main(["stats", str(workdir / "r.jsonl"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] == 1


def test_check_hanging_endpoint_costs_one_timeout_not_one_per_key(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # a port that accepts connections and never answers
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        monkeypatch.setenv("K", "sk-a-0000000000001,sk-b-0000000000002,sk-c-0000000000003,sk-d-0000000000004")
        cfg = workdir / "c.toml"
        cfg.write_text(f'[[endpoints]]\nname = "fast"\nbackend = "openai"\n'
                       f'base_url = "http://127.0.0.1:{port}/v1"\napi_key_env = "K"\n')
        t0 = time.monotonic()
        assert main(["check", "--config", str(cfg), "--timeout", "0.4"]) == 1
        assert time.monotonic() - t0 < 1.2  # the four keys are checked at once
    out = capsys.readouterr().out
    assert out.count("timed out") == 4
    assert "fast" in out and "check-0" not in out  # the configured group's name, not an internal one


def test_check_backend_without_model_listing_uses_its_info(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with TEISim(model_id="BAAI/bge-small-en-v1.5") as sim:
        cfg = workdir / "c.toml"
        cfg.write_text(f'[[endpoints]]\nbackend = "hf_tei"\nbase_url = "{sim.base_url}"\n')
        assert main(["check", "--config", str(cfg)]) == 0
        out = capsys.readouterr().out
        assert "bge-small-en-v1.5" in out and "yes" in out
        assert [r.path for r in sim.requests] == ["/info"]
