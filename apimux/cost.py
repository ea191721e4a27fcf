"""What a call cost, in US dollars, from its usage.

Prices come from the maintained ``genai-prices`` table, can be overridden
per model in the config file::

    [prices."openai/gpt-4o-mini"]
    input_per_mtok = 0.15    # USD per million prompt tokens
    output_per_mtok = 0.6    # USD per million completion tokens

and a model whose price nobody knows costs ``None`` ("unknown"), never $0.
The in-process ``local`` backend is known to be free.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from apimux.errors import ConfigError
from apimux.types import Usage

# apimux backend name -> genai-prices provider id, where they differ or exist.
PROVIDER_IDS: dict[str, str] = {
    "openai": "openai",
    "anthropic": "anthropic",
    "groq": "groq",
    "gemini": "google",
    "google": "google",
    "mistral": "mistral",
    "bedrock": "aws",
}
# Backends that run on the caller's own machine: a known price of zero.
FREE_BACKENDS = frozenset({"local"})
_FIELDS = ("input_per_mtok", "output_per_mtok")


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million prompt / completion tokens."""

    input_per_mtok: float
    output_per_mtok: float = 0.0

    def of(self, usage: Usage) -> float:
        return (usage.prompt_tokens * self.input_per_mtok + usage.completion_tokens * self.output_per_mtok) / 1e6


class PriceTable:
    """``cost(backend, model, usage) -> float | None``, the ``AsyncClient(cost=...)`` hook."""

    def __init__(self, overrides: Mapping[str, Price] | None = None, *, use_genai_prices: bool = True) -> None:
        self.overrides: dict[str, Price] = dict(overrides or {})
        self.use_genai_prices = use_genai_prices
        # (backend, model) -> Price, a genai-prices ModelPrice (tiered), or None (unknown)
        self._cache: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, data: Mapping[str, Any] | None) -> PriceTable:
        """From a config file's ``[prices."backend/model"]`` tables."""
        prices = (data or {}).get("prices", {})
        if not isinstance(prices, Mapping):
            raise ConfigError('\'prices\' must be a table of [prices."backend/model"] tables')
        overrides = {}
        for model, spec in prices.items():
            if "/" not in model:
                raise ConfigError(f"price for {model!r}: name the model as 'backend/model'")
            if not isinstance(spec, Mapping):
                raise ConfigError(f"price for {model!r} must be a table with input_per_mtok and output_per_mtok")
            unknown = set(spec) - set(_FIELDS)
            if unknown or "input_per_mtok" not in spec:
                raise ConfigError(
                    f"price for {model!r}: fields are input_per_mtok (required) and output_per_mtok"
                    + (f"; unknown: {', '.join(sorted(unknown))}" if unknown else "")
                )
            values = [spec.get(f, 0.0) for f in _FIELDS]
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in values):
                raise ConfigError(f"price for {model!r}: prices must be non-negative numbers (USD per million tokens)")
            overrides[model] = Price(float(values[0]), float(values[1]))
        return cls(overrides)

    def cost(self, backend: str, model: str, usage: Usage) -> float | None:
        price = self.price(backend, model)
        if price is None:
            return None
        if isinstance(price, Price):
            return price.of(usage)
        # A tiered genai-prices price (the rate depends on the prompt's size).
        from genai_prices import Usage as GUsage

        calc = price.calc_price(GUsage(input_tokens=usage.prompt_tokens, output_tokens=usage.completion_tokens))
        return float(calc["total_price"])

    def known(self, backend: str, model: str) -> bool:
        return self.price(backend, model) is not None

    def price(self, backend: str, model: str) -> Any:
        """A ``Price``, a tiered genai-prices ``ModelPrice``, or None when unknown."""
        key = (backend, model)
        try:
            return self._cache[key]
        except KeyError:
            pass
        found = self._lookup(backend, model)
        with self._lock:
            self._cache[key] = found
        return found

    def _lookup(self, backend: str, model: str) -> Any:
        override = self.overrides.get(f"{backend}/{model}")
        if override is not None:
            return override
        if backend in FREE_BACKENDS:
            return Price(0.0, 0.0)
        provider = PROVIDER_IDS.get(backend)
        if provider is None or not self.use_genai_prices:
            return None
        try:
            from genai_prices import Usage as GUsage
            from genai_prices import calc_price

            mp = calc_price(GUsage(input_tokens=0, output_tokens=0), model_ref=model, provider_id=provider).model_price
        except (LookupError, ValueError):
            return None
        inp, out = mp.input_mtok, mp.output_mtok
        flat = (Decimal, int, float, type(None))
        if isinstance(inp, flat) and isinstance(out, flat):
            if inp is None and out is None:
                return None
            return Price(float(inp or 0), float(out or 0))
        return mp  # tiered: computed per call


def format_cost(value: float | None) -> str:
    """``$0.0012`` or ``unknown``; never shows an unknown price as $0."""
    if value is None:
        return "unknown"
    if value == 0:
        return "$0"
    if value < 0.01:
        return f"${value:.6f}".rstrip("0")
    return f"${value:,.4f}"
