"""The core's promises, checked against the OpenAI simulator on loopback."""

from __future__ import annotations

import asyncio
import threading

import pytest

from apimux import (
    AsyncClient,
    AuthError,
    BadRequest,
    CircuitOpen,
    Client,
    Endpoint,
    FakeClock,
    Priority,
    QueueFull,
    RetrySettings,
    Settings,
    UpstreamError,
)
from apimux.testing import Fault, OpenAISim

MODEL = "openai/gpt-4o-mini"


def msg(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def client_for(sim: OpenAISim, clock: FakeClock, keys: list[str] | None = None, **kw: object) -> AsyncClient:
    settings = kw.pop("settings", None)
    ep = Endpoint("openai", base_url=sim.base_url, api_keys=keys or ["sk-test-key-0001"], **kw)  # type: ignore[arg-type]
    return AsyncClient([ep], clock=clock, settings=settings)  # type: ignore[arg-type]


async def test_priority_order_under_saturation(sim: OpenAISim, clock: FakeClock) -> None:
    sim.faults.latency = 0.05
    async with client_for(sim, clock, max_concurrent=1) as c:
        first = asyncio.create_task(c.chat(MODEL, msg("first")))
        while not sim.requests:
            await asyncio.sleep(0.001)
        tasks = []
        for prio in (Priority.LOW, Priority.NORMAL, Priority.HIGH):
            for i in range(3):
                tasks.append(asyncio.create_task(c.chat(MODEL, msg(f"{prio.name}-{i}"), priority=prio)))
        await asyncio.sleep(0.01)
        await asyncio.gather(first, *tasks)
    order = [r.json["messages"][0]["content"] for r in sim.requests]
    assert order == ["first"] + [f"{p}-{i}" for p in ("HIGH", "NORMAL", "LOW") for i in range(3)]


async def test_concurrency_cap_never_exceeded(sim: OpenAISim, clock: FakeClock) -> None:
    sim.faults.latency = 0.01
    async with client_for(sim, clock, keys=["sk-a-000000001", "sk-b-000000002"], max_concurrent=3) as c:
        await asyncio.gather(*(c.chat(MODEL, msg(str(i))) for i in range(60)))
    assert len(sim.requests) == 60
    assert sim.peak_in_flight == 6  # 3 per key, both keys saturated
    per_key_peak = c.stats()["groups"]["openai"]["servers"][0]["keys"]
    assert all(k["in_flight"] == 0 for k in per_key_peak)


async def test_backpressure_lets_gather_over_many_calls_just_work(sim: OpenAISim, clock: FakeClock) -> None:
    settings = Settings(queue_size=4)
    async with client_for(sim, clock, max_concurrent=2, settings=settings) as c:
        results = await asyncio.gather(*(c.chat(MODEL, msg(f"m{i}")) for i in range(300)))
    assert len(results) == 300 and len(sim.requests) == 300


async def test_queue_full_when_caller_will_not_wait(sim: OpenAISim, clock: FakeClock) -> None:
    sim.faults.latency = 0.05
    settings = Settings(queue_size=2)
    async with client_for(sim, clock, max_concurrent=1, settings=settings) as c:
        busy = [asyncio.create_task(c.chat(MODEL, msg(str(i)))) for i in range(3)]  # 1 running + 2 queued
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFull) as info:
            await c.chat(MODEL, msg("one too many"), wait=False)
        assert info.value.backend == "openai" and "full" in str(info.value)
        with pytest.raises(QueueFull):
            await c.chat(MODEL, msg("waits a little"), queue_timeout=0.001)
        await asyncio.gather(*busy)
    assert c.stats()["totals"]["rejected"] == {"QueueFull": 2}


