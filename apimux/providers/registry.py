"""Providers register themselves by name; nothing dispatches on names with if/elif."""

from __future__ import annotations

from typing import TYPE_CHECKING

from apimux.errors import ConfigError

if TYPE_CHECKING:
    from apimux.providers.base import Provider

_PROVIDERS: dict[str, type[Provider]] = {}
_ALIASES: dict[str, str] = {}


def register(cls: type[Provider]) -> type[Provider]:
    """Class decorator: make a provider reachable by its name and aliases."""
    _PROVIDERS[cls.name] = cls
    for alias in cls.aliases:
        _ALIASES[alias] = cls.name
    return cls


def get(name: str) -> type[Provider]:
    _load_builtin()
    real = _ALIASES.get(name, name)
    try:
        return _PROVIDERS[real]
    except KeyError:
        known = ", ".join(sorted(_PROVIDERS))
        raise ConfigError(f"unknown backend {name!r}; known backends: {known}", backend=name) from None


def all_providers() -> list[type[Provider]]:
    _load_builtin()
    return list(_PROVIDERS.values())


def canonical(name: str) -> str:
    _load_builtin()
    return _ALIASES.get(name, name)


def _load_builtin() -> None:
    # Importing the package registers every built-in provider exactly once.
    import apimux.providers  # noqa: F401
