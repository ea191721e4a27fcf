"""Shared fixtures: simulators on loopback and a virtual clock."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from apimux import FakeClock
from apimux.testing import OpenAISim


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sim(clock: FakeClock) -> Iterator[OpenAISim]:
    with OpenAISim(clock=clock) as s:
        yield s


USER = [{"role": "user", "content": "hello world"}]
