"""Reading OpenAI-format chat messages: pure functions every translator shares.

Each provider builds its own wire format; what it reads from the unified
call (the text of a content value, the system prompt, an ``image_url``
part's data URL, a tool call's arguments) is read the same way here.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from apimux.errors import BadRequest

SYSTEM_ROLES = ("system", "developer")  # "developer" is OpenAI's newer name for system


def text_of(content: Any) -> str:
    """The text of an OpenAI content value (a string or a list of parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content if isinstance(p, Mapping) and p.get("type") == "text")


def system_text(messages: Iterable[Mapping[str, Any]]) -> str:
    """The system (and developer) messages' text, wherever they stand, joined by a blank line."""
    texts = (text_of(m.get("content")) for m in messages if m.get("role") in SYSTEM_ROLES)
    return "\n\n".join(t for t in texts if t)


def image_url_of(part: Mapping[str, Any]) -> str:
    """The URL of an ``image_url`` content part (an object with ``url``, or a bare string)."""
    image = part.get("image_url")
    return image.get("url", "") if isinstance(image, Mapping) else str(image or "")


def data_url(url: str) -> tuple[str, str]:
    """``data:<type>;base64,<data>`` -> (media type, base64 data).

    Only base64 data URLs are taken: the services want base64 bytes, and
    percent-encoded text would reach them as garbage.
    """
    head, _, data = url.partition(",")
    if ";base64" not in head:
        raise BadRequest("image data URLs must be base64-encoded (data:<type>;base64,...)")
    return head[5:].split(";")[0] or "image/png", data


def tool_arguments(arguments: Any) -> Any:
    """An assistant tool call's ``arguments`` (JSON text, or already an object) as a value."""
    if isinstance(arguments, Mapping):
        return dict(arguments)
    if not arguments:
        return {}
    try:
        return json.loads(arguments)
    except ValueError:
        raise BadRequest(f"tool call arguments are not JSON: {str(arguments)[:120]!r}") from None


def developer_as_system(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The same messages with OpenAI's "developer" role renamed "system", for
    services whose chat templates know only system/user/assistant/tool."""
    if not any(m.get("role") == "developer" for m in messages):
        return messages
    return [{**m, "role": "system"} if m.get("role") == "developer" else m for m in messages]
