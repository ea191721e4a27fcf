"""apimux: one dependable way to call many AI inference and storage services."""

from apimux.client import AsyncClient, Client
from apimux.config import Endpoint, Settings, mask_key
from apimux.core.clock import FakeClock, SystemClock
from apimux.core.retry import RetrySettings
from apimux.errors import (
    ApimuxError,
    AuthError,
    BadRequest,
    CircuitOpen,
    ConfigError,
    ConnectionFailed,
    NotFound,
    Overloaded,
    QueueFull,
    RateLimited,
    StreamInterrupted,
    Timeout,
    UpstreamError,
)
from apimux.types import ChatChunk, ChatResponse, EmbedResponse, Priority, Usage

__version__ = "0.1.0"

__all__ = [
    "ApimuxError", "AsyncClient", "AuthError", "BadRequest", "ChatChunk", "ChatResponse", "CircuitOpen",
    "Client", "ConfigError", "ConnectionFailed", "EmbedResponse", "Endpoint", "FakeClock", "NotFound",
    "Overloaded", "Priority", "QueueFull", "RateLimited", "RetrySettings", "Settings", "StreamInterrupted",
    "SystemClock", "Timeout", "UpstreamError", "Usage", "mask_key",
]