async def test_retry_after_honoured_per_key_while_other_keys_work(sim: OpenAISim) -> None:
    clock = FakeClock(autojump=False)  # time moves only when the test says so
    keys = ["sk-key-aaaa0001", "sk-key-bbbb0002", "sk-key-cccc0003"]
    sim.faults.script(Fault(status=429, retry_after=20, key=keys[0]))
    # One slot per key, so every later send on key 0 was decided after the 429 came back.
    async with client_for(sim, clock, keys=keys, max_concurrent=1) as c:
        results = await asyncio.gather(*(c.chat(MODEL, msg(f"m{i}")) for i in range(30)))
        assert all(r.text.startswith("echo:") for r in results)
        # All 30 were served by the other two keys without any time passing.
        assert sim.count_by_key() == {keys[0]: 1, keys[1]: 15, keys[2]: 15}
        limited = sim.requests[0].json["messages"]
        retried = [r for r in sim.requests[1:] if r.json["messages"] == limited]
        assert len(retried) == 1 and retried[0].key != keys[0]
        clock.advance(19.9)
        await asyncio.gather(*(c.chat(MODEL, msg(f"n{i}")) for i in range(6)))
        assert sim.count_by_key()[keys[0]] == 1  # still inside the announced delay
        clock.advance(0.2)
        await asyncio.gather(*(c.chat(MODEL, msg(f"p{i}")) for i in range(6)))
        assert sim.count_by_key()[keys[0]] >= 2  # back in use once the delay passed


async def test_all_keys_limited_waits_for_the_server_delay(sim: OpenAISim, clock: FakeClock) -> None:
    sim.faults.script(Fault(status=429, retry_after=7))
    async with client_for(sim, clock) as c:
        r = await c.chat(MODEL, msg("patience"))
    assert r.info.attempts == 2
    # The call's timeline: queued, each attempt sent, answered (wall clock).
    assert r.info.queued_at <= r.info.attempt_times[0] < r.info.attempt_times[1] - 6.9 <= r.info.finished_at
    assert sim.requests[1].at - sim.requests[0].at >= 7


async def test_after_cooldown_one_probe_then_ramp(sim: OpenAISim) -> None:
    clock = FakeClock(autojump=False)
    sim.faults.latency = 0.02
    async with client_for(sim, clock, max_concurrent=4) as c:
        sim.faults.script(Fault(status=429, retry_after=5))
        first = asyncio.create_task(c.chat(MODEL, msg("trigger")))
        while not sim.requests:
            await asyncio.sleep(0.001)
        await asyncio.sleep(0.05)  # the 429 has come back: the key is cooling down
        herd = [asyncio.create_task(c.chat(MODEL, msg(f"h{i}"))) for i in range(11)]
        await asyncio.sleep(0.05)
        assert len(sim.requests) == 1  # nobody sent inside the delay
        clock.advance(5)
        await asyncio.gather(first, *herd)
    after = sim.requests[1:]
    assert after[0].in_flight == 1  # one probe alone, not a herd at the instant the delay ended
    assert after[1].in_flight <= 2  # then the key ramps back up: 1, 2, 4
    assert sim.peak_in_flight <= 4


async def test_breaker_closed_open_half_open_closed(sim: OpenAISim) -> None:
    clock = FakeClock(autojump=False)
    settings = Settings(retry=RetrySettings(max_retries=0), breaker_threshold=5, breaker_recovery=30)
    sim.faults.script(*[Fault(status=503) for _ in range(5)])
    async with client_for(sim, clock, settings=settings) as c:
        for _ in range(5):
            with pytest.raises(UpstreamError) as info:
                await c.chat(MODEL, msg("x"))
            assert info.value.status == 503
        state = lambda: c.stats()["groups"]["openai"]["servers"][0]["breaker"]  # noqa: E731
        assert state() == "open"
        with pytest.raises(CircuitOpen):
            await c.chat(MODEL, msg("fast fail"))
        assert len(sim.requests) == 5  # the open breaker sent nothing
        clock.advance(30)
        assert state() == "half_open"
        sim.faults.script(Fault(status=503))
        with pytest.raises(UpstreamError):
            await c.chat(MODEL, msg("probe fails"))
        assert state() == "open"
        clock.advance(30)
        r = await c.chat(MODEL, msg("probe succeeds"))
        assert r.text == "echo: probe succeeds" and state() == "closed"
        assert c.stats()["groups"]["openai"]["servers"][0]["breaker_trips"] == 2


async def test_open_breaker_routes_to_another_server(clock: FakeClock) -> None:
    settings = Settings(retry=RetrySettings(max_retries=3, jitter=0), breaker_threshold=2)
    with OpenAISim(clock=clock) as bad, OpenAISim(clock=clock) as good:
        bad.faults.error_rate, bad.faults.error_status = 1.0, 500
        eps = [
            Endpoint("openai", base_url=s.base_url, api_keys=["sk-same-key-0001"], max_concurrent=1)
            for s in (bad, good)
        ]
        async with AsyncClient(eps, clock=clock, settings=settings) as c:
            results = await asyncio.gather(*(c.chat(MODEL, msg(str(i))) for i in range(20)))
        assert len(results) == 20
        # Two failures open the bad server's breaker; after that only a rare
        # half-open probe reaches it, and every call is served by the good one.
        assert len(bad.requests) <= 4 and len(good.requests) == 20
        assert c.stats()["groups"]["openai"]["servers"][0]["breaker_trips"] >= 1


