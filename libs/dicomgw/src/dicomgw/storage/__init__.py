"""Object storage: the ObjectStore protocol and its adapters (local folder, S3/MinIO)."""

from __future__ import annotations

from dicomgw.config import Settings
from dicomgw.storage.base import ObjectInfo, ObjectNotFound, ObjectStore, original_key

__all__ = ["ObjectInfo", "ObjectNotFound", "ObjectStore", "open_store", "original_key"]


async def open_store(settings: Settings) -> ObjectStore:
    """The adapter the settings name, ready to use (bucket created if asked)."""
    if settings.storage.backend == "s3":
        from dicomgw.storage.s3 import S3Store

        return await S3Store.open(settings.storage)
    from dicomgw.storage.local import LocalStore

    return LocalStore(settings.objects_path)
