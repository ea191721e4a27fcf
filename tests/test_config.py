from __future__ import annotations

import os
from pathlib import Path

import pytest

from apimux import AsyncClient, ConfigError, Endpoint, mask_key
from apimux.config import endpoints_from_env, load_toml, resolve
from apimux.errors import BadRequest

SECRET = "sk-proj-AAAABBBBCCCCDDDD1234"


def test_mask_key_never_shows_the_middle() -> None:
    assert mask_key(SECRET) == "sk-p…1234"
    assert mask_key("short") == "…"
    assert mask_key(None) == "-"
    assert mask_key("AKIAIOSFODNN7EXAMPLE:wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY") == "AKIA…MPLE:…"


def test_endpoint_repr_and_label_hide_keys() -> None:
    ep = Endpoint("openai", api_keys=[SECRET, "sk-other-XXXXYYYY9999"])
    assert SECRET not in repr(ep) and "sk-p…1234" in repr(ep)
    assert SECRET not in ep.label(SECRET)


def test_keys_from_env_single_comma_and_plural_variable() -> None:
    env = {"OPENAI_API_KEY": "k1, k2", "OPENAI_API_KEYS": "k3,k1", "GROQ_API_KEY": "g1",
           "OPENAI_BASE_URL": "http://127.0.0.1:9/v1"}
    eps = {e.backend: e for e in endpoints_from_env(env)}
    assert eps["openai"].keys == ["k1", "k2", "k3"]
    assert eps["openai"].base_url == "http://127.0.0.1:9/v1"
    assert eps["groq"].keys == ["g1"]
    assert "anthropic" not in eps


def test_no_arguments_discovers_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("APIMUX_CONFIG", raising=False)
    monkeypatch.setenv("GROQ_API_KEY", "gsk-env-key-0001")
    eps, _ = resolve()
    assert any(e.backend == "groq" and e.keys == ["gsk-env-key-0001"] for e in eps)


def write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    os.chmod(path, mode)
    return path


TOML = """
[settings]
max_retries = 2
queue_size = 7

[[endpoints]]
backend = "openai"
base_url = "http://127.0.0.1:1/v1"
api_keys = ["k-one-000001", "k-two-000002"]
max_concurrent = 3
rpm = 100
key_strategy = "least_loaded"

[[endpoints]]
backend = "groq"
name = "fast"
api_key_env = "MY_GROQ"
"""


def test_toml_endpoints_and_settings(tmp_path: Path) -> None:
    path = write(tmp_path / "apimux.toml", TOML)
    eps, settings = resolve(config=path, env={"MY_GROQ": "g-a,g-b"})
    assert settings.retry.max_retries == 2 and settings.queue_size == 7
    assert eps[0].keys == ["k-one-000001", "k-two-000002"] and eps[0].rpm == 100
    assert eps[0].key_strategy == "least_loaded"
    assert eps[1].name == "fast" and eps[1].keys == ["g-a", "g-b"]


def test_world_readable_key_file_is_refused_with_the_fix(tmp_path: Path) -> None:
    path = write(tmp_path / "apimux.toml", TOML, 0o644)
    with pytest.raises(ConfigError, match=r"chmod 600"):
        load_toml(path)


def test_config_file_from_env_variable(tmp_path: Path) -> None:
    path = write(tmp_path / "x.toml", TOML)
    eps, _ = resolve(env={"APIMUX_CONFIG": str(path), "MY_GROQ": "g"})
    assert [e.backend for e in eps] == ["openai", "groq"]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("[[endpoints]]\nbase_url='x'\n", "needs a 'backend'"),
        ("[[endpoints]]\nbackend='openai'\ncolour='red'\n", "unknown field"),
        ("[settings]\nretries=3\n", "unknown setting"),
        ("[[endpoints]]\nbackend='openai'\nmax_concurrent=0\n", "max_concurrent"),
        ("[[endpoints]]\nbackend='openai'\nkey_strategy='random'\n", "key_strategy"),
        ("[[endpoints]]\nbackend='openai'\napi_key_env='NOPE_NOT_SET'\n", "NOPE_NOT_SET"),
        ("not = [valid", "not valid TOML"),
    ],
)
def test_bad_config_names_the_problem(tmp_path: Path, text: str, match: str) -> None:
    path = write(tmp_path / "c.toml", text)
    with pytest.raises(ConfigError, match=match):
        resolve(config=path, env={})


def test_missing_config_file() -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_toml("/nonexistent/apimux.toml")


async def test_unknown_backend_and_missing_key_and_bad_model() -> None:
    async with AsyncClient([Endpoint("openai", api_keys=["k"])]) as c:
        with pytest.raises(ConfigError, match="unknown backend 'nosuch'"):
            await c.chat("nosuch/model", [{"role": "user", "content": "x"}])
        with pytest.raises(ConfigError, match="GROQ_API_KEY"):
            await c.chat("groq/llama", [{"role": "user", "content": "x"}])
        with pytest.raises(BadRequest, match="backend/model"):
            await c.chat("gpt-4o", [{"role": "user", "content": "x"}])
        with pytest.raises(BadRequest, match=r"messages\[0\]"):
            await c.chat("openai/gpt-4o", [{"content": "no role"}])
