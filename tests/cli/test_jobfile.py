from __future__ import annotations

import json
from pathlib import Path

import pytest

from apimux.cli.jobfile import BadLine, Job, count_lines, iter_lines, parse_line
from apimux.types import Priority


def known(name: str) -> bool:
    return name in {"openai", "local", "groq"}


def parse(obj: object) -> Job | BadLine | None:
    raw = (obj if isinstance(obj, str) else json.dumps(obj)).encode()
    return parse_line(7, raw, known)


def test_chat_line() -> None:
    job = parse({"custom_id": "a", "model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}],
                 "temperature": 0, "priority": "high"})
    assert isinstance(job, Job)
    assert (job.op, job.model, job.custom_id, job.priority) == ("chat", "openai/gpt-4o-mini", "a", Priority.HIGH)
    assert job.params == {"temperature": 0, "messages": [{"role": "user", "content": "hi"}]}


def test_embed_line_string_becomes_list_and_id_is_derived() -> None:
    job = parse({"model": "local/all-MiniLM-L6-v2", "input": "x"})
    assert isinstance(job, Job)
    assert job.op == "embed" and job.params == {"input": ["x"]} and job.custom_id == "line-7"


def test_openai_batch_shape() -> None:
    job = parse({"custom_id": "b", "method": "POST", "url": "/v1/chat/completions",
                 "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "q"}], "max_tokens": 5}})
    assert isinstance(job, Job)
    assert job.model == "openai/gpt-4o-mini" and job.params["max_tokens"] == 5
    emb = parse({"custom_id": "c", "method": "POST", "url": "/v1/embeddings",
                 "body": {"model": "local/all-MiniLM-L6-v2", "input": ["a"]}})
    assert isinstance(emb, Job) and emb.model == "local/all-MiniLM-L6-v2" and emb.op == "embed"
    # a slash that is not a backend prefix still means OpenAI
    ft = parse({"url": "/v1/embeddings", "body": {"model": "org/custom", "input": "a"}})
    assert isinstance(ft, Job) and ft.model == "openai/org/custom"


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ({"model": "openai/x"}, "'messages' (chat) or 'input'"),
        ({"messages": [{"role": "user", "content": "x"}]}, "missing field: 'model'"),
        ({"model": "gpt-4o-mini", "input": "x"}, "must be 'backend/model'"),
        ({"model": "openai/x", "input": []}, "'input' must be"),
        ({"model": "openai/x", "messages": "hi"}, "'messages' must be"),
        ({"model": "openai/x", "input": "a", "priority": "urgent"}, "unknown priority"),
        ({"model": "openai/x", "input": "a", "max_retries": 3}, "cannot be set per line"),
        ({"model": "openai/x", "messages": [{"role": "user", "content": "a"}], "stream": True}, "'stream'"),
        ({"custom_id": 5, "model": "openai/x", "input": "a"}, "custom_id must be"),
        ({"url": "/v1/completions", "body": {}}, "unsupported batch request"),
    ],
)
def test_bad_lines_name_the_line_and_problem(line: object, needle: str) -> None:
    bad = parse(line)
    assert isinstance(bad, BadLine)
    assert bad.message.startswith("line 7: ")
    assert needle in bad.message


def test_blank_line_is_skipped() -> None:
    assert parse("   ") is None


def test_count_and_iter(tmp_path: Path) -> None:
    p = tmp_path / "f.jsonl"
    p.write_bytes(b"a\nb\nc")
    assert count_lines(p) == 3
    assert [n for n, _ in iter_lines(p)] == [1, 2, 3]
    p.write_bytes(b"a\nb\n")
    assert count_lines(p, chunk=1) == 2
    p.write_bytes(b"")
    assert count_lines(p) == 0
