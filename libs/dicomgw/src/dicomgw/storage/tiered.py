"""The primary store with a cold tier behind it: reads find an original in either, writes go hot.

The worker moves old originals to the cold tier (``dicomgw_worker.tiering``) and the index says which
tier holds each (``instances.tier``); readers need not know: a key the hot store does not hold is read
from the cold one, one round trip later, and counted in ``dicomgw_tier_reads_total`` and
``dicomgw_tier_read_seconds`` (time to the first byte) by tier. Deletes touch the hot store only; the
cold one is written and pruned through ``.cold`` by the worker alone.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from prometheus_client import Counter, Histogram

from dicomgw.storage.base import FileToStore, ObjectInfo, ObjectNotFound, ObjectStore

TIER_READS = Counter("dicomgw_tier_reads_total", "Reads of originals by the tier that served them",
                     ["tier"])
TIER_READ_SECONDS = Histogram("dicomgw_tier_read_seconds",
                              "Time to the first byte of a read of an original, by tier", ["tier"],
                              buckets=(0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1, 3, 10))


class TieredStore:
    """An ObjectStore over ``hot`` and ``cold``: reads fall back to cold, everything else is hot."""

    def __init__(self, hot: ObjectStore, cold: ObjectStore) -> None:
        self.hot = hot
        self.cold = cold

    def _served(self, tier: str, started: float) -> None:
        TIER_READS.labels(tier=tier).inc()
        TIER_READ_SECONDS.labels(tier=tier).observe(time.perf_counter() - started)

    # -- writes: hot ---------------------------------------------------------------------------------
    async def put_file(self, key: str, path: Path, *, sha256: bytes, size: int, hashed: bool = False) -> None:
        await self.hot.put_file(key, path, sha256=sha256, size=size, hashed=hashed)

    async def put_files(self, files: Sequence[FileToStore], *,
                        hashed: bool = False) -> list[Exception | None]:
        return await self.hot.put_files(files, hashed=hashed)

    async def put_bytes(self, key: str, data: bytes) -> None:
        await self.hot.put_bytes(key, data)

    async def delete(self, key: str) -> None:
        await self.hot.delete(key)

    # -- reads: hot, then cold -----------------------------------------------------------------------
    async def open_stream(self, key: str, *, start: int = 0, length: int | None = None,
                          chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        started = time.perf_counter()
        for tier, store in (("hot", self.hot), ("cold", self.cold)):
            stream = store.open_stream(key, start=start, length=length, chunk_size=chunk_size)
            try:
                first = await anext(stream)
            except StopAsyncIteration:
                self._served(tier, started)
                return
            except ObjectNotFound:
                if tier == "cold":
                    raise
                continue
            self._served(tier, started)
            yield first
            async for chunk in stream:
                yield chunk
            return

    async def read_range(self, key: str, start: int, length: int) -> bytes:
        started = time.perf_counter()
        try:
            data = await self.hot.read_range(key, start, length)
            tier = "hot"
        except ObjectNotFound:
            data = await self.cold.read_range(key, start, length)
            tier = "cold"
        self._served(tier, started)
        return data

    async def read(self, key: str) -> bytes:
        started = time.perf_counter()
        try:
            data = await self.hot.read(key)
            tier = "hot"
        except ObjectNotFound:
            data = await self.cold.read(key)
            tier = "cold"
        self._served(tier, started)
        return data

    async def head(self, key: str) -> ObjectInfo:
        try:
            return await self.hot.head(key)
        except ObjectNotFound:
            return await self.cold.head(key)

    async def exists(self, key: str) -> bool:
        return await self.hot.exists(key) or await self.cold.exists(key)

    # -- listings: the hot store's (the orphan sweep's business) -----------------------------------------
    def list_keys(self, prefix: str = "") -> AsyncIterator[str]:
        return self.hot.list_keys(prefix)

    def list_objects(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        return self.hot.list_objects(prefix)

    async def close(self) -> None:
        await self.hot.close()
        await self.cold.close()
