"""A real S3-speaking server (moto in server mode) on loopback, plus small
fault servers for what moto cannot do (5xx, SlowDown, dropped connections)."""

from __future__ import annotations

import asyncio
import json
import socket
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from moto.server import ThreadedMotoServer

from apimux import AsyncClient, Endpoint, FakeClock, RetrySettings, Settings
from apimux.storage import S3Storage

ACCESS = "AKIAIOSFODNN7EXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLESECRET"
CRED = f"{ACCESS}:{SECRET}"
ACCESS2 = "AKIAI44QH8DHBEXAMPLE"
SECRET2 = "je7MtGbClwBF/2Zp9Utk/h3yCo8nvbEXAMPLEOTHER"
CRED2 = f"{ACCESS2}:{SECRET2}"
FAST = Settings(retry=RetrySettings(max_retries=2, initial_delay=0.5, jitter=0.0))


def start_moto() -> tuple[ThreadedMotoServer, str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return server, f"http://{host}:{port}"


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    server, url = start_moto()
    yield url
    server.stop()


@pytest.fixture(scope="session")
def moto_url2() -> Iterator[str]:
    """A second S3 server. moto keeps its state per process, so both servers
    see the same buckets, as two gateways of one object store would."""
    server, url = start_moto()
    yield url
    server.stop()


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """No credentials, profiles or endpoints leak in from the machine."""
    empty = tmp_path_factory.mktemp("aws") / "none"
    for var in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN", "AWS_REGION",
                "S3_ENDPOINT", "S3_ACCESS_KEY", "S3_SECRET_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(empty))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def bucket() -> str:
    return f"apimux-{uuid.uuid4().hex[:12]}"


def s3_endpoint(url: str, cred: str = CRED, **kw: object) -> Endpoint:
    return Endpoint("s3", base_url=url, api_keys=[cred], options={"region": "us-east-1"}, **kw)  # type: ignore[arg-type]


@pytest.fixture
async def client(moto_url: str, clock: FakeClock) -> AsyncIterator[AsyncClient]:
    async with AsyncClient([s3_endpoint(moto_url)], settings=FAST, clock=clock) as c:
        yield c


@pytest.fixture
async def store(client: AsyncClient, bucket: str) -> AsyncIterator[S3Storage]:
    async with client.storage("s3") as s:
        await s.create_bucket(bucket)
        yield s


def dead_url() -> str:
    """A loopback port where nothing listens (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def moto_auth(url: str, count: str) -> str:
    """Turn moto's IAM signature checks on ("0") or off ("inf"); returns the old value."""
    # Not form-encoded: moto reads the raw body as the number.
    req = urllib.request.Request(
        f"{url}/moto-api/reset-auth", data=count.encode(), method="POST", headers={"Content-Type": "text/plain"}
    )
    with urllib.request.urlopen(req) as resp:
        return str(json.loads(resp.read())["PREVIOUS_INITIAL_NO_AUTH_ACTION_COUNT"])


@dataclass
class FaultS3:
    """Answers every request with a scripted S3 XML error (then 200s), counting requests."""

    replies: list[tuple[int, str, dict[str, str]]] = field(default_factory=list)
    requests: int = 0
    connections: int = 0
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        await request.read()
        if self.replies:
            status, code, headers = self.replies.pop(0)
            xml = (
                '<?xml version="1.0" encoding="UTF-8"?>\n'
                f"<Error><Code>{code}</Code><Message>scripted {code}</Message>"
                "<RequestId>4442587FB7D0A2F9</RequestId></Error>"
            )
            headers = {"Content-Type": "application/xml", **headers}
            return web.Response(status=status, body=xml.encode(), headers=headers)
        return web.Response(status=200, headers={"ETag": '"d41d8cd98f00b204e9800998ecf8427e"'})


@pytest.fixture
async def fault_s3() -> AsyncIterator[FaultS3]:
    fault = FaultS3()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", fault.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    fault.url = f"http://127.0.0.1:{port}"
    yield fault
    await runner.cleanup()


@pytest.fixture
async def dropper() -> AsyncIterator[tuple[str, list[int]]]:
    """Accepts each connection and closes it at once; counts connections."""
    count = [0]

    async def on_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        count[0] += 1
        writer.close()

    server = await asyncio.start_server(on_conn, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}", count
    server.close()
    await server.wait_closed()
