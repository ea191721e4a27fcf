"""The simulators' deterministic answers: what a fake model "says".

Every chat simulator replies ``echo_reply`` of the last user turn, every
embedding simulator returns ``fake_vector`` of the text, and a simulator
that calls a tool fills its arguments with ``fake_arguments``; sharing them
is what lets one conformance battery check every backend.
"""

from __future__ import annotations

import hashlib
from typing import Any

from apimux.testing.server import words


def echo_reply(messages: list[dict[str, Any]]) -> str:
    for m in reversed(messages):
        if m.get("role") == "user":
            content = m.get("content")
            if isinstance(content, list):
                content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
            return f"echo: {content}"
    return "echo:"


def fake_vector(text: str, dims: int = 8) -> list[float]:
    """A deterministic unit-free vector derived from the text."""
    digest = hashlib.sha256(text.encode()).digest() * (dims // 8 + 1)
    return [round((b - 128) / 128, 6) for b in digest[:dims]]


def fake_arguments(schema: dict[str, Any], text: str, *, any_case: bool = False) -> dict[str, Any]:
    """Arguments that satisfy a simple JSON schema, derived from the user's text.

    ``any_case`` reads type names in any case too, for Gemini, whose OpenAPI
    schema subset spells them in upper case (``STRING``, ``INTEGER``).
    """
    props: dict[str, Any] = schema.get("properties") or {}
    out: dict[str, Any] = {}
    for name in schema.get("required") or list(props):
        kind = (props.get(name) or {}).get("type", "string")
        if any_case:
            kind = str(kind).lower()
        if kind in ("integer", "number"):
            out[name] = words(text)
        elif kind == "boolean":
            out[name] = True
        elif kind == "array":
            out[name] = text.split()
        elif kind == "object":
            out[name] = {}
        else:
            enum = (props.get(name) or {}).get("enum")
            out[name] = enum[0] if enum else text
    return out
