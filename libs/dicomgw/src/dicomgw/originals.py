"""An original in a store, in the form the index says it is kept in: the one place that reads either.

- **verbatim**: the bytes received, at the row's ``object_key``;
- **compact**: a lossless container (``dicomgw.compact``) that reconstructs those bytes exactly, at
  ``object_key + ".dgwc"``. A frame of a native image is one ranged read of its own codestream (the
  container's header is read once and kept); anything else reconstructs the whole original, which
  compaction bounds by ``DICOMGW_COMPACT_MAX_BYTES``.

Every reader of an original (WADO-RS, verification, replication, repair, collections, the soak's
audit) goes through here, so that a form is a fact of the index and never a guess from the bytes.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass

from dicomgw import compact
from dicomgw.storage import ObjectNotFound, ObjectStore

VERBATIM = "verbatim"
COMPACT = "compact"
COMPACT_SUFFIX = ".dgwc"
_CHUNK = 1 << 20


def stored_key(object_key: str, form: str) -> str:
    """Where the copy of the original at ``object_key`` is kept in ``form``."""
    return object_key + COMPACT_SUFFIX if form == COMPACT else object_key


def original_key(key: str) -> tuple[str, str]:
    """The original's object key and the form of the stored object at ``key`` (the reverse)."""
    if key.endswith(COMPACT_SUFFIX):
        return key[: -len(COMPACT_SUFFIX)], COMPACT
    return key, VERBATIM


@dataclass(frozen=True)
class Copy:
    """One stored copy of an original: the row's object key and the form the store holds it in."""

    object_key: str
    form: str = VERBATIM
    # the original's size, when known: a large compact copy is then streamed by ranged reads
    size: int | None = None

    @property
    def key(self) -> str:
        return stored_key(self.object_key, self.form)


async def read(store: ObjectStore, copy: Copy) -> bytes:
    """The original's bytes. A compact copy that does not reconstruct them raises CompactCorrupt."""
    data = await store.read(copy.key)
    if copy.form != COMPACT:
        return data
    return await asyncio.to_thread(compact.reconstruct, data)


async def stream(store: ObjectStore, copy: Copy, *, start: int = 0,
                 length: int | None = None) -> AsyncIterator[bytes]:
    """The original's bytes (or ``length`` of them from ``start``), chunk by chunk."""
    if copy.form != COMPACT:
        async for chunk in store.open_stream(copy.key, start=start, length=length):
            yield chunk
        return
    if copy.size is None or copy.size <= STREAM_ABOVE:
        original = await read(store, copy)
        end = len(original) if length is None else min(len(original), start + length)
        for offset in range(start, end, _CHUNK):
            yield original[offset:min(offset + _CHUNK, end)]
        return
    async for chunk in _streamed(store, copy, start, length):
        yield chunk


# compact copies of originals larger than this are streamed (a chunk or frame at a time, each a
# ranged read) rather than read whole and rebuilt in memory
STREAM_ABOVE = 32 << 20


async def _streamed(store: ObjectStore, copy: Copy, start: int, length: int | None) -> AsyncIterator[bytes]:
    """A large compact copy rebuilt part by part (``compact.reconstruct_stream`` in a thread, reading
    through the store on this loop); the SHA-256 is checked when the whole original is read."""
    loop = asyncio.get_running_loop()

    def read_range(offset: int, n: int) -> bytes:
        return asyncio.run_coroutine_threadsafe(store.read_range(copy.key, offset, n), loop).result()

    parts = compact.reconstruct_stream(read_range)
    end = None if length is None else start + length
    position = 0
    try:
        while (part := await asyncio.to_thread(next, parts, None)) is not None:
            lo, hi = position, position + len(part)
            position = hi
            if hi <= start:
                continue
            yield part[max(0, start - lo):len(part) if end is None else max(0, min(len(part), end - lo))]
            if end is not None and hi >= end:
                return
    finally:
        close = getattr(parts, "close", None)  # a generator left early: its reads stop
        if close is not None:
            close()


async def digest(store: ObjectStore, copy: Copy) -> tuple[int, bytes] | None:
    """Size and SHA-256 of the original the copy gives back; None when the copy is missing. A
    compact copy that cannot be decoded counts as other bytes (size -1)."""
    hasher = hashlib.sha256()
    size = 0
    try:
        if copy.form == COMPACT:
            try:
                original = await read(store, copy)
            except compact.CompactCorrupt:
                return -1, b""
            return len(original), hashlib.sha256(original).digest()
        async for chunk in store.open_stream(copy.key):
            hasher.update(chunk)
            size += len(chunk)
    except ObjectNotFound:
        return None
    return size, hasher.digest()


# ---- frames of a compact copy -------------------------------------------------------------------
_HEADERS: OrderedDict[tuple[int, str], compact.Header] = OrderedDict()
_HEADERS_KEPT = 4096  # a container's header is a few hundred bytes (a frame table row per frame)


async def header(store: ObjectStore, copy: Copy) -> compact.Header:
    """The compact container's header (kept: a stored container never changes under its key)."""
    cached = _HEADERS.get((id(store), copy.key))
    if cached is not None:
        _HEADERS.move_to_end((id(store), copy.key))
        return cached
    prefix = await store.read_range(copy.key, 0, compact.HEADER_PROBE_BYTES)
    if not prefix:
        raise ObjectNotFound(copy.key)
    needed = compact.header_length(prefix)
    if needed > len(prefix):
        prefix = await store.read_range(copy.key, 0, needed)
    found = compact.read_header(prefix)
    _HEADERS[(id(store), copy.key)] = found
    while len(_HEADERS) > _HEADERS_KEPT:
        _HEADERS.popitem(last=False)
    return found


def forget(store: ObjectStore, copy: Copy) -> None:
    """Drop a kept header (the container was removed or replaced by a repair)."""
    _HEADERS.pop((id(store), copy.key), None)


async def frame_codestream(store: ObjectStore, copy: Copy, index: int) -> tuple[compact.Header, bytes] | None:
    """Frame ``index`` (0-based) of a compact copy as its own codestream, with the header that says
    how to decode it; None when the container keeps no frames apart (the whole-file form)."""
    found = await header(store, copy)
    if not found.frames:
        return None
    offset, length = found.frame_range(index)
    return found, await store.read_range(copy.key, offset, length)


async def frame_bytes(store: ObjectStore, copy: Copy, index: int) -> bytes | None:
    """Frame ``index`` of a compact copy decoded to the bytes the original holds for it; None when
    the container keeps no frames apart."""
    got = await frame_codestream(store, copy, index)
    if got is None:
        return None
    found, codestream = got
    return await asyncio.to_thread(compact.decode_frame, found, index, codestream)
