"""``apimux run``: a resumable JSONL batch through one AsyncClient.

Memory stays flat: the input is streamed, at most ``window`` requests are
in flight or queued at once (the scheduler's queue pushes back beyond that),
and results are written as they finish. Only the set of answered ids grows
with the file (64-bit hashes).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from apimux.cli import results as res
from apimux.cli.gate import Gate, GatedClient, NotSent
from apimux.cli.jobfile import BadLine, Job, count_lines, iter_lines, parse_line
from apimux.cli.progress import BackendTally, RunProgress, new_tallies, out_console, summary_table
from apimux.cli.setup import Overrides, Setup, group_names, load
from apimux.client import AsyncClient
from apimux.config import Settings
from apimux.errors import ApimuxError, BadRequest, ConfigError
from apimux.types import ChatResponse, EmbedResponse

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


@dataclass(slots=True)
class RunOptions:
    input: Path
    output: Path
    config: str | None = None
    concurrency: int | None = None
    rpm: float | None = None
    tpm: float | None = None
    max_retries: int | None = None
    retry_failed: bool = False
    strict: bool = False
    summary_json: Path | None = None
    progress: bool = True


class UsageError(Exception):
    """A problem found before starting: one message, exit code 2, nothing written."""


# A batch job waits out an outage rather than failing every remaining line the
# moment a breaker opens; the config's own breaker_wait, when set, wins.
BATCH_BREAKER_WAIT = 300.0


def batch_settings(settings: Settings) -> Settings:
    if settings.breaker_wait > 0:
        return settings
    return dataclasses.replace(settings, breaker_wait=BATCH_BREAKER_WAIT)


def summary_path(output: Path) -> Path:
    return output.with_name(output.name + ".summary.json")


def preflight(opts: RunOptions) -> Setup:
    """Check everything that can be checked before writing a byte."""
    if not opts.input.is_file():
        raise UsageError(f"input file {opts.input} does not exist" if not opts.input.exists()
                         else f"input {opts.input} is not a file")
    if not os.access(opts.input, os.R_OK):
        raise UsageError(f"input file {opts.input} is not readable")
    with contextlib.suppress(OSError):
        if opts.output.exists() and opts.output.samefile(opts.input):
            raise UsageError("the output file must not be the input file")
    for target in filter(None, (opts.output, summary_path(opts.output), opts.summary_json)):
        _check_writable(target)
    for name, value in (("--concurrency", opts.concurrency), ("--rpm", opts.rpm), ("--tpm", opts.tpm)):
        if value is not None and value <= 0:
            raise UsageError(f"{name} must be positive, got {value}")
    if opts.max_retries is not None and opts.max_retries < 0:
        raise UsageError(f"--max-retries must be 0 or more, got {opts.max_retries}")
    try:
        return load(opts.config, Overrides(opts.concurrency, opts.rpm, opts.tpm))
    except ConfigError as exc:
        raise UsageError(str(exc)) from None


def _check_writable(path: Path) -> None:
    parent = path.parent if str(path.parent) else Path(".")
    if path.exists():
        if not path.is_file():
            raise UsageError(f"output {path} is not a regular file")
        if not os.access(path, os.W_OK):
            raise UsageError(f"output file {path} is not writable")
    elif not parent.is_dir():
        raise UsageError(f"output directory {parent} does not exist")
    elif not os.access(parent, os.W_OK):
        raise UsageError(f"output directory {parent} is not writable")


class Runner:
    def __init__(self, opts: RunOptions, setup: Setup, console: Console) -> None:
        self.opts = opts
        self.setup = setup
        self.console = console
        self.tallies: dict[str, BackendTally] = new_tallies()
        self.errors: Counter[str] = Counter()
        self.bad_input = 0
        self.duplicates = 0
        self.skipped = 0
        self.previously_failed = 0
        self.stopping = False
        self.interrupted = False
        self.aborted = False
        self.strict_hit = False
        self.write_error: str | None = None  # the results file could not be written: the run stopped
        self.pending: set[asyncio.Task[None]] = set()
        self.gate = Gate()
        self._unsent_watch: asyncio.Task[None] | None = None
        self.window = _window(setup)
        self._groups = group_names(setup.endpoints)
        self.exit_code = EXIT_INTERRUPTED

    # ---- signals --------------------------------------------------------------
    def _on_signal(self, signum: int = signal.SIGINT) -> None:
        self.exit_code = 128 + signum  # 130 for Ctrl-C, 143 for SIGTERM (the shell's convention)
        self.gate.close()  # from now on nothing new is sent
        if not self.interrupted:
            self.stopping = self.interrupted = True
            print(f"\napimux: stopping; finishing the {self.gate.on_wire} requests already sent "
                  "(Ctrl-C again to abort at once)", file=sys.stderr, flush=True)
            self._unsent_watch = asyncio.get_running_loop().create_task(self._cancel_unsent())
            return
        self.aborted = True
        print("\napimux: aborting", file=sys.stderr, flush=True)
        for t in list(self.pending):
            t.cancel()

    async def _cancel_unsent(self) -> None:
        """After the first Ctrl-C: once nothing is on the wire, whatever is still
        pending waits in a queue (rpm/tpm, concurrency), a retry's backoff or a
        batch window. It was never answered, so it is cancelled unwritten and
        the next run does it, instead of the exit waiting out those limits."""
        while True:
            if self.gate.on_wire == 0:
                # An answer that just arrived reaches its caller a loop turn or
                # two later (a micro-batch hands it on): let it be written first.
                for _ in range(3):
                    await asyncio.sleep(0)
                if self.gate.on_wire == 0:
                    for t in list(self.pending):
                        t.cancel()
            await asyncio.sleep(0.02)

    # ---- the run --------------------------------------------------------------
    async def run(self) -> dict[str, Any]:
        opts = self.opts
        started, wall_started = time.monotonic(), time.time()
        total = count_lines(opts.input)
        existing = res.scan(opts.output)
        if existing.repaired_bytes:
            print(f"apimux: cut a partial last line ({existing.repaired_bytes} bytes) from {opts.output}",
                  file=sys.stderr)
        if existing.corrupt:
            print(f"apimux: ignored {existing.corrupt} unreadable line(s) in {opts.output}", file=sys.stderr)
        writer = res.ResultsWriter(opts.output)
        client = GatedClient(self.setup.endpoints, config={}, settings=batch_settings(self.setup.settings),
                             cost=self.setup.prices.cost, gate=self.gate)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._on_signal, sig)
        progress = RunProgress(total, opts.progress)
        sem = asyncio.Semaphore(self.window)
        seen: set[int] = set()
        refresher = asyncio.create_task(self._refresh(progress, client, started))
        try:
            with progress:
                for n, raw in iter_lines(opts.input):
                    if self.stopping:
                        break
                    if n % 512 == 0:
                        await asyncio.sleep(0)  # let signals and finished requests in
                    item = parse_line(n, raw, self._groups.__contains__)
                    if item is None:
                        progress.advance()
                        continue
                    h = res.id_hash(item.custom_id)
                    if h in seen:
                        if n not in existing.duplicate_lines:
                            self.duplicates += 1
                            self._write_error(writer, item.line, item.custom_id, BadRequest(
                                f"line {n}: duplicate custom_id {item.custom_id!r}; this line was not run"),
                                None, duplicate=True)
                        progress.advance()
                        continue
                    seen.add(h)
                    if h in existing.ok:
                        existing.ok.discard(h)  # ``seen`` remembers it from here on
                        self.skipped += 1
                        progress.advance()
                        continue
                    if h in existing.failed:
                        existing.failed.discard(h)
                        if not opts.retry_failed:
                            self.skipped += 1
                            self.previously_failed += 1
                            progress.advance()
                            continue
                    if isinstance(item, BadLine):
                        self.bad_input += 1
                        self._write_error(writer, item.line, item.custom_id, BadRequest(item.message), item.model)
                        progress.advance()
                        if opts.strict:
                            self.strict_hit = self.stopping = True
                        continue
                    await sem.acquire()
                    if self.stopping:
                        sem.release()
                        break
                    task = asyncio.create_task(self._execute(client, writer, item, progress))
                    self.pending.add(task)
                    task.add_done_callback(self._finished(sem))
                while self.pending:
                    await asyncio.gather(*list(self.pending), return_exceptions=True)
        finally:
            refresher.cancel()
            if self._unsent_watch is not None:
                self._unsent_watch.cancel()
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)
            self._absorb_stats(client)
            try:
                writer.close()
            except OSError as exc:  # the last fsync: what it did not save is re-run next time
                self._write_failed(exc)
            await client.close()
        return self._summary(total, started, wall_started)

    def _finished(self, sem: asyncio.Semaphore) -> Callable[[asyncio.Task[None]], None]:
        def done(task: asyncio.Task[None]) -> None:
            self.pending.discard(task)
            sem.release()

        return done

    async def _refresh(self, progress: RunProgress, client: AsyncClient, started: float) -> None:
        if not progress.enabled:
            return
        while True:
            self._absorb_stats(client)
            done = sum(t.ok + t.failed for t in self.tallies.values())
            progress.refresh(self.tallies, sum(t.failed for t in self.tallies.values()),
                             time.monotonic() - started, done)
            await asyncio.sleep(0.25)

    def _absorb_stats(self, client: AsyncClient) -> None:
        """Retries and rate-limit waits come from the core's own counters."""
        snap = client.stats()
        retries: Counter[str] = Counter()
        waits: Counter[str] = Counter()
        for row in snap["series"]:
            retries[row["backend"]] += row["retries"]
            waits[row["backend"]] += row["rate_limit_waits"]
        for g in snap["groups"].values():
            waits[g["backend"]] += g["rate_limit_waits"]
        for name in set(retries) | set(waits):
            t = self.tallies[name]
            t.retries, t.rate_limit_waits = retries[name], waits[name]

    async def _execute(self, client: AsyncClient, writer: res.ResultsWriter, job: Job, progress: RunProgress) -> None:
        t0 = time.monotonic()
        params = dict(job.params)
        try:
            if job.op == "chat":
                messages = params.pop("messages")
                result: ChatResponse | EmbedResponse = await client.chat(
                    job.model, messages, priority=job.priority, max_retries=self.opts.max_retries, **params
                )
            else:
                inputs = params.pop("input")
                result = await client.embed(
                    job.model, inputs, priority=job.priority, max_retries=self.opts.max_retries, **params
                )
        except NotSent:
            return  # stopping: never sent, not written, so the next run does it
        except ApimuxError as err:
            if err.attempts is None and isinstance(err, (ConfigError, BadRequest)):
                # refused by the client before queueing (unknown backend or model
                # group, an operation the backend lacks): the line's own problem.
                # A CircuitOpen or QueueFull also has no attempts, but is not.
                self.bad_input += 1
                err.message = f"line {job.line}: {err.message}"
                if self.opts.strict:
                    self.strict_hit = self.stopping = True
            self._write_error(writer, job.line, job.custom_id, err, job.model, latency=time.monotonic() - t0)
            progress.advance()
            return
        except asyncio.CancelledError:
            raise  # aborted: not written, so the next run does it again
        except Exception as exc:  # a bug, not the request's fault: still one result per line
            internal = ApimuxError(f"internal error: {type(exc).__name__}: {exc}")
            self._write_error(writer, job.line, job.custom_id, internal, job.model, latency=time.monotonic() - t0)
            progress.advance()
            return
        info = result.info
        backend = info.backend or job.model.split("/", 1)[0]
        model_name = job.model.split("/", 1)[1]
        cost = self.setup.prices.cost(backend, model_name, result.usage)
        if isinstance(result, ChatResponse):
            response: dict[str, Any] = {
                "text": result.text,
                "finish_reason": result.finish_reason,
                "tool_calls": [t.to_dict() for t in result.tool_calls],
                "model": result.model,
            }
        else:
            response = {"vectors": result.vectors, "model": result.model}
        if not self._emit(writer, {
            "custom_id": job.custom_id, "line": job.line, "status": "ok", "duplicate": False,
            "model": job.model, "response": response, "error": None,
            "usage": result.usage.to_dict(), "cost": cost, "latency": round(info.latency, 6),
            "attempts": info.attempts, "request_id": info.request_id, "backend": backend,
            "endpoint": info.endpoint,
        }):
            return
        self.tallies[backend].add(True, result.usage, cost, info.latency)
        progress.advance()

    def _emit(self, writer: res.ResultsWriter, record: dict[str, Any]) -> bool:
        """Write one result; False (and the run stops) if the file cannot take it."""
        if self.write_error is not None:
            return False
        try:
            writer.write(record)
        except OSError as exc:
            self._write_failed(exc)
            return False
        return True

    def _write_failed(self, exc: OSError) -> None:
        """Disk full, quota, I/O error: stop at once. Answers that cannot be
        written are not kept anywhere, so nothing more is sent; unwritten lines
        are simply run again next time."""
        if self.write_error is None:
            self.write_error = f"cannot write results to {self.opts.output}: {exc.strerror or exc}"
            print(f"apimux run: {self.write_error}; stopping (run the same command again to finish)",
                  file=sys.stderr, flush=True)
        self.stopping = True
        self.gate.close()
        me = asyncio.current_task()
        for t in list(self.pending):
            if t is not me:
                t.cancel()

    def _write_error(
        self, writer: res.ResultsWriter, line: int, custom_id: str, err: ApimuxError, model: str | None,
        *, latency: float = 0.0, duplicate: bool = False,
    ) -> None:
        backend = err.backend or (model.split("/", 1)[0] if model and "/" in model else None)
        if not self._emit(writer, {
            "custom_id": custom_id, "line": line, "status": "error", "duplicate": duplicate,
            "model": model, "response": None, "error": err.to_dict(),
            "usage": None, "cost": None, "latency": round(latency, 6),
            "attempts": err.attempts or 0, "request_id": err.request_id, "backend": backend,
            "endpoint": err.endpoint,
        }):
            return
        self.errors[err.kind] += 1
        if not duplicate:
            self.tallies[backend or "(bad input)"].add(False, None, None, latency)

    # ---- the summary ------------------------------------------------------------
    def _summary(self, total: int, started: float, wall_started: float) -> dict[str, Any]:
        elapsed = time.monotonic() - started
        ok = sum(t.ok for t in self.tallies.values())
        failed = sum(t.failed for t in self.tallies.values()) + self.duplicates
        prompt = sum(t.prompt_tokens for t in self.tallies.values())
        completion = sum(t.completion_tokens for t in self.tallies.values())
        unknown = sum(t.cost_unknown for t in self.tallies.values())
        cost: float | None = sum(t.cost for t in self.tallies.values())
        if ok and unknown == ok:
            cost = None
        if self.aborted or self.interrupted:
            code = self.exit_code
        elif failed or self.previously_failed or self.strict_hit or self.write_error:
            code = EXIT_FAILED
        else:
            code = EXIT_OK
        return {
            "input": str(self.opts.input), "output": str(self.opts.output),
            "started_at": wall_started, "finished_at": time.time(), "elapsed_s": round(elapsed, 3),
            "lines": total, "ok": ok, "failed": failed, "bad_input": self.bad_input,
            "duplicates": self.duplicates, "skipped": self.skipped, "previously_failed": self.previously_failed,
            "interrupted": self.interrupted, "aborted": self.aborted, "strict_stop": self.strict_hit,
            "write_error": self.write_error,
            "exit_code": code,
            "throughput_per_s": round((ok + failed) / elapsed, 3) if elapsed > 0 else 0.0,
            "tokens": {"prompt": prompt, "completion": completion, "total": prompt + completion},
            "cost_usd": None if cost is None else round(cost, 8), "cost_unknown_results": unknown,
            "retries": sum(t.retries for t in self.tallies.values()),
            "rate_limit_waits": sum(t.rate_limit_waits for t in self.tallies.values()),
            "errors_by_type": dict(self.errors),
            "backends": {name: t.to_dict() for name, t in sorted(self.tallies.items())},
        }


def _window(setup: Setup) -> int:
    """Requests in flight or queued: four times the configured concurrency,
    within bounds (the scheduler's queue adds its own backpressure)."""
    slots = sum(e.max_concurrent * max(1, len(e.keys)) for e in setup.endpoints) or 5
    return max(32, min(4 * slots, 4096))


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomically: a reader never sees half a summary."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def run_command(opts: RunOptions) -> int:
    err_console = Console(stderr=True)
    try:
        setup = preflight(opts)
    except UsageError as exc:
        print(f"apimux run: {exc}", file=sys.stderr)  # one plain line, never wrapped
        return EXIT_USAGE
    opts.progress = opts.progress and err_console.is_terminal
    runner = Runner(opts, setup, err_console)
    summary = asyncio.run(runner.run())
    code = int(summary["exit_code"])
    for path in filter(None, (summary_path(opts.output), opts.summary_json)):
        try:
            write_json(path, summary)
        except OSError as exc:  # the results stand; only the summary is missing
            print(f"apimux run: cannot write the summary to {path}: {exc.strerror or exc}", file=sys.stderr)
            code = code or EXIT_FAILED
    out_console().print(summary_table(summary))
    return code
