"""Header-only parse of one stored original: the index row, the DICOM JSON and the byte layout.

The file is read once, lazily: values larger than ``DEFER_BYTES`` are not loaded, pixel data is walked
item by item (never read whole), so parsing a 2 GB multi-frame instance costs a few kilobytes of memory.
What comes out is everything retrieval needs without opening the original again: the QIDO columns,
the per-level JSON, the instance's DICOM JSON with BulkDataURIs, and where every frame and bulk value
sits in the file (so a frame is one ranged read).
"""

from __future__ import annotations

import functools
import io
import json
import logging
import re
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileDataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_dataset
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

from dicomgw.dicom.jsonfast import dataset_json
from dicomgw.dicom.levels import INSTANCE_QIDO_TAGS, SERIES_LEVEL_TAGS, STUDY_LEVEL_TAGS
from dicomgw.dicom.names import fold_person_name, person_name_words
from dicomgw.errors import (
    CannotUnderstand,
    InstanceRejected,
    SOPClassNotSupported,
    TransferSyntaxNotSupported,
)

# Placeholder at the start of every stored BulkDataURI; retrieval swaps in the request's base URL.
log = logging.getLogger("dicomgw.parse")

BULK_BASE = "@@BASE@@"
DEFER_BYTES = 1024
# files up to this size are parsed from memory (parse_instance)
IN_MEMORY_BYTES = 4 << 20
# A deflated dataset is inflated whole to be parsed. A few KB of zeros deflated inflate to a GB (a
# 1 MB part took 40 s, 6 GB of memory and ended in a 500), so what a part may inflate to is bounded:
# at most INFLATE_RATIO times its size (deflated DICOM, mostly reports, inflates 2-10 times) and
# never beyond INFLATED_MAX_BYTES.
INFLATE_RATIO = 100
INFLATED_MIN_LIMIT = 16 << 20
INFLATED_MAX_BYTES = 256 << 20
BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
PIXEL_DATA = 0x7FE00010
_PIXEL_TAGS = {0x7FE00008, 0x7FE00009, 0x7FE00010}
_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_ITEM = 0xFFFEE000
_SEQ_DELIM = 0xFFFEE0DD
_FILE_META_GROUP = 0x0002


PART10_PREFIX = b"\0" * 128 + b"DICM"


def as_part10(data: bytes) -> bytes:
    """A stored original as a PS3.10 file: the preamble and DICM prefix added if it came without."""
    return data if data[128:132] == b"DICM" else PART10_PREFIX + data


def valid_uid(value: str) -> bool:
    return 0 < len(value) <= 64 and bool(_UID_RE.match(value))


@dataclass
class ParsedInstance:
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    study: dict[str, Any]
    series: dict[str, Any]
    instance: dict[str, Any]
    study_json: str
    series_json: str
    metadata_json: str
    layout: dict[str, Any] = field(default_factory=dict)


@functools.cache
def _tag(keyword: str) -> int:
    tag = pydicom.datadict.tag_for_keyword(keyword)
    assert tag is not None, keyword
    return tag


class _Values:
    """Attribute values by keyword, read from the instance's DICOM JSON: each raw element was decoded
    once, for the JSON, and converting it again through pydicom cost a third of the whole parse."""

    def __init__(self, json_dict: dict[str, Any]) -> None:
        self.json = json_dict

    def get(self, keyword: str, default: Any = None) -> Any:
        entry = self.json.get(f"{_tag(keyword):08X}")
        if entry is None:
            return default
        values = entry.get("Value")
        if not values:
            return ""
        return values[0] if len(values) == 1 else values


def _get(source: Dataset | _Values, keyword: str, default: Any = None) -> Any:
    """``source.get(keyword)``; from a dataset by tag (the keyword's look-up cost more than the value)."""
    if isinstance(source, _Values):
        return source.get(keyword, default)
    elem = source.get(_tag(keyword))
    return default if elem is None else elem.value


