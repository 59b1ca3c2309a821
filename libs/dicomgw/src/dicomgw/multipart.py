"""Streaming multipart/related reader: each part is spooled to its own file and hashed as it arrives.

Built on python-multipart's low-level parser. A part is handed on as soon as its closing boundary is
seen, so the caller can parse and store it while the next part is still streaming in; memory use stays
at one network chunk whatever the size of the request.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser

from dicomgw.errors import BadRequest, PayloadTooLarge, RequestTimeout


@dataclass
class SpooledPart:
    """One received part: its file on disk, size and SHA-256, and its headers (lower-case names)."""

    index: int
    path: Path
    size: int
    sha256: bytes
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def content_type(self) -> str | None:
        return self.headers.get("content-type")

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


class _Spooler:
    """python-multipart callbacks writing each part to a temporary file in ``spool_dir``."""

    def __init__(self, spool_dir: Path) -> None:
        self.spool_dir = spool_dir
        self.done: list[SpooledPart] = []
        self.count = 0
        self.finished = False
        self._file: IO[bytes] | None = None
        self._path: Path | None = None
        self._hash = hashlib.sha256()
        self._size = 0
        self._headers: dict[str, str] = {}
        self._field = bytearray()
        self._value = bytearray()

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self._begin,
            "on_header_field": lambda d, s, e: self._field.extend(d[s:e]),
            "on_header_value": lambda d, s, e: self._value.extend(d[s:e]),
            "on_header_end": self._header_end,
            "on_part_data": self._data,
            "on_part_end": self._end,
            "on_end": self._finish,
        }

    def _begin(self) -> None:
        fd, name = tempfile.mkstemp(dir=self.spool_dir, suffix=".part")
        self._file = os.fdopen(fd, "wb")
        self._path = Path(name)
        self._hash = hashlib.sha256()
        self._size = 0
        self._headers = {}

    def _header_end(self) -> None:
        name = self._field.decode("latin-1").strip().lower()
        self._headers[name] = self._value.decode("latin-1").strip()
        self._field.clear()
        self._value.clear()

    def _data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        assert self._file is not None
        self._file.write(chunk)
        self._hash.update(chunk)
        self._size += len(chunk)

    def _end(self) -> None:
        assert self._file is not None and self._path is not None
        self._file.close()
        self._file = None
        self.done.append(SpooledPart(self.count, self._path, self._size, self._hash.digest(),
                                     self._headers))
        self._path = None
        self.count += 1

    def _finish(self) -> None:
        self.finished = True

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._path is not None:
            self._path.unlink(missing_ok=True)
        for part in self.done:
            part.discard()
        self.done.clear()


# RFC 2046 5.1.1 allows 1 to 70 characters; python-multipart's parser takes up to 256, and some
# clients are generous, so the parser's limit is the gateway's.
MAX_BOUNDARY = 256


def check_boundary(boundary: str) -> bytes:
    """The boundary as bytes, or a 400 that says what is wrong with it (never a parser's 500)."""
    if not 0 < len(boundary) <= MAX_BOUNDARY:
        raise BadRequest(f"the multipart boundary must be 1 to {MAX_BOUNDARY} characters long "
                         f"(RFC 2046 says 70), not {len(boundary)}")
    if not all(" " <= c <= "~" for c in boundary) or boundary.endswith(" "):
        raise BadRequest("the multipart boundary may hold printable ASCII characters only, "
                         "and may not end with a space (RFC 2046)")
    return boundary.encode("ascii")


async def idle_limited(body: AsyncIterator[bytes], seconds: float) -> AsyncIterator[bytes]:
    """``body``, failing with 408 when the client sends nothing for ``seconds`` (0: no limit).

    Only time spent waiting for the client counts (not time the gateway spends storing what came), and
    one timer per request does it: a ``wait_for`` per chunk cost a task each.
    """
    if seconds <= 0:
        async for chunk in body:
            yield chunk
        return
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    waiting_since: float | None = None
    timed_out = False
    handle: asyncio.TimerHandle | None = None

    def check() -> None:
        nonlocal handle, timed_out
        idle = 0.0 if waiting_since is None else loop.time() - waiting_since
        if idle >= seconds:
            timed_out = True
            task.cancel()
        else:
            handle = loop.call_later(seconds - idle, check)

    handle = loop.call_later(seconds, check)
    try:
        while True:
            waiting_since = loop.time()
            try:
                chunk = await anext(body)
            except StopAsyncIteration:
                return
            except asyncio.CancelledError:
                if not timed_out:
                    raise
                task.uncancel()
                raise RequestTimeout(f"the request body sent nothing for {seconds:g} s") from None
            waiting_since = None
            yield chunk
    finally:
        if handle is not None:
            handle.cancel()


async def spool_parts(
    body: AsyncIterator[bytes], boundary: str, spool_dir: Path, *, max_bytes: int = 0
) -> AsyncIterator[SpooledPart]:
    """Yield every part of a multipart body as soon as it is complete.

    Parts not yet yielded are removed if the body fails; yielded parts belong to the caller.
    """
    marker = check_boundary(boundary)
    spooler = _Spooler(spool_dir)
    parser = MultipartParser(marker, spooler.callbacks())  # type: ignore[arg-type]
    received = 0
    try:
        async for chunk in body:
            received += len(chunk)
            if max_bytes and received > max_bytes:
                raise PayloadTooLarge(f"request body exceeds {max_bytes} bytes")
            try:
                # Parsing, hashing and writing one network chunk (about 64 KiB) on the event loop:
                # it takes less time than a hop to a thread and back, which halved STOW's throughput.
                parser.write(chunk)
            except MultipartParseError as exc:
                raise BadRequest(f"malformed multipart body: {exc}") from exc
            while spooler.done:
                yield spooler.done.pop(0)
        parser.finalize()
        if not spooler.finished:
            raise BadRequest("multipart body ended before its closing boundary")
    finally:
        spooler.abort()


async def spool_single(body: AsyncIterator[bytes], spool_dir: Path, *, max_bytes: int = 0) -> SpooledPart:
    """Spool a single-part body (Content-Type: application/dicom) like one multipart part."""
    fd, name = tempfile.mkstemp(dir=spool_dir, suffix=".part")
    path = Path(name)
    digest = hashlib.sha256()
    size = 0
    try:
        with os.fdopen(fd, "wb") as out:
            async for chunk in body:
                size += len(chunk)
                if max_bytes and size > max_bytes:
                    raise PayloadTooLarge(f"request body exceeds {max_bytes} bytes")
                digest.update(chunk)
                await asyncio.to_thread(out.write, chunk)
    except BaseException:
        path.unlink(missing_ok=True)  # noqa: ASYNC240 - a cheap metadata call on the error path
        raise
    return SpooledPart(0, path, size, digest.digest(), {"content-type": "application/dicom"})


def parse_media_type(value: str) -> tuple[str, dict[str, str]]:
    """'multipart/related; type="application/dicom"; boundary=x' -> ('multipart/related', {...})."""
    media, _, rest = value.partition(";")
    params: dict[str, str] = {}
    for piece in split_unquoted(rest, ";"):
        name, sep, val = piece.partition("=")
        if not sep:
            continue
        val = val.strip()
        if len(val) >= 2 and val[0] == val[-1] == '"':
            val = val[1:-1].replace('\\"', '"')
        params[name.strip().lower()] = val
    return media.strip().lower(), params


def split_unquoted(text: str, separator: str) -> list[str]:
    """Split on ``separator`` where it stands outside double quotes; blank pieces are dropped."""
    out: list[str] = []
    buf: list[str] = []
    quoted = False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == separator and not quoted:
            out.append("".join(buf))
            buf = []
        else:
            buf.append(ch)
    out.append("".join(buf))
    return [p.strip() for p in out if p.strip()]
