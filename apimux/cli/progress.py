"""What the person sees: a live progress bar on stderr and a summary table."""

from __future__ import annotations

from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from apimux.core.stats import percentiles
from apimux.cost import format_cost
from apimux.types import Usage


@dataclass
class BackendTally:
    ok: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    cost_unknown: int = 0  # ok results whose price is unknown
    retries: int = 0
    rate_limit_waits: int = 0
    latency: deque[float] = field(default_factory=lambda: deque(maxlen=2048))

    def add(self, ok: bool, usage: Usage | None, cost: float | None, latency: float) -> None:
        if ok:
            self.ok += 1
            if cost is None:
                self.cost_unknown += 1
            else:
                self.cost += cost
        else:
            self.failed += 1
        if usage is not None:
            self.prompt_tokens += usage.prompt_tokens
            self.completion_tokens += usage.completion_tokens
        self.latency.append(latency)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "failed": self.failed,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost_usd": None if self.ok and self.cost_unknown == self.ok else round(self.cost, 8),
            "cost_unknown_results": self.cost_unknown,
            "retries": self.retries,
            "rate_limit_waits": self.rate_limit_waits,
            "latency_s": percentiles(self.latency),
        }


def cost_text(cost: float | None, unknown: int) -> str:
    if cost is None:
        return "unknown"
    text = format_cost(cost)
    return f"{text} (+{unknown} unknown)" if unknown else text


class RunProgress:
    """A rich progress display; every method is a no-op when disabled."""

    def __init__(self, total: int, enabled: bool, console: Console | None = None) -> None:
        self.enabled = enabled
        self.total = total
        self._progress: Progress | None = None
        self._tasks: dict[str, TaskID] = {}
        if enabled:
            self._progress = Progress(
                TextColumn("{task.description}", justify="left"),
                BarColumn(bar_width=20),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
                console=console or Console(stderr=True),
                refresh_per_second=8,
                transient=False,
            )
            self._overall = self._progress.add_task("all", total=total, rate="", info="")

    def __enter__(self) -> RunProgress:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def advance(self, n: int = 1) -> None:
        if self._progress is not None:
            self._progress.advance(self._overall, n)

    def refresh(self, tallies: dict[str, BackendTally], failures: int, elapsed: float, done: int) -> None:
        """Redraw the per-backend lines and the totals (called a few times a second)."""
        p = self._progress
        if p is None:
            return
        rate = f"{done / elapsed:,.1f}/s" if elapsed > 0 else ""
        tokens = sum(t.prompt_tokens + t.completion_tokens for t in tallies.values())
        known = [t for t in tallies.values() if not (t.ok and t.cost_unknown == t.ok)]
        cost = sum(t.cost for t in known) if known or not tallies else None
        unknown = sum(t.cost_unknown for t in tallies.values())
        retries = sum(t.retries for t in tallies.values())
        waits = sum(t.rate_limit_waits for t in tallies.values())
        p.update(
            self._overall, rate=rate,
            info=f"tok {tokens:,} {cost_text(cost, unknown)} retry {retries} wait {waits} fail {failures}",
        )
        for name, t in tallies.items():
            task = self._tasks.get(name)
            if task is None:
                task = self._tasks[name] = p.add_task(f" {name}", total=None, rate="", info="")
            one_cost = None if t.ok and t.cost_unknown == t.ok else t.cost
            p.update(
                task, completed=t.ok + t.failed,
                info=f"ok {t.ok:,} fail {t.failed} tok {t.prompt_tokens + t.completion_tokens:,} "
                f"{cost_text(one_cost, t.cost_unknown)} retry {t.retries} wait {t.rate_limit_waits}",
            )


def summary_table(summary: dict[str, Any]) -> Table:
    """The end-of-run table (also what ``apimux stats`` prints)."""
    table = Table(title=f"apimux run: {summary.get('input')} -> {summary.get('output')}", show_lines=False)
    table.add_column("backend")
    for col in ("ok", "failed", "tokens in/out", "cost", "retries", "waits", "p50/p95 s"):
        table.add_column(col, justify="right")
    backends: dict[str, Any] = summary.get("backends", {})
    for name, b in sorted(backends.items()):
        lat = b.get("latency_s") or {}
        table.add_row(
            name, f"{b['ok']:,}", f"{b['failed']:,}", f"{b['prompt_tokens']:,}/{b['completion_tokens']:,}",
            cost_text(b["cost_usd"], b["cost_unknown_results"]) if b["ok"] else "-", str(b["retries"]),
            str(b["rate_limit_waits"]), f"{_num(lat.get('p50'))}/{_num(lat.get('p95'))}",
        )
    tok = summary.get("tokens", {})
    table.add_section()
    table.add_row(
        "total", f"{summary['ok']:,}", f"{summary['failed']:,}",
        f"{tok.get('prompt', 0):,}/{tok.get('completion', 0):,}",
        cost_text(summary.get("cost_usd"), summary.get("cost_unknown_results", 0)),
        str(summary.get("retries", 0)), str(summary.get("rate_limit_waits", 0)), "",
    )
    lines = [
        f"lines {summary['lines']:,}",
        f"this run: {summary['ok'] + summary['failed']:,} answered in {summary['elapsed_s']:.1f}s "
        f"({summary['throughput_per_s']:,.1f}/s)",
        f"already done: {summary['skipped']:,}",
    ]
    if summary.get("previously_failed"):
        lines.append(f"earlier failures kept: {summary['previously_failed']:,} (re-run them with --retry-failed)")
    if summary.get("bad_input"):
        lines.append(f"bad input lines: {summary['bad_input']:,}")
    if summary.get("duplicates"):
        lines.append(f"duplicate custom_ids: {summary['duplicates']:,}")
    errors = summary.get("errors_by_type") or {}
    if errors:
        lines.append("errors: " + ", ".join(f"{k} {v}" for k, v in sorted(errors.items())))
    if summary.get("interrupted"):
        lines.append("INTERRUPTED: run the same command again to finish")
    table.caption = "\n".join(lines)
    table.caption_justify = "left"
    return table


def out_console() -> Console:
    """stdout; when it is not a terminal (a pipe, a log) tables are not squeezed into 80 columns."""
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)
    return console


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def new_tallies() -> defaultdict[str, BackendTally]:
    return defaultdict(BackendTally)
