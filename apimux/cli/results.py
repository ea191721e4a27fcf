"""The results log: append-only JSONL that makes a run resumable.

One line per input line, written and flushed as each request completes
(fsync'd at least every second). On start the existing file is scanned:
every ``custom_id`` already answered is skipped (answered ok; or failed,
unless ``--retry-failed``). With ``--retry-failed`` a re-run failure or
success is appended after the old line, so **a reader takes the last line
per custom_id**; lines with ``"duplicate": true`` answer a repeated
custom_id in the input and never supersede the first one's result.

A crash can leave a partial last line; it is detected (no newline, or not
JSON) and cut off before appending. Memory: the only structure that grows
with the file is a set of 64-bit hashes of answered ids.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Our own lines start with these fields in this order, so a scan reads them
# without parsing vectors or texts. Lines written by anything else fall back
# to a full JSON parse.
_PREFIX = re.compile(
    rb'^\{"custom_id":("(?:[^"\\]|\\.)*"),"line":(?:\d+|null),"status":"(ok|error)","duplicate":(true|false)'
)


def id_hash(custom_id: str) -> int:
    """A compact stand-in for the id (Python's string hash is 64-bit and
    stable within one process, which is all the scan needs)."""
    return hash(custom_id)


def encode(record: dict[str, Any]) -> bytes:
    """One results line; ``record`` must start with custom_id, line, status, duplicate."""
    return json.dumps(record, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode() + b"\n"


@dataclass
class Existing:
    """What an earlier run left in the results file."""

    ok: set[int] = field(default_factory=set)  # hashes of ids whose last line is ok
    failed: set[int] = field(default_factory=set)  # ... whose last line is an error
    duplicate_lines: set[int] = field(default_factory=set)  # input lines answered as duplicates
    lines: int = 0
    corrupt: int = 0  # unreadable lines in the middle (ignored)
    repaired_bytes: int = 0  # partial tail cut off


def _read_record(raw: bytes) -> tuple[str, str, bool] | None:
    m = _PREFIX.match(raw)
    if m is not None:
        return json.loads(m.group(1)), m.group(2).decode(), m.group(3) == b"true"
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("custom_id"), str) or obj.get("status") not in (
        "ok",
        "error",
    ):
        return None
    return obj["custom_id"], obj["status"], obj.get("duplicate") is True


def scan(path: Path, *, repair: bool = True) -> Existing:
    """Read an existing results file; cut off a partial last line if ``repair``."""
    found = Existing()
    if not path.exists():
        return found
    good_end = 0  # offset just past the last complete, readable line
    offset = 0
    bad_tail = False
    with path.open("rb") as fh:
        for raw in fh:
            offset += len(raw)
            rec = _read_record(raw) if raw.endswith(b"\n") else None
            if rec is None:
                if raw.strip():
                    bad_tail = True  # maybe the crash's partial line; decided at the end
                    found.corrupt += 1
                continue
            if bad_tail:
                bad_tail = False  # the bad line was in the middle: keep it, just ignore it
            good_end = offset
            found.lines += 1
            cid, status, dup = rec
            if dup:
                line = _line_of(raw)
                if line is not None:
                    found.duplicate_lines.add(line)
                continue
            h = id_hash(cid)
            if status == "ok":
                found.ok.add(h)
                found.failed.discard(h)
            else:
                found.failed.add(h)
                found.ok.discard(h)
    size = offset
    if bad_tail and size > good_end:
        found.corrupt -= 1
        found.repaired_bytes = size - good_end
        if repair:
            with path.open("r+b") as fh:
                fh.truncate(good_end)
                fh.flush()
                os.fsync(fh.fileno())
    return found


_LINE = re.compile(rb'"line":(\d+)')


def _line_of(raw: bytes) -> int | None:
    m = _LINE.search(raw)
    return int(m.group(1)) if m else None


class ResultsWriter:
    """Appends whole lines with one write each; fsync at most every ``fsync_every`` seconds."""

    def __init__(self, path: Path, fsync_every: float = 1.0) -> None:
        self.path = path
        self._fh = path.open("ab", buffering=0)
        self._size = self._fh.seek(0, os.SEEK_END)  # where the next line starts
        self.fsync_every = fsync_every
        self._synced = time.monotonic()
        self._dirty = False
        self.written = 0

    def write(self, record: dict[str, Any]) -> None:
        line = encode(record)
        data = memoryview(line)
        try:
            while data:  # a raw file may write less than asked
                n = self._fh.write(data)
                data = data[n or 0 :]
        except OSError:
            # Disk full, file too large, I/O error: part of the line may be on
            # disk. Cut it back so the file holds whole lines only (a resume
            # would cut it anyway; a reader in the meantime should not see it).
            with contextlib.suppress(OSError):
                os.ftruncate(self._fh.fileno(), self._size)
            raise
        self._size += len(line)
        self.written += 1
        self._dirty = True
        now = time.monotonic()
        if now - self._synced >= self.fsync_every:
            self.sync(now)

    def sync(self, now: float | None = None) -> None:
        if self._dirty:
            os.fsync(self._fh.fileno())
            self._dirty = False
        self._synced = time.monotonic() if now is None else now

    def close(self) -> None:
        if not self._fh.closed:
            self.sync()
            self._fh.close()


def last_per_id(path: Path) -> dict[str, dict[str, Any]]:
    """The final answer per custom_id (for small files and tests): the last
    line wins, duplicate-line answers never replace a first answer."""
    out: dict[str, dict[str, Any]] = {}
    with path.open("rb") as fh:
        for raw in fh:
            try:
                obj = json.loads(raw)
            except ValueError:
                continue
            if not obj.get("duplicate"):
                out[obj["custom_id"]] = obj
    return out