async def test_round_robin_spreads_evenly(sim: OpenAISim, clock: FakeClock) -> None:
    keys = [f"sk-rr-key-{i:05d}" for i in range(3)]
    async with client_for(sim, clock, keys=keys) as c:
        for i in range(9):
            await c.chat(MODEL, msg(str(i)))
    assert [r.key for r in sim.requests] == keys * 3


async def test_least_loaded_prefers_idle_keys(sim: OpenAISim, clock: FakeClock) -> None:
    keys = [f"sk-ll-key-{i:05d}" for i in range(3)]
    sim.faults.latency = 0.02
    async with client_for(sim, clock, keys=keys, key_strategy="least_loaded", max_concurrent=5) as c:
        await asyncio.gather(*(c.chat(MODEL, msg(str(i))) for i in range(3)))
        sim.faults.latency = 0
        await asyncio.gather(*(c.chat(MODEL, msg(str(i))) for i in range(30)))
    counts = sim.count_by_key()
    assert set(counts) == set(keys)
    assert max(counts.values()) - min(counts.values()) <= 2
    assert [r.key for r in sim.requests[:3]] and len({r.key for r in sim.requests[:3]}) == 3


async def test_cancellation_frees_the_slot_and_the_place(sim: OpenAISim, clock: FakeClock) -> None:
    sim.faults.latency = 0.2
    async with client_for(sim, clock, max_concurrent=1, settings=Settings(queue_size=1)) as c:
        running = asyncio.create_task(c.chat(MODEL, msg("slow")))
        queued = asyncio.create_task(c.chat(MODEL, msg("never sent")))
        await asyncio.sleep(0.02)
        running.cancel()
        queued.cancel()
        await asyncio.gather(running, queued, return_exceptions=True)
        sim.faults.latency = 0
        r = await asyncio.wait_for(c.chat(MODEL, msg("after")), 2)
        assert r.text == "echo: after"
        keys = c.stats()["groups"]["openai"]["servers"][0]["keys"]
        assert keys[0]["in_flight"] == 0 and c.stats()["groups"]["openai"]["queue_depth"] == 0
    assert "never sent" not in [rq.json["messages"][0]["content"] for rq in sim.requests]


async def test_bad_request_raised_at_once_with_service_message(sim: OpenAISim, clock: FakeClock) -> None:
    sim.faults.script(Fault(status=400, message="Invalid value for 'temperature': must be <= 2."))
    async with client_for(sim, clock) as c:
        with pytest.raises(BadRequest) as info:
            await c.chat(MODEL, msg("x"), temperature=9)
    err = info.value
    assert "must be <= 2" in str(err) and err.status == 400 and err.attempts == 1
    assert err.backend == "openai" and err.request_id and err.model == "gpt-4o-mini"
    assert len(sim.requests) == 1 and clock.sleeps == []


async def test_simulator_validation_reaches_the_caller(sim: OpenAISim, clock: FakeClock) -> None:
    async with client_for(sim, clock) as c:
        with pytest.raises(BadRequest, match="role"):
            await c.chat(MODEL, [{"role": "wizard", "content": "x"}])


async def test_stats_add_up_to_what_the_simulator_saw(sim: OpenAISim, clock: FakeClock) -> None:
    sim.faults.error_rate, sim.faults.error_status = 0.3, 502
    settings = Settings(retry=RetrySettings(max_retries=10), breaker_threshold=1000)
    async with client_for(sim, clock, keys=["sk-s-00000001", "sk-s-00000002"], settings=settings) as c:
        results = await asyncio.gather(*(c.chat(MODEL, msg(f"count {i}")) for i in range(50)))
        totals = c.stats()["totals"]
    ok = [r for r in sim.requests]
    assert totals["requests"] == len(ok)
    assert totals["successes"] == 50 == len(results)
    assert totals["failures"].get("UpstreamError", 0) == len(ok) - 50 == totals["retries"]
    assert totals["prompt_tokens"] == sum(r.usage.prompt_tokens for r in results)
    assert totals["completion_tokens"] == sum(r.usage.completion_tokens for r in results)
    per_key = {s["endpoint"]: s["requests"] for s in c.stats()["series"]}
    assert sum(per_key.values()) == len(sim.requests)


