"""Streaming multipart/related responses: parts are written as their bytes arrive, never buffered
beyond one send's worth (``COALESCE_BYTES``)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from starlette.responses import StreamingResponse

T = TypeVar("T")


@dataclass
class Part:
    content_type: str
    body: AsyncIterator[bytes]
    location: str | None = None


def new_boundary() -> str:
    return "dicomgw-" + secrets.token_hex(16)


async def _aiter(parts: AsyncIterable[Part] | Iterable[Part]) -> AsyncIterator[Part]:
    if isinstance(parts, AsyncIterable):
        async for part in parts:
            yield part
    else:
        for part in parts:
            yield part


def _head(content_type: str, location: str | None, boundary: str, first: bool) -> bytes:
    headers = f"Content-Type: {content_type}\r\n"
    if location:
        headers += f"Content-Location: {location}\r\n"
    return ("" if first else "\r\n").encode() + f"--{boundary}\r\n{headers}\r\n".encode()


def _close(boundary: str, first: bool) -> bytes:
    return ("" if first else "\r\n").encode() + f"--{boundary}--\r\n".encode()


# pieces are sent together until they reach this size: each send goes through every ASGI middleware
# and is a system call of its own, which for small instances cost more than their bytes
COALESCE_BYTES = 256 << 10


async def encode_parts(parts: AsyncIterable[Part] | Iterable[Part],
                       boundary: str) -> AsyncIterator[bytes]:
    """The body of a multipart/related message (RFC 2387) with ``boundary``, part by part.

    Part headers and bodies are gathered into sends of at least ``COALESCE_BYTES`` (the last one
    excepted): a study of small instances goes out in a few sends instead of two per instance.
    """
    first = True
    pending: list[bytes] = []
    size = 0
    async for part in _aiter(parts):
        pending.append(_head(part.content_type, part.location, boundary, first))
        size += len(pending[-1])
        first = False
        async for chunk in part.body:
            pending.append(chunk)
            size += len(chunk)
            if size >= COALESCE_BYTES:
                yield pending[0] if len(pending) == 1 else b"".join(pending)
                pending, size = [], 0
    pending.append(_close(boundary, first))
    yield b"".join(pending)


def multipart_response(parts: AsyncIterable[Part] | Iterable[Part], part_type: str,
                       *, transfer_syntax: str | None = None,
                       sizes: Iterable[tuple[str, str | None, int]] | None = None) -> StreamingResponse:
    """multipart/related; type="<part_type>" response streaming ``parts`` in order.

    ``sizes`` (each part's Content-Type, Content-Location and body length, when all are known
    beforehand) gives the response a Content-Length: the body then goes out as it is, where chunked
    transfer coding copied every chunk once more to frame it.
    """
    boundary = new_boundary()
    syntax = f"; transfer-syntax={transfer_syntax}" if transfer_syntax else ""
    media = f'multipart/related; type="{part_type}"{syntax}; boundary={boundary}'
    headers = None
    if sizes is not None:
        first, length = True, 0
        for content_type, location, size in sizes:
            length += len(_head(content_type, location, boundary, first)) + size
            first = False
        headers = {"content-length": str(length + len(_close(boundary, first)))}
    return StreamingResponse(encode_parts(parts, boundary), media_type=media, headers=headers)


async def started(items: AsyncIterator[T]) -> AsyncIterator[T]:
    """``items`` with its first item already produced.

    A response's status line goes out with its first body chunk: a store that is away when the
    first object is read then raises here, and the client gets a 503 it can retry rather than a
    200 whose body stops short.
    """
    try:
        first = await anext(items)
    except StopAsyncIteration:
        first = _NOTHING

    async def resumed() -> AsyncIterator[T]:
        if first is not _NOTHING:
            yield first
            async for item in items:
                yield item

    return resumed()


_NOTHING: Any = object()


async def once(data: bytes) -> AsyncIterator[bytes]:
    """``data`` as a one-chunk body."""
    yield data
