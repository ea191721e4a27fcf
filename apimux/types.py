"""Unified request and response types shared by every backend."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

Message = dict[str, Any]


class Priority(IntEnum):
    """Lower value is served first; FIFO within a level."""

    HIGH = 0
    NORMAL = 1
    LOW = 2

    @classmethod
    def parse(cls, value: Priority | str | int | None) -> Priority:
        if value is None:
            return cls.NORMAL
        if isinstance(value, Priority):
            return value
        if isinstance(value, str):
            try:
                return cls[value.upper()]
            except KeyError:
                raise ValueError(f"unknown priority {value!r}: use high, normal or low") from None
        return cls(value)


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0

    def __post_init__(self) -> None:
        if not self.total_tokens:
            self.total_tokens = self.prompt_tokens + self.completion_tokens

    def to_dict(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }


@dataclass(slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as OpenAI returns it

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


@dataclass(slots=True)
class CallInfo:
    """Where and how a call was served; filled by the core, not by adapters."""

    request_id: str = ""
    backend: str = ""
    endpoint: str = ""  # masked
    attempts: int = 0
    latency: float = 0.0  # seconds from submission to answer
    queue_wait: float = 0.0  # seconds waiting for the first lease
    queued_at: float = 0.0  # unix times: submitted, each attempt sent, answered
    attempt_times: list[float] = field(default_factory=list)
    finished_at: float = 0.0


@dataclass(slots=True)
class ChatResponse:
    text: str
    model: str = ""
    finish_reason: str | None = None
    usage: Usage = field(default_factory=Usage)
    tool_calls: list[ToolCall] = field(default_factory=list)
    raw: Any = None
    info: CallInfo = field(default_factory=CallInfo)

    @property
    def request_id(self) -> str:
        return self.info.request_id

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "text": self.text,
            "model": self.model,
            "finish_reason": self.finish_reason,
            "usage": self.usage.to_dict(),
        }
        if self.tool_calls:
            out["tool_calls"] = [t.to_dict() for t in self.tool_calls]
        return out


@dataclass(slots=True)
class ChatChunk:
    text: str = ""
    finish_reason: str | None = None
    usage: Usage | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)
    request_id: str = ""


@dataclass(slots=True)
class EmbedResponse:
    vectors: list[list[float]]
    model: str = ""
    usage: Usage = field(default_factory=Usage)
    info: CallInfo = field(default_factory=CallInfo)

    @property
    def request_id(self) -> str:
        return self.info.request_id

    def to_dict(self) -> dict[str, Any]:
        return {"vectors": self.vectors, "model": self.model, "usage": self.usage.to_dict()}


@dataclass(slots=True)
class RerankResult:
    index: int
    score: float
    text: str | None = None


@dataclass(slots=True)
class RerankResponse:
    results: list[RerankResult]
    model: str = ""
    info: CallInfo = field(default_factory=CallInfo)

    @property
    def request_id(self) -> str:
        return self.info.request_id


@dataclass(slots=True)
class ModelInfo:
    id: str
    owned_by: str | None = None
    raw: Any = None


class InferResponse(dict[str, Any]):
    """Output name -> value (numpy arrays for tensor servers), plus call info."""

    def __init__(self, outputs: dict[str, Any] | None = None, model: str = "", raw: Any = None) -> None:
        super().__init__(outputs or {})
        self.model = model
        self.raw = raw
        self.info = CallInfo()

    @property
    def request_id(self) -> str:
        return self.info.request_id
