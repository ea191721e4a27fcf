"""--help everywhere, ``apimux check`` and ``apimux stats``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from apimux.cli.main import main
from apimux.testing import OpenAISim
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
