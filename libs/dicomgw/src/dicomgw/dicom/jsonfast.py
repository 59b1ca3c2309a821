"""DICOM JSON (PS3.18 Annex F) of a dataset read by pydicom, straight from its raw element bytes.

``Dataset.to_json_dict`` turns every raw element into a ``DataElement`` first (a dictionary look-up of
the VR, a converter, value validation, ``IS``/``DSfloat``/``UID`` objects) and then into JSON: about
half of the cost of indexing a received instance. For the plain cases, which are nearly all elements
of a CT, MR or PET header, the JSON value is computed here from the bytes directly, with exactly
pydicom's rules (text padding, multi-values, numbers); every other element (person names, tags,
ambiguous VRs, non-ASCII text, anything malformed) is handed to pydicom as before. The unit tests
compare both outputs on pydicom's test files and on edge values of every VR handled here.
"""

from __future__ import annotations

import base64
import re
import struct
from typing import Any

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset

# multi-valued text: split at backslashes, pydicom's padding rules per VR
_STRING_VRS = frozenset({"AS", "CS", "DA", "DT", "TM"})  # pydicom's convert_string
_TEXT_VRS = frozenset({"LO", "SH", "UC"})  # convert_text
_SINGLE_TEXT_VRS = frozenset({"LT", "ST", "UT"})  # convert_single_string
_BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW"})
_NUMBER_FORMATS = {"US": "H", "SS": "h", "UL": "L", "SL": "l", "FL": "f", "FD": "d", "UV": "Q",
                   "SV": "q"}
_HANDLED = (_STRING_VRS | _TEXT_VRS | _SINGLE_TEXT_VRS | _BINARY_VRS | set(_NUMBER_FORMATS)
            | {"AE", "UI", "UR", "IS", "DS", "SQ"})
_IS = re.compile(r"[+-]?[0-9]+\Z")
_DS = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?\Z")


def _vr_of(raw: RawDataElement) -> str | None:
    vr = raw.VR
    if vr is None:  # implicit VR: the dictionary's, for public elements only
        if raw.tag >> 16 & 1 or raw.tag & 0xFFFF == 0:
            return None
        try:
            vr = dictionary_VR(raw.tag)
        except KeyError:
            return None
    return vr if vr in _HANDLED else None


def _text(value: bytes) -> str | None:
    """The value as text when every decoding pydicom might use gives the same: ASCII, no escapes."""
    if not value.isascii() or b"\x1b" in value:
        return None
    return value.decode("ascii")


def _strings(vr: str, text: str) -> list[str] | None:
    """Values of a multi-valued text element, padded as pydicom strips them."""
    if vr == "AE":
        items = [s.strip() for s in text.split("\\")]
    elif vr in _TEXT_VRS:
        items = [s.rstrip("\0 ") for s in text.split("\\")]
    elif vr == "UI":
        items = text.rstrip("\0 ").split("\\")
    else:  # AS CS DA DT TM
        items = text.rstrip(" \0").split("\\")
    if len(items) == 1 and items[0] == "":
        return None  # empty: no "Value"
    return items


def _value(raw: RawDataElement, vr: str, little: bool) -> dict[str, Any] | None:
    """The JSON of one raw element, or None when pydicom must decide."""
    data = raw.value
    if data is None:
        return None
    out: dict[str, Any] = {"vr": vr}
    if vr in _BINARY_VRS:
        if data:
            out["InlineBinary"] = base64.b64encode(data).decode("ascii")
        return out
    if vr in _NUMBER_FORMATS:
        fmt = _NUMBER_FORMATS[vr]
        size = struct.calcsize("<" + fmt)  # standard sizes (native "L" is 8 bytes)
        if len(data) % size:
            return None
        if data:
            out["Value"] = list(struct.unpack(f"{'<' if little else '>'}{len(data) // size}{fmt}", data))
        return out
    text = _text(data)
    if text is None:
        return None
    if vr in ("IS", "DS"):
        stripped = text.strip()
        if not stripped:
            return out
        items = stripped.rstrip(" \0").split("\\")
        pattern, kind = (_IS, int) if vr == "IS" else (_DS, float)
        if not all(pattern.match(item) for item in items):
            return None
        out["Value"] = [kind(item) for item in items]
        return out
    if vr in _SINGLE_TEXT_VRS or vr == "UR":
        single = text.rstrip() if vr == "UR" else text.rstrip("\0 ")
        if single:
            out["Value"] = [single]
        return out
    strings = _strings(vr, text)
    if strings is not None:
        out["Value"] = strings
    return out


def dataset_json(ds: Dataset, little: bool = True) -> dict[str, Any]:
    """``ds.to_json_dict()`` (no bulk data handler): the same result, computed faster."""
    result: dict[str, Any] = {}
    for tag in ds.keys():
        raw = ds.get_item(tag)
        encoded = None
        if isinstance(raw, RawDataElement):
            vr = _vr_of(raw)
            if vr == "SQ":
                encoded = None  # items are read by pydicom; each is encoded below
            elif vr is not None:
                encoded = _value(raw, vr, little)
        if encoded is None:
            elem = ds[tag]
            if elem.VR == "SQ":
                encoded = {"vr": "SQ", "Value": [dataset_json(item, little) for item in elem.value]}
            else:
                encoded = elem.to_json_dict(None, 1 << 62)
        result[f"{int(tag):08X}"] = encoded
    return result
