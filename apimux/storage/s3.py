"""``S3Storage``: object storage through the same core as every other backend.

Every S3 call is an *attempt* run by ``AsyncClient.run_attempt``: the core
queues it, leases a server (one S3 endpoint URL with its breaker) and a key
(one credential with its slots), and retries, cools down or trips the
breaker from the typed error the attempt raises. botocore's own retries are
off, so there is exactly one retry loop.

Objects are named ``"bucket/key"``. Uploads and downloads stream in
``chunk_size`` pieces; a multipart upload retries part by part, and a
download is written to a temporary file renamed into place only once its
checksum matched.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from apimux.core.breaker import BreakerState
from apimux.core.pool import KeyState, Lease, Server
from apimux.errors import (
    ApimuxError,
    BadRequest,
    CircuitOpen,
    ConfigError,
    ConnectionFailed,
    NotFound,
    UpstreamError,
)
from apimux.storage.errors import map_exception
from apimux.storage.files import ETagHasher, Source, b64, clean_etag, multipart_etag
from apimux.types import Priority

T = TypeVar("T")
MiB = 1024 * 1024
MIN_PART = 5 * MiB  # S3's smallest part (all but the last)
MAX_PARTS = 10_000


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """One object. ``key`` is the full ``"bucket/key"`` name, usable in every call."""

    key: str
    size: int
    etag: str
    last_modified: datetime | None = None
    content_type: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def bucket(self) -> str:
        return self.key.partition("/")[0]

    @property
    def name(self) -> str:
        """The key inside its bucket."""
        return self.key.partition("/")[2]


def split_path(path: str, *, need_key: bool = True) -> tuple[str, str]:
    """``"bucket/dir/file"`` -> ``("bucket", "dir/file")``."""
    if not isinstance(path, str):
        raise BadRequest(f"an object name must be a 'bucket/key' string, got {type(path).__name__}")
    bucket, _, key = path.lstrip("/").partition("/")
    if not bucket or (need_key and not key):
        what = "'bucket/key'" if need_key else "'bucket' or 'bucket/prefix'"
        raise BadRequest(f"object name {path!r} must be {what}")
    return bucket, key


def load_aiobotocore() -> tuple[Any, Any]:
    """``(get_session, AioConfig)``, imported only when storage is used."""
    try:
        from aiobotocore.config import AioConfig
        from aiobotocore.session import get_session
    except ImportError:
        raise ConfigError("S3 storage needs aiobotocore: pip install 'apimux[s3]'", backend="s3") from None
    return get_session, AioConfig


class S3Storage:
    """Async object store over the S3 endpoints of one group (``client.storage(name)``)."""

    def __init__(
        self,
        client: Any,
        name: str = "s3",
        *,
        multipart_threshold: int = 8 * MiB,
        part_size: int = 8 * MiB,
        chunk_size: int = MiB,
        priority: Priority | str | int | None = None,
    ) -> None:
        get_session, self._config_cls = load_aiobotocore()
        if part_size < MIN_PART:
            raise ConfigError(f"part_size must be at least 5 MiB (S3's minimum), got {part_size}", backend="s3")
        if chunk_size < 1 or multipart_threshold < 1:
            raise ConfigError("chunk_size and multipart_threshold must be positive", backend="s3")
        self._client = client
        self.name = name
        group = client.group(name)  # ConfigError if nothing is configured
        if not all(hasattr(s.provider, "client_args") for s in group.sched.pool.servers):
            raise ConfigError(f"group {name!r} is backend {group.backend!r}, not S3 storage", backend=group.backend)
        self.multipart_threshold = multipart_threshold
        self.part_size = part_size
        self.chunk_size = chunk_size
        self.priority = priority
        self._session = get_session()
        self._stack = contextlib.AsyncExitStack()
        self._clients: dict[tuple[Server, KeyState], Any] = {}
        self._verify: dict[int, bool] = {}  # id(sdk client) -> does its endpoint return MD5 ETags
        self._lock = asyncio.Lock()
        self._presign_rr = 0
        self._closed = False

    def __repr__(self) -> str:
        servers = [s.name for s in self._client.group(self.name).sched.pool.servers]
        return f"S3Storage(name={self.name!r}, servers={servers})"

    # ---- lifecycle -------------------------------------------------------
    async def close(self) -> None:
        """Close every aiobotocore client this store opened."""
        self._closed = True
        self._clients.clear()
        self._verify.clear()
        await self._stack.aclose()

    async def __aenter__(self) -> S3Storage:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---- the core seam ---------------------------------------------------
    async def _sdk(self, server: Server, key: KeyState) -> Any:
        """One aiobotocore client per (server, credential), made on first use."""
        pair = (server, key)
        s3 = self._clients.get(pair)
        if s3 is not None:
            return s3
        async with self._lock:
            s3 = self._clients.get(pair)
            if s3 is None:
                if self._closed:
                    raise ConfigError("this S3Storage is closed", backend="s3")
                provider = server.provider
                assert key.key is not None  # S3 needs a credential (needs_key)
                try:
                    ctx = self._session.create_client(
                        "s3", **provider.client_args(key.key), config=self._config_cls(**provider.config_args())
                    )
                except ValueError as exc:  # e.g. a malformed endpoint URL
                    raise ConfigError(f"cannot create an S3 client for {server.name}: {exc}", backend="s3") from None
                s3 = await self._stack.enter_async_context(ctx)
                self._clients[pair] = s3
                self._verify[id(s3)] = bool(provider.verify_etag)
        return s3

    async def _run(self, bucket: str, op: str, fn: Callable[[Any], Awaitable[T]]) -> T:
        """Run ``fn(sdk_client)`` as one attempt under the core, mapping SDK errors."""

        async def attempt(lease: Lease) -> T:
            s3 = await self._sdk(lease.server, lease.key)
            try:
                return await fn(s3)
            except Exception as exc:
                mapped = map_exception(exc, self._client.clock.wall())
                if mapped is None or mapped is exc:
                    raise
                raise mapped from exc

        result: T = await self._client.run_attempt(f"{self.name}/{bucket}", op, attempt, priority=self.priority)
        return result

    # ---- buckets ---------------------------------------------------------
    async def create_bucket(self, bucket: str, *, exist_ok: bool = False) -> None:
        bucket, _ = split_path(bucket, need_key=False)

        async def go(s3: Any) -> None:
            args: dict[str, Any] = {"Bucket": bucket}
            region = s3.meta.region_name
            if region and region != "us-east-1":  # us-east-1 refuses an explicit constraint
                args["CreateBucketConfiguration"] = {"LocationConstraint": region}
            try:
                await s3.create_bucket(**args)
            except Exception as exc:
                code = getattr(exc, "response", {}).get("Error", {}).get("Code")
                if exist_ok and code == "BucketAlreadyOwnedByYou":
                    return
                raise

        await self._run(bucket, "create_bucket", go)

    # ---- objects: small --------------------------------------------------
    async def put_bytes(
        self, dest: str, data: bytes, *, content_type: str | None = None, metadata: dict[str, str] | None = None
    ) -> str:
        """Store ``data``; returns the ETag (verified against the bytes' MD5)."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise BadRequest(f"put_bytes needs bytes, got {type(data).__name__}")
        return await self.upload(data, dest, content_type=content_type, metadata=metadata)

    async def get_bytes(self, path: str) -> bytes:
        bucket, key = split_path(path)

        async def go(s3: Any) -> bytes:
            out = bytearray()

            async def add(chunk: bytes) -> None:
                out.extend(chunk)

            await self._read_object(s3, bucket, key, add)
            return bytes(out)

        return await self._run(bucket, "get", go)

    async def head(self, path: str) -> ObjectInfo:
        bucket, key = split_path(path)

        async def go(s3: Any) -> ObjectInfo:
            return info_from(bucket, key, await s3.head_object(Bucket=bucket, Key=key))

        return await self._run(bucket, "head", go)

    async def exists(self, path: str) -> bool:
        try:
            await self.head(path)
        except NotFound:
            return False
        return True

    async def delete(self, path: str) -> None:
        """Delete an object (deleting a missing object succeeds, as in S3)."""
        bucket, key = split_path(path)

        async def go(s3: Any) -> None:
            await s3.delete_object(Bucket=bucket, Key=key)

        await self._run(bucket, "delete", go)

    async def list(self, prefix: str, *, page_size: int = 1000) -> AsyncIterator[ObjectInfo]:
        """Every object under ``"bucket/prefix"``, one page per attempt."""
        bucket, pfx = split_path(prefix, need_key=False)
        token: str | None = None
        while True:
            args: dict[str, Any] = {"Bucket": bucket, "Prefix": pfx, "MaxKeys": page_size}
            if token:
                args["ContinuationToken"] = token

            async def go(s3: Any, args: dict[str, Any] = args) -> dict[str, Any]:
                page: dict[str, Any] = await s3.list_objects_v2(**args)
                return page

            page = await self._run(bucket, "list", go)
            for item in page.get("Contents", ()):
                yield ObjectInfo(
                    f"{bucket}/{item['Key']}", int(item.get("Size", 0)), clean_etag(item.get("ETag")),
                    item.get("LastModified"),
                )
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return

    async def presign(self, path: str, *, expires: int = 3600) -> str:
        """A GET URL anyone can fetch until it expires. No request is sent, so
        it does not go through the queue; it is signed by an endpoint whose
        breaker is closed, round-robin over endpoints and credentials."""
        bucket, key = split_path(path)
        if not 1 <= expires <= 604800:
            raise BadRequest("presign expires must be between 1 second and 7 days")
        pool = self._client.group(self.name).sched.pool
        now = self._client.clock.now()
        pairs = [(s, k) for s in pool.servers if s.breaker.current(now) is BreakerState.CLOSED for k in s.keys]
        if not pairs:
            raise CircuitOpen(f"every S3 endpoint of {self.name!r} has an open circuit breaker", backend="s3")
        server, cred = pairs[self._presign_rr % len(pairs)]
        self._presign_rr += 1
        s3 = await self._sdk(server, cred)
        url: str = await s3.generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=expires
        )
        return url

    # ---- objects: streamed -----------------------------------------------
    async def upload(
        self,
        source: str | os.PathLike[str] | bytes | bytearray | memoryview,
        dest: str,
        *,
        content_type: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> str:
        """Upload a file (streamed from disk) or bytes; multipart above
        ``multipart_threshold``. Returns the verified ETag."""
        bucket, key = split_path(dest)
        try:
            src = Source(source, self.chunk_size)
        except OSError as exc:
            raise BadRequest(f"cannot read upload source {source!r}: {exc.strerror}") from None
        extra: dict[str, Any] = {}
        if content_type:
            extra["ContentType"] = content_type
        if metadata:
            extra["Metadata"] = dict(metadata)
        if src.size > self.multipart_threshold:
            return await self._upload_multipart(src, bucket, key, extra)
        digest = await asyncio.to_thread(src.md5, 0, src.size)

        async def go(s3: Any) -> str:
            with src.open(0, src.size) as body:  # a fresh reader per attempt
                resp = await s3.put_object(
                    Bucket=bucket, Key=key, Body=body, ContentLength=src.size, ContentMD5=b64(digest), **extra
                )
            return self._check_upload_etag(s3, resp.get("ETag"), digest.hex(), "object")

        return await self._run(bucket, "put", go)

    async def _upload_multipart(self, src: Source, bucket: str, key: str, extra: dict[str, Any]) -> str:
        part_size = max(self.part_size, -(-src.size // MAX_PARTS))
        ranges = [(off, min(part_size, src.size - off)) for off in range(0, src.size, part_size)]

        async def create(s3: Any) -> str:
            resp = await s3.create_multipart_upload(Bucket=bucket, Key=key, **extra)
            return str(resp["UploadId"])

        upload_id = await self._run(bucket, "multipart_create", create)
        try:
            digests: list[bytes] = []
            parts: list[dict[str, Any]] = []
            for number, (offset, length) in enumerate(ranges, start=1):
                digest = await asyncio.to_thread(src.md5, offset, length)

                async def put_part(s3: Any, n: int = number, off: int = offset, size: int = length,
                                   md5: bytes = digest) -> str:
                    with src.open(off, size) as body:
                        resp = await s3.upload_part(
                            Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=n,
                            Body=body, ContentLength=size, ContentMD5=b64(md5),
                        )
                    return self._check_upload_etag(s3, resp.get("ETag"), md5.hex(), f"part {n}")

                etag = await self._run(bucket, "multipart_part", put_part)
                digests.append(digest)
                parts.append({"ETag": f'"{etag}"', "PartNumber": number})

            async def complete(s3: Any) -> str:
                resp = await s3.complete_multipart_upload(
                    Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
                )
                return self._check_upload_etag(s3, resp.get("ETag"), multipart_etag(digests), "multipart object")

            return await self._run(bucket, "multipart_complete", complete)
        except BaseException:
            # Leave no orphaned parts (they are billed); the original error wins.
            async def abort(s3: Any) -> None:
                await s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)

            with contextlib.suppress(ApimuxError):
                await self._run(bucket, "multipart_abort", abort)
            raise

    def _check_upload_etag(self, s3: Any, etag: str | None, expected: str, what: str) -> str:
        got = clean_etag(etag)
        if self._verifies(s3) and got != expected:
            raise UpstreamError(f"S3 returned ETag {got!r} for the {what}, expected {expected!r} (data damaged?)")
        return got

    def _verifies(self, s3: Any) -> bool:
        return self._verify.get(id(s3), True)

    async def download(self, path: str, dest: str | os.PathLike[str]) -> ObjectInfo:
        """Stream an object to ``dest`` in ``chunk_size`` pieces through a
        temporary file that replaces ``dest`` only after the checksum matched."""
        bucket, key = split_path(path)
        target = Path(dest)

        async def go(s3: Any) -> ObjectInfo:
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
            try:
                with os.fdopen(fd, "wb") as f:

                    async def put(chunk: bytes) -> None:
                        await asyncio.to_thread(f.write, chunk)  # disk writes off the event loop

                    info = await self._read_object(s3, bucket, key, put)
                    f.flush()
                    await asyncio.to_thread(os.fsync, f.fileno())  # durable before the rename
                os.replace(tmp, target)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise
            return info

        return await self._run(bucket, "download", go)

    async def _read_object(
        self, s3: Any, bucket: str, key: str, write: Callable[[bytes], Awaitable[None]]
    ) -> ObjectInfo:
        """GET an object into ``write`` chunk by chunk, verifying length and ETag."""
        resp = await s3.get_object(Bucket=bucket, Key=key)
        body = resp["Body"]
        etag = clean_etag(resp.get("ETag"))
        verify = self._verifies(s3)
        try:
            part_size = await self._part_size(s3, bucket, key, etag) if verify and "-" in etag else None
            hasher = ETagHasher(part_size)
            while chunk := await body.read(self.chunk_size):
                hasher.update(chunk)
                await write(chunk)
        finally:
            body.close()
        expected_size = resp.get("ContentLength")
        if expected_size is not None and hasher.size != int(expected_size):
            raise ConnectionFailed(f"S3 body ended after {hasher.size} of {expected_size} bytes")
        multipart = "-" in etag
        if verify and (not multipart or part_size) and is_md5_etag(etag):
            got = hasher.etag()
            if got != etag:
                raise UpstreamError(f"downloaded bytes have checksum {got!r}, S3 ETag is {etag!r}")
        return info_from(bucket, key, resp)

    async def _part_size(self, s3: Any, bucket: str, key: str, etag: str) -> int | None:
        """The part size of a multipart object (from part 1), or None if the
        service will not say; then the download is checked by length only.

        No If-Match here: some services (moto) compare it with the part's
        ETag. An object replaced between the GET and this HEAD shows up as a
        checksum mismatch, which is retried and then reads one version."""
        from botocore.exceptions import ClientError

        try:
            head = await s3.head_object(Bucket=bucket, Key=key, PartNumber=1)
        except ClientError:
            return None
        count = head.get("PartsCount")
        parts = etag.rpartition("-")[2]
        if count is None or str(count) != parts:
            return None
        return int(head["ContentLength"])


def is_md5_etag(etag: str) -> bool:
    """A plain MD5 (32 hex) or S3's multipart form (32 hex, ``-N``)."""
    digest, _, parts = etag.partition("-")
    hex_ok = len(digest) == 32 and all(c in "0123456789abcdef" for c in digest)
    return hex_ok and (not parts or parts.isdigit())


def info_from(bucket: str, key: str, resp: dict[str, Any]) -> ObjectInfo:
    return ObjectInfo(
        f"{bucket}/{key}",
        int(resp.get("ContentLength") or 0),
        clean_etag(resp.get("ETag")),
        resp.get("LastModified"),
        resp.get("ContentType"),
        dict(resp.get("Metadata") or {}),
    )
