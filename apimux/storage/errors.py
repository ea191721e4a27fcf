"""botocore / aiobotocore exceptions -> the typed error tree.

This is the S3 counterpart of a provider's ``error()``: the core decides
retries, breaker and key cooldowns from the class picked here. botocore is
imported lazily so ``import apimux`` works without the ``s3`` extra.
"""

from __future__ import annotations

import asyncio
from typing import Any

from apimux.core.retry import parse_retry_after
from apimux.errors import (
    ApimuxError,
    AuthError,
    BadRequest,
    ConfigError,
    ConnectionFailed,
    NotFound,
    Overloaded,
    RateLimited,
    Timeout,
    UpstreamError,
    error_for_status,
)

NOT_FOUND_CODES = frozenset({"NoSuchKey", "NoSuchBucket", "NoSuchUpload", "NoSuchVersion", "NotFound", "404"})
AUTH_CODES = frozenset({
    "InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "ExpiredToken", "InvalidToken",
    "InvalidSecurity", "TokenRefreshRequired", "AllAccessDisabled", "AccountProblem", "403", "401",
})
RATE_CODES = frozenset({"SlowDown", "TooManyRequests", "RequestLimitExceeded", "Throttling", "ThrottlingException"})
OVERLOAD_CODES = frozenset({"ServiceUnavailable", "503"})
TIMEOUT_CODES = frozenset({"RequestTimeout", "RequestTimeoutException"})
# Retrying helps: the service failed, or the bytes were damaged on the way.
UPSTREAM_CODES = frozenset({"InternalError", "OperationAborted", "BadDigest", "IncompleteBody"})


def from_client_error(code: str, status: int, message: str, headers: dict[str, str], wall: float) -> ApimuxError:
    """Pick the class from S3's error code first, then the HTTP status."""
    cls: type[ApimuxError]
    if code in NOT_FOUND_CODES:
        cls = NotFound
    elif code in AUTH_CODES:
        cls = AuthError
    elif code in RATE_CODES:
        cls = RateLimited
    elif code in OVERLOAD_CODES:
        cls = Overloaded
    elif code in TIMEOUT_CODES:
        cls = Timeout
    elif code in UPSTREAM_CODES:
        cls = UpstreamError
    elif status == 409:
        cls = BadRequest  # BucketAlreadyExists, BucketNotEmpty: retrying cannot help
    elif status == 503:
        cls = Overloaded
    elif status:
        cls = error_for_status(status)
    else:
        cls = UpstreamError
    text = f"{code}: {message}" if message and message != code else code or f"HTTP {status}"
    return cls(
        text,
        status=status or None,
        retry_after=parse_retry_after(headers, wall),
        body={"code": code, "message": message},
    )


def map_exception(exc: BaseException, wall: float) -> ApimuxError | None:
    """The typed error for an SDK exception, or None for one that is not the
    service's or the network's (a bug: let it propagate unchanged)."""
    if isinstance(exc, ApimuxError):
        return exc
    from botocore import exceptions as be

    if isinstance(exc, be.ClientError):
        resp: dict[str, Any] = exc.response or {}
        err = resp.get("Error") or {}
        meta = resp.get("ResponseMetadata") or {}
        headers = {str(k).lower(): str(v) for k, v in (meta.get("HTTPHeaders") or {}).items()}
        status = int(meta.get("HTTPStatusCode") or 0)
        code = str(err.get("Code") or "")
        if not status and code.isdigit():
            status = int(code)
        return from_client_error(code, status, str(err.get("Message") or ""), headers, wall)
    # Timeouts first: botocore's timeout classes also derive from its connection errors.
    if isinstance(exc, (be.ConnectTimeoutError, be.ReadTimeoutError, asyncio.TimeoutError, TimeoutError)):
        return Timeout(f"S3 request timed out: {exc}")
    if isinstance(exc, (be.ConnectionError, be.HTTPClientError, be.IncompleteReadError, be.ResponseStreamingError)):
        return ConnectionFailed(f"S3 connection failed: {exc}")
    if isinstance(exc, (be.ChecksumError, be.FlexibleChecksumError)):
        return UpstreamError(f"S3 checksum mismatch: {exc}")
    if isinstance(exc, (be.NoCredentialsError, be.PartialCredentialsError)):
        return ConfigError(f"S3 credentials incomplete: {exc}")
    if isinstance(exc, be.ParamValidationError):
        return BadRequest(f"invalid S3 request: {exc}")
    try:
        import aiohttp
    except ImportError:  # pragma: no cover - aiohttp is a core dependency
        return None
    if isinstance(exc, aiohttp.ClientError):  # e.g. a body cut off while streaming
        return ConnectionFailed(f"S3 connection failed while streaming: {type(exc).__name__}: {exc}")
    return None
