"""``apimux check``: is every configured endpoint reachable, and are its keys accepted?"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import time
from typing import Any

from rich.table import Table

from apimux.cli.progress import out_console
from apimux.cli.setup import load
from apimux.client import AsyncClient
from apimux.config import Endpoint
from apimux.errors import ApimuxError, AuthError, ConfigError, ConnectionFailed, Timeout
from apimux.providers import registry


def _targets(endpoints: list[Endpoint]) -> list[tuple[str, str, Endpoint]]:
    """One check per (endpoint, key): each key has its own credentials to test.
    ``(internal group, the configured group name, endpoint with that one key)``."""
    out = []
    for i, ep in enumerate(endpoints):
        for j, key in enumerate(ep.keys or [None]):
            one = dataclasses.replace(ep, api_keys=[key] if key else [], name=f"check-{i}-{j}")
            out.append((f"check-{i}-{j}", ep.name or ep.backend, one))
    return out


async def _check_one(client: AsyncClient, group: str, name: str, ep: Endpoint, timeout: float) -> dict[str, Any]:
    row: dict[str, Any] = {
        "group": name, "backend": ep.backend, "endpoint": ep.label(ep.keys[0] if ep.keys else None),
        "reachable": None, "auth": None, "models": None, "breaker": "-", "latency": None, "problem": "",
    }
    try:
        cls = registry.get(ep.backend)
    except ConfigError as exc:
        row["problem"] = exc.message
        return row
    # A backend without a model listing may still describe itself (TEI's /info).
    op = "models" if cls.supports("models") else "info" if cls.supports("info") else None
    if op is None:
        row["problem"] = "no model listing for this backend; not checked"
        return row
    t0 = time.monotonic()
    try:
        found = await asyncio.wait_for(client.call(op, f"{group}/-", {}, max_retries=0), timeout)
        if op == "models":
            models = [m.id for m in found]
        else:
            served = found.get("model_id") if isinstance(found, dict) else None
            models = [served] if isinstance(served, str) else []
        row.update(reachable=True, auth=True, models=models)
    except AuthError as exc:
        row.update(reachable=True, auth=False, problem=exc.message)
    except (ConnectionFailed, Timeout, TimeoutError) as exc:
        row.update(reachable=False, problem=getattr(exc, "message", None) or "timed out")
    except ApimuxError as exc:
        row.update(reachable=exc.status is not None, problem=f"{exc.kind}: {exc.message}")
    row["latency"] = round(time.monotonic() - t0, 3)
    groups = client.stats()["groups"]
    if group in groups:
        row["breaker"] = groups[group]["servers"][0]["breaker"]
    return row


async def run_checks(config: str | None, timeout: float) -> list[dict[str, Any]]:
    setup = load(config)
    targets = _targets(setup.endpoints)
    client = AsyncClient([ep for _, _, ep in targets], config={}, settings=setup.settings)
    try:
        # All at once: an unreachable endpoint costs one --timeout in total, not one per key.
        return list(await asyncio.gather(*(_check_one(client, g, name, ep, timeout) for g, name, ep in targets)))
    finally:
        await client.close()


def _mark(v: bool | None) -> str:
    return "[green]yes[/]" if v else "[red]no[/]" if v is False else "-"


def check_command(config: str | None, timeout: float = 15.0) -> int:
    console = out_console()
    try:
        rows = asyncio.run(run_checks(config, timeout))
    except ConfigError as exc:
        print(f"apimux check: {exc}", file=sys.stderr)
        return 2
    if not rows:
        print(
            "apimux check: no endpoints configured (give --config, create ./apimux.toml, "
            "or set a backend's environment variables such as OPENAI_API_KEY)", file=sys.stderr,
        )
        return 1
    table = Table(title="apimux endpoints")
    for col in ("group", "endpoint", "reachable", "key accepted", "models", "breaker", "latency s", "problem"):
        table.add_column(col)
    failed = False
    for r in rows:
        models = r["models"]
        shown = "-"
        if models is not None:
            shown = f"{len(models)}: " + ", ".join(models[:4]) + (" …" if len(models) > 4 else "")
        unchecked = r["problem"].startswith("no model listing")
        failed |= r["reachable"] is False or r["auth"] is False or (models is None and not unchecked)
        table.add_row(
            r["group"], r["endpoint"], _mark(r["reachable"]), _mark(r["auth"]), shown, r["breaker"],
            "" if r["latency"] is None else f"{r['latency']:.3f}", r["problem"],
        )
    console.print(table)
    return 1 if failed else 0
