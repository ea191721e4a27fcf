"""The chat backends the conformance battery runs over.

A backend is not done until it has a case here and the battery passes for it.
Each case says how to start its simulator, how to point an Endpoint at it,
and where its protocol puts the system prompt.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from apimux import Endpoint
from apimux.testing import (
    AnthropicSim,
    GeminiSim,
    OllamaSim,
    OpeaSim,
    OpenAISim,
    OVMSSim,
    Recorded,
    SimServer,
    TGISim,
)


@dataclass
class ChatCase:
    backend: str  # apimux backend name (model strings are f"{backend}/{model}")
    make_sim: Callable[..., SimServer]  # called with keys=set[str] | None, clock=FakeClock
    endpoint: Callable[[SimServer, list[str]], Endpoint]  # the Endpoint for that sim with those keys
    system_of: Callable[[Recorded], Any]  # the system prompt as the sim received it
    model: str = "test-model"
    keyed: bool = True  # False for backends without API keys (Ollama, ...)
    streams: bool = True

    def __str__(self) -> str:
        return self.backend


def _openai_system(rec: Recorded) -> Any:
    return next((m["content"] for m in rec.json["messages"] if m["role"] == "system"), None)


def _openai_case(backend: str, **sim_kwargs: Any) -> ChatCase:
    return ChatCase(
        backend=backend,
        make_sim=lambda **kw: OpenAISim(**sim_kwargs, **kw),
        endpoint=lambda sim, keys: Endpoint(backend, base_url=sim.base_url, api_keys=keys),  # type: ignore[attr-defined]
        system_of=_openai_system,
    )


CHAT_CASES: list[ChatCase] = [
    _openai_case("openai"),
    _openai_case("groq", prefix="/openai/v1", flavor="groq"),
    _openai_case("vllm"),
    ChatCase("anthropic", AnthropicSim, lambda sim, keys: Endpoint("anthropic", base_url=sim.url, api_keys=keys),
             AnthropicSim.system_of),
    ChatCase("gemini", GeminiSim, lambda sim, keys: Endpoint("gemini", base_url=sim.url, api_keys=keys),
             GeminiSim.system_of),
    ChatCase("ollama", OllamaSim, lambda sim, keys: Endpoint("ollama", base_url=sim.url), _openai_system,
             keyed=False),
    ChatCase("hf_tgi", TGISim, lambda sim, keys: Endpoint("hf_tgi", base_url=sim.url, api_keys=keys), _openai_system),
    ChatCase("opea", OpeaSim, lambda sim, keys: Endpoint("opea", base_url=sim.url, api_keys=keys), _openai_system),
    # OpenVINO Model Server's OpenAI-compatible /v3 routes, through the "ovms" backend.
    ChatCase("ovms", OVMSSim, lambda sim, keys: Endpoint("ovms", base_url=sim.url, api_keys=keys), _openai_system),
]