def _str(ds: Dataset | _Values, keyword: str, limit: int | None = None) -> str | None:
    value = _get(ds, keyword)
    if value is None or value == "":
        return None
    text = str(value).strip()
    if limit is not None:
        text = text[:limit]
    return text or None


def _int(ds: Dataset | _Values, keyword: str) -> int | None:
    value = _get(ds, keyword)
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _pn(ds: Dataset, keyword: str) -> str | None:
    value = _get(ds, keyword)
    if value is None or value == "":
        return None
    return str(value)


def _members(json_dict: dict[str, Any], tags: frozenset[int] | None) -> str:
    """DICOM JSON members (no braces) for the tags of one level, in tag order (one encoder call)."""
    chosen = sorted(json_dict.items()) if tags is None else sorted(
        (k, v) for k, v in json_dict.items() if int(k, 16) in tags)
    return json.dumps(dict(chosen), separators=(",", ":"))[1:-1]


def _walk_pixel_data(fp: BinaryIO, file_size: int, implicit: bool, little: bool) -> dict[str, Any]:
    """Read the Pixel Data element header at fp and locate its value or its fragments."""
    endian = "<" if little else ">"
    start = fp.tell()
    header = fp.read(8)
    if len(header) < 8:
        raise CannotUnderstand("truncated before Pixel Data")
    group, elem = struct.unpack(endian + "HH", header[:4])
    tag = group << 16 | elem
    if implicit:
        vr = "OW"
        (length,) = struct.unpack(endian + "L", header[4:8])
    else:
        vr = header[4:6].decode("ascii", "replace")
        if vr in ("OB", "OW", "OD", "OF", "OL", "OV", "UN", "SQ", "UT", "UC", "UR"):
            more = fp.read(4)
            if len(more) < 4:
                raise CannotUnderstand("truncated Pixel Data header")
            (length,) = struct.unpack(endian + "L", more)
        else:
            (length,) = struct.unpack(endian + "H", header[6:8])
    value_offset = fp.tell()
    if length != 0xFFFFFFFF:
        if value_offset + length > file_size:
            raise CannotUnderstand("truncated: Pixel Data runs past the end of the file")
        fp.seek(value_offset + length)
        return {"tag": tag, "vr": vr, "offset": value_offset, "length": length,
                "encapsulated": False, "element_offset": start}
    # Encapsulated: items of fragments (PS3.5 A.4); the first item is the Basic Offset Table
    items: list[tuple[int, int]] = []
    pos = value_offset
    while True:
        fp.seek(pos)
        item = fp.read(8)
        if len(item) < 8:
            raise CannotUnderstand("truncated: encapsulated Pixel Data has no sequence delimiter")
        g, e, item_len = struct.unpack("<HHL", item)
        item_tag = g << 16 | e
        if item_tag == _SEQ_DELIM:
            pos += 8
            break
        if item_tag != _ITEM or item_len == 0xFFFFFFFF:
            raise CannotUnderstand("malformed encapsulated Pixel Data item")
        if pos + 8 + item_len > file_size:
            raise CannotUnderstand("truncated: Pixel Data fragment runs past the end of the file")
        items.append((pos + 8, item_len))
        pos += 8 + item_len
    fp.seek(pos)
    if not items:
        raise CannotUnderstand("encapsulated Pixel Data without a Basic Offset Table item")
    bot_offset, bot_len = items[0]
    bot: list[int] = []
    if bot_len:
        fp.seek(bot_offset)
        raw = fp.read(bot_len)
        bot = list(struct.unpack(f"<{bot_len // 4}L", raw[: bot_len // 4 * 4]))
        fp.seek(pos)
    return {"tag": tag, "vr": vr, "offset": value_offset, "length": pos - value_offset,
            "encapsulated": True, "fragments": items[1:], "bot": bot, "element_offset": start,
            "first_fragment_item": value_offset + 8 + bot_len}


def _frames(pixel: dict[str, Any], ds: Dataset, eot: list[int] | None) -> list[list[list[int]]] | None:
    """Byte ranges of every frame: [[offset, length], ...] per frame (several for a fragmented frame)."""
    n_frames = _int(ds, "NumberOfFrames") or 1
    if not pixel["encapsulated"]:
        rows, cols = _int(ds, "Rows"), _int(ds, "Columns")
        spp, bits = _int(ds, "SamplesPerPixel") or 1, _int(ds, "BitsAllocated")
        if not rows or not cols or not bits or bits % 8:
            return None  # 1-bit or incomplete descriptions are decoded, not sliced
        size = rows * cols * spp * bits // 8
        if str(_get(ds, "PhotometricInterpretation", "")).startswith("YBR_FULL_422"):
            size = rows * cols * 2 * bits // 8  # two samples per pixel after 4:2:2 subsampling
        if size * n_frames > pixel["length"]:
            raise CannotUnderstand("Pixel Data is shorter than Rows x Columns x Frames says")
        return [[[pixel["offset"] + i * size, size]] for i in range(n_frames)]
    fragments = pixel["fragments"]
    if n_frames == 1:
        return [[[off, ln] for off, ln in fragments]]
    if len(fragments) == n_frames:
        return [[[off, ln]] for off, ln in fragments]
    # Several fragments per frame: group by an offset table (extended, else basic)
    starts = eot or pixel["bot"]
    if len(starts) != n_frames:
        return None
    base = pixel["first_fragment_item"]
    frame_of_item: dict[int, int] = {base + s: i for i, s in enumerate(starts)}
    frames: list[list[list[int]]] = [[] for _ in range(n_frames)]
    current = -1
    for off, ln in fragments:
        current = frame_of_item.get(off - 8, current)
        if current < 0:
            return None
        frames[current].append([off, ln])
    return frames if all(frames) else None


def _readable_json(ds: Dataset, little: bool, damage: list[str]) -> dict[str, Any]:
    """The dataset's DICOM JSON; when some values cannot be decoded, the others (and a note)."""
    try:
        return dataset_json(ds, little)
    except Exception:  # any value pydicom cannot decode: the slow way below
        pass
    out: dict[str, Any] = {}
    for tag in list(ds.keys()):
        one = Dataset()
        try:
            one.add(ds[tag])
            out.update(dataset_json(one, little))
        except Exception as exc:
            damage.append(f"undecodable value of {tag}: {exc}"[:200])
    return out


def _check_inflated_size(fp: BinaryIO, file_size: int) -> None:
    """Refuse a deflated dataset that inflates beyond the bounds above, inflating it in small steps
    (memory stays at a chunk) and stopping as soon as it does."""
    limit = min(max(INFLATE_RATIO * file_size, INFLATED_MIN_LIMIT), INFLATED_MAX_BYTES)
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    inflated = 0
    while not inflater.eof:
        chunk = fp.read(1 << 16)
        if not chunk:
            return  # truncated: the parser says so
        data = inflater.decompress(chunk, 1 << 20)
        while True:
            inflated += len(data)
            if inflated > limit:
                raise CannotUnderstand(
                    f"the deflated dataset inflates to more than {limit} bytes "
                    f"({INFLATE_RATIO} times its size at most, {INFLATED_MAX_BYTES} in all): "
                    "refused as a possible decompression bomb")
            if not inflater.unconsumed_tail:
                break
            data = inflater.decompress(inflater.unconsumed_tail, 1 << 20)


def _check_uids(ds: Dataset) -> tuple[str, str, str, str]:
    out = []
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):
        value = _str(ds, keyword)
        if value is None:
            raise CannotUnderstand(f"missing {keyword}")
        value = value.rstrip("\0 ")
        if not valid_uid(value):
            raise CannotUnderstand(f"{keyword} is not a valid UID")
        out.append(value)
    return out[0], out[1], out[2], out[3]


def _check_sop_class(sop_class: str) -> None:
    uid = UID(sop_class)
    # Unknown (private) SOP classes are archived; a known one that is not a storage class is refused.
    if uid.is_valid and uid.name != sop_class and uid.type == "SOP Class":
        name = uid.name
        if "Storage" not in name and "Report" not in name:
            raise SOPClassNotSupported(f"{name} is not a storage SOP class")


def _check_transfer_syntax(ts: str) -> UID:
    uid = UID(ts)
    if not valid_uid(ts):
        raise TransferSyntaxNotSupported("Transfer Syntax UID is not a valid UID")
    if uid.is_transfer_syntax:
        return uid
    raise TransferSyntaxNotSupported(f"unknown transfer syntax {ts}")


def parse_instance(path: Path) -> ParsedInstance:
    """Parse the PS3.10 file at ``path``; raise an InstanceRejected subclass if it is not acceptable.

    Whatever the bytes: pydicom converts values lazily and raises what it meets on the way (an
    unknown VR is a NotImplementedError, a bad length an IndexError or a struct.error...), so any
    failure to read the dataset is a refusal of that one instance (0xC000), never a 500 for the
    request. An OSError (the spooled file itself unreadable) stays what it is.
    """
    try:
        return _parse_instance(Path(path))
    except (InstanceRejected, OSError):
        raise
    except Exception as exc:
        log.warning("refused a part the parser could not read: %s: %s", type(exc).__name__, exc)
        raise CannotUnderstand(f"unreadable dataset: {type(exc).__name__}: {exc}"[:300]) from exc


def _parse_instance(path: Path) -> ParsedInstance:
    file_size = path.stat().st_size
    # A file of a few MB (nearly every CT, MR or PET slice) is parsed from memory: pydicom's many
    # small reads, seeks and tells on a file were each a system call that let go of the interpreter
    # lock, and taking it back made the threads of a busy STOW storm on futexes.
    source = io.BytesIO(path.read_bytes()) if file_size <= IN_MEMORY_BYTES else open(path, "rb")
    with source as fp:
        preamble = fp.read(132)
        has_preamble = len(preamble) == 132 and preamble[128:132] == b"DICM"
        # Some writers (pydicom's dcmwrite of an in-memory dataset, so dicomweb-client) send the File
        # Meta Information without the 128-byte preamble and DICM prefix. The meta group still says
        # how to read the rest, so such a part is stored as received, like any other.
        bare_meta = (not has_preamble and preamble[:2] == b"\x02\x00"
                     and preamble[4:6] in (b"UL", b"OB", b"UI"))
        if not (has_preamble or bare_meta):
            raise CannotUnderstand("not a DICOM PS3.10 file (no DICM prefix or File Meta Information)")
        fp.seek(132 if has_preamble else 0)
        try:
            meta = pydicom.filereader._read_file_meta_info(fp)
            ts_probe = meta.get("TransferSyntaxUID")
        except Exception as exc:
            raise CannotUnderstand(f"unreadable File Meta Information: {exc}") from exc
        if not ts_probe:
            raise CannotUnderstand("missing Transfer Syntax UID in File Meta Information")
        transfer_syntax = _check_transfer_syntax(str(ts_probe).rstrip("\0 "))
        deflated = transfer_syntax == DeflatedExplicitVRLittleEndian
        if deflated:
            _check_inflated_size(fp, file_size)
        fp.seek(0)
        try:
            ds: FileDataset = pydicom.dcmread(
                fp, defer_size=None if deflated else DEFER_BYTES, stop_before_pixels=not deflated,
                force=bare_meta,
            )
            after_header = fp.tell()
        except Exception as exc:
            raise CannotUnderstand(f"unreadable dataset: {exc}") from exc
        study_uid, series_uid, sop_uid, sop_class = _check_uids(ds)
        _check_sop_class(sop_class)

        layout: dict[str, Any] = {"deflated": deflated, "bulk": {}, "preamble": has_preamble}
        # From here on the instance is identified (its four UIDs read and valid): whatever else is
        # wrong with it is damage, recorded, and the original is archived as received all the same.
        damage: list[str] = []
        bulk_tags: dict[int, str] = {}
        implicit = transfer_syntax.is_implicit_VR
        little = transfer_syntax.is_little_endian
        trailing: Dataset | None = None
        if not deflated:
            # Deferred top-level binary values become bulk data (never loaded now)
            for tag in list(ds.keys()):
                raw = ds.get_item(tag)
                if isinstance(raw, RawDataElement) and raw.value is None and raw.length:
                    vr = raw.VR or pydicom.datadict.dictionary_VR(tag)
                    if raw.value_tell + raw.length > file_size:
                        damage.append(f"{tag} runs past the end of the file")
                        del ds[tag]
                        continue
                    if vr in BINARY_VRS:
                        layout["bulk"][f"{int(tag):08X}"] = [raw.value_tell, raw.length]
                        bulk_tags[int(tag)] = vr
                        del ds[tag]
            fp.seek(after_header)
            layout["frames"] = None
            pixel: dict[str, Any] | None = None
            if after_header < file_size:
                try:
                    pixel = _walk_pixel_data(fp, file_size, implicit, little)
                except CannotUnderstand as exc:
                    damage.append(exc.detail)
            if pixel is not None:
                if pixel["tag"] in _PIXEL_TAGS:
                    key = f"{pixel['tag']:08X}"
                    layout["bulk"][key] = [pixel["offset"], pixel["length"]]
                    bulk_tags[pixel["tag"]] = pixel["vr"]
                    layout["pixel_data"] = {
                        "tag": key, "vr": pixel["vr"], "encapsulated": pixel["encapsulated"],
                        "offset": pixel["offset"], "length": pixel["length"],
                    }
                    try:
                        eot = None
                        if "ExtendedOffsetTable" in ds:
                            raw_eot = ds.ExtendedOffsetTable
                            eot = list(struct.unpack(f"<{len(raw_eot) // 8}Q", raw_eot))
                        if pixel["tag"] == PIXEL_DATA:
                            layout["frames"] = _frames(pixel, ds, eot)
                    except Exception as exc:
                        damage.append(f"frames cannot be located: {exc}"[:200])
                if fp.tell() < file_size:
                    try:
                        trailing = read_dataset(fp, implicit, little, defer_size=DEFER_BYTES)
                    except Exception as exc:
                        damage.append(f"unreadable data after Pixel Data: {exc}")
        else:
            layout["frames"] = None
            for pixel_tag in _PIXEL_TAGS:
                if pixel_tag in ds:
                    bulk_tags[pixel_tag] = ds[pixel_tag].VR
                    del ds[pixel_tag]

        json_dict = _readable_json(ds, little, damage)
        if trailing is not None:
            for trailing_tag in list(trailing.keys()):
                item = trailing.get_item(trailing_tag)
                if isinstance(item, RawDataElement) and item.value is None and item.length:
                    del trailing[trailing_tag]  # too large to inline; not needed for metadata
            json_dict.update(_readable_json(trailing, little, damage))
        if damage:
            layout["damaged"] = "; ".join(damage)[:1000]
            layout["frames"] = None  # served as stored; frames are not located in a damaged file

        instance_url = (
            f"{BULK_BASE}/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}"
        )
        for bulk_tag, vr in bulk_tags.items():
            json_dict[f"{bulk_tag:08X}"] = {
                "vr": vr, "BulkDataURI": f"{instance_url}/bulkdata/{bulk_tag:08X}"
            }
        for key in [k for k in json_dict if int(k, 16) >> 16 == _FILE_META_GROUP]:
            del json_dict[key]

    values = _Values(json_dict)
    layout["pixel"] = {
        kw: _get(values, kw)
        for kw in (
            "Rows", "Columns", "SamplesPerPixel", "BitsAllocated", "BitsStored", "HighBit",
            "PixelRepresentation", "PhotometricInterpretation", "PlanarConfiguration",
            "NumberOfFrames",
        )
        if _get(values, kw) not in (None, "")
    }
    layout["pixel"] = {k: (str(v) if k == "PhotometricInterpretation" else int(v))
                       for k, v in layout["pixel"].items()}

    charset = json_dict.get("00080005")
    study_members = _members(json_dict, STUDY_LEVEL_TAGS)
    series_members = _members(json_dict, SERIES_LEVEL_TAGS)
    if charset is not None:
        cs = f'"00080005":{json.dumps(charset, separators=(",", ":"))}'
        study_members = ",".join(filter(None, [cs, study_members]))
        series_members = ",".join(filter(None, [cs, series_members]))
    metadata_json = "{" + _members(json_dict, None) + "}"

    patient_name = _pn(ds, "PatientName")
    referring = _pn(ds, "ReferringPhysicianName")
    study = {
        "study_instance_uid": study_uid,
        "study_date": _str(values, "StudyDate", 8),
        "study_time": _str(values, "StudyTime", 16),
        "accession_number": _str(values, "AccessionNumber", 64),
        "study_id": _str(values, "StudyID", 16),
        "study_description": _str(values, "StudyDescription", 256),
        "referring_physician_name": referring,
        "referring_physician_name_folded": fold_person_name(referring),
        "patient_name": patient_name,
        "patient_name_folded": fold_person_name(patient_name),
        "patient_name_words": person_name_words(patient_name),
        "patient_id": _str(values, "PatientID", 64),
        "patient_birth_date": _str(values, "PatientBirthDate", 8),
        "patient_sex": _str(values, "PatientSex", 16),
        "attributes_json": study_members,
    }
    series = {
        "series_instance_uid": series_uid,
        "study_instance_uid": study_uid,
        "modality": _str(values, "Modality", 16),
        "series_number": _int(values, "SeriesNumber"),
        "series_description": _str(values, "SeriesDescription", 256),
        "series_date": _str(values, "SeriesDate", 8),
        "series_time": _str(values, "SeriesTime", 16),
        "body_part_examined": _str(values, "BodyPartExamined", 64),
        "performed_procedure_step_start_date": _str(values, "PerformedProcedureStepStartDate", 8),
        "performed_procedure_step_start_time": _str(values, "PerformedProcedureStepStartTime", 16),
        "attributes_json": series_members,
    }
    instance = {
        "sop_instance_uid": sop_uid,
        "series_instance_uid": series_uid,
        "study_instance_uid": study_uid,
        "sop_class_uid": sop_class,
        "instance_number": _int(values, "InstanceNumber"),
        "transfer_syntax_uid": str(transfer_syntax),
        "content_date": _str(values, "ContentDate", 8),
        "content_time": _str(values, "ContentTime", 16),
        "rows": _int(values, "Rows"),
        "columns": _int(values, "Columns"),
        "number_of_frames": _int(values, "NumberOfFrames"),
        "qido_json": _members(json_dict, INSTANCE_QIDO_TAGS),
    }
    return ParsedInstance(
        study_instance_uid=study_uid,
        series_instance_uid=series_uid,
        sop_instance_uid=sop_uid,
        sop_class_uid=sop_class,
        transfer_syntax_uid=str(transfer_syntax),
        study=study,
        series=series,
        instance=instance,
        study_json=study_members,
        series_json=series_members,
        metadata_json=metadata_json,
        layout=layout,
    )


__all__ = ["BULK_BASE", "InvalidDicomError", "ParsedInstance", "parse_instance", "valid_uid"]
