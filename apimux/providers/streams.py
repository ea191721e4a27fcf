"""Incremental decoders for server-sent events and NDJSON (pure, no I/O),
and the rule stream parsers share for an error that arrives mid-stream."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from apimux.errors import ApimuxError
from apimux.types import ChatChunk

T = TypeVar("T")


@dataclass(slots=True)
class SSEEvent:
    event: str | None
    data: str


class SSEDecoder:
    """Feeds bytes, yields complete events; tolerant of \\r\\n and split chunks."""

    def __init__(self) -> None:
        self._buf = b""
        self._event: str | None = None
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        self._buf += chunk
        out: list[SSEEvent] = []
        while True:
            nl = self._buf.find(b"\n")
            if nl < 0:
                break
            line = self._buf[:nl].rstrip(b"\r").decode("utf-8", errors="replace")
            self._buf = self._buf[nl + 1 :]
            self._line(line, out)
        return out

    def flush(self) -> list[SSEEvent]:
        """At end of stream: an event not followed by a blank line still counts."""
        out: list[SSEEvent] = []
        if self._buf:
            self._line(self._buf.decode("utf-8", errors="replace").rstrip("\r"), out)
            self._buf = b""
        self._line("", out)
        return out

    def _line(self, line: str, out: list[SSEEvent]) -> None:
        if not line:
            if self._data:
                out.append(SSEEvent(self._event, "\n".join(self._data)))
            self._event, self._data = None, []
            return
        if line.startswith(":"):
            return  # comment / keep-alive
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value


class NDJSONDecoder:
    """One JSON document per line (Ollama streams)."""

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, chunk: bytes) -> list[str]:
        self._buf += chunk
        *lines, self._buf = self._buf.split(b"\n")
        return [ln.decode("utf-8", errors="replace") for ln in lines if ln.strip()]

    def flush(self) -> list[str]:
        rest, self._buf = self._buf, b""
        return [rest.decode("utf-8", errors="replace")] if rest.strip() else []


def parse_keeping_text(items: Iterable[T], parse: Callable[[T], ChatChunk | None], state: Any) -> list[ChatChunk]:
    """Parse decoded events (or lines) into chunks; an error event raises, but
    chunks parsed before it in the same read reach the caller first: the
    error is kept in ``state.pending`` and raised on the next call, so the
    outcome does not depend on how TCP split the stream and no text is lost."""
    if state.pending is not None:
        raise state.pending
    out: list[ChatChunk] = []
    for item in items:
        try:
            chunk = parse(item)
        except ApimuxError as err:
            if not out:
                raise
            state.pending = err
            return out
        if chunk is not None:
            out.append(chunk)
    return out
