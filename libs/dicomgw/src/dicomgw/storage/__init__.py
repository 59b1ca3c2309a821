"""Object storage: the ObjectStore protocol and its adapters (local folder, S3/MinIO)."""

from __future__ import annotations

from pathlib import Path

from dicomgw.config import StorageSettings
from dicomgw.storage.base import (
    FileToStore,
    ObjectInfo,
    ObjectNotFound,
    ObjectStore,
    original_key,
    partition_prefix,
)

__all__ = ["FileToStore", "ObjectInfo", "ObjectNotFound", "ObjectStore", "open_store", "original_key",
           "partition_prefix"]


async def open_store(storage: StorageSettings, local_path: Path) -> ObjectStore:
    """The adapter ``storage`` names, ready to use (bucket created if asked).

    ``local_path`` is the folder of the local adapter when ``storage.path`` is not set.
    """
    if storage.backend == "s3":
        from dicomgw.storage.s3 import S3Store

        return await S3Store.open(storage)
    from dicomgw.storage.local import LocalStore

    return LocalStore(storage.path or local_path)
