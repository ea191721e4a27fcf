"""The ``apimux`` command: ``run``, ``check``, ``stats``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

RUN_HELP = """\
Run every request of a JSONL file through one apimux client and append one
result line per input line to OUTPUT.

Input lines (one JSON object each):
  chat:        {"custom_id": "q1", "model": "openai/gpt-4o-mini",
                "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50}
  embeddings:  {"custom_id": "e1", "model": "local/all-MiniLM-L6-v2", "input": "text" or ["a", "b"]}
  OpenAI Batch API lines ({"custom_id", "method": "POST", "url": "/v1/chat/completions"
  or "/v1/embeddings", "body": {...}}) work too; a body model without a backend
  prefix is an OpenAI model. Any line may add "priority": "high" | "normal" | "low".
  A line without custom_id gets "line-<n>".

Output lines: custom_id, line, status ("ok" | "error"), duplicate, model,
response (chat: text, finish_reason, tool_calls; embeddings: vectors), error
(type, message, status, ...), usage, cost (USD, null when the price is
unknown), latency, attempts, request_id, backend, endpoint (key masked).

Resuming: run the same command again after a crash or Ctrl-C; ids already
answered are skipped (failed ones too, unless --retry-failed). Readers take the
LAST line per custom_id (ignoring lines with "duplicate": true).

Ctrl-C once: stop reading, send nothing more, wait for the requests already
sent and write their results, exit 130. Requests still waiting (in a queue
behind rate limits, or for a retry) are not written and run next time.
Ctrl-C twice: abort at once (unfinished requests are re-run next time).

Outages: when every server of a backend has an open circuit breaker, requests
wait up to 5 minutes for it to let traffic through again (settings.breaker_wait
in the config changes this) instead of failing every remaining line at once.

Exit codes: 0 all succeeded, 1 some failed (or --strict stopped the run, or the
results file could not be written, e.g. disk full: run again to finish),
2 usage or configuration error (nothing written), 130 interrupted (143 on SIGTERM).
The summary is also written to OUTPUT.summary.json (see `apimux stats`).
"""

CHECK_HELP = """\
For every configured endpoint and key: is it reachable, is the key accepted,
which models does it list (where the backend can list them), and the circuit
breaker's state. Exit 1 if any endpoint fails.
"""

STATS_HELP = """\
Print the summary of the last `apimux run` that wrote RESULTS (read from
RESULTS.summary.json).
"""

CONFIG_HELP = (
    "config file (TOML: [[endpoints]], [settings], [prices.\"backend/model\"]); "
    "default: $APIMUX_CONFIG, ./apimux.toml, ~/.config/apimux/apimux.toml, else environment variables"
)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from apimux import __version__

    parser = argparse.ArgumentParser(
        prog="apimux",
        description="One dependable way to call many AI inference services: batch runs, endpoint checks, stats.",
    )
    parser.add_argument("--version", action="version", version=f"apimux {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = sub.add_parser(
        "run", help="run a JSONL file of requests (resumable)", description=RUN_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("input", type=Path, metavar="INPUT", help="requests, one JSON object per line")
    run.add_argument("-o", "--output", type=Path, required=True, metavar="OUTPUT",
                     help="results file (JSONL); appended to, and resumed from if it exists")
    run.add_argument("--config", metavar="PATH", help=CONFIG_HELP)
    run.add_argument("--concurrency", type=_positive_int, metavar="N",
                     help="concurrent requests per key (overrides the config's max_concurrent)")
    run.add_argument("--rpm", type=_positive_float, metavar="N", help="requests per minute per key (overrides rpm)")
    run.add_argument("--tpm", type=_positive_float, metavar="N", help="tokens per minute per key (overrides tpm)")
    run.add_argument("--max-retries", type=_non_negative_int, metavar="N",
                     help="retries per request after the first attempt (default: the config's, 5)")
    run.add_argument("--retry-failed", action="store_true",
                     help="re-run ids whose last result is an error (the new line supersedes the old)")
    run.add_argument("--strict", action="store_true", help="stop at the first bad input line (exit 1)")
    run.add_argument("--summary-json", type=Path, metavar="PATH", help="also write the run's summary to PATH")
    run.add_argument("--no-progress", action="store_true",
                     help="no live progress bar (it is off anyway when stderr is not a terminal)")

    check = sub.add_parser("check", help="check every configured endpoint and key", description=CHECK_HELP)
    check.add_argument("--config", metavar="PATH", help=CONFIG_HELP)
    check.add_argument("--timeout", type=_positive_float, default=15.0, metavar="SECONDS",
                       help="give up on an endpoint after this long (default 15)")

    stats = sub.add_parser("stats", help="show the last run's summary", description=STATS_HELP)
    stats.add_argument("results", nargs="?", type=Path, default=Path("results.jsonl"), metavar="RESULTS",
                       help="the results file given to `apimux run -o` (default: results.jsonl)")
    stats.add_argument("--json", action="store_true", help="print the summary as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "run":
            from apimux.cli.run import RunOptions, run_command

            return run_command(RunOptions(
                input=args.input, output=args.output, config=args.config, concurrency=args.concurrency,
                rpm=args.rpm, tpm=args.tpm, max_retries=args.max_retries, retry_failed=args.retry_failed,
                strict=args.strict, summary_json=args.summary_json, progress=not args.no_progress,
            ))
        if args.command == "check":
            from apimux.cli.check import check_command

            return check_command(args.config, args.timeout)
        from apimux.cli.stats import stats_command

        return stats_command(args.results, args.json)
    except KeyboardInterrupt:  # before the run's own handler is installed
        print("\napimux: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
