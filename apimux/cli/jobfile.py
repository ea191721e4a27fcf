"""Reading a requests file: streamed line by line, never loaded whole.

A line is either apimux's own shape::

    {"custom_id": "a1", "model": "openai/gpt-4o-mini", "messages": [...], "temperature": 0}
    {"custom_id": "e1", "model": "local/all-MiniLM-L6-v2", "input": "text" | ["t1", "t2"]}

or the OpenAI Batch API's (``{"custom_id", "method": "POST", "url":
"/v1/chat/completions" | "/v1/embeddings", "body": {...}}``; a body model
without a known ``backend/`` prefix is an OpenAI model). Either may carry
``"priority": "high" | "normal" | "low"``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apimux.types import Priority

# Keys of a line that are not passed on to the backend as parameters.
_RESERVED = frozenset({"custom_id", "model", "messages", "input", "priority"})
# Client call options: a request line may not set them (they are the run's policy).
_OPTIONS = frozenset({"wait", "queue_timeout", "max_retries"})
_BATCH_URLS = {"/v1/chat/completions": "chat", "/v1/embeddings": "embed"}


@dataclass(slots=True)
class Job:
    """One request to run."""

    line: int
    custom_id: str
    op: str  # "chat" | "embed"
    model: str  # "backend/model"
    params: dict[str, Any] = field(default_factory=dict)
    priority: Priority = Priority.NORMAL


@dataclass(slots=True)
class BadLine:
    """A line that cannot be run; it still gets a result (an error naming the line)."""

    line: int
    custom_id: str
    message: str
    model: str | None = None


def count_lines(path: Path, chunk: int = 1 << 20) -> int:
    """Lines in the file, counted in 1 MB blocks (the progress bar's total)."""
    n = 0
    last = b"\n"
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            n += block.count(b"\n")
            last = block[-1:]
    return n + (last != b"\n")


def iter_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """``(line number from 1, raw bytes)``, streamed."""
    with path.open("rb") as fh:
        yield from enumerate(fh, 1)


def parse_line(line: int, raw: bytes, is_backend: Callable[[str], bool]) -> Job | BadLine | None:
    """A job, a bad line, or None for a blank line. ``is_backend(name)`` says
    whether a model prefix names a backend or configured group."""
    text = raw.strip()
    if not text:
        return None
    fallback = f"line-{line}"
    try:
        obj = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        return BadLine(line, fallback, f"line {line}: not valid JSON ({exc})")
    if not isinstance(obj, dict):
        return BadLine(line, fallback, f"line {line}: expected a JSON object, got {type(obj).__name__}")
    cid = obj.get("custom_id", fallback)
    if not isinstance(cid, str) or not cid:
        return BadLine(line, fallback, f"line {line}: custom_id must be a non-empty string")

    def bad(message: str, model: str | None = None) -> BadLine:
        return BadLine(line, cid, f"line {line}: {message}", model)

    priority = obj.get("priority")
    if "body" in obj or "url" in obj:  # OpenAI Batch API shape
        method = obj.get("method", "POST")
        op = _BATCH_URLS.get(obj.get("url") or "")
        if method != "POST" or op is None:
            return bad(f"unsupported batch request {method} {obj.get('url')!r}; use POST "
                       + " or ".join(_BATCH_URLS))
        body = obj.get("body")
        if not isinstance(body, dict):
            return bad("'body' must be a JSON object")
        obj = dict(body)
        priority = obj.pop("priority", priority)
        model = obj.get("model")
        if isinstance(model, str) and model and not (
            "/" in model and is_backend(model.split("/", 1)[0])
        ):
            obj["model"] = f"openai/{model}"
    else:
        op = "chat" if "messages" in obj else "embed" if "input" in obj else ""
        if "messages" in obj and "input" in obj:
            return bad("give either 'messages' (chat) or 'input' (embeddings), not both")
        if not op:
            return bad("missing field: 'messages' (chat) or 'input' (embeddings)")
    model = obj.get("model")
    if not isinstance(model, str) or not model:
        return bad("missing field: 'model' (as 'backend/model', e.g. 'openai/gpt-4o-mini')")
    backend, sep, name = model.partition("/")
    if not sep or not backend or not name:
        return bad(f"model {model!r} must be 'backend/model' (e.g. 'openai/gpt-4o-mini')", model)
    try:
        prio = Priority.parse(priority)
    except (ValueError, TypeError) as exc:
        return bad(str(exc), model)
    params = {k: v for k, v in obj.items() if k not in _RESERVED}
    options = sorted(_OPTIONS & set(params))
    if options:
        return bad(f"{', '.join(options)} cannot be set per line (use the command's options)", model)
    if params.pop("stream", False):
        return bad("'stream' is not supported in a batch run (results are whole responses)", model)
    if op == "chat":
        messages = obj.get("messages")
        if not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages
        ):
            return bad("'messages' must be a non-empty list of {\"role\": ..., \"content\": ...} objects", model)
        params["messages"] = messages
    else:
        inputs = obj.get("input")
        if isinstance(inputs, str):
            inputs = [inputs]
        if not isinstance(inputs, list) or not inputs or not all(isinstance(x, str) for x in inputs):
            return bad("'input' must be a string or a non-empty list of strings", model)
        params["input"] = inputs
    return Job(line, cid, op, model, params, prio)
