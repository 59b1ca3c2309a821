"""The check of a de-identified instance against the standard's own Table E.1-1 (PS3.15).

The table comes from the dicom-standard package (Innolitics' extraction of PS3.15 Table E.1-1, 433
attributes with their Basic Profile actions), not from dicomgw: an attribute the profile forgot fails
here. Every element is walked, nested sequences included. Shared by the unit tests of the profile and
the tests of collections built by the archive.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

from pydicom.dataset import Dataset

TABLE_FILE = Path(sys.prefix) / "standard" / "confidentiality_profile_attributes.json"


def table() -> list[dict[str, str]]:
    rows: list[dict[str, str]] = json.loads(TABLE_FILE.read_text())
    assert len(rows) > 400, "Table E.1-1 did not load"
    return rows


def matches(table_id: str, tag: int) -> bool:
    """Whether a tag is one a table row names: an exact tag, a repeating group (50xx, 60xx) or the
    private tags (odd groups)."""
    group, element = tag >> 16, tag & 0xFFFF
    if table_id.startswith("gggg"):
        return group % 2 == 1
    if "x" in table_id.lower():
        hex_id = table_id.lower()
        pattern_group, pattern_element = hex_id[:4], hex_id[4:8]
        ok_group = all(p in ("x", c) for p, c in zip(pattern_group, f"{group:04x}", strict=True))
        ok_element = all(p in ("x", c) for p, c in zip(pattern_element, f"{element:04x}", strict=True))
        return ok_group and ok_element
    return int(table_id, 16) == tag


def walk(ds: Dataset) -> Iterator[tuple[int, object]]:
    for element in ds:
        yield int(element.tag), element.value
        if element.VR == "SQ":
            for item in element.value:
                yield from walk(item)


def assert_deidentified(original: Dataset, out: Dataset, rows: list[dict[str, str]]) -> None:
    """No attribute Table E.1-1 says to remove survives in ``out``; those it says to replace hold a
    dummy, a pseudonym or a new UID, never the original's value; pixels are bit-identical."""
    originals = {tag: value for tag, value in walk(original)}
    for tag, value in walk(out):
        for row in rows:
            if not matches(row["id"], tag):
                continue
            action = row["basicProfile"]
            name = f"{row['name']} ({row['tag']}) {action}"
            assert "X" != action, f"{name} must be removed, found {value!r}"
            if not value:
                continue  # zero-length: what Z and D allow
            if "U" in action:
                assert str(value).startswith("2.25.") and value != originals.get(tag), name
            else:
                # a dummy or pseudonym, never the original
                assert value != originals.get(tag) and str(value).startswith(("P-", "S-")), \
                    f"{name} kept {value!r}"
    assert not [tag for tag, _ in walk(out) if (tag >> 16) % 2 == 1], "private tags remain"
    assert out.PatientIdentityRemoved == "YES"
    assert out.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
    assert out.preamble == b"\0" * 128
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID != original.SOPInstanceUID
    assert out.PixelData == original.PixelData  # bit-identical pixels
