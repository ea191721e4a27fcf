"""Byte sources and checksums for uploads and downloads, in constant memory.

A ``Source`` is what an upload reads from (a file on disk or bytes already
in memory). Each attempt opens a fresh reader over a byte range, so a
retried part re-reads the disk instead of holding the part in memory, and
no read returns more than ``chunk`` bytes.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
from pathlib import Path
from typing import Any, BinaryIO


class FileRange(io.RawIOBase):
    """A read-only, seekable view of ``[offset, offset + length)`` of a file.

    botocore needs ``seek``/``tell`` (length, signing hash); aiohttp reads it
    in pieces. ``read`` never returns more than ``chunk`` bytes.
    """

    def __init__(self, path: Path, offset: int, length: int, chunk: int) -> None:
        super().__init__()
        self._f: BinaryIO = open(path, "rb")  # noqa: SIM115 - closed in close()
        self._start = offset
        self._length = length
        self._pos = 0
        self.chunk = chunk
        self._f.seek(offset)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._length}[whence]
        self._pos = min(max(0, base + pos), self._length)
        self._f.seek(self._start + self._pos)
        return self._pos

    def read(self, size: int | None = -1) -> bytes:
        left = self._length - self._pos
        n = left if size is None or size < 0 else min(size, left)
        n = min(n, self.chunk)
        if n <= 0:
            return b""
        data = self._f.read(n)
        self._pos += len(data)
        return data

    def readall(self) -> bytes:
        # Honour the chunk bound even for "read everything": callers loop.
        return self.read(self.chunk)

    def readinto(self, buf: Any) -> int:
        data = self.read(len(buf))
        buf[: len(data)] = data
        return len(data)

    def __len__(self) -> int:
        return self._length

    def close(self) -> None:
        if not self.closed:
            self._f.close()
        super().close()


class Source:
    """Where upload bytes come from: a path (streamed) or bytes (in memory)."""

    def __init__(self, value: str | os.PathLike[str] | bytes | bytearray | memoryview, chunk: int) -> None:
        self.chunk = chunk
        self.path: Path | None = None
        self.data: bytes | None = None
        if isinstance(value, (bytes, bytearray, memoryview)):
            self.data = bytes(value)
            self.size = len(self.data)
        else:
            self.path = Path(value)
            self.size = self.path.stat().st_size

    def open(self, offset: int, length: int) -> io.RawIOBase | io.BytesIO:
        if self.data is not None:
            return io.BytesIO(self.data[offset : offset + length])
        assert self.path is not None
        return FileRange(self.path, offset, length, self.chunk)

    def md5(self, offset: int, length: int) -> bytes:
        """MD5 of a range, reading ``chunk`` bytes at a time (run in a thread)."""
        h = hashlib.md5(usedforsecurity=False)
        with self.open(offset, length) as r:
            while block := r.read(self.chunk):
                h.update(block)
        return h.digest()


def b64(digest: bytes) -> str:
    """The Content-MD5 header form of a digest."""
    return base64.b64encode(digest).decode("ascii")


def clean_etag(etag: str | None) -> str:
    return (etag or "").strip().strip('"').lower()


def multipart_etag(part_digests: list[bytes]) -> str:
    """S3's ETag of a multipart object: md5 of the parts' md5s, then ``-N``."""
    h = hashlib.md5(b"".join(part_digests), usedforsecurity=False)
    return f"{h.hexdigest()}-{len(part_digests)}"


class ETagHasher:
    """Computes, while bytes stream past, what the object's ETag should be.

    A single-part ETag is the MD5 of the bytes; a multipart one needs the
    part size (every part but the last has it).
    """

    def __init__(self, part_size: int | None = None) -> None:
        self.part_size = part_size
        self._h = hashlib.md5(usedforsecurity=False)
        self._in_part = 0
        self._parts: list[bytes] = []
        self.size = 0

    def update(self, data: bytes | memoryview) -> None:
        self.size += len(data)
        view = memoryview(data)
        while self.part_size and len(view) and self._in_part + len(view) >= self.part_size:
            take = self.part_size - self._in_part
            self._h.update(view[:take])
            self._parts.append(self._h.digest())
            self._h = hashlib.md5(usedforsecurity=False)
            self._in_part = 0
            view = view[take:]
        self._h.update(view)
        self._in_part += len(view)

    def etag(self) -> str:
        if not self.part_size:
            return self._h.hexdigest()
        parts = list(self._parts)
        if self._in_part or not parts:
            parts.append(self._h.digest())
        return multipart_etag(parts)
