"""What a backend is: a pure translator between unified calls and its wire format.

A provider builds an ``HttpRequest`` for a ``Call`` and parses the answer
(body, stream bytes or error) back. It never sleeps, retries, holds state
between calls or opens sockets; the core does all of that, once.

Operations are found by name: ``chat_request``/``chat_response``/``chat_stream``,
``embed_request``/``embed_response`` and so on, so adding an operation to a
provider is adding two methods, and ``supports`` tells what a backend can do.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from apimux.core.pool import RateHint
from apimux.core.retry import parse_retry_after
from apimux.errors import ApimuxError, BadRequest, UpstreamError, error_for_status
from apimux.transport import HttpRequest, HttpResponse
from apimux.types import ChatChunk


@dataclass(slots=True)
class Call:
    """One unified call as the core hands it to a provider."""

    op: str  # "chat", "embed", "rerank", "infer", "models", ...
    model: str  # the model name as the backend knows it
    params: dict[str, Any] = field(default_factory=dict)
    request_id: str = ""
    stream: bool = False


class StreamParser(Protocol):
    def feed(self, chunk: bytes) -> list[ChatChunk]:
        """Chunks completed by these bytes; raises ApimuxError on an error event."""
        ...

    def close(self) -> list[ChatChunk]:
        """End of the byte stream; raises StreamInterrupted if it ended too early."""
        ...


class Provider:
    name: ClassVar[str] = ""
    aliases: ClassVar[tuple[str, ...]] = ()
    env_keys: ClassVar[tuple[str, ...]] = ()  # also read as *_KEYS, comma-separated
    env_base_url: ClassVar[tuple[str, ...]] = ()
    default_base_url: ClassVar[str | None] = None
    needs_key: ClassVar[bool] = True
    sends_request_id: ClassVar[bool] = True  # as x-request-id
    # op -> most items one upstream call may carry (micro-batching and splitting)
    batch_limits: ClassVar[dict[str, int]] = {}

    def __init__(self, endpoint: Any) -> None:
        self.endpoint = endpoint
        self.base_url: str = (endpoint.base_url or self.default_base_url or "").rstrip("/")
        self.extra_headers: dict[str, str] = dict(endpoint.headers)
        self.protocol: str | None = endpoint.protocol
        self.options: dict[str, Any] = dict(endpoint.options)
        # op -> bound builder/parser, looked up by name once (the hot path calls them per request)
        self._builders: dict[str, Callable[[Call, str | None], HttpRequest]] = {}
        self._parsers: dict[str, Callable[[Call, HttpResponse], Any]] = {}

    # ---- dispatch by operation name ------------------------------------
    @classmethod
    def supports(cls, op: str, stream: bool = False) -> bool:
        return hasattr(cls, f"{op}_stream" if stream else f"{op}_request")

    @classmethod
    def operations(cls) -> list[str]:
        return sorted(n.removesuffix("_request") for n in dir(cls) if n.endswith("_request"))

    def request(self, call: Call, key: str | None) -> HttpRequest:
        builder = self._builders.get(call.op)
        if builder is None:
            builder = getattr(self, f"{call.op}_request", None)
            if builder is None:
                raise BadRequest(f"backend {self.name!r} does not support {call.op!r}", backend=self.name)
            self._builders[call.op] = builder
        req: HttpRequest = builder(call, key)
        if self.extra_headers:
            req.headers.update(self.extra_headers)
        return req

    def response(self, call: Call, resp: HttpResponse) -> Any:
        parser = self._parsers.get(call.op)
        if parser is None:
            parser = self._parsers[call.op] = getattr(self, f"{call.op}_response")
        return parser(call, resp)

    def stream_parser(self, call: Call) -> StreamParser:
        parser = getattr(self, f"{call.op}_stream", None)
        if parser is None:
            raise BadRequest(f"backend {self.name!r} cannot stream {call.op!r}", backend=self.name)
        result: StreamParser = parser(call)
        return result

    # ---- shared helpers --------------------------------------------------
    def url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    def estimate_tokens(self, call: Call) -> int:
        """A cheap pre-call estimate for tpm budgets (about 4 characters a token)."""
        p = call.params
        text = 0
        for m in p.get("messages", ()):
            c = m.get("content")
            text += len(c) if isinstance(c, str) else len(json.dumps(c)) if c else 0
        inp = p.get("input")
        if isinstance(inp, str):
            text += len(inp)
        elif isinstance(inp, list):
            text += sum(len(x) if isinstance(x, str) else 8 for x in inp)
        out = p.get("max_tokens") or p.get("max_completion_tokens") or 0
        return max(1, text // 4 + int(out))

    def error(self, call: Call, resp: HttpResponse) -> ApimuxError:
        """Map an error response; providers override to read their envelope."""
        cls = error_for_status(resp.status)
        return cls(
            error_message(resp.body) or f"HTTP {resp.status}",
            status=resp.status,
            retry_after=parse_retry_after(resp.headers, resp.wall),
            body=safe_json(resp.body),
        )

    def rate_hint(self, headers: Mapping[str, str]) -> RateHint | None:
        return None

    def is_answer(self, call: Call, resp: HttpResponse) -> bool:
        """Whether an error status is this operation's normal answer (a health
        probe's "not ready"), to be parsed rather than raised."""
        return False


def bearer_headers(key: str | None) -> dict[str, str]:
    """JSON wanted, and the key (when there is one) as an ``Authorization: Bearer`` token."""
    h = {"Accept": "application/json"}
    if key:
        h["Authorization"] = f"Bearer {key}"
    return h


def safe_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None


def error_message(body: bytes) -> str:
    """The service's own message from the common envelopes, or the raw text."""
    data = safe_json(body)
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if isinstance(err, str):
            return err
        for k in ("message", "detail"):
            if data.get(k):
                return str(data[k])
    return body[:500].decode("utf-8", errors="replace").strip()


def load_json(resp: HttpResponse, backend: str) -> Any:
    """Parse a success body; a malformed one is an upstream fault (retried)."""
    try:
        return json.loads(resp.body.decode())  # str: skips json's encoding detection
    except (ValueError, UnicodeDecodeError):
        raise UpstreamError(
            f"{backend} returned a body that is not JSON: {resp.body[:120]!r}", status=resp.status
        ) from None
