"""Streaming multipart/related responses: parts are written as their bytes arrive, never buffered."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

from starlette.responses import StreamingResponse


@dataclass
class Part:
    content_type: str
    body: AsyncIterator[bytes]
    location: str | None = None


def new_boundary() -> str:
    return "dicomgw-" + secrets.token_hex(16)


async def _stream(parts: AsyncIterator[Part] | Iterable[Part], boundary: str) -> AsyncIterator[bytes]:
    delimiter = f"--{boundary}\r\n".encode()
    first = True
    if hasattr(parts, "__aiter__"):
        iterator = parts
    else:
        async def _aiter() -> AsyncIterator[Part]:
            for part in parts:  # type: ignore[union-attr]
                yield part
        iterator = _aiter()
    async for part in iterator:  # type: ignore[union-attr]
        head = b"" if first else b"\r\n"
        first = False
        headers = f"Content-Type: {part.content_type}\r\n"
        if part.location:
            headers += f"Content-Location: {part.location}\r\n"
        yield head + delimiter + headers.encode() + b"\r\n"
        async for chunk in part.body:
            yield chunk
    yield (b"\r\n" if not first else b"") + f"--{boundary}--\r\n".encode()


def multipart_response(parts: AsyncIterator[Part] | Iterable[Part], part_type: str,
                       *, transfer_syntax: str | None = None) -> StreamingResponse:
    """multipart/related; type="<part_type>" response streaming ``parts`` in order."""
    boundary = new_boundary()
    syntax = f"; transfer-syntax={transfer_syntax}" if transfer_syntax else ""
    media = f'multipart/related; type="{part_type}"{syntax}; boundary={boundary}'
    return StreamingResponse(_stream(parts, boundary), media_type=media)


async def once(data: bytes) -> AsyncIterator[bytes]:
    yield data
