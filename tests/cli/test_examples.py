"""The shipped examples stay valid."""

from __future__ import annotations

from pathlib import Path

import pytest

from apimux.cli.jobfile import Job, iter_lines, parse_line
from apimux.cli.setup import group_names, load

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize("name", ["embeddings.jsonl", "chat.jsonl"])
def test_every_example_line_is_a_job(name: str) -> None:
    known = group_names([]).__contains__
    jobs = [parse_line(n, raw, known) for n, raw in iter_lines(EXAMPLES / name)]
    assert jobs and all(isinstance(j, Job) for j in jobs)
    assert len({j.custom_id for j in jobs if isinstance(j, Job)}) == len(jobs)


def test_embeddings_example_is_local_only() -> None:
    known = group_names([]).__contains__
    jobs = [parse_line(n, raw, known) for n, raw in iter_lines(EXAMPLES / "embeddings.jsonl")]
    assert len(jobs) >= 50
    assert {j.model for j in jobs if isinstance(j, Job)} == {"local/all-MiniLM-L6-v2"}


def test_example_config_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEYS", "sk-one-0123456789,sk-two-0123456789")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-0123456789")
    setup = load(str(EXAMPLES / "apimux.toml"))
    assert [(e.backend, len(e.keys)) for e in setup.endpoints] == [("openai", 2), ("anthropic", 1)]
    assert setup.prices.overrides["openai/gpt-4o-mini"].input_per_mtok == 0.15
