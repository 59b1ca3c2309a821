"""What a WADO-RS request's Accept header asks for, per resource kind (PS3.18 8.7)."""

from __future__ import annotations

from dataclasses import dataclass

from dicomgw.errors import NotAcceptable
from dicomgw.web.media import EXPLICIT_VR_LITTLE_ENDIAN, FRAME_MEDIA_TYPES, MediaRange

ORIGINAL = "*"


@dataclass(frozen=True)
class Choice:
    media_type: str  # media type of each part (or of the single-part body)
    transfer_syntax: str  # a UID, or ORIGINAL for "as stored"
    multipart: bool = True


def instances(ranges: list[MediaRange], *, single_allowed: bool) -> Choice:
    """Whole instances: multipart/related; type="application/dicom" (or one bare application/dicom)."""
    for r in ranges:
        if r.media in ("*/*", "multipart/*") or (
            r.media == "multipart/related" and r.part_type in (None, "application/dicom")
        ):
            return Choice("application/dicom", r.transfer_syntax or EXPLICIT_VR_LITTLE_ENDIAN)
        if r.media == "application/dicom" and single_allowed:
            return Choice("application/dicom", r.transfer_syntax or EXPLICIT_VR_LITTLE_ENDIAN,
                          multipart=False)
    raise NotAcceptable('instances are available as multipart/related; type="application/dicom"')


def frames(ranges: list[MediaRange], stored: str, *, count: int) -> Choice:
    """Frames: octet-stream (stored or uncompressed), or the compressed image media type as stored."""
    for r in ranges:
        ts = r.transfer_syntax
        if r.media in ("*/*", "multipart/*"):
            return Choice("application/octet-stream", EXPLICIT_VR_LITTLE_ENDIAN)
        if r.media == "multipart/related":
            part = r.part_type or "application/octet-stream"
            if part in ("application/octet-stream", "*/*"):
                if ts in (None, EXPLICIT_VR_LITTLE_ENDIAN):
                    return Choice("application/octet-stream", EXPLICIT_VR_LITTLE_ENDIAN)
                if ts in (ORIGINAL, stored):
                    return Choice("application/octet-stream", ORIGINAL)
                continue
            if stored in FRAME_MEDIA_TYPES.get(part, ()) and ts in (None, ORIGINAL, stored):
                return Choice(part, ORIGINAL)
            continue
        if count == 1 and r.media == "application/octet-stream":
            if ts in (None, EXPLICIT_VR_LITTLE_ENDIAN):
                return Choice(r.media, EXPLICIT_VR_LITTLE_ENDIAN, multipart=False)
            if ts in (ORIGINAL, stored):
                return Choice(r.media, ORIGINAL, multipart=False)
        if count == 1 and stored in FRAME_MEDIA_TYPES.get(r.media, ()):
            return Choice(r.media, ORIGINAL, multipart=False)
    raise NotAcceptable(
        "frames are available as multipart/related; type=application/octet-stream "
        f"(uncompressed, or transfer-syntax=* for the stored {stored})"
    )


def bulkdata(ranges: list[MediaRange]) -> Choice:
    for r in ranges:
        if r.media == "multipart/related" and r.part_type in (None, "application/octet-stream", "*/*"):
            return Choice("application/octet-stream", ORIGINAL)
        if r.media == "multipart/*":
            return Choice("application/octet-stream", ORIGINAL)
        if r.matches("application/octet-stream"):
            return Choice("application/octet-stream", ORIGINAL, multipart=False)
    raise NotAcceptable("bulk data is available as application/octet-stream")


def metadata(ranges: list[MediaRange]) -> str:
    for r in ranges:
        if r.media == "application/json":
            return "application/json"
        if r.matches("application/dicom+json"):
            return "application/dicom+json"
    raise NotAcceptable("metadata is available as application/dicom+json")


def rendered(ranges: list[MediaRange]) -> str:
    for r in ranges:
        for media in ("image/jpeg", "image/png", "image/gif"):
            if r.media == media:
                return media
        if r.media in ("*/*", "image/*"):
            return "image/jpeg"
        if r.media == "multipart/related" and r.part_type in ("image/jpeg", "image/png"):
            return r.part_type
    raise NotAcceptable("rendered images are available as image/jpeg or image/png")