async def test_streaming_with_usage(sim: OpenAISim, clock: FakeClock) -> None:
    async with client_for(sim, clock) as c:
        chunks = [ch async for ch in c.chat_stream(MODEL, msg("one two three"))]
        totals = c.stats()["totals"]
    assert "".join(ch.text for ch in chunks) == "echo: one two three"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4
    assert any(ch.finish_reason == "stop" for ch in chunks)
    body = sim.requests[0].json
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert totals["completion_tokens"] == 4 and totals["successes"] == 1


async def test_stream_retried_before_first_chunk_and_interrupted_after(sim: OpenAISim, clock: FakeClock) -> None:
    from apimux import StreamInterrupted

    sim.faults.script(Fault(status=503), Fault(cut_stream_after=2))
    async with client_for(sim, clock) as c:
        got: list[str] = []
        with pytest.raises(StreamInterrupted):
            async for ch in c.chat_stream(MODEL, msg("a b c d")):
                got.append(ch.text)
        assert got  # partial text reached the caller before the cut
    assert len(sim.requests) == 2


async def test_malformed_json_is_retried_as_upstream_error(sim: OpenAISim, clock: FakeClock) -> None:
    sim.faults.script(Fault(malformed=True))
    async with client_for(sim, clock) as c:
        r = await c.chat(MODEL, msg("x"))
    assert r.info.attempts == 2


async def test_request_id_sent_upstream_and_returned(sim: OpenAISim, clock: FakeClock) -> None:
    async with client_for(sim, clock) as c:
        r = await c.chat(MODEL, msg("x"))
    assert sim.requests[0].headers["x-request-id"] == r.request_id
    import uuid

    assert uuid.UUID(r.request_id).version == 4


def test_32_threads_share_one_client_and_its_limits(sim: OpenAISim) -> None:
    sim.faults.latency = 0.005
    with Client([Endpoint("openai", base_url=sim.base_url, api_keys=["sk-thread-0001"], max_concurrent=4)]) as c:
        errors: list[BaseException] = []
        texts: list[str] = []
        lock = threading.Lock()

        def work(n: int) -> None:
            try:
                for j in range(5):
                    t = c.chat(MODEL, msg(f"t{n}-{j}")).text
                    with lock:
                        texts.append(t)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(32)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert sorted(texts) == sorted(f"echo: t{n}-{j}" for n in range(32) for j in range(5))
        assert sim.peak_in_flight <= 4
        assert c.stats()["totals"]["successes"] == 160


async def test_read_timeout_is_a_retried_timeout(sim: OpenAISim, clock: FakeClock) -> None:
    from apimux import Timeout

    sim.faults.script(Fault(latency=0.3))  # slower than the endpoint's read timeout, once
    async with client_for(sim, clock, read_timeout=0.1) as c:
        r = await c.chat(MODEL, msg("eventually"))
        assert r.info.attempts == 2 and c.stats()["totals"]["failures"] == {"Timeout": 1}
        sim.faults.script(*[Fault(latency=0.3) for _ in range(2)])
        with pytest.raises(Timeout):
            await c.chat(MODEL, msg("never"), max_retries=1)


async def test_refused_connection_is_connection_failed(clock: FakeClock) -> None:
    import socket

    from apimux import ConnectionFailed

    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ep = Endpoint("openai", base_url=f"http://127.0.0.1:{port}/v1", api_keys=["sk-nobody-0001"])
    async with AsyncClient([ep], clock=clock, settings=Settings(retry=RetrySettings(max_retries=2))) as c:
        with pytest.raises(ConnectionFailed) as info:
            await c.chat(MODEL, msg("x"))
    assert info.value.attempts == 3 and info.value.endpoint and "sk-nobody-0001" not in str(info.value)


async def test_keys_never_appear_whole(sim: OpenAISim, clock: FakeClock) -> None:
    import json as _json

    keys = ["sk-proj-SECRETSECRET0001", "sk-proj-SECRETSECRET0002"]
    sim.faults.script(Fault(status=500), Fault(status=401))
    async with client_for(sim, clock, keys=keys) as c:
        with pytest.raises(AuthError) as info:
            await c.chat(MODEL, msg("x"))
        text = " ".join([str(info.value), repr(info.value), _json.dumps(info.value.to_dict()),
                         _json.dumps(c.stats()), repr(c.endpoints)])
    for k in keys:
        assert k not in text and k[4:-4] not in text
    assert "sk-p…0001" in text


