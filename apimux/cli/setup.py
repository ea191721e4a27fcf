"""Turning command-line options and the config file into one AsyncClient's inputs."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apimux.config import Endpoint, Settings, default_config_path, load_toml, resolve
from apimux.cost import PriceTable
from apimux.providers import registry


@dataclass(slots=True)
class Overrides:
    """Per-key limits from the command line; None keeps the config's value."""

    concurrency: int | None = None
    rpm: float | None = None
    tpm: float | None = None

    def fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.concurrency is not None:
            out["max_concurrent"] = self.concurrency
        if self.rpm is not None:
            out["rpm"] = self.rpm
        if self.tpm is not None:
            out["tpm"] = self.tpm
        return out


@dataclass(slots=True)
class Setup:
    endpoints: list[Endpoint]
    settings: Settings
    prices: PriceTable
    config_path: Path | None


def load(config: str | None, overrides: Overrides | None = None) -> Setup:
    """Endpoints (config file, else environment), settings and prices; raises ConfigError."""
    path = Path(config) if config else default_config_path()
    data: dict[str, Any] = load_toml(path) if path is not None else {}
    endpoints, settings = resolve(config=data)
    prices = PriceTable.from_config(data)
    changes = overrides.fields() if overrides else {}
    if changes:
        endpoints = [dataclasses.replace(e, **changes) for e in endpoints]
        # Backends that need no key are served without configuration; give
        # them an explicit endpoint so the overrides reach them too.
        named = {e.name for e in endpoints}
        for cls in registry.all_providers():
            if not cls.needs_key and cls.name not in named and getattr(cls, "discover", None) is None:
                endpoints.append(Endpoint(cls.name, **changes))
    return Setup(endpoints, settings, prices, path)


def group_names(endpoints: list[Endpoint]) -> set[str]:
    """Names a model prefix may use: configured groups and every backend."""
    names = {e.name for e in endpoints if e.name}
    for cls in registry.all_providers():
        names.add(cls.name)
        names.update(cls.aliases)
    return names
