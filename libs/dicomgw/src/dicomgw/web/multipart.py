"""Streaming multipart/related responses: parts are written as their bytes arrive, never buffered."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from dataclasses import dataclass

from starlette.responses import StreamingResponse


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


async def encode_parts(parts: AsyncIterable[Part] | Iterable[Part],
                       boundary: str) -> AsyncIterator[bytes]:
    """The body of a multipart/related message (RFC 2387) with ``boundary``, part by part."""
    first = True
    async for part in _aiter(parts):
        headers = f"Content-Type: {part.content_type}\r\n"
        if part.location:
            headers += f"Content-Location: {part.location}\r\n"
        yield ("" if first else "\r\n").encode() + f"--{boundary}\r\n{headers}\r\n".encode()
        first = False
        async for chunk in part.body:
            yield chunk
    yield ("" if first else "\r\n").encode() + f"--{boundary}--\r\n".encode()


def multipart_response(parts: AsyncIterable[Part] | Iterable[Part], part_type: str,
                       *, transfer_syntax: str | None = None) -> StreamingResponse:
    """multipart/related; type="<part_type>" response streaming ``parts`` in order."""
    boundary = new_boundary()
    syntax = f"; transfer-syntax={transfer_syntax}" if transfer_syntax else ""
    media = f'multipart/related; type="{part_type}"{syntax}; boundary={boundary}'
    return StreamingResponse(encode_parts(parts, boundary), media_type=media)


async def once(data: bytes) -> AsyncIterator[bytes]:
    """``data`` as a one-chunk body."""
    yield data
