"""Object storage through the core: ``client.storage("s3")`` -> ``S3Storage``.

aiobotocore is imported only when a store is opened, so ``import apimux``
works without the ``s3`` extra (``pip install 'apimux[s3]'``).
"""

from __future__ import annotations

from typing import Any

from apimux.storage.s3 import ObjectInfo, S3Storage

__all__ = ["ObjectInfo", "S3Storage", "open_storage"]


def open_storage(client: Any, name: str = "s3", **options: Any) -> S3Storage:
    """The object store for the endpoints named ``name`` on ``client``.

    ``options`` are ``S3Storage``'s: ``multipart_threshold``, ``part_size``,
    ``chunk_size``, ``priority``.
    """
    return S3Storage(client, name, **options)
