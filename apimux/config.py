"""Endpoints and settings: from arguments, a TOML file, a dict, or the environment.

This module reads configuration and nothing else; it never opens a socket.
"""

from __future__ import annotations

import os
import stat
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from apimux.core.retry import RetrySettings
from apimux.errors import ConfigError

KEY_STRATEGIES = ("round_robin", "least_loaded")


def mask_key(key: str | None) -> str:
    """``sk-proj-abcdef123456`` -> ``sk-p…3456``; short keys show nothing.

    A compound credential ``ACCESS:SECRET[:TOKEN]`` (S3) shows only its
    masked first part: no character of the secret is ever printed.
    """
    if not key:
        return "-"
    if ":" in key:
        return mask_key(key.split(":", 1)[0]) + ":…"
    if len(key) < 12:
        return "…" + key[-2:] if len(key) > 6 else "…"
    return f"{key[:4]}…{key[-4:]}"


@dataclass(eq=False)
class Endpoint:
    """One server of a backend, with the keys that may be used on it.

    ``name`` groups endpoints: a model string ``name/model`` is served by
    every endpoint sharing that name (the backend name by default).
    ``max_concurrent``, ``rpm`` and ``tpm`` apply to each key.
    """

    backend: str
    base_url: str | None = None
    api_keys: list[str] | str | None = None
    name: str | None = None
    max_concurrent: int = 5
    rpm: float | None = None
    tpm: float | None = None
    key_strategy: str = "round_robin"
    timeout: float = 600.0
    connect_timeout: float = 10.0
    read_timeout: float | None = None
    headers: dict[str, str] = field(default_factory=dict)
    protocol: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.api_keys, str):
            self.api_keys = split_keys(self.api_keys)
        self.api_keys = list(self.api_keys or [])
        if self.name is None:
            self.name = self.backend
        if self.max_concurrent < 1:
            raise ConfigError(f"max_concurrent must be at least 1, got {self.max_concurrent}", backend=self.backend)
        if self.key_strategy not in KEY_STRATEGIES:
            raise ConfigError(
                f"key_strategy must be one of {', '.join(KEY_STRATEGIES)}, got {self.key_strategy!r}",
                backend=self.backend,
            )
        for label, value in (("rpm", self.rpm), ("tpm", self.tpm)):
            if value is not None and value <= 0:
                raise ConfigError(f"{label} must be positive, got {value}", backend=self.backend)
        if self.base_url:
            self.base_url = self.base_url.rstrip("/")

    @property
    def keys(self) -> list[str]:
        assert isinstance(self.api_keys, list)
        return self.api_keys

    def label(self, key: str | None = None) -> str:
        """A printable name: never the whole key."""
        host = self.base_url or "default"
        return f"{self.backend}@{host}" + (f"#{mask_key(key)}" if key else "")

    def __repr__(self) -> str:
        keys = ", ".join(mask_key(k) for k in self.keys)
        return f"Endpoint({self.backend!r}, base_url={self.base_url!r}, name={self.name!r}, keys=[{keys}])"


@dataclass(frozen=True)
class Settings:
    """Policy shared by all endpoints of a client."""

    retry: RetrySettings = field(default_factory=RetrySettings)
    breaker_threshold: int = 5
    breaker_recovery: float = 30.0
    queue_size: int = 100
    queue_aging: float = 30.0
    queue_timeout: float | None = None  # how long a caller waits for queue space; None = forever
    breaker_wait: float = 0.0  # how long a call may wait for an open breaker; 0 = CircuitOpen at once
    batch_window: float = 0.005
    send_request_id: bool = True


def split_keys(value: str) -> list[str]:
    return [k.strip() for k in value.split(",") if k.strip()]


def settings_from_mapping(data: Mapping[str, Any]) -> Settings:
    retry_names = {f.name for f in fields(RetrySettings)}
    own_names = {f.name for f in fields(Settings)} - {"retry"}
    unknown = set(data) - retry_names - own_names
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")
    retry = RetrySettings(**{k: v for k, v in data.items() if k in retry_names})
    return Settings(retry=retry, **{k: v for k, v in data.items() if k in own_names})


