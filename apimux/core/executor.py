"""The retry loop, once for every backend: lease -> attempt -> outcome -> policy.

An *attempt* is any coroutine run under a lease; for HTTP backends it is
build -> transport -> parse, and a storage backend passes its own. The
outcome updates the breaker, the key's health and the stats, then the pure
retry policy decides what happens next.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from apimux.core.clock import Clock
from apimux.core.pool import Lease, Pool, Server
from apimux.core.retry import RetrySettings, decide, is_upstream_failure
from apimux.core.scheduler import GroupScheduler
from apimux.core.stats import Series, Stats
from apimux.errors import ApimuxError, StreamInterrupted, UpstreamError
from apimux.transport import HttpRequest, HttpResponse
from apimux.types import CallInfo, ChatChunk, Priority, Usage

Attempt = Callable[[Lease], Awaitable[Any]]
CostFn = Callable[[str, str, Usage], "float | None"]


@dataclass(slots=True)
class CallOptions:
    priority: Priority = Priority.NORMAL
    wait: bool = True  # wait for queue space (False: QueueFull at once)
    queue_timeout: float | None = None
    max_retries: int | None = None
    breaker_wait: float = 0.0  # patience with open breakers (see GroupScheduler.acquire)


@dataclass(slots=True)
class _Progress:
    info: CallInfo
    start: float
    tries: int = 0
    avoid: Server | None = None


class Executor:
    def __init__(
        self,
        clock: Clock,
        retry: RetrySettings,
        stats: Stats,
        *,
        send_request_id: bool = True,
        cost: CostFn | None = None,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.clock = clock
        self.retry = retry
        self.stats = stats
        self.send_request_id = send_request_id
        self.cost = cost
        self.rand = rand
        # Wall-clock stamps are derived from the monotonic clock (one call, not two).
        self._wall_offset = clock.wall() - clock.now()

    # ---- the HTTP attempt --------------------------------------------------
    # Split in two plain functions around the one await, so the hot path has
    # no coroutine layer of its own between the caller and the transport.
    def http_request(self, lease: Lease, call: Any) -> HttpRequest:
        provider = lease.server.provider
        req: HttpRequest = provider.request(call, lease.key.key)
        if self.send_request_id and provider.sends_request_id:
            req.headers["x-request-id"] = call.request_id
        return req

    def http_answer(self, lease: Lease, call: Any, resp: HttpResponse) -> Any:
        provider = lease.server.provider
        hint = provider.rate_hint(resp.headers)
        if hint is not None:
            Pool.learn(lease, hint, self.clock.now())
        if resp.status >= 400 and not provider.is_answer(call, resp):
            resp.wall = self.clock.wall()  # for an HTTP-date Retry-After
            raise provider.error(call, resp)
        try:
            return provider.response(call, resp)
        except _UNREADABLE as exc:
            raise unreadable(provider.name, exc) from exc

    # ---- unary calls -------------------------------------------------------
    async def run(
        self,
        sched: GroupScheduler,
        call: Any,
        backend: str,
        opts: CallOptions,
        attempt: Attempt | None = None,
        tokens: int = 1,
    ) -> Any:
        p = self._progress(call, backend)
        while True:
            lease = sched.lease_now(tokens, p.avoid)  # nobody queued and a slot free: no await
            if lease is None:
                lease = await self._acquire(sched, call, backend, opts, tokens, p.tries, p.avoid)
            sent = self.clock.now()
            series = self._begin(lease, backend, call.model, p, sent)
            try:
                if attempt is None:
                    server = lease.server
                    resp = await server.transport.send(self.http_request(lease, call), server.extra["timeouts"])
                    result = self.http_answer(lease, call, resp)
                else:
                    result = await attempt(lease)
            except ApimuxError as err:
                if await self._after_failure(p, sched, lease, series, err, call, backend, opts):
                    continue
                raise
            except BaseException:
                self._neutral(sched, lease)
                raise
            end = self._succeeded(sched, lease, series, getattr(result, "usage", None), sent, backend, call.model)
            self._finish(p, end)
            if hasattr(result, "info"):
                result.info = p.info
            return result

    # ---- streams -----------------------------------------------------------
    async def stream(
        self, sched: GroupScheduler, call: Any, backend: str, opts: CallOptions, tokens: int = 1
    ) -> AsyncIterator[ChatChunk]:
        """Retries only before the first chunk reaches the caller; after that a
        failure is ``StreamInterrupted`` (the caller already holds partial text)."""
        p = self._progress(call, backend)
        while True:
            lease = sched.lease_now(tokens, p.avoid)
            if lease is None:
                lease = await self._acquire(sched, call, backend, opts, tokens, p.tries, p.avoid)
            sent = self.clock.now()
            series = self._begin(lease, backend, call.model, p, sent)
            delivered = False
            usage: Usage | None = None
            try:
                async for chunk in self._stream_attempt(lease, call):
                    if chunk.usage is not None:
                        usage = chunk.usage
                    chunk.request_id = call.request_id
                    delivered = True
                    yield chunk
            except ApimuxError as err:
                if delivered:
                    self._failed(sched, lease, series, err, call, backend, self.retry.max_retries, opts)
                    raise StreamInterrupted(
                        f"stream failed after data was delivered: {err.message}",
                        backend=backend, endpoint=lease.key.label, model=call.model,
                        request_id=call.request_id, status=err.status,
                    ) from err
                if await self._after_failure(p, sched, lease, series, err, call, backend, opts):
                    continue
                raise
            except BaseException:
                # The caller stopped reading or was cancelled: no verdict on the server.
                self._neutral(sched, lease)
                raise
            self._finish(p, self._succeeded(sched, lease, series, usage, sent, backend, call.model))
            return

    # ---- one call's progress through its attempts -----------------------------
    def _progress(self, call: Any, backend: str) -> _Progress:
        now = self.clock.now()
        return _Progress(CallInfo(call.request_id, backend, queued_at=now + self._wall_offset), now)

    async def _after_failure(
        self, p: _Progress, sched: GroupScheduler, lease: Lease, series: Series, err: ApimuxError,
        call: Any, backend: str, opts: CallOptions,
    ) -> bool:
        """Record the failure; wait out the policy's delay and say whether to try again."""
        delay = self._failed(sched, lease, series, err, call, backend, p.tries, opts)
        if delay is None:
            return False
        p.tries += 1
        # After a server fault, prefer another server of the group for the retry.
        p.avoid = lease.server if is_upstream_failure(err) else None
        if delay > 0:
            await self.clock.sleep(delay)
        return True

    def _finish(self, p: _Progress, end: float) -> None:
        p.info.latency = end - p.start
        p.info.finished_at = end + self._wall_offset

    async def _stream_attempt(self, lease: Lease, call: Any) -> AsyncIterator[ChatChunk]:
        server = lease.server
        provider = server.provider
        async with server.transport.stream(self.http_request(lease, call), server.extra["timeouts"]) as resp:
            hint = provider.rate_hint(resp.headers)
            if hint is not None:
                Pool.learn(lease, hint, self.clock.now())
            if resp.status >= 400:
                body = await resp.read()
                raise provider.error(call, HttpResponse(resp.status, resp.headers, body, self.clock.wall()))
            parser = provider.stream_parser(call)
            async for raw in resp.chunks():
                with unreadable_is_upstream(provider.name):
                    chunks = parser.feed(raw)
                for chunk in chunks:
                    yield chunk
            with unreadable_is_upstream(provider.name):
                chunks = parser.close()
            for chunk in chunks:
                yield chunk

    # ---- bookkeeping -------------------------------------------------------
    async def _acquire(
        self, sched: GroupScheduler, call: Any, backend: str, opts: CallOptions,
        tokens: int, tries: int, avoid: Any,
    ) -> Lease:
        try:
            return await sched.acquire(
                opts.priority, tokens, avoid=avoid, retry=tries > 0, wait=opts.wait, timeout=opts.queue_timeout,
                patience=opts.breaker_wait,
            )
        except ApimuxError as err:
            self.stats.series(backend, "-", call.model).rejected[err.kind] += 1
            raise err.with_context(backend=backend, model=call.model, request_id=call.request_id) from None

    def _begin(self, lease: Lease, backend: str, model: str, p: _Progress, now: float) -> Series:
        series = self.stats.series(backend, lease.key.label, model)
        series.requests += 1
        info = p.info
        if p.tries:
            series.retries += 1
        else:
            info.queue_wait = now - p.start
            series.queue_wait.append(info.queue_wait)
        info.attempts = p.tries + 1
        info.endpoint = lease.key.label
        info.attempt_times.append(now + self._wall_offset)
        return series

    def _failed(
        self, sched: GroupScheduler, lease: Lease, series: Series, err: ApimuxError,
        call: Any, backend: str, tries: int, opts: CallOptions,
    ) -> float | None:
        """Record a failed attempt; the delay before retrying, or None to give up."""
        now = self.clock.now()
        err.with_context(backend=backend, endpoint=lease.key.label, model=call.model, request_id=call.request_id)
        series.failures[err.kind] += 1
        err.attempts = tries + 1
        breaker = lease.server.breaker
        if is_upstream_failure(err):
            breaker.on_failure(now)
        else:
            breaker.on_neutral()
        retry = self.retry
        if opts.max_retries is not None:
            retry = dataclasses.replace(retry, max_retries=opts.max_retries)
        decision = decide(err, tries, retry, self.rand())
        if decision.key_cooldown is not None:
            lease.key.cool_down(now + decision.key_cooldown)
            series.rate_limit_waits += 1
        sched.release(lease)
        return decision.delay if decision.retry else None

    def _succeeded(
        self, sched: GroupScheduler, lease: Lease, series: Series, usage: Usage | None,
        sent: float, backend: str, model: str,
    ) -> float:
        """Record a success; returns the time it was recorded."""
        end = self.clock.now()
        lease.server.breaker.on_success()
        key = lease.key
        if key.tpm is not None or key.limit < key.max_concurrent:  # a budget to reconcile or a ramp
            Pool.on_success(lease, usage.total_tokens if usage else None)
        series.successes += 1
        series.latency.append(end - sent)
        if usage is not None:
            series.prompt_tokens += usage.prompt_tokens
            series.completion_tokens += usage.completion_tokens
            if self.cost is not None:
                c = self.cost(backend, model, usage)
                if c is None:
                    series.cost_unknown += 1
                else:
                    series.cost += c
        sched.release(lease)
        return end

    def _neutral(self, sched: GroupScheduler, lease: Lease) -> None:
        lease.server.breaker.on_neutral()
        sched.release(lease)


# A 2xx body of an unexpected shape is the service's fault: a typed, retryable
# UpstreamError rather than a KeyError escaping to the caller.
_UNREADABLE = (KeyError, IndexError, TypeError, ValueError, AttributeError)


def unreadable(backend: str, exc: Exception) -> UpstreamError:
    return UpstreamError(f"{backend} sent a response apimux could not read ({type(exc).__name__}: {exc})")


@contextmanager
def unreadable_is_upstream(backend: str) -> Iterator[None]:
    try:
        yield
    except ApimuxError:
        raise
    except _UNREADABLE as exc:
        raise unreadable(backend, exc) from exc

