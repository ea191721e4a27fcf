"""``apimux stats``: the last run's summary, read from ``<results>.summary.json``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from apimux.cli.progress import out_console, summary_table
from apimux.cli.run import summary_path


def stats_command(results: Path, as_json: bool = False) -> int:
    path = summary_path(results)
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        print(f"apimux stats: no summary at {path} (run `apimux run ... -o {results}` first)", file=sys.stderr)
        return 2
    except (OSError, ValueError) as exc:
        print(f"apimux stats: cannot read {path}: {exc}", file=sys.stderr)
        return 2
    if as_json:
        print(json.dumps(summary, indent=2))
    else:
        out_console().print(summary_table(summary))
    return 0
