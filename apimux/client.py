"""``AsyncClient`` and ``Client``: the facades. They know no wire format; they
turn a call into a ``Call`` for the group named by the model string and hand
it to the core."""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Hashable,
    Iterable,
    Iterator,
    Mapping,
)
from typing import Any, TypeVar

from apimux.config import Endpoint, Settings, resolve
from apimux.core.batching import MicroBatcher, chunks
from apimux.core.breaker import Breaker
from apimux.core.clock import Clock, SystemClock
from apimux.core.executor import CallOptions, CostFn, Executor
from apimux.core.limits import TokenBucket
from apimux.core.pool import KeyState, Lease, Pool, Server
from apimux.core.scheduler import GroupScheduler
from apimux.core.stats import Stats
from apimux.core.tracking import new_request_id
from apimux.errors import ApimuxError, BadRequest, ConfigError
from apimux.providers import registry
from apimux.providers.base import Call, Provider
from apimux.transport import AiohttpTransport, Timeouts, Transport
from apimux.types import (
    ChatChunk,
    ChatResponse,
    EmbedResponse,
    InferResponse,
    Message,
    ModelInfo,
    Priority,
    RerankResponse,
    RerankResult,
    Usage,
)

T = TypeVar("T")


def split_model(model: str) -> tuple[str, str]:
    """``"openai/gpt-4o-mini"`` -> ``("openai", "gpt-4o-mini")``; only the first ``/`` splits."""
    group, sep, name = model.partition("/")
    if not sep or not group or not name:
        raise BadRequest(f"model {model!r} must be 'backend/model' (for example 'openai/gpt-4o-mini')")
    return group, name


def check_messages(messages: Any) -> list[Message]:
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
    for i, m in enumerate(messages):
        # type() first: an ABC isinstance check costs more than the rest of this loop
        if (type(m) is not dict and not isinstance(m, Mapping)) or not isinstance(m.get("role"), str):
            raise BadRequest(f"messages[{i}] must be a dict with a string 'role', got {str(m)[:80]!r}")
    return messages


def with_system(messages: list[Message], system: str | None) -> list[Message]:
    """``system=`` is sugar for a leading system message; providers see only messages."""
    if system is None:
        return messages
    if not isinstance(system, str):
        raise BadRequest("system must be a string")
    return [{"role": "system", "content": system}, *messages]


class Group:
    """A model group: its scheduler, provider class and the backend's name."""

    __slots__ = ("backend", "limits", "name", "provider_cls", "sched")

    def __init__(self, name: str, backend: str, provider_cls: type[Provider], sched: GroupScheduler) -> None:
        self.name = name
        self.backend = backend
        self.provider_cls = provider_cls
        self.sched = sched
        # op -> items per upstream call; a task so concurrent first calls ask the server once
        self.limits: dict[str, asyncio.Task[int]] = {}


def merge_embeds(parts: list[EmbedResponse]) -> EmbedResponse:
    """Reassemble the answers of a split call, in order."""
    usage = Usage(sum(p.usage.prompt_tokens for p in parts), sum(p.usage.completion_tokens for p in parts))
    merged = EmbedResponse([v for p in parts for v in p.vectors], parts[0].model, usage)
    merged.info = parts[0].info
    merged.info.attempts = max(p.info.attempts for p in parts)
    return merged


