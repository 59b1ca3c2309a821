"""dicomgw.dicom.jsonfast gives exactly pydicom's DICOM JSON, on real files and on edge values."""

from __future__ import annotations

import io
import json
import struct

import pydicom
import pydicom.filebase
import pydicom.filewriter
import pytest
from pydicom.data import get_testdata_files
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from dicomgw.dicom.jsonfast import dataset_json

FILES = [f for f in get_testdata_files("*") if f.endswith(".dcm")]


def _pydicom_json(ds: Dataset) -> dict[str, object]:
    return ds.to_json_dict(bulk_data_threshold=1 << 62)


@pytest.mark.parametrize("path", FILES[:200], ids=lambda p: p.rsplit("/", 1)[-1])
def test_same_json_as_pydicom_on_its_test_files(path: str) -> None:
    def read() -> Dataset:
        return pydicom.dcmread(path, force=True, stop_before_pixels=True, defer_size=1024)

    try:
        expected = _pydicom_json(read())
    except Exception as exc:  # pydicom cannot encode it either: the same error class
        with pytest.raises(type(exc)):
            dataset_json(read(), read().is_little_endian is not False)
        return
    ds = read()
    assert json.dumps(dataset_json(ds, ds.is_little_endian is not False)) == json.dumps(expected)


# raw values written as they may arrive: padding, nulls, empty components, spaces, odd numbers
EDGE_VALUES: dict[str, list[bytes]] = {
    "AE": [b"", b"  ", b" STORE ", b"A\\ B ", b"A\\\\B"],
    "AS": [b"", b"045Y", b"045Y\0", b"\\"],
    "CS": [b"", b" ", b"ORIGINAL\\PRIMARY\\AXIAL ", b"A\\\\", b"\0", b" LEAD", b"A \\B "],
    "DA": [b"", b"20240101", b"20240101\\20240102", b"2024 "],
    "DT": [b"", b"20240101120000.000000+0100 "],
    "TM": [b"", b"101500", b"101500.123 ", b"10\\11"],
    "LO": [b"", b"  ", b"Head first ", b"A\\B \0", b" lead", b"a\\\\b"],
    "SH": [b"", b"ABC ", b"X\\"],
    "UC": [b"", b"long value \\ two "],
    "LT": [b"", b"text with \\ backslash  ", b"  \0"],
    "ST": [b"", b"short text "],
    "UT": [b"", b"unlimited \r\n text "],
    "UR": [b"", b"http://example.org/a b  ", b"urn:x\t"],
    "UI": [b"", b"1.2.840.10008.1.2\0", b"1.2\\3.4 ", b"1.2\\\0"],
    "IS": [b"", b" ", b"1", b"-12 ", b"+007", b"1\\2\\3", b" 4 ", b"1\\ 2", b"1.0", b"1\\\\2",
           b"99999999999", b"12\0"],
    "DS": [b"", b"0.5", b"-1.25e-3 ", b"1\\2.5\\-3", b".5", b"5.", b"+1E+2", b" 2.0 ",
           b"1\\ 2", b"NaN", b"1\\"],
    "US": [b"", struct.pack("<H", 7), struct.pack("<3H", 1, 2, 3), b"\x01"],
    "SS": [struct.pack("<h", -7)],
    "UL": [struct.pack("<2L", 1, 4000000000)],
    "SL": [struct.pack("<l", -5)],
    "FL": [struct.pack("<f", 0.3), struct.pack("<2f", 1.5, -2)],
    "FD": [struct.pack("<d", 0.1)],
    "OB": [b"", b"\x00\x01\x02\x03"],
    "OW": [b"\x00\x01\x02\x03"],
}
ELEMENTS = {"AE": 0x00080054, "AS": 0x00101010, "CS": 0x00080008, "DA": 0x00080020, "DT": 0x0008002A,
            "TM": 0x00080030, "LO": 0x00081030, "SH": 0x00080050, "UC": 0x00400031, "LT": 0x00204000,
            "ST": 0x00080081, "UT": 0x00400600, "UR": 0x00080120, "UI": 0x00080016, "IS": 0x00200013,
            "DS": 0x00280030, "US": 0x00280010, "SS": 0x00189219, "UL": 0x00081161, "SL": 0x00186020,
            "FL": 0x00189087, "FD": 0x00189089, "OB": 0x00420011, "OW": 0x00660023}


def _element(tag: int, vr: str, value: bytes, implicit: bool, little: bool) -> bytes:
    end = "<" if little else ">"
    head = struct.pack(end + "HH", tag >> 16, tag & 0xFFFF)
    if implicit:
        return head + struct.pack(end + "L", len(value)) + value
    if vr in ("OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT"):
        return head + vr.encode() + b"\0\0" + struct.pack(end + "L", len(value)) + value
    return head + vr.encode() + struct.pack(end + "H", len(value)) + value


def _written(vr: str, value: bytes, syntax: pydicom.uid.UID) -> bytes:
    """A PS3.10 file whose element of ``vr`` holds exactly ``value`` (numbers byte-swapped for big
    endian), at the top level and in a sequence item, written by hand: pydicom's writer would
    normalise what is being tested."""
    implicit, little = syntax == ImplicitVRLittleEndian, syntax != ExplicitVRBigEndian
    end = "<" if little else ">"
    if len(value) % 2:
        value += b"\0" if vr in ("UI", "OB", "US") else b" "
    if not little and vr in ("US", "SS", "UL", "SL", "FL", "FD") and value:
        size = {"US": 2, "SS": 2, "UL": 4, "SL": 4, "FL": 4, "FD": 8}[vr]
        value = b"".join(value[i:i + size][::-1] for i in range(0, len(value) - len(value) % size, size))
    element = _element(ELEMENTS[vr], vr, value, implicit, little)
    items = (struct.pack(end + "HHL", 0xFFFE, 0xE000, len(element)) + element
             + struct.pack(end + "HHL", 0xFFFE, 0xE000, 0))
    sequence = _element(0x00081140, "SQ", items, implicit, little)
    body = b"".join(e for _, e in sorted([(ELEMENTS[vr], element), (0x00081140, sequence)]))
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    meta.TransferSyntaxUID = syntax
    out = io.BytesIO()
    out.write(b"\0" * 128 + b"DICM")
    pydicom.filewriter.write_file_meta_info(pydicom.filebase.DicomFileLike(out), meta)
    return out.getvalue() + body


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian])
@pytest.mark.parametrize(("vr", "value"), [(vr, v) for vr, values in EDGE_VALUES.items() for v in values])
def test_same_json_as_pydicom_on_edge_values(vr: str, value: bytes, syntax: pydicom.uid.UID) -> None:
    data = _written(vr, value, syntax)

    def read() -> Dataset:
        return pydicom.dcmread(io.BytesIO(data), defer_size=1024)

    little = syntax != ExplicitVRBigEndian
    try:
        expected = _pydicom_json(read())
    except Exception as exc:
        with pytest.raises(type(exc)):
            dataset_json(read(), little)
        return
    assert json.dumps(dataset_json(read(), little)) == json.dumps(expected)  # NaN is not NaN
