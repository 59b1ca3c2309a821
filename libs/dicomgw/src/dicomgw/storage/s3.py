"""S3 ObjectStore (MinIO, AWS, any S3 API) over aiobotocore.

Every original is sent with its SHA-256 (``x-amz-checksum-sha256``) and the server refuses the PUT if the
bytes it received do not match. Files larger than one part go up as a multipart upload whose parts
each carry their own SHA-256, read from the file one part at a time, so memory stays bounded.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiobotocore.session import get_session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from dicomgw.config import StorageSettings
from dicomgw.errors import StorageUnavailable
from dicomgw.storage.base import FileToStore, ObjectInfo, ObjectNotFound
from dicomgw.storage.presign import Presigner

# A single PUT holds at most this much in memory; larger files go part by part (S3 minimum: 5 MiB)
PART_SIZE = 8 * 1024 * 1024
_NOT_FOUND = {"NoSuchKey", "404", "NotFound"}
_PAST_END = {"InvalidRange", "416"}


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _utc(value: object) -> datetime | None:
    """LastModified as botocore parses it (an aware datetime), in UTC."""
    return value.astimezone(UTC) if isinstance(value, datetime) else None


def _as_store_error(exc: Exception) -> Exception:
    if isinstance(exc, OSError):
        return StorageUnavailable(f"reading a file to store failed: {exc.strerror}")
    return exc


class S3Store:
    """Objects in one bucket; keys are used as they are."""

    def __init__(self, client: Any, bucket: str, stack: AsyncExitStack, max_concurrency: int = 8,
                 storage_class: str | None = None) -> None:
        self._client = client
        self.bucket = bucket
        self._stack = stack
        # PUTs at once in put_files
        self.max_concurrency = max_concurrency
        # the S3 storage class every object is written with (a cold tier's cheaper one); None: the bucket's
        self._class: dict[str, Any] = {"StorageClass": storage_class} if storage_class else {}
        # presigned GET URLs for the store's public endpoint, when one is configured: signed here with
        # the configured key (dicomgw.storage.presign), or by botocore with credentials it finds itself
        self._signer: Presigner | Any = None
        self.presign_seconds = 900

    @property
    def can_presign(self) -> bool:
        return self._signer is not None

    async def presign(self, key: str) -> str:
        """A GET URL of ``key`` on the public endpoint, valid ``presign_seconds``; no request is sent."""
        if self._signer is None:
            raise RuntimeError("no public endpoint is configured to presign for")
        if isinstance(self._signer, Presigner):
            return self._signer.url(self.bucket, key, self.presign_seconds)
        url: str = await self._signer.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=self.presign_seconds)
        return url

    @classmethod
    async def open(cls, settings: StorageSettings) -> S3Store:
        stack = AsyncExitStack()
        config = Config(
            connect_timeout=5, read_timeout=60, retries={"max_attempts": 3, "mode": "standard"},
            s3={"addressing_style": "path"}, max_pool_connections=max(10, settings.max_concurrency * 2),
            request_checksum_calculation="when_required", response_checksum_validation="when_required",
        )
        client = await stack.enter_async_context(get_session().create_client(
            "s3", endpoint_url=settings.endpoint_url, region_name=settings.region,
            aws_access_key_id=settings.access_key, aws_secret_access_key=settings.secret_key,
            config=config,
        ))
        store = cls(client, settings.bucket, stack, settings.max_concurrency, settings.storage_class)
        if settings.public_url:
            # a URL's signature covers the host clients use; no request goes there from here
            if settings.access_key and settings.secret_key:
                store._signer = Presigner(settings.public_url, settings.region, settings.access_key,
                                          settings.secret_key)
            else:  # credentials from the environment (which may be temporary, with a session token)
                store._signer = await stack.enter_async_context(get_session().create_client(
                    "s3", endpoint_url=settings.public_url, region_name=settings.region,
                    config=Config(s3={"addressing_style": "path"}, signature_version="s3v4")))
            store.presign_seconds = settings.presign_seconds
        if settings.create_bucket:
            await store._ensure_bucket()
        return store

    async def _ensure_bucket(self) -> None:
        try:
            await self._client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if _code(exc) not in ("404", "NoSuchBucket", "NotFound"):
                raise StorageUnavailable(f"bucket {self.bucket} not reachable: {_code(exc)}") from exc
            try:
                await self._client.create_bucket(Bucket=self.bucket)
            except ClientError as create_exc:
                if _code(create_exc) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise StorageUnavailable(f"cannot create bucket: {_code(create_exc)}") from create_exc
        except BotoCoreError as exc:
            raise StorageUnavailable(f"object store unreachable: {type(exc).__name__}") from exc

    async def _call(self, method: str, *, past_end_ok: bool = False, **kwargs: Any) -> Any:
        """One S3 call, its errors mapped; with ``past_end_ok`` a 416 (range past the end) gives None."""
        try:
            return await getattr(self._client, method)(**kwargs)
        except ClientError as exc:
            if _code(exc) in _NOT_FOUND:
                raise ObjectNotFound(kwargs.get("Key", "")) from exc
            if past_end_ok and _code(exc) in _PAST_END:
                return None
            raise StorageUnavailable(f"object store refused {method}: {_code(exc)}") from exc
        except BotoCoreError as exc:
            raise StorageUnavailable(f"object store unreachable: {type(exc).__name__}") from exc

    # -- writing ---------------------------------------------------------------------------------
    async def put_file(self, key: str, path: Path, *, sha256: bytes, size: int,
                       hashed: bool = False) -> None:
        # MinIO checks the digest whatever ``hashed`` says
        if size <= PART_SIZE:
            data = await asyncio.to_thread(Path(path).read_bytes)
            if len(data) != size:
                raise StorageUnavailable("size mismatch writing an object")
            await self._call("put_object", Bucket=self.bucket, Key=key, Body=data,
                             ChecksumSHA256=_b64(sha256), ContentType="application/dicom", **self._class)
            return
        await self._multipart(key, Path(path), sha256, size)

    async def put_files(self, files: Sequence[FileToStore], *,
                        hashed: bool = False) -> list[Exception | None]:
        limit = asyncio.Semaphore(self.max_concurrency)

        async def one(f: FileToStore) -> None:
            async with limit:
                await self.put_file(f.key, f.path, sha256=f.sha256, size=f.size, hashed=hashed)

        outcomes = await asyncio.gather(*(one(f) for f in files), return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException) and not isinstance(outcome, Exception):
                raise outcome  # cancelled: not an outcome of one file
        return [_as_store_error(o) if isinstance(o, Exception) else None for o in outcomes]

    async def _multipart(self, key: str, path: Path, sha256: bytes, size: int) -> None:
        upload = await self._call("create_multipart_upload", Bucket=self.bucket, Key=key,
                                  ChecksumAlgorithm="SHA256", ContentType="application/dicom", **self._class)
        upload_id = upload["UploadId"]
        try:
            parts = []
            whole = hashlib.sha256()
            total = 0
            with open(path, "rb") as f:  # noqa: ASYNC230 - reads happen in a thread below
                number = 1
                while chunk := await asyncio.to_thread(f.read, PART_SIZE):
                    whole.update(chunk)
                    total += len(chunk)
                    digest = _b64(hashlib.sha256(chunk).digest())
                    result = await self._call("upload_part", Bucket=self.bucket, Key=key,
                                              UploadId=upload_id, PartNumber=number, Body=chunk,
                                              ChecksumSHA256=digest)
                    parts.append({"PartNumber": number, "ETag": result["ETag"],
                                  "ChecksumSHA256": digest})
                    number += 1
            if whole.digest() != sha256 or total != size:
                raise StorageUnavailable("checksum mismatch writing an object")
            await self._call("complete_multipart_upload", Bucket=self.bucket, Key=key,
                             UploadId=upload_id, MultipartUpload={"Parts": parts})
        except BaseException:
            try:
                await self._client.abort_multipart_upload(Bucket=self.bucket, Key=key,
                                                          UploadId=upload_id)
            except Exception:
                pass
            raise

    async def put_bytes(self, key: str, data: bytes) -> None:
        await self._call("put_object", Bucket=self.bucket, Key=key, Body=data,
                         ChecksumSHA256=_b64(hashlib.sha256(data).digest()), **self._class)

    # -- reading ---------------------------------------------------------------------------------
    async def open_stream(
        self, key: str, *, start: int = 0, length: int | None = None, chunk_size: int = 1 << 20
    ) -> AsyncIterator[bytes]:
        if length is not None and length <= 0:
            await self.head(key)  # still ObjectNotFound for a missing key, like any other read
            return
        response = await self._get(key, start, length)
        if response is None:
            return
        async with response["Body"] as body:
            try:
                while chunk := await body.read(chunk_size):
                    yield chunk
            except BotoCoreError as exc:
                raise StorageUnavailable(f"object store read failed: {type(exc).__name__}") from exc

    async def read_range(self, key: str, start: int, length: int) -> bytes:
        if length <= 0:
            await self.head(key)
            return b""
        response = await self._get(key, start, length)
        if response is None:
            return b""
        async with response["Body"] as body:
            return bytes(await body.read())

    async def _get(self, key: str, start: int, length: int | None) -> Any:
        """GET the object or a range of it; None when the range starts at or past its end."""
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if start or length is not None:
            end = "" if length is None else str(start + length - 1)
            kwargs["Range"] = f"bytes={start}-{end}"
        return await self._call("get_object", past_end_ok=True, **kwargs)

    async def read(self, key: str) -> bytes:
        response = await self._call("get_object", Bucket=self.bucket, Key=key)
        async with response["Body"] as body:
            return bytes(await body.read())

    async def head(self, key: str) -> ObjectInfo:
        response = await self._call("head_object", Bucket=self.bucket, Key=key)
        return ObjectInfo(key=key, size=int(response["ContentLength"]),
                          modified=_utc(response.get("LastModified")))

    async def exists(self, key: str) -> bool:
        try:
            await self.head(key)
        except ObjectNotFound:
            return False
        return True

    async def delete(self, key: str) -> None:
        try:
            await self._call("delete_object", Bucket=self.bucket, Key=key)
        except ObjectNotFound:
            pass

    async def list_keys(self, prefix: str = "") -> AsyncIterator[str]:
        paginator = self._client.get_paginator("list_objects_v2")
        try:
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    yield item["Key"]
        except (ClientError, BotoCoreError) as exc:
            raise StorageUnavailable(f"object store listing failed: {type(exc).__name__}") from exc

    async def list_objects(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        paginator = self._client.get_paginator("list_objects_v2")
        try:
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    yield ObjectInfo(key=item["Key"], size=int(item["Size"]),
                                     modified=_utc(item.get("LastModified")))
        except (ClientError, BotoCoreError) as exc:
            raise StorageUnavailable(f"object store listing failed: {type(exc).__name__}") from exc

    async def close(self) -> None:
        await self._stack.aclose()