def share_usage(total: Usage, items: list[str]) -> list[Usage]:
    """A batch's prompt tokens shared by text length (the service reports only the sum)."""
    lengths = [max(1, len(t)) for t in items]
    whole = sum(lengths)
    shares = [total.prompt_tokens * n // whole for n in lengths]
    shares[-1] += total.prompt_tokens - sum(shares)
    return [Usage(s, 0) for s in shares]


class AsyncClient:
    """One entry point to every backend, through one resilience core.

    With no arguments it reads ``APIMUX_CONFIG`` / ``./apimux.toml`` /
    ``~/.config/apimux/apimux.toml``, else each backend's standard
    environment variables.
    """

    def __init__(
        self,
        endpoints: Iterable[Endpoint] | None = None,
        *,
        config: str | os.PathLike[str] | Mapping[str, Any] | None = None,
        settings: Settings | None = None,
        clock: Clock | None = None,
        transport: Transport | None = None,
        env: Mapping[str, str] | None = None,
        cost: CostFn | None = None,
    ) -> None:
        self.endpoints, self.settings = resolve(endpoints, config=config, settings=settings, env=env)
        self.clock: Clock = clock or SystemClock()
        self._transport: Transport = transport or AiohttpTransport()
        self._own_transports: list[Transport] = []
        self._stats = Stats()
        self.executor = Executor(
            self.clock, self.settings.retry, self._stats, send_request_id=self.settings.send_request_id, cost=cost
        )
        self._groups: dict[str, Group] = {}
        self._routes: dict[tuple[str, str, bool], tuple[Group, str]] = {}
        self._default_opts = CallOptions(
            Priority.NORMAL, True, self.settings.queue_timeout, None, self.settings.breaker_wait
        )
        self._stores: list[Any] = []
        self._breakers: dict[str, Breaker] = {}
        self._batcher = MicroBatcher(self.settings.batch_window, self._flush)

    # ---- groups -------------------------------------------------------------
    def group(self, name: str) -> Group:
        g = self._groups.get(name)
        if g is None:
            g = self._groups[name] = self._build_group(name)
        return g

    def _build_group(self, name: str) -> Group:
        eps = [e for e in self.endpoints if e.name == name]
        if not eps:
            canon = registry.canonical(name)
            eps = [e for e in self.endpoints if registry.canonical(e.backend) == canon and e.name == e.backend]
        if not eps:
            cls = registry.get(name)  # ConfigError for an unknown backend
            if cls.needs_key:
                hint = f"set {cls.env_keys[0]} or " if cls.env_keys else ""
                raise ConfigError(f"no endpoint configured for {name!r}: {hint}pass Endpoint({cls.name!r}, ...)")
            eps = [Endpoint(cls.name, name=name)]
        cls = registry.get(eps[0].backend)
        servers = [self._server(cls, e) for e in eps]
        pool = Pool(servers, eps[0].key_strategy)
        sched = GroupScheduler(name, pool, self.clock, self.settings.queue_size, self.settings.queue_aging)
        return Group(name, cls.name, cls, sched)

    def _server(self, cls: type[Provider], ep: Endpoint) -> Server:
        if cls.needs_key and not ep.keys:
            raise ConfigError(f"backend {ep.backend!r} at {ep.base_url or 'its default URL'} needs an API key")
        provider = cls(ep)
        transport = self._transport
        factory = getattr(cls, "transport_factory", None)
        if factory is not None:
            transport = factory(ep)
            self._own_transports.append(transport)
        now = self.clock.now()
        keys = [
            KeyState(
                k,
                ep.label(k),
                ep.max_concurrent,
                rpm=TokenBucket(ep.rpm, now) if ep.rpm else None,
                tpm=TokenBucket(ep.tpm, now, burst_seconds=10.0) if ep.tpm else None,
            )
            for k in (ep.keys or [None])  # type: ignore[list-item]
        ]
        server = Server(
            ep.label(), ep, provider, transport,
            self._breaker_for(provider.base_url), keys,
        )
        server.extra["timeouts"] = Timeouts(ep.timeout, ep.connect_timeout, ep.read_timeout)
        return server

    def _breaker_for(self, base_url: str) -> Breaker:
        """One breaker per server: endpoints (or groups) sharing a base URL share its health."""
        breaker = self._breakers.get(base_url)
        if breaker is None:
            breaker = self._breakers[base_url] = Breaker(
                self.settings.breaker_threshold, self.settings.breaker_recovery
            )
        return breaker

    # ---- calls --------------------------------------------------------------
    def _opts(
        self, priority: Priority | str | int | None, wait: bool, queue_timeout: float | None,
        max_retries: int | None,
    ) -> CallOptions:
        if priority is None and wait and queue_timeout is None and max_retries is None:
            return self._default_opts  # the common case allocates nothing
        return CallOptions(
            Priority.parse(priority), wait,
            queue_timeout if queue_timeout is not None else self.settings.queue_timeout, max_retries,
            self.settings.breaker_wait,
        )

    def _call(self, op: str, model: str, params: dict[str, Any], stream: bool = False) -> tuple[Group, Call]:
        route = self._routes.get((model, op, stream))
        if route is None:  # first use of this model string for this operation: check it once
            name, model_name = split_model(model)
            g = self.group(name)
            if not g.provider_cls.supports(op, stream):
                what = f"streaming {op}" if stream else op
                raise BadRequest(f"backend {g.backend!r} does not support {what}", backend=g.backend,
                                 model=model_name)
            route = self._routes[(model, op, stream)] = (g, model_name)
        g, model_name = route
        return g, Call(op, model_name, params, new_request_id(), stream)

    def _prepare(
        self, op: str, model: str, params: dict[str, Any], priority: Priority | str | int | None,
        wait: bool, queue_timeout: float | None, max_retries: int | None, stream: bool = False,
    ) -> tuple[Group, Call, CallOptions, int]:
        g, call = self._call(op, model, params, stream)
        tokens = g.sched.pool.servers[0].provider.estimate_tokens(call) if g.sched.pool.uses_tpm else 1
        return g, call, self._opts(priority, wait, queue_timeout, max_retries), tokens

    async def call(
        self, op: str, model: str, params: dict[str, Any], *,
        priority: Priority | str | int | None = None, wait: bool = True,
        queue_timeout: float | None = None, max_retries: int | None = None,
    ) -> Any:
        """Any operation a backend supports (``chat``, ``embed``, ``models``, ...)."""
        g, call, opts, tokens = self._prepare(op, model, params, priority, wait, queue_timeout, max_retries)
        return await self.executor.run(g.sched, call, g.backend, opts, tokens=tokens)

    async def run_attempt(
        self, model: str, op: str, attempt: Callable[[Lease], Awaitable[T]], *,
        priority: Priority | str | int | None = None, tokens: int = 1,
    ) -> T:
        """Run a non-HTTP attempt (storage, in-process work) under the same core."""
        name, model_name = split_model(model)
        g = self.group(name)
        call = Call(op, model_name, {}, new_request_id())
        result: T = await self.executor.run(
            g.sched, call, g.backend, self._opts(priority, True, None, None), attempt=attempt, tokens=tokens
        )
        return result

    async def chat(
        self, model: str, messages: list[Message], *,
        priority: Priority | str | int | None = None, wait: bool = True,
        queue_timeout: float | None = None, max_retries: int | None = None, **params: Any,
    ) -> ChatResponse:
        params["messages"] = with_system(check_messages(messages), params.pop("system", None))
        g, call, opts, tokens = self._prepare("chat", model, params, priority, wait, queue_timeout, max_retries)
        result: ChatResponse = await self.executor.run(g.sched, call, g.backend, opts, tokens=tokens)
        return result

    async def chat_stream(
        self, model: str, messages: list[Message], *,
        priority: Priority | str | int | None = None, wait: bool = True,
        queue_timeout: float | None = None, max_retries: int | None = None, **params: Any,
    ) -> AsyncIterator[ChatChunk]:
        params["messages"] = with_system(check_messages(messages), params.pop("system", None))
        stream = self.call_stream(
            "chat", model, params, priority=priority, wait=wait, queue_timeout=queue_timeout, max_retries=max_retries
        )
        async for chunk in stream:
            yield chunk

    async def generate(
        self, model: str, prompt: str, *, priority: Priority | str | int | None = None, **params: Any
    ) -> ChatResponse:
        """Raw text completion (Ollama ``/api/generate``, TGI ``/generate``)."""
        if not isinstance(prompt, str):
            raise BadRequest("prompt must be a string")
        params["prompt"] = prompt
        result: ChatResponse = await self.call("generate", model, params, priority=priority)
        return result

    async def generate_stream(
        self, model: str, prompt: str, *, priority: Priority | str | int | None = None, **params: Any
    ) -> AsyncIterator[ChatChunk]:
        params["prompt"] = prompt
        async for chunk in self.call_stream("generate", model, params, priority=priority):
            yield chunk

    async def call_stream(
        self, op: str, model: str, params: dict[str, Any], *,
        priority: Priority | str | int | None = None, wait: bool = True,
        queue_timeout: float | None = None, max_retries: int | None = None,
    ) -> AsyncIterator[ChatChunk]:
        """Any streaming operation a backend supports."""
        g, call, opts, tokens = self._prepare(op, model, params, priority, wait, queue_timeout, max_retries, True)
        async for chunk in self.executor.stream(g.sched, call, g.backend, opts, tokens=tokens):
            yield chunk

    async def embed(
        self, model: str, inputs: str | list[str], *,
        priority: Priority | str | int | None = None, wait: bool = True,
        queue_timeout: float | None = None, max_retries: int | None = None, **params: Any,
    ) -> EmbedResponse:
        """Embeddings. A single text may share an upstream call with concurrent
        ones (micro-batching); a list longer than the backend's batch limit is
        split, sent concurrently and reassembled in order."""
        if isinstance(inputs, str):
            inputs = [inputs]
        if not isinstance(inputs, list) or not inputs or not all(isinstance(x, str) for x in inputs):
            raise BadRequest("embed inputs must be a string or a non-empty list of strings")
        name, _ = split_model(model)
        limit = await self._batch_limit(self.group(name), "embed")
        if len(inputs) == 1 and limit > 1 and self.settings.batch_window > 0 and wait:
            # Calls share a request only when everything but the text is the same.
            key = ("embed", model, json.dumps(params, sort_keys=True, default=str), max_retries)
            result: EmbedResponse = await self._batcher.submit(key, inputs[0], limit, Priority.parse(priority))
            return result
        kw: dict[str, Any] = {"priority": priority, "wait": wait, "queue_timeout": queue_timeout,
                              "max_retries": max_retries}
        if len(inputs) > limit:
            parts = await asyncio.gather(
                *(self.call("embed", model, {**params, "input": list(part)}, **kw) for part in chunks(inputs, limit))
            )
            return merge_embeds(list(parts))
        params["input"] = inputs
        whole: EmbedResponse = await self.call("embed", model, params, **kw)
        return whole

    async def _flush_embeds(
        self, model: str, params: dict[str, Any], items: list[str], priority: Priority, max_retries: int | None
    ) -> list[Any]:
        kw: dict[str, Any] = {"priority": priority, "max_retries": max_retries}
        try:
            batch: EmbedResponse = await self.call("embed", model, {**params, "input": items}, **kw)
        except BadRequest:
            if len(items) == 1:
                raise
            # One bad item must not sink its neighbours: each gets its own answer.
            return list(await asyncio.gather(
                *(self.call("embed", model, {**params, "input": [t]}, **kw) for t in items), return_exceptions=True
            ))
        out = []
        for vector, usage in zip(batch.vectors, share_usage(batch.usage, items), strict=True):
            one = EmbedResponse([vector], batch.model, usage)
            one.info = batch.info
            out.append(one)
        return out

    async def _batch_limit(self, g: Group, op: str) -> int:
        task = g.limits.get(op)
        if task is None:
            task = g.limits[op] = asyncio.get_running_loop().create_task(self._learn_limit(g, op))
        return await asyncio.shield(task)

    async def _learn_limit(self, g: Group, op: str) -> int:
        limit = g.provider_cls.batch_limits.get(op, 1)
        if limit > 1 and g.provider_cls.supports("info"):
            try:  # a server that announces its own limit (TEI, TGI) is believed
                info = await self.call("info", f"{g.name}/-", {}, max_retries=1)
                announced = info.get("max_client_batch_size") if isinstance(info, Mapping) else None
                if isinstance(announced, int) and announced > 0:
                    limit = announced
            except ApimuxError:
                pass
        return limit

    async def rerank(
        self, model: str, query: str, texts: list[str], *,
        priority: Priority | str | int | None = None, **params: Any,
    ) -> RerankResponse:
        if not isinstance(query, str) or not isinstance(texts, list) or not texts:
            raise BadRequest("rerank needs a query string and a non-empty list of texts")
        limit = await self._batch_limit(self.group(split_model(model)[0]), "rerank")
        if len(texts) <= limit:
            result: RerankResponse = await self.call("rerank", model, {**params, "query": query, "texts": texts},
                                                     priority=priority)
            return result
        # More texts than the server takes at once: rank each slice, then merge
        # (indexes shifted back to the caller's list, best score first).
        parts = await asyncio.gather(*(
            self.call("rerank", model, {**params, "query": query, "texts": list(part)}, priority=priority)
            for part in chunks(texts, limit)
        ))
        merged = [
            RerankResult(r.index + n * limit, r.score, r.text) for n, part in enumerate(parts) for r in part.results
        ]
        merged.sort(key=lambda r: r.score, reverse=True)
        whole = RerankResponse(merged, parts[0].model)
        whole.info = parts[0].info
        return whole

    async def infer(
        self, model: str, inputs: Any, *, priority: Priority | str | int | None = None, **params: Any
    ) -> InferResponse:
        """Model-server inference; ``inputs`` is backend-specific (e.g. name -> numpy array).

        Where the backend can serve several single infers in one call (it
        defines ``coalesce_key``/``coalesce``/``uncoalesce``), concurrent
        infers are micro-batched like embeddings.
        """
        params["inputs"] = inputs
        name, _ = split_model(model)
        g = self.group(name)
        keyer = getattr(g.sched.pool.servers[0].provider, "coalesce_key", None)
        if keyer is not None and self.settings.batch_window > 0:
            _, call = self._call("infer", model, params)
            key = keyer(call)
            limit = await self._batch_limit(g, "infer")
            if key is not None and limit > 1:
                single: InferResponse = await self._batcher.submit(
                    ("infer", model, key), call, limit, Priority.parse(priority)
                )
                return single
        result: InferResponse = await self.call("infer", model, params, priority=priority)
        return result

    async def _flush(self, key: Hashable, items: list[Any], priority: Priority) -> list[Any]:
        assert isinstance(key, tuple)
        if key[0] == "embed":
            return await self._flush_embeds(key[1], json.loads(key[2]), items, priority, key[3])
        return await self._flush_infers(key[1], items, priority)

    async def _flush_infers(self, model: str, calls: list[Call], priority: Priority) -> list[Any]:
        g = self.group(split_model(model)[0])
        provider: Any = g.sched.pool.servers[0].provider  # its coalesce/uncoalesce hooks
        opts = self._opts(priority, True, None, None)
        if len(calls) == 1:  # nobody to share with: the plain single call
            return [await self.executor.run(g.sched, calls[0], g.backend, opts)]
        merged = provider.coalesce(calls)
        try:
            batch = await self.executor.run(g.sched, merged, g.backend, opts)
        except BadRequest:
            if len(calls) == 1:
                raise
            return list(await asyncio.gather(
                *(self.executor.run(g.sched, c, g.backend, opts) for c in calls), return_exceptions=True
            ))
        out: list[Any] = provider.uncoalesce(batch, calls)
        for one in out:
            one.info = batch.info
        return out

    def storage(self, name: str = "s3") -> Any:
        """An object store whose endpoints share this client's core (see ``apimux.storage``)."""
        from apimux.storage import open_storage

        store = open_storage(self, name)
        self._stores.append(store)  # closed with the client
        return store

    async def models(self, backend: str) -> list[ModelInfo]:
        result: list[ModelInfo] = await self.call("models", f"{backend}/-", {})
        return result

    # ---- stats and lifecycle -------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """A JSON-serializable snapshot: counters, latencies, queues, breakers."""
        snap = self._stats.snapshot()
        now = self.clock.now()
        snap["groups"] = {
            name: {
                "backend": g.backend,
                "queue_depth": g.sched.depth(),
                "queue_by_priority": g.sched.queue.depth_by_level(),
                "rate_limit_waits": g.sched.rate_limit_waits,
                "servers": [
                    {
                        "server": s.name,
                        "breaker": s.breaker.current(now).value,
                        "breaker_trips": s.breaker.trips,
                        "keys": [
                            {
                                "key": k.label,
                                "in_flight": k.in_flight,
                                "sent": k.sent,
                                "cooling_down_s": round(max(0.0, k.cooldown_until - now), 3),
                            }
                            for k in s.keys
                        ],
                    }
                    for s in g.sched.pool.servers
                ],
            }
            for name, g in self._groups.items()
        }
        return snap

    def reset_stats(self) -> None:
        self._stats.reset()

    async def close(self) -> None:
        await self._batcher.close()
        for store in self._stores:
            await store.close()
        for g in self._groups.values():
            g.sched.close()
        for t in [self._transport, *self._own_transports]:
            await t.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class Client:
    """The synchronous facade, safe from many threads at once.

    Every thread's calls run on one event loop in a background thread, so
    they share one scheduler and limits hold across threads.
    """

    def __init__(self, endpoints: Iterable[Endpoint] | None = None, **kwargs: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="apimux-loop", daemon=True)
        self._thread.start()
        self._closed = False

        async def make() -> AsyncClient:
            return AsyncClient(endpoints, **kwargs)

        self.aio: AsyncClient = self._run(make())

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._closed:
            coro.close()
            raise RuntimeError("this Client is closed")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def chat(self, model: str, messages: list[Message], **kwargs: Any) -> ChatResponse:
        return self._run(self.aio.chat(model, messages, **kwargs))

    def chat_stream(self, model: str, messages: list[Message], **kwargs: Any) -> Iterator[ChatChunk]:
        return self._iterate(self.aio.chat_stream(model, messages, **kwargs))

    def _iterate(self, agen: AsyncIterator[ChatChunk]) -> Iterator[ChatChunk]:
        """Drive an async stream from this thread, one chunk per hop to the loop."""
        assert isinstance(agen, AsyncGenerator)
        try:
            while True:
                try:
                    yield self._run(_next(agen))
                except StopAsyncIteration:
                    return
        finally:
            if not self._closed:
                self._run(agen.aclose())

    def embed(self, model: str, inputs: str | list[str], **kwargs: Any) -> EmbedResponse:
        return self._run(self.aio.embed(model, inputs, **kwargs))

    def generate(self, model: str, prompt: str, **kwargs: Any) -> ChatResponse:
        return self._run(self.aio.generate(model, prompt, **kwargs))

    def generate_stream(self, model: str, prompt: str, **kwargs: Any) -> Iterator[ChatChunk]:
        return self._iterate(self.aio.generate_stream(model, prompt, **kwargs))

    def call(self, op: str, model: str, params: dict[str, Any], **kwargs: Any) -> Any:
        return self._run(self.aio.call(op, model, params, **kwargs))

    def models(self, backend: str) -> list[ModelInfo]:
        return self._run(self.aio.models(backend))

    def rerank(self, model: str, query: str, texts: list[str], **kwargs: Any) -> RerankResponse:
        return self._run(self.aio.rerank(model, query, texts, **kwargs))

    def infer(self, model: str, inputs: Any, **kwargs: Any) -> InferResponse:
        return self._run(self.aio.infer(model, inputs, **kwargs))

    def stats(self) -> dict[str, Any]:
        async def snap() -> dict[str, Any]:
            return self.aio.stats()

        return self._run(snap())

    def reset_stats(self) -> None:
        async def reset() -> None:
            self.aio.reset_stats()

        self._run(reset())

    def close(self) -> None:
        if self._closed:
            return
        self._run(self.aio.close())
        self._closed = True
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def _next(agen: AsyncGenerator[T, None]) -> T:
    return await agen.__anext__()