async def test_endpoints_on_one_base_url_share_its_breaker(sim: OpenAISim) -> None:
    clock = FakeClock(autojump=False)
    settings = Settings(retry=RetrySettings(max_retries=0), breaker_threshold=2)
    eps = [Endpoint("openai", base_url=sim.base_url, api_keys=[f"sk-team-{i}-00001"]) for i in range(2)]
    sim.faults.script(Fault(status=502), Fault(status=502))
    async with AsyncClient(eps, clock=clock, settings=settings) as c:
        for _ in range(2):
            with pytest.raises(UpstreamError):
                await c.chat(MODEL, msg("x"))
        with pytest.raises(CircuitOpen):  # the other endpoint's keys hit the same sick server
            await c.chat(MODEL, msg("x"))
    assert len(sim.requests) == 2


async def test_a_caller_cancelled_while_waiting_for_a_place_is_cancelled(sim: OpenAISim) -> None:
    clock = FakeClock(autojump=False)
    sim.faults.latency = 0.1
    async with client_for(sim, clock, max_concurrent=1, settings=Settings(queue_size=1)) as c:
        busy = [asyncio.create_task(c.chat(MODEL, msg(str(i)))) for i in range(2)]  # running + queued
        await asyncio.sleep(0.01)
        waiting = asyncio.create_task(c.chat(MODEL, msg("waits for a place")))
        timed = asyncio.create_task(c.chat(MODEL, msg("gives up"), queue_timeout=5))
        await asyncio.sleep(0.01)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert not timed.done()  # the queue timeout runs on the injected clock...
        clock.advance(5)
        with pytest.raises(QueueFull):  # ...and ends in QueueFull when it passes
            await timed
        await asyncio.gather(*busy)
        assert (await c.chat(MODEL, msg("room again"))).text == "echo: room again"


async def test_breaker_wait_lets_calls_wait_out_an_outage(sim: OpenAISim) -> None:
    clock = FakeClock(autojump=False)
    settings = Settings(retry=RetrySettings(max_retries=0), breaker_threshold=2, breaker_recovery=30,
                        breaker_wait=100)
    sim.faults.script(Fault(status=503), Fault(status=503))
    async with client_for(sim, clock, settings=settings) as c:
        for _ in range(2):
            with pytest.raises(UpstreamError):
                await c.chat(MODEL, msg("outage"))
        waiting = [asyncio.create_task(c.chat(MODEL, msg(f"w{i}"))) for i in range(5)]
        await asyncio.sleep(0.02)
        assert not any(t.done() for t in waiting) and len(sim.requests) == 2  # nothing sent to the open server
        clock.advance(30)  # half-open: one probe, it succeeds, the breaker closes, the rest follow
        results = await asyncio.gather(*waiting)
        assert [r.text for r in results] == [f"echo: w{i}" for i in range(5)]
    # A wait has a limit: past breaker_wait (here shorter than the recovery) the call fails.
    short = Settings(retry=RetrySettings(max_retries=0), breaker_threshold=2, breaker_recovery=30, breaker_wait=10)
    sim.faults.script(Fault(status=503), Fault(status=503))
    async with client_for(sim, clock, settings=short) as c:
        for _ in range(2):
            with pytest.raises(UpstreamError):
                await c.chat(MODEL, msg("outage again"))
        late = asyncio.create_task(c.chat(MODEL, msg("gives up")))
        await asyncio.sleep(0.02)
        assert not late.done()
        clock.advance(10)
        with pytest.raises(CircuitOpen):
            await late


def test_sync_client_generate_and_streams() -> None:
    from apimux.testing import OllamaSim

    with OllamaSim() as s, Client([Endpoint("ollama", base_url=s.url)]) as c:
        assert c.generate("ollama/test-model", "one two").text == "echo: one two"
        streamed = "".join(ch.text for ch in c.generate_stream("ollama/test-model", "three four"))
        assert streamed == "echo: three four"
        chat = "".join(ch.text for ch in c.chat_stream("ollama/test-model", msg("five")))
        assert chat == "echo: five"
