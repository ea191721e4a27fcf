from __future__ import annotations

from pathlib import Path

from apimux.cli import results as res


def rec(cid: str, status: str = "ok", line: int = 1, duplicate: bool = False) -> dict[str, object]:
    return {"custom_id": cid, "line": line, "status": status, "duplicate": duplicate, "response": {"v": [1.5]}}


def test_scan_last_line_per_id_wins(tmp_path: Path) -> None:
    p = tmp_path / "r.jsonl"
    w = res.ResultsWriter(p)
    w.write(rec("a", "error"))
    w.write(rec("b"))
    w.write(rec("a", "ok"))
    w.write(rec("c", "error"))
    w.write(rec("b", "error", line=9, duplicate=True))  # a duplicate never supersedes
    w.close()
    found = res.scan(p)
    assert found.lines == 5
    assert found.ok == {res.id_hash("a"), res.id_hash("b")}
    assert found.failed == {res.id_hash("c")}
    assert found.duplicate_lines == {9}
    assert {k: v["status"] for k, v in res.last_per_id(p).items()} == {"a": "ok", "b": "ok", "c": "error"}


def test_truncated_tail_is_cut_off(tmp_path: Path) -> None:
    p = tmp_path / "r.jsonl"
    good = res.encode(rec("a")) + res.encode(rec("b"))
    p.write_bytes(good + res.encode(rec("c"))[:17])  # a crash mid-write
    found = res.scan(p)
    assert found.repaired_bytes == 17 and found.corrupt == 0
    assert p.read_bytes() == good
    assert res.id_hash("c") not in found.ok


def test_garbage_last_line_with_newline_is_cut_too(tmp_path: Path) -> None:
    p = tmp_path / "r.jsonl"
    good = res.encode(rec("a"))
    p.write_bytes(good + b'{"custom_id": "b", "sta\n')
    found = res.scan(p)
    assert found.repaired_bytes > 0 and p.read_bytes() == good


def test_bad_line_in_the_middle_is_ignored_not_cut(tmp_path: Path) -> None:
    p = tmp_path / "r.jsonl"
    data = res.encode(rec("a")) + b"garbage\n" + res.encode(rec("b"))
    p.write_bytes(data)
    found = res.scan(p)
    assert found.corrupt == 1 and found.repaired_bytes == 0 and p.read_bytes() == data
    assert found.ok == {res.id_hash("a"), res.id_hash("b")}


def test_foreign_lines_fall_back_to_a_full_parse(tmp_path: Path) -> None:
    p = tmp_path / "r.jsonl"
    p.write_text('{"status": "ok", "custom_id": "x\\"y"}\n', encoding="utf-8")
    assert res.scan(p).ok == {res.id_hash('x"y')}


def test_ids_with_escapes_use_the_fast_path(tmp_path: Path) -> None:
    p = tmp_path / "r.jsonl"
    w = res.ResultsWriter(p)
    w.write(rec('q"uo\\te ünï'))
    w.close()
    assert res._PREFIX.match(p.read_bytes())
    assert res.scan(p).ok == {res.id_hash('q"uo\\te ünï')}


def test_missing_file_is_empty(tmp_path: Path) -> None:
    found = res.scan(tmp_path / "none.jsonl")
    assert not found.ok and not found.failed and found.lines == 0


class _TornFile:
    """A raw file that takes part of a line, then fails like a full disk."""

    def __init__(self, real: object, take: int) -> None:
        self.real = real
        self.take = take

    def write(self, data: memoryview) -> int:
        if self.take:
            n = self.real.write(data[: self.take])  # type: ignore[attr-defined]
            self.take = 0
            return int(n)
        raise OSError(28, "No space left on device")

    def fileno(self) -> int:
        return int(self.real.fileno())  # type: ignore[attr-defined]


def test_a_failed_write_leaves_no_partial_line(tmp_path: Path) -> None:
    p = tmp_path / "r.jsonl"
    w = res.ResultsWriter(p)
    w.write(rec("a"))
    before = p.read_bytes()
    real = w._fh
    w._fh = _TornFile(real, take=10)  # type: ignore[assignment]
    try:
        w.write(rec("b"))
    except OSError as exc:
        assert exc.errno == 28
    else:
        raise AssertionError("the write error was swallowed")
    w._fh = real
    assert p.read_bytes() == before  # whole lines only
    w.write(rec("c"))  # the writer still appends at the right place
    w.close()
    assert [r["custom_id"] for r in res.last_per_id(p).values()] == ["a", "c"]
