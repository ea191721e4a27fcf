"""The typed error tree. Every error names where it happened, never a whole key."""

from __future__ import annotations

from typing import Any


class ApimuxError(Exception):
    """Root of every error apimux raises.

    ``retryable`` is the class default; the retry policy reads it, so a
    provider adapter only has to pick the right class.
    """

    retryable = False

    def __init__(
        self,
        message: str,
        *,
        backend: str | None = None,
        endpoint: str | None = None,
        model: str | None = None,
        request_id: str | None = None,
        status: int | None = None,
        retry_after: float | None = None,
        body: Any = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.backend = backend
        self.endpoint = endpoint  # always the masked form
        self.model = model
        self.request_id = request_id
        self.status = status
        self.retry_after = retry_after
        self.body = body
        self.attempts: int | None = None  # set by the core: attempts made before giving up

    @property
    def kind(self) -> str:
        return type(self).__name__

    def __str__(self) -> str:
        where = ", ".join(
            f"{k}={v}"
            for k, v in (
                ("backend", self.backend),
                ("endpoint", self.endpoint),
                ("model", self.model),
                ("status", self.status),
                ("request_id", self.request_id),
            )
            if v is not None
        )
        return f"{self.message} ({where})" if where else self.message

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form for results files and the gateway."""
        return {
            "type": self.kind,
            "message": self.message,
            "backend": self.backend,
            "endpoint": self.endpoint,
            "model": self.model,
            "request_id": self.request_id,
            "status": self.status,
            "retry_after": self.retry_after,
            "attempts": self.attempts,
        }

    def with_context(self, **ctx: Any) -> ApimuxError:
        """Fill in context fields not already set (the core knows more than the adapter)."""
        for key, value in ctx.items():
            if getattr(self, key, None) is None:
                setattr(self, key, value)
        return self


class ConfigError(ApimuxError):
    """Bad configuration: unknown backend, missing key, unreadable file."""


class AuthError(ApimuxError):
    """401/403: the credentials were refused."""


class BadRequest(ApimuxError):
    """400/413/422: the caller's request is wrong; retrying cannot help."""


class NotFound(ApimuxError):
    """404: unknown model, object or route."""


class RateLimited(ApimuxError):
    """429: the key is over its quota; ``retry_after`` is the server's delay."""

    retryable = True


class Overloaded(ApimuxError):
    """The service says it is overloaded (529, TGI/TEI overloaded)."""

    retryable = True


class Timeout(ApimuxError):
    """Connect or read timeout, or 408."""

    retryable = True


class ConnectionFailed(ApimuxError):
    """The server could not be reached or dropped the connection."""

    retryable = True


class UpstreamError(ApimuxError):
    """5xx or an unparseable answer from the service."""

    retryable = True


class CircuitOpen(ApimuxError):
    """Every server for this call has an open circuit breaker."""


class QueueFull(ApimuxError):
    """The model group's queue is full and the caller would not wait (longer)."""


class StreamInterrupted(ApimuxError):
    """A stream ended before its terminator, after data had reached the caller."""


# Non-retryable statuses where the upstream answered but is at fault.
class NotRetryableUpstream(UpstreamError):
    """A 5xx-class answer the service marks as permanent (e.g. TEI 424)."""

    retryable = False


def error_for_status(status: int) -> type[ApimuxError]:
    """The default class for an HTTP status, per DESIGN.md's retry table."""
    if status in (401, 403):
        return AuthError
    if status == 404:
        return NotFound
    if status == 408:
        return Timeout
    if status == 429:
        return RateLimited
    if status == 529:
        return Overloaded
    if status == 409 or status >= 500:
        return UpstreamError
    return BadRequest