def endpoints_from_mapping(data: Mapping[str, Any], env: Mapping[str, str] | None = None) -> list[Endpoint]:
    """Endpoints from ``{"endpoints": [{...}, ...]}`` (a TOML file or metadata dict)."""
    env = os.environ if env is None else env
    items = data.get("endpoints", [])
    if not isinstance(items, list):
        raise ConfigError("'endpoints' must be a list of tables ([[endpoints]] in TOML)")
    allowed = {f.name for f in fields(Endpoint)} | {"api_key", "api_key_env"}
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, Mapping) or "backend" not in item:
            raise ConfigError(f"endpoint #{i + 1} needs a 'backend'")
        unknown = set(item) - allowed
        if unknown:
            raise ConfigError(f"endpoint #{i + 1} ({item['backend']}): unknown field(s) {', '.join(sorted(unknown))}")
        spec = dict(item)
        keys = split_keys(spec.pop("api_key", "") or "")
        env_name = spec.pop("api_key_env", None)
        if env_name:
            if env_name not in env:
                raise ConfigError(f"endpoint #{i + 1} ({item['backend']}): environment variable {env_name} is not set")
            keys += split_keys(env[env_name])
        listed = spec.pop("api_keys", None) or []
        spec["api_keys"] = (split_keys(listed) if isinstance(listed, str) else list(listed)) + keys
        try:
            out.append(Endpoint(**spec))
        except TypeError as exc:
            raise ConfigError(f"endpoint #{i + 1} ({item['backend']}): {exc}") from None
    return out


def load_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a config file, refusing one that holds keys others can read."""
    p = Path(path).expanduser()
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"config file {p} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {p}: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {p} is not valid TOML: {exc}") from None
    if _holds_keys(data) and os.name == "posix":
        mode = p.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(
                f"config file {p} holds API keys and is readable by other users "
                f"(mode {stat.filemode(mode)}); fix it with: chmod 600 {p}"
            )
    return data


def _holds_keys(data: Mapping[str, Any]) -> bool:
    eps = data.get("endpoints", [])
    return isinstance(eps, list) and any(
        isinstance(e, Mapping) and (e.get("api_keys") or e.get("api_key")) for e in eps
    )


def default_config_path(env: Mapping[str, str] | None = None) -> Path | None:
    """``$APIMUX_CONFIG``, else ``./apimux.toml``, else ``~/.config/apimux/apimux.toml``."""
    env = os.environ if env is None else env
    if env.get("APIMUX_CONFIG"):
        return Path(env["APIMUX_CONFIG"])
    for candidate in (Path("apimux.toml"), Path.home() / ".config" / "apimux" / "apimux.toml"):
        if candidate.is_file():
            return candidate
    return None


def endpoints_from_env(env: Mapping[str, str] | None = None) -> list[Endpoint]:
    """One endpoint per backend whose standard variables are set."""
    from apimux.providers import registry

    env = os.environ if env is None else env
    out = []
    for cls in registry.all_providers():
        discover = getattr(cls, "discover", None)
        if discover is not None:  # backends whose credentials are not one key (S3)
            out.extend(discover(env))
            continue
        keys = _env_keys(cls.env_keys, env)
        base_url = next((env[v] for v in cls.env_base_url if env.get(v)), None)
        if keys or (base_url and not cls.needs_key):
            out.append(Endpoint(cls.name, base_url=base_url, api_keys=keys))
    return out


def _env_keys(names: Iterable[str], env: Mapping[str, str]) -> list[str]:
    keys: list[str] = []
    for name in names:
        for var in (name, name.removesuffix("_KEY") + "_KEYS"):
            for k in split_keys(env.get(var, "")):
                if k not in keys:
                    keys.append(k)
    return keys


def resolve(
    endpoints: Iterable[Endpoint] | None = None,
    *,
    config: str | os.PathLike[str] | Mapping[str, Any] | None = None,
    settings: Settings | None = None,
    env: Mapping[str, str] | None = None,
) -> tuple[list[Endpoint], Settings]:
    """Endpoints and settings from, in order: arguments, a config, the environment."""
    eps = list(endpoints or [])
    data: Mapping[str, Any] = {}
    if isinstance(config, Mapping):
        data = config
    elif config is not None:
        data = load_toml(config)
    elif not eps:
        path = default_config_path(env)
        if path is not None:
            data = load_toml(path)
    eps += endpoints_from_mapping(data, env)
    if settings is None:
        settings = settings_from_mapping(data.get("settings", {}))
    if not eps:
        eps = endpoints_from_env(env)
    return eps, settings
