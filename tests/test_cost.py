from __future__ import annotations

import pytest

from apimux.cost import Price, PriceTable, format_cost
from apimux.errors import ConfigError
from apimux.types import Usage


def test_known_price_from_genai_prices() -> None:
    table = PriceTable()
    c = table.cost("openai", "gpt-4o-mini", Usage(1_000_000, 1_000_000))
    assert c is not None and c > 0
    # cached: the same answer again
    assert table.cost("openai", "gpt-4o-mini", Usage(1_000_000, 1_000_000)) == c


def test_groq_and_gemini_names_map_to_genai_prices() -> None:
    table = PriceTable()
    assert table.known("groq", "llama-3.1-8b-instant")
    assert table.known("gemini", "gemini-1.5-flash")


def test_unknown_model_is_none_not_zero() -> None:
    table = PriceTable()
    assert table.cost("openai", "no-such-model-xyz", Usage(10, 10)) is None
    assert table.cost("vllm", "my-finetune", Usage(10, 10)) is None
    assert format_cost(None) == "unknown"


def test_local_is_free_and_known() -> None:
    table = PriceTable()
    assert table.cost("local", "all-MiniLM-L6-v2", Usage(500)) == 0.0
    assert format_cost(0.0) == "$0"


def test_override_from_config_wins() -> None:
    table = PriceTable.from_config(
        {"prices": {"openai/gpt-4o-mini": {"input_per_mtok": 1.0, "output_per_mtok": 2.0},
                    "vllm/my-finetune": {"input_per_mtok": 0.5}}}
    )
    assert table.cost("openai", "gpt-4o-mini", Usage(1_000_000, 500_000)) == pytest.approx(2.0)
    assert table.cost("vllm", "my-finetune", Usage(2_000_000, 9)) == pytest.approx(1.0)
    assert table.overrides["vllm/my-finetune"] == Price(0.5, 0.0)


@pytest.mark.parametrize(
    "prices",
    [
        {"gpt-4o-mini": {"input_per_mtok": 1.0}},
        {"openai/x": {"input": 1.0}},
        {"openai/x": {"input_per_mtok": -1}},
        {"openai/x": 3},
        [1, 2],
    ],
)
def test_bad_price_config(prices: object) -> None:
    with pytest.raises(ConfigError):
        PriceTable.from_config({"prices": prices})


def test_format_cost() -> None:
    assert format_cost(1.23456) == "$1.2346"
    assert format_cost(0.00021) == "$0.00021"
