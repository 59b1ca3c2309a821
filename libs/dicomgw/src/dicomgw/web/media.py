"""Accept-header parsing and DICOMweb media-type negotiation (PS3.18 8.7), quoted or unquoted forms."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from dicomgw.multipart import parse_media_type, split_unquoted

EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"

# Media types of compressed frames and the transfer syntaxes they carry (PS3.18 Table 8.7.3-2)
FRAME_MEDIA_TYPES: dict[str, set[str]] = {
    "image/jpeg": {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
                   "1.2.840.10008.1.2.4.70"},
    "image/jls": {"1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"},
    "image/jp2": {"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"},
    "image/jpx": {"1.2.840.10008.1.2.4.92", "1.2.840.10008.1.2.4.93"},
    "image/dicom-rle": {"1.2.840.10008.1.2.5"},
    "image/x-dicom-rle": {"1.2.840.10008.1.2.5"},
    "image/jxl": {"1.2.840.10008.1.2.4.110", "1.2.840.10008.1.2.4.111", "1.2.840.10008.1.2.4.112"},
    "image/jphc": {"1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203"},
    "video/mpeg": {"1.2.840.10008.1.2.4.100", "1.2.840.10008.1.2.4.101"},
    "video/mp4": {"1.2.840.10008.1.2.4.102", "1.2.840.10008.1.2.4.103", "1.2.840.10008.1.2.4.104",
                  "1.2.840.10008.1.2.4.105", "1.2.840.10008.1.2.4.106"},
}


@dataclass(frozen=True)
class MediaRange:
    """One entry of an Accept header: 'multipart/related; type="application/dicom"; q=0.5'."""

    media: str
    params: dict[str, str] = field(default_factory=dict)
    q: float = 1.0

    @property
    def multipart(self) -> bool:
        return self.media in ("multipart/related", "multipart/*")

    @property
    def part_type(self) -> str | None:
        """For multipart/related: the type parameter (lower case), else None."""
        value = self.params.get("type")
        return value.lower() if value else None

    @property
    def transfer_syntax(self) -> str | None:
        return self.params.get("transfer-syntax")

    def matches(self, media: str) -> bool:
        """Whether this range admits the (single-part) media type ``media``."""
        if self.media in ("*/*", media):
            return True
        return self.media.endswith("/*") and media.startswith(self.media[:-1])


def parse_accept(header: str | None) -> list[MediaRange]:
    """The media ranges of an Accept header, best first (stable for equal q); '*/*' when absent."""
    if not header or not header.strip():
        return [MediaRange("*/*")]
    ranges: list[MediaRange] = []
    for item in split_unquoted(header, ","):
        media, params = parse_media_type(item)
        q = 1.0
        if "q" in params:
            try:
                q = float(params.pop("q"))
            except ValueError:
                q = 0.0
        if q > 0:
            ranges.append(MediaRange(media, params, q))
    return sorted(ranges, key=lambda r: -r.q)


def accepts_gzip(request: Request) -> bool:
    """Whether Accept-Encoding admits gzip (a q=0 refuses it)."""
    for item in split_unquoted(request.headers.get("accept-encoding", ""), ","):
        coding, params = parse_media_type(item)
        if coding in ("gzip", "*"):
            try:
                return float(params.get("q", "1")) > 0
            except ValueError:
                return False
    return False


def maybe_gzip(request: Request, body: bytes, media_type: str, *, status_code: int = 200,
               headers: dict[str, str] | None = None) -> Response:
    """A response compressed with gzip when the client accepts it and it is worth it (JSON)."""
    headers = dict(headers or {})
    headers["Vary"] = "Accept-Encoding"
    if len(body) > 1024 and accepts_gzip(request):
        body = gzip.compress(body, compresslevel=5)
        headers["Content-Encoding"] = "gzip"
    return Response(body, status_code=status_code, media_type=media_type, headers=headers)


def streamed_json(request: Request, chunks: AsyncIterator[bytes], media_type: str,
                  headers: dict[str, str] | None = None) -> StreamingResponse:
    """A JSON answer sent as it is produced; gzip-compressed on the way when the client accepts it."""
    headers = dict(headers or {})
    headers["Vary"] = "Accept-Encoding"
    if accepts_gzip(request):
        chunks = gzip_stream(chunks)
        headers["Content-Encoding"] = "gzip"
    return StreamingResponse(chunks, media_type=media_type, headers=headers)


async def gzip_stream(chunks: AsyncIterator[bytes], level: int = 5) -> AsyncIterator[bytes]:
    """``chunks`` gzip-compressed as they come (one gzip member; for streamed JSON)."""
    compressor = zlib.compressobj(level, zlib.DEFLATED, 31)  # wbits 31: gzip header and trailer
    async for chunk in chunks:
        out = compressor.compress(chunk)
        if out:
            yield out
    yield compressor.flush()
