"""S3-compatible object storage: configuration only.

S3 is not JSON over HTTP, so this provider builds no requests; it carries
what an endpoint needs (URL, region, credentials) and finds it in the
environment. The calls themselves are aiobotocore calls that
``apimux.storage`` runs as attempts under the core, so S3 shares the
queue, pool, breakers, retries and stats with every other backend.

A credential is one string ``ACCESS_KEY:SECRET_KEY`` (or
``ACCESS_KEY:SECRET_KEY:SESSION_TOKEN``), so the key pool, masking and
per-key slots work unchanged. AWS keys never hold a ``:``, but the secret of
a MinIO or Ceph user may: there it is written ``\\:`` (and a backslash
``\\\\``); credentials read from ``S3_*``/``AWS_*`` variables are escaped so.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from apimux.config import Endpoint, mask_key
from apimux.errors import ConfigError
from apimux.providers.base import Provider
from apimux.providers.registry import register

DEFAULT_REGION = "us-east-1"


@dataclass(frozen=True, slots=True)
class S3Credentials:
    access_key: str
    secret_key: str
    session_token: str | None = None

    def __repr__(self) -> str:
        # Never the secret: the access key id masked, the rest elided.
        return f"S3Credentials(access_key={mask_key(self.access_key)!r}, secret_key='…')"


def _split_escaped(value: str) -> list[str]:
    """Split at each ``:`` not escaped by a backslash; ``\\:`` and ``\\\\`` unescape."""
    parts, cur, i = [], [], 0
    while i < len(value):
        ch = value[i]
        if ch == "\\" and i + 1 < len(value) and value[i + 1] in ":\\":
            cur.append(value[i + 1])
            i += 2
            continue
        if ch == ":":
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    parts.append("".join(cur))
    return parts


def _escape(field: str) -> str:
    return field.replace("\\", "\\\\").replace(":", "\\:")


def parse_credential(value: str) -> S3Credentials:
    """``"ACCESS:SECRET"`` or ``"ACCESS:SECRET:TOKEN"`` -> credentials (``\\:`` is a literal colon)."""
    parts = _split_escaped(value)
    if len(parts) > 3:
        raise ConfigError(
            "an s3 credential has at most three ':'-separated parts (write a ':' inside the secret as '\\:')",
            backend="s3",
        )
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise ConfigError(
            f"an s3 credential must be 'ACCESS_KEY:SECRET_KEY' (got {mask_key(value)!r})", backend="s3"
        )
    token = parts[2] if len(parts) == 3 and parts[2] else None
    return S3Credentials(parts[0], parts[1], token)


def join_credential(access: str, secret: str, token: str | None = None) -> str:
    """The one-string form ``parse_credential`` reads back exactly, whatever the secret holds."""
    fields = [access, secret, token] if token else [access, secret]
    return ":".join(_escape(f) for f in fields)


@register
class S3Provider(Provider):
    name = "s3"
    aliases = ("minio",)
    # Documentation only: ``discover`` reads these (credentials come in pairs).
    env_keys = ("S3_ACCESS_KEY", "AWS_ACCESS_KEY_ID")
    env_base_url = ("S3_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
    default_base_url = None  # AWS itself, found by botocore from the region
    needs_key = True
    sends_request_id = False

    def __init__(self, endpoint: Any) -> None:
        super().__init__(endpoint)
        self.region: str = str(self.options.get("region") or DEFAULT_REGION)
        # Custom endpoints (MinIO, Ceph, moto, ...) rarely have per-bucket DNS.
        style = self.options.get("addressing_style") or ("path" if self.base_url else "auto")
        if style not in ("path", "virtual", "auto"):
            raise ConfigError(f"s3 addressing_style must be path, virtual or auto, got {style!r}", backend="s3")
        self.addressing_style: str = str(style)
        # Some services (SSE-KMS on AWS) return ETags that are not the MD5.
        self.verify_etag: bool = bool(self.options.get("verify_etag", True))
        self.credentials = {k: parse_credential(k) for k in endpoint.keys}

    def client_args(self, key: str) -> dict[str, Any]:
        """Arguments for ``session.create_client("s3", ...)``, minus the botocore Config."""
        creds = self.credentials.get(key) or parse_credential(key)
        return {
            "endpoint_url": self.base_url or None,
            "region_name": self.region,
            "aws_access_key_id": creds.access_key,
            "aws_secret_access_key": creds.secret_key,
            "aws_session_token": creds.session_token,
        }

    def config_args(self) -> dict[str, Any]:
        """Arguments for botocore's ``Config``: its own retries OFF (the core
        is the only retry loop), timeouts from the endpoint, and checksums
        only when an operation requires them (apimux sends Content-MD5
        itself, which every S3-compatible service understands)."""
        ep = self.endpoint
        return {
            "retries": {"total_max_attempts": 1, "mode": "standard"},
            "connect_timeout": ep.connect_timeout,
            "read_timeout": ep.read_timeout or ep.timeout,
            "max_pool_connections": max(10, ep.max_concurrent),
            "signature_version": "s3v4",
            "s3": {"addressing_style": self.addressing_style},
            "request_checksum_calculation": "when_required",
            "response_checksum_validation": "when_required",
        }

    @classmethod
    def discover(cls, env: Mapping[str, str]) -> list[Endpoint]:
        """One endpoint from ``S3_*`` variables, else the standard ``AWS_*`` ones."""
        base_url = next((env[v] for v in cls.env_base_url if env.get(v)), None)
        region = env.get("S3_REGION") or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or DEFAULT_REGION
        if env.get("S3_ACCESS_KEY") and env.get("S3_SECRET_KEY"):
            cred = join_credential(env["S3_ACCESS_KEY"], env["S3_SECRET_KEY"], env.get("S3_SESSION_TOKEN"))
        elif env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
            cred = join_credential(
                env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"], env.get("AWS_SESSION_TOKEN")
            )
        else:
            return []
        return [Endpoint(cls.name, base_url=base_url, api_keys=[cred], options={"region": region})]
