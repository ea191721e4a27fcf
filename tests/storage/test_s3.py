"""S3Storage against moto's real S3 server on loopback, through the core."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import boto3
import pytest
from aiobotocore.response import AioStreamingBody
from botocore.exceptions import ClientError, ConnectTimeoutError, EndpointConnectionError, ReadTimeoutError

from apimux import (
    AsyncClient,
    AuthError,
    BadRequest,
    ConfigError,
    ConnectionFailed,
    Endpoint,
    FakeClock,
    NotFound,
    Overloaded,
    Priority,
    RateLimited,
    RetrySettings,
    Settings,
    Timeout,
    UpstreamError,
)
from apimux.config import endpoints_from_env
from apimux.providers.s3 import S3Provider, parse_credential
from apimux.storage import S3Storage
from apimux.storage.errors import map_exception
from apimux.storage.files import FileRange, multipart_etag
from tests.storage.conftest import (
    ACCESS,
    CRED,
    CRED2,
    FAST,
    SECRET,
    SECRET2,
    FaultS3,
    dead_url,
    moto_auth,
    s3_endpoint,
)

MiB = 1024 * 1024


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def write_random(path: Path, size: int) -> bytes:
    data = os.urandom(size)
    path.write_bytes(data)
    return data


def requests_made(client: AsyncClient) -> int:
    return int(client.stats()["totals"]["requests"])


# ---- round trips -----------------------------------------------------------
async def test_bytes_round_trip_head_delete(store: S3Storage, bucket: str) -> None:
    etag = await store.put_bytes(f"{bucket}/docs/a.txt", b"hello s3", content_type="text/plain",
                                 metadata={"origin": "test"})
    assert etag == md5(b"hello s3")  # single-part ETag is the MD5 of the bytes
    assert await store.get_bytes(f"{bucket}/docs/a.txt") == b"hello s3"
    info = await store.head(f"{bucket}/docs/a.txt")
    assert (info.key, info.bucket, info.name, info.size, info.etag) == (
        f"{bucket}/docs/a.txt", bucket, "docs/a.txt", 8, etag
    )
    assert info.content_type == "text/plain" and info.metadata == {"origin": "test"}
    assert await store.exists(f"{bucket}/docs/a.txt")
    await store.delete(f"{bucket}/docs/a.txt")
    assert not await store.exists(f"{bucket}/docs/a.txt")
    with pytest.raises(NotFound):
        await store.head(f"{bucket}/docs/a.txt")


async def test_file_round_trip_single_part(store: S3Storage, bucket: str, tmp_path: Path) -> None:
    data = write_random(tmp_path / "in.bin", 3 * MiB + 17)
    etag = await store.upload(tmp_path / "in.bin", f"{bucket}/in.bin")
    assert etag == md5(data)
    info = await store.download(f"{bucket}/in.bin", tmp_path / "out.bin")
    assert (tmp_path / "out.bin").read_bytes() == data
    assert info.size == len(data) and info.etag == etag
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.bin", "out.bin"]  # no temp file left


async def test_multipart_upload_and_verified_download(
    client: AsyncClient, bucket: str, tmp_path: Path, moto_url: str
) -> None:
    async with S3Storage(client, "s3", multipart_threshold=5 * MiB, part_size=5 * MiB) as store:
        await store.create_bucket(bucket)
        data = write_random(tmp_path / "big.bin", 11 * MiB + 123)
        before = requests_made(client)
        etag = await store.upload(tmp_path / "big.bin", f"{bucket}/big.bin")
        assert requests_made(client) - before == 5  # create + 3 parts + complete
        parts = [hashlib.md5(data[i : i + 5 * MiB]).digest() for i in range(0, len(data), 5 * MiB)]
        assert etag == multipart_etag(parts) and etag.endswith("-3")
        # The server agrees it is a 3-part object (checked with boto3, not our code).
        s3 = boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1",
                          aws_access_key_id="x", aws_secret_access_key="y")
        head = s3.head_object(Bucket=bucket, Key="big.bin", PartNumber=1)
        assert head["PartsCount"] == 3 and head["ContentLength"] == 5 * MiB
        await store.download(f"{bucket}/big.bin", tmp_path / "copy.bin")
        assert hashlib.md5((tmp_path / "copy.bin").read_bytes()).digest() == hashlib.md5(data).digest()


async def test_multipart_failure_aborts_upload(
    client: AsyncClient, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, moto_url: str
) -> None:
    """A part that fails for good aborts the upload, leaving no billed parts."""
    from aiobotocore.client import AioBaseClient

    real = AioBaseClient._make_api_call

    async def fail_part_2(self: Any, operation: str, params: dict[str, Any]) -> Any:
        if operation == "UploadPart" and params["PartNumber"] == 2:
            raise ClientError({"Error": {"Code": "AccessDenied", "Message": "no"},
                               "ResponseMetadata": {"HTTPStatusCode": 403, "HTTPHeaders": {}}}, operation)
        return await real(self, operation, params)

    async with S3Storage(client, "s3", multipart_threshold=5 * MiB, part_size=5 * MiB) as store:
        await store.create_bucket(bucket)
        write_random(tmp_path / "big.bin", 11 * MiB)
        monkeypatch.setattr(AioBaseClient, "_make_api_call", fail_part_2)
        with pytest.raises(AuthError):
            await store.upload(tmp_path / "big.bin", f"{bucket}/big.bin")
    s3 = boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1",
                      aws_access_key_id="x", aws_secret_access_key="y")
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket)


# ---- constant memory: bounded reads --------------------------------------
async def test_upload_reads_the_file_in_bounded_chunks(
    client: AsyncClient, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes: list[int] = []
    real_read = FileRange.read

    def spy(self: FileRange, size: int | None = -1) -> bytes:
        data = real_read(self, size)
        sizes.append(len(data))
        return data

    monkeypatch.setattr(FileRange, "read", spy)
    chunk = 64 * 1024
    async with S3Storage(client, "s3", multipart_threshold=5 * MiB, part_size=5 * MiB, chunk_size=chunk) as store:
        await store.create_bucket(bucket)
        data = write_random(tmp_path / "f.bin", 6 * MiB)  # multipart: 5 MiB + 1 MiB
        await store.upload(tmp_path / "f.bin", f"{bucket}/f.bin")
        assert await store.get_bytes(f"{bucket}/f.bin") == data
    assert max(sizes) == chunk  # never more than one chunk in memory per read
    # Every byte was read in chunks at least twice: once for Content-MD5, once to send.
    assert sum(sizes) >= 2 * len(data)


async def test_download_reads_the_body_in_bounded_chunks(
    store: S3Storage, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(2 * MiB + 5)
    await store.put_bytes(f"{bucket}/d.bin", data)
    asked: list[int | None] = []
    got: list[int] = []
    real_read = AioStreamingBody.read

    async def spy(self: AioStreamingBody, amt: int | None = None) -> bytes:
        asked.append(amt)
        chunk = await real_read(self, amt)
        got.append(len(chunk))
        return chunk

    monkeypatch.setattr(AioStreamingBody, "read", spy)
    store.chunk_size = 128 * 1024
    await store.download(f"{bucket}/d.bin", tmp_path / "d.bin")
    assert set(asked) == {128 * 1024}  # never "read it all"
    assert max(got) <= 128 * 1024 and sum(got) == len(data) and len(got) >= len(data) // (128 * 1024)
    assert (tmp_path / "d.bin").read_bytes() == data


# ---- downloads never leave half-written files -------------------------------
async def test_download_cut_off_keeps_old_file(
    store: S3Storage, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, client: AsyncClient
) -> None:
    await store.put_bytes(f"{bucket}/d.bin", os.urandom(MiB))
    (tmp_path / "d.bin").write_bytes(b"previous version")
    real_read = AioStreamingBody.read
    calls = [0]

    async def cut(self: AioStreamingBody, amt: int | None = None) -> bytes:
        calls[0] += 1
        if calls[0] % 2 == 0:
            raise aiohttp.ClientPayloadError("Response payload is not completed")
        return await real_read(self, amt)

    monkeypatch.setattr(AioStreamingBody, "read", cut)
    store.chunk_size = 64 * 1024
    with pytest.raises(ConnectionFailed) as info:
        await store.download(f"{bucket}/d.bin", tmp_path / "d.bin")
    assert info.value.attempts == 3  # retried by the core (max_retries=2), each from scratch
    assert (tmp_path / "d.bin").read_bytes() == b"previous version"
    assert [p.name for p in tmp_path.iterdir()] == ["d.bin"]


async def test_download_checksum_mismatch_is_upstream_error(
    moto_url: str, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clock: FakeClock
) -> None:
    # One retry each: two calls make four failures, under the breaker's five.
    settings = Settings(retry=RetrySettings(max_retries=1, initial_delay=0.5, jitter=0.0))
    async with AsyncClient([s3_endpoint(moto_url)], settings=settings, clock=clock) as c, c.storage() as store:
        await store.create_bucket(bucket)
        await store.put_bytes(f"{bucket}/d.bin", b"x" * 1000)
        real_read = AioStreamingBody.read

        async def corrupt(self: AioStreamingBody, amt: int | None = None) -> bytes:
            chunk = await real_read(self, amt)
            return chunk[:-1] + b"y" if chunk else chunk  # same length, one byte flipped

        monkeypatch.setattr(AioStreamingBody, "read", corrupt)
        with pytest.raises(UpstreamError, match="checksum") as info:
            await store.download(f"{bucket}/d.bin", tmp_path / "d.bin")
        assert info.value.attempts == 2  # a damaged download is retried
        assert list(tmp_path.iterdir()) == []
        with pytest.raises(UpstreamError, match="checksum"):
            await store.get_bytes(f"{bucket}/d.bin")


async def test_multipart_download_checksum_mismatch(
    client: AsyncClient, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with S3Storage(client, "s3", multipart_threshold=5 * MiB, part_size=5 * MiB) as store:
        await store.create_bucket(bucket)
        await store.put_bytes(f"{bucket}/m.bin", os.urandom(6 * MiB))
        real_read = AioStreamingBody.read
        seen: list[AioStreamingBody] = []  # kept alive, so identities are never reused

        async def corrupt_first_chunk(self: AioStreamingBody, amt: int | None = None) -> bytes:
            chunk = await real_read(self, amt)
            if chunk and not any(b is self for b in seen):  # one damaged byte per attempt
                seen.append(self)
                return bytes([chunk[0] ^ 0xFF]) + chunk[1:]
            return chunk

        monkeypatch.setattr(AioStreamingBody, "read", corrupt_first_chunk)
        with pytest.raises(UpstreamError, match="checksum") as info:
            await store.get_bytes(f"{bucket}/m.bin")
        assert info.value.attempts == 3
        monkeypatch.setattr(AioStreamingBody, "read", real_read)
        assert len(await store.get_bytes(f"{bucket}/m.bin")) == 6 * MiB


# ---- listing, presigning, missing objects -------------------------------------
async def test_list_paginates_and_filters_by_prefix(store: S3Storage, bucket: str, client: AsyncClient) -> None:
    for i in range(7):
        await store.put_bytes(f"{bucket}/logs/{i:02d}.txt", b"l" * i)
    for i in range(3):
        await store.put_bytes(f"{bucket}/other/{i}.txt", b"o")
    before = requests_made(client)
    found = [o async for o in store.list(f"{bucket}/logs/", page_size=2)]
    assert requests_made(client) - before == 4  # 7 objects, 2 a page
    assert [o.key for o in found] == [f"{bucket}/logs/{i:02d}.txt" for i in range(7)]
    assert [o.size for o in found] == list(range(7))
    assert found[3].etag == md5(b"lll") and found[3].last_modified is not None
    assert len([o async for o in store.list(bucket, page_size=3)]) == 10
    assert [o async for o in store.list(f"{bucket}/nothing-here/")] == []


async def test_presigned_url_fetches_the_object(store: S3Storage, bucket: str) -> None:
    await store.put_bytes(f"{bucket}/p.txt", b"presigned!")
    url = await store.presign(f"{bucket}/p.txt", expires=600)
    assert "X-Amz-Signature=" in url and "X-Amz-Expires=600" in url and SECRET not in url

    def fetch() -> bytes:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return bytes(resp.read())

    assert await asyncio.to_thread(fetch) == b"presigned!"


async def test_missing_object_and_bucket_are_not_found(store: S3Storage, bucket: str, client: AsyncClient) -> None:
    with pytest.raises(NotFound, match="NoSuchKey") as info:
        await store.get_bytes(f"{bucket}/nope")
    assert info.value.attempts == 1 and info.value.status == 404 and info.value.request_id
    with pytest.raises(NotFound, match="NoSuchBucket"):
        await store.get_bytes("no-such-bucket-apimux/x")
    with pytest.raises(NotFound):
        await store.head(f"{bucket}/nope")


async def test_bad_names_are_bad_requests(store: S3Storage) -> None:
    for bad in ("", "bucket-only", "/", "bucket/"):
        with pytest.raises(BadRequest):
            await store.get_bytes(bad)
    with pytest.raises(BadRequest, match="bytes"):
        await store.put_bytes("b/k", "text")  # type: ignore[arg-type]


# ---- credentials ---------------------------------------------------------
async def test_wrong_secret_is_auth_error_after_one_request(moto_url: str, bucket: str, clock: FakeClock) -> None:
    """moto checks SigV4 signatures against IAM once its auth is switched on."""
    iam = boto3.client("iam", endpoint_url=moto_url, region_name="us-east-1",
                       aws_access_key_id="x", aws_secret_access_key="y")
    user = f"u{bucket}"
    iam.create_user(UserName=user)
    iam.put_user_policy(UserName=user, PolicyName="s3all", PolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
    }))
    key = iam.create_access_key(UserName=user)["AccessKey"]
    good = f"{key['AccessKeyId']}:{key['SecretAccessKey']}"
    wrong = f"{key['AccessKeyId']}:{'W' * 40}"
    previous = moto_auth(moto_url, "0")
    try:
        async with AsyncClient([s3_endpoint(moto_url, good)], settings=FAST, clock=clock) as c, c.storage() as s:
            await s.create_bucket(bucket)
            await s.put_bytes(f"{bucket}/k", b"ok")  # the right secret works: auth is really on
        unknown = f"AKIANOSUCHKEY0000000:{'z' * 40}"
        for cred, code in ((wrong, "SignatureDoesNotMatch"), (unknown, "InvalidAccessKeyId")):
            async with AsyncClient([s3_endpoint(moto_url, cred)], settings=FAST, clock=clock) as c, c.storage() as s:
                with pytest.raises(AuthError, match=code) as info:
                    await s.get_bytes(f"{bucket}/k")
                assert info.value.attempts == 1 and info.value.status == 403
                assert requests_made(c) == 1 and clock.sleeps == []  # no retry, no backoff
                assert key["SecretAccessKey"] not in str(info.value) and "WWWWWWWW" not in repr(info.value)
    finally:
        moto_auth(moto_url, previous)


async def test_secret_never_printed(
    store: S3Storage, client: AsyncClient, bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await store.put_bytes(f"{bucket}/k", b"v")
    errors: list[Exception] = []
    for call in (store.get_bytes(f"{bucket}/missing"), store.head("nobucket-apimux/x")):
        try:
            await call
        except NotFound as exc:
            errors.append(exc)
    texts = [str(e) for e in errors] + [repr(e) for e in errors] + [json.dumps(e.to_dict()) for e in errors]  # type: ignore[attr-defined]
    texts += [str(store), repr(store), json.dumps(client.stats()), repr(client.endpoints), caplog.text,
              repr(parse_credential(CRED)), await store.presign(f"{bucket}/k")]
    for text in texts:
        assert SECRET not in text
    assert any(ACCESS[:4] in t for t in texts)  # the masked label is there, so the check looks at real output
    with pytest.raises(ConfigError) as info:
        parse_credential("no-colon-in-this-credential-secret")
    assert "no-colon-in-this-credential-secret" not in str(info.value)


# ---- two endpoints behind one name -----------------------------------------
async def test_two_endpoints_share_a_name_round_robin(
    moto_url: str, moto_url2: str, bucket: str, clock: FakeClock
) -> None:
    eps = [s3_endpoint(moto_url, CRED, name="archive"), s3_endpoint(moto_url2, CRED2, name="archive")]
    async with AsyncClient(eps, settings=FAST, clock=clock) as c, c.storage("archive") as s:
        await s.create_bucket(bucket)
        for i in range(6):
            await s.put_bytes(f"{bucket}/{i}", str(i).encode())
        assert [await s.get_bytes(f"{bucket}/{i}") for i in range(6)] == [str(i).encode() for i in range(6)]
        servers = c.stats()["groups"]["archive"]["servers"]
        sent = [srv["keys"][0]["sent"] for srv in servers]
        assert sent == [7, 6]  # 13 calls alternate between the two servers
        assert len(s._clients) == 2  # one SDK client per (server, credential)
    assert SECRET2 not in json.dumps(c.stats())


async def test_dead_endpoint_trips_breaker_and_traffic_moves(moto_url: str, bucket: str, clock: FakeClock) -> None:
    settings = Settings(retry=RetrySettings(max_retries=5, initial_delay=0.1, jitter=0.0), breaker_threshold=5)
    eps = [s3_endpoint(dead_url(), CRED, name="pair"), s3_endpoint(moto_url, CRED2, name="pair")]
    async with AsyncClient(eps, settings=settings, clock=clock) as c, c.storage("pair") as s:
        for i in range(12):
            if i == 0:
                await s.create_bucket(bucket)
            await s.put_bytes(f"{bucket}/{i}", b"x")
        dead, healthy = c.stats()["groups"]["pair"]["servers"]
        assert dead["breaker"] == "open" and dead["breaker_trips"] == 1
        assert dead["keys"][0]["sent"] == 5  # five connection failures, then no more traffic
        assert healthy["breaker"] == "closed" and healthy["keys"][0]["sent"] == 13
        failures = {row["endpoint"]: row["failures"] for row in c.stats()["series"]}
        assert list(failures[dead["keys"][0]["key"]]) == ["ConnectionFailed"]


async def test_unreachable_endpoint_is_connection_failed(clock: FakeClock) -> None:
    settings = Settings(retry=RetrySettings(max_retries=0))
    async with AsyncClient([s3_endpoint(dead_url())], settings=settings, clock=clock) as c, c.storage() as s:
        with pytest.raises(ConnectionFailed) as info:
            await s.put_bytes("bkt/k", b"x")
    assert info.value.attempts == 1 and info.value.endpoint and SECRET not in str(info.value)


async def test_botocore_does_not_retry_on_its_own(dropper: tuple[str, list[int]], clock: FakeClock) -> None:
    """A dropped connection is one attempt. (The POST that starts a multipart
    upload is used because aiohttp itself resends an *idempotent* request
    once when a server drops the connection, per RFC 9112.)"""
    url, connections = dropper
    settings = Settings(retry=RetrySettings(max_retries=0))
    async with (
        AsyncClient([s3_endpoint(url)], settings=settings, clock=clock) as c,
        S3Storage(c, "s3", multipart_threshold=5 * MiB, part_size=5 * MiB) as s,
    ):
        with pytest.raises(ConnectionFailed):
            await s.put_bytes("bkt/k", bytes(6 * MiB))
    assert connections[0] == 1  # exactly one connection: the core is the only retry loop


# ---- server errors through the core (a scripted S3 error server) -------------
async def test_slowdown_honours_retry_after(fault_s3: FaultS3, clock: FakeClock) -> None:
    fault_s3.replies = [(503, "SlowDown", {"Retry-After": "7"})]
    async with AsyncClient([s3_endpoint(fault_s3.url)], settings=FAST, clock=clock) as c, c.storage() as s:
        start = clock.now()
        assert await s.put_bytes("bkt/k", b"") == md5(b"")
        assert clock.now() - start >= 7  # the key cooled down for the server's delay
    assert fault_s3.requests == 2


async def test_internal_error_is_retried_then_upstream_error(fault_s3: FaultS3, clock: FakeClock) -> None:
    fault_s3.replies = [(500, "InternalError", {})] * 3
    async with AsyncClient([s3_endpoint(fault_s3.url)], settings=FAST, clock=clock) as c, c.storage() as s:
        with pytest.raises(UpstreamError, match="InternalError") as info:
            await s.put_bytes("bkt/k", b"")
    assert info.value.attempts == 3 and fault_s3.requests == 3 and clock.sleeps == [0.5, 1.0]


async def test_service_unavailable_is_overloaded(fault_s3: FaultS3, clock: FakeClock) -> None:
    fault_s3.replies = [(503, "ServiceUnavailable", {})]
    settings = Settings(retry=RetrySettings(max_retries=0))
    async with AsyncClient([s3_endpoint(fault_s3.url)], settings=settings, clock=clock) as c, c.storage() as s:
        with pytest.raises(Overloaded):
            await s.put_bytes("bkt/k", b"")
    assert fault_s3.requests == 1  # botocore's own retries are off


def client_error(code: str, status: int, headers: dict[str, str] | None = None) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": f"{code} happened"},
         "ResponseMetadata": {"HTTPStatusCode": status, "HTTPHeaders": headers or {}}},
        "GetObject",
    )


@pytest.mark.parametrize(
    ("exc", "cls"),
    [
        (client_error("NoSuchKey", 404), NotFound),
        (client_error("404", 404), NotFound),
        (client_error("NoSuchBucket", 404), NotFound),
        (client_error("InvalidAccessKeyId", 403), AuthError),
        (client_error("SignatureDoesNotMatch", 403), AuthError),
        (client_error("AccessDenied", 403), AuthError),
        (client_error("SlowDown", 503), RateLimited),
        (client_error("ServiceUnavailable", 503), Overloaded),
        (client_error("InternalError", 500), UpstreamError),
        (client_error("RequestTimeout", 400), Timeout),
        (client_error("InvalidArgument", 400), BadRequest),
        (client_error("BucketAlreadyExists", 409), BadRequest),
        (EndpointConnectionError(endpoint_url="http://x"), ConnectionFailed),
        (ConnectTimeoutError(endpoint_url="http://x"), Timeout),
        (ReadTimeoutError(endpoint_url="http://x"), Timeout),
        (aiohttp.ClientPayloadError("cut"), ConnectionFailed),
    ],
)
def test_exception_mapping(exc: BaseException, cls: type[Exception]) -> None:
    mapped = map_exception(exc, 1.7e9)
    assert type(mapped) is cls


def test_retry_after_from_headers() -> None:
    mapped = map_exception(client_error("SlowDown", 503, {"Retry-After": "3"}), 1.7e9)
    assert isinstance(mapped, RateLimited) and mapped.retry_after == 3.0 and mapped.status == 503
    assert map_exception(ValueError("a bug"), 0.0) is None  # not ours to translate


# ---- configuration -------------------------------------------------------
def test_discover_from_s3_and_aws_variables() -> None:
    eps = S3Provider.discover({"S3_ENDPOINT": "http://minio:9000/", "S3_ACCESS_KEY": "AK", "S3_SECRET_KEY": "SK",
                               "AWS_ACCESS_KEY_ID": "ignored", "AWS_SECRET_ACCESS_KEY": "ignored"})
    assert len(eps) == 1 and eps[0].base_url == "http://minio:9000" and eps[0].keys == ["AK:SK"]
    assert eps[0].options == {"region": "us-east-1"}
    eps = S3Provider.discover({
        "AWS_ACCESS_KEY_ID": "AKIA1", "AWS_SECRET_ACCESS_KEY": "s/e+c", "AWS_SESSION_TOKEN": "tok",
        "AWS_ENDPOINT_URL": "http://a", "AWS_ENDPOINT_URL_S3": "http://s3only", "AWS_DEFAULT_REGION": "eu-west-1",
    })
    assert eps[0].base_url == "http://s3only" and eps[0].options["region"] == "eu-west-1"
    creds = parse_credential(eps[0].keys[0])
    assert (creds.access_key, creds.secret_key, creds.session_token) == ("AKIA1", "s/e+c", "tok")
    assert S3Provider.discover({"AWS_ACCESS_KEY_ID": "only-half"}) == []
    assert [e.backend for e in endpoints_from_env({"S3_ACCESS_KEY": "a", "S3_SECRET_KEY": "b"})] == ["s3"]


def test_a_colon_inside_the_secret_survives_discovery() -> None:
    # MinIO/Ceph secrets may hold ':' (AWS ones never do); read from the
    # environment it must reach botocore whole, not be cut into secret + token.
    for secret, token in (("se:cret", None), ("se:cret", "tok"), ("back\\sl:ash:", None)):
        env = {"S3_ACCESS_KEY": "AK", "S3_SECRET_KEY": secret}
        if token:
            env["S3_SESSION_TOKEN"] = token
        ep = S3Provider.discover(env)[0]
        creds = parse_credential(ep.keys[0])
        assert (creds.access_key, creds.secret_key, creds.session_token) == ("AK", secret, token)
        args = S3Provider(ep).client_args(ep.keys[0])
        assert (args["aws_secret_access_key"], args["aws_session_token"]) == (secret, token)
    assert parse_credential("AK:se\\:cret").secret_key == "se:cret"  # written by hand, escaped
    with pytest.raises(ConfigError, match="at most three"):
        parse_credential("AK:se:cr:et")  # ambiguous: refused instead of a silently wrong token


async def test_environment_configures_storage_end_to_end(
    moto_url: str, bucket: str, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("S3_ENDPOINT", moto_url)
    monkeypatch.setenv("S3_ACCESS_KEY", ACCESS)
    monkeypatch.setenv("S3_SECRET_KEY", SECRET)
    monkeypatch.setenv("APIMUX_CONFIG", os.devnull)
    async with AsyncClient(env=dict(os.environ), config={}, clock=clock) as c, c.storage() as s:
        await s.create_bucket(bucket)
        await s.put_bytes(f"{bucket}/env", b"from env")
        assert await s.get_bytes(f"{bucket}/env") == b"from env"


def test_config_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="ACCESS_KEY:SECRET_KEY"):
        AsyncClient([Endpoint("s3", base_url="http://x", api_keys=["justakey"])]).storage()
    with pytest.raises(ConfigError, match="needs an API key"):
        AsyncClient([Endpoint("s3", base_url="http://x")]).storage()
    with pytest.raises(ConfigError, match="5 MiB"):
        S3Storage(AsyncClient([s3_endpoint("http://x")]), part_size=MiB)
    monkeypatch.setitem(sys.modules, "aiobotocore", None)
    monkeypatch.delitem(sys.modules, "aiobotocore.session", raising=False)
    monkeypatch.delitem(sys.modules, "aiobotocore.config", raising=False)
    with pytest.raises(ConfigError, match=r"pip install 'apimux\[s3\]'"):
        AsyncClient([s3_endpoint("http://x")]).storage()


def test_import_apimux_without_aiobotocore() -> None:
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('aiobotocore', 'botocore', 'boto3'):\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import apimux, apimux.storage, apimux.providers.s3\n"
        "from apimux.providers import registry\n"
        "assert registry.get('s3').name == 's3'\n"
        "try:\n"
        "    apimux.AsyncClient([apimux.Endpoint('s3', base_url='http://x', api_keys=['a:b'])]).storage()\n"
        "except apimux.ConfigError as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr
    assert "pip install 'apimux[s3]'" in out.stdout


# ---- the shared core's promises, for storage too ----------------------------------------------
async def test_priority_and_stats_through_the_core(moto_url: str, bucket: str, clock: FakeClock) -> None:
    """Storage calls wait in the same priority queue as every other backend,
    and the stats count exactly the requests made."""
    async with AsyncClient([s3_endpoint(moto_url, max_concurrent=1)], settings=FAST, clock=clock) as c:
        stores = {p: S3Storage(c, priority=p) for p in (Priority.LOW, Priority.NORMAL, Priority.HIGH)}
        await stores[Priority.NORMAL].create_bucket(bucket)
        gate = asyncio.Event()

        async def hold(lease: object) -> None:  # occupies the only slot until released
            await gate.wait()

        holder = asyncio.create_task(c.run_attempt("s3/hold", "hold", hold))
        await asyncio.sleep(0.01)
        done: list[str] = []

        async def put(p: Priority) -> None:
            await stores[p].put_bytes(f"{bucket}/{p.name}", p.name.encode())
            done.append(p.name)

        tasks = [asyncio.create_task(put(p)) for p in (Priority.LOW, Priority.NORMAL, Priority.HIGH)]
        await asyncio.sleep(0.05)
        assert done == []  # all three wait behind the held slot
        gate.set()
        await asyncio.gather(holder, *tasks)
        assert done == ["HIGH", "NORMAL", "LOW"]
        totals = c.stats()["totals"]
        # create_bucket + hold + 3 puts, all successful, none retried
        assert totals["requests"] == totals["successes"] == 5 and totals["retries"] == 0
        for s in stores.values():
            await s.close()
