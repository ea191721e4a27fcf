from email.utils import formatdate

import pytest

from apimux.core.retry import RetrySettings, backoff, decide, is_upstream_failure, parse_duration, parse_retry_after
from apimux.errors import (
    AuthError,
    BadRequest,
    ConnectionFailed,
    NotFound,
    Overloaded,
    RateLimited,
    Timeout,
    UpstreamError,
    error_for_status,
)


def test_backoff_grows_by_factor_and_caps_without_jitter() -> None:
    s = RetrySettings(jitter=0)
    assert [backoff(i, s, 0.5) for i in range(6)] == [1, 2, 4, 8, 16, 16]


def test_backoff_jitter_adds_at_most_the_fraction_and_never_passes_max() -> None:
    s = RetrySettings(jitter=0.25)
    assert backoff(1, s, 0.0) == 2.0
    assert backoff(1, s, 0.999) == pytest.approx(2.4995)
    assert backoff(10, s, 0.999) == 16.0


def test_retry_after_forms() -> None:
    assert parse_retry_after({"retry-after": "7"}, 0) == 7.0
    assert parse_retry_after({"retry-after": "1.5"}, 0) == 1.5
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}, 0) == 0.25
    now = 1_700_000_000.0
    assert parse_retry_after({"retry-after": formatdate(now + 30, usegmt=True)}, now) == pytest.approx(30, abs=1)
    assert parse_retry_after({"retry-after": "soon"}, now) is None
    assert parse_retry_after({}, now) is None


def test_openai_reset_durations() -> None:
    assert parse_duration("1s") == 1.0
    assert parse_duration("6m0s") == 360.0
    assert parse_duration("20ms") == 0.02
    assert parse_duration("1h2m3.5s") == 3723.5
    assert parse_duration("2.5") == 2.5
    assert parse_duration("abc") is None


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504, 529])
def test_retried_statuses(status: int) -> None:
    assert error_for_status(status).retryable


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 422])
def test_never_retried_statuses(status: int) -> None:
    err = error_for_status(status)("x")
    assert not err.retryable
    assert not decide(err, 0, RetrySettings()).retry


def test_status_classes() -> None:
    assert error_for_status(401) is AuthError and error_for_status(404) is NotFound
    assert error_for_status(422) is BadRequest and error_for_status(529) is Overloaded


def test_decide_honours_server_delay_capped() -> None:
    s = RetrySettings(max_retry_after=60)
    assert decide(UpstreamError("x", retry_after=3), 0, s).delay == 3
    assert decide(UpstreamError("x", retry_after=600), 0, s).delay == 60
    assert decide(UpstreamError("x"), 2, RetrySettings(jitter=0)).delay == 4


def test_rate_limited_cools_the_key_instead_of_sleeping() -> None:
    d = decide(RateLimited("x", retry_after=5), 0, RetrySettings())
    assert d.retry and d.delay == 0 and d.key_cooldown == 5


def test_gives_up_after_max_retries() -> None:
    s = RetrySettings(max_retries=2)
    assert decide(UpstreamError("x"), 1, s).retry
    assert not decide(UpstreamError("x"), 2, s).retry


def test_breaker_counts_only_upstream_failures() -> None:
    for err in (UpstreamError("x"), Timeout("x"), ConnectionFailed("x"), Overloaded("x")):
        assert is_upstream_failure(err)
    for err in (RateLimited("x"), BadRequest("x"), AuthError("x"), NotFound("x")):
        assert not is_upstream_failure(err)
