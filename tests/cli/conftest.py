from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from apimux.testing import OpenAISim


@pytest.fixture
def sim() -> Iterator[OpenAISim]:
    with OpenAISim() as s:
        assert isinstance(s, OpenAISim)
        yield s


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A clean directory and environment: no stray config or keys are picked up."""
    monkeypatch.chdir(tmp_path)
    for var in list(os.environ):
        if var.endswith(("_API_KEY", "_API_KEYS", "_BASE_URL")) or var == "APIMUX_CONFIG":
            monkeypatch.delenv(var)
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def write_config(path: Path, sim: OpenAISim, extra: str = "") -> Path:
    """A config pointing the openai backend at the simulator, with fast retries."""
    path.write_text(
        f"""
[[endpoints]]
backend = "openai"
base_url = "{sim.base_url}"
api_key_env = "SIM_OPENAI_KEY"
max_concurrent = 4

[settings]
initial_delay = 0.01
max_delay = 0.05
jitter = 0
{extra}
""",
        encoding="utf-8",
    )
    return path


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    with path.open("w", encoding="utf-8") as fh:
        for r in rows:
            fh.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return path


def read_results(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
