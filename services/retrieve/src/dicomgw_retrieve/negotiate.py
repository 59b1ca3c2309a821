"""What a WADO-RS request's Accept header asks for, per resource kind (PS3.18 8.7); 406 when nothing fits.

Ranges are tried best first (q order); the first one this server can satisfy wins.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from dicomgw.dicom.frames import NATIVE_TARGETS
from dicomgw.errors import NotAcceptable
from dicomgw.web.media import EXPLICIT_VR_LITTLE_ENDIAN, FRAME_MEDIA_TYPES, MediaRange

ORIGINAL = "*"  # as stored
DEFAULT = ""  # no transfer-syntax parameter: Explicit VR Little Endian, or lossy originals as stored


@dataclass(frozen=True)
class Choice:
    media_type: str  # media type of each part (or of the single-part body)
    transfer_syntax: str  # a UID, ORIGINAL or DEFAULT
    multipart: bool = True


def _instance_syntax(requested: str | None, stored: Iterable[str]) -> str | None:
    """The syntax to serve, or None when some stored instance cannot be had in ``requested``."""
    if requested is None:
        return DEFAULT
    if requested == ORIGINAL or requested in NATIVE_TARGETS:
        return requested
    return requested if all(ts == requested for ts in stored) else None


def instances(ranges: list[MediaRange], stored: set[str], *, single_allowed: bool) -> Choice:
    """Whole instances: multipart/related; type="application/dicom" (or one bare application/dicom)."""
    for r in ranges:
        multipart = r.media in ("*/*", "multipart/*") or (
            r.media == "multipart/related" and r.part_type in (None, "application/dicom")
        )
        single = r.media == "application/dicom" and single_allowed
        if not (multipart or single):
            continue
        syntax = _instance_syntax(r.transfer_syntax, stored)
        if syntax is not None:
            return Choice("application/dicom", syntax, multipart=multipart)
    raise NotAcceptable(
        'instances are available as multipart/related; type="application/dicom" with '
        f"transfer-syntax=* (as stored: {', '.join(sorted(stored))}) or {EXPLICIT_VR_LITTLE_ENDIAN}"
    )


def _octet_stream(ts: str | None, stored: str, multipart: bool) -> Choice | None:
    if ts in (None, EXPLICIT_VR_LITTLE_ENDIAN):
        return Choice("application/octet-stream", EXPLICIT_VR_LITTLE_ENDIAN, multipart)
    if ts in (ORIGINAL, stored):
        return Choice("application/octet-stream", ORIGINAL, multipart)
    return None


def _frame_choice(r: MediaRange, stored: str, count: int, compact: str | None) -> Choice | None:
    ts = r.transfer_syntax
    if r.media in ("*/*", "multipart/*"):
        return Choice("application/octet-stream", EXPLICIT_VR_LITTLE_ENDIAN)
    multipart = r.media == "multipart/related"
    if not multipart and count != 1:
        return None  # several frames need a multipart body
    media = (r.part_type or "application/octet-stream") if multipart else r.media
    if media in ("application/octet-stream", "*/*"):
        if compact is not None and ts == compact:  # the compact copy's own codestreams, as they are
            return Choice("application/octet-stream", compact, multipart)
        return _octet_stream(ts, stored, multipart)
    if stored in FRAME_MEDIA_TYPES.get(media, ()) and ts in (None, ORIGINAL, stored):
        return Choice(media, ORIGINAL, multipart)
    if compact in FRAME_MEDIA_TYPES.get(media, ()) and ts in (None, ORIGINAL, compact):
        assert compact is not None
        return Choice(media, compact, multipart)
    return None


def frames(ranges: list[MediaRange], stored: str, *, count: int, compact: str | None = None) -> Choice:
    """Frames: octet-stream (stored or uncompressed), or the compressed image media type as stored;
    for a compact copy also its frames' own codestreams (``compact``: their transfer syntax), asked
    for by that syntax or its image media type, and sent without decoding."""
    for r in ranges:
        choice = _frame_choice(r, stored, count, compact)
        if choice is not None:
            return choice
    also = f", or {compact} (kept compact)" if compact else ""
    raise NotAcceptable(
        "frames are available as multipart/related; type=application/octet-stream "
        f"(uncompressed, or transfer-syntax=* for the stored {stored}{also})"
    )


def bulkdata(ranges: list[MediaRange]) -> Choice:
    """Bulk data: application/octet-stream, single part or multipart/related."""
    for r in ranges:
        if r.media == "multipart/related" and r.part_type in (None, "application/octet-stream", "*/*"):
            return Choice("application/octet-stream", ORIGINAL)
        if r.media == "multipart/*":
            return Choice("application/octet-stream", ORIGINAL)
        if r.matches("application/octet-stream"):
            return Choice("application/octet-stream", ORIGINAL, multipart=False)
    raise NotAcceptable("bulk data is available as application/octet-stream")


def metadata(ranges: list[MediaRange]) -> str:
    """Metadata: application/dicom+json (or application/json, for browsers and simple clients)."""
    for r in ranges:
        if r.media == "application/json":
            return "application/json"
        if r.matches("application/dicom+json"):
            return "application/dicom+json"
    raise NotAcceptable("metadata is available as application/dicom+json")


def rendered(ranges: list[MediaRange]) -> str:
    """Rendered images: image/jpeg (the default), image/png or image/gif."""
    for r in ranges:
        if r.media in ("image/jpeg", "image/png", "image/gif"):
            return r.media
        if r.media in ("*/*", "image/*"):
            return "image/jpeg"
        if r.media == "multipart/related" and r.part_type in ("image/jpeg", "image/png", "image/gif"):
            return r.part_type
    raise NotAcceptable("rendered images are available as image/jpeg, image/png or image/gif")
