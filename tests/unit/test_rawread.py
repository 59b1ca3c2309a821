"""dicomgw_client.rawread, the hot path of the dataset's parse, against pydicom: over every test file of
pydicom and pydicom-data, and objects made here (nested undefined-length sequences, implicit VR), each
object it reads gives pydicom's values, pixels, frames and real-world voxels; what it declines is left
to pydicom; damaged bytes never raise."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from dicomgw_client import rawread, volume
from tests.dicomdata import make_dataset, to_bytes

DATA_STORE = Path(__import__("data_store").__file__).parent / "data"
PYDICOM_FILES = Path(pydicom.data.__file__).parent / "test_files"


def corpus() -> list[Path]:
    """pydicom's own test files (those installed with it: no download) and pydicom-data's."""
    files = [*PYDICOM_FILES.rglob("*"), *DATA_STORE.glob("*.dcm")]
    return sorted({f for f in files if f.is_file() and f.stat().st_size < 50_000_000})


def normalised(value: Any) -> Any:
    """A value as pydicom or rawread gives it, in one form: numbers as floats, several as a list."""
    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return [normalised(v) for v in value]
    if isinstance(value, (int, float)):
        return float(value)
    return str(value)


def made_objects() -> dict[str, bytes]:
    """Objects with what real ones carry before their pixels: nested sequences of undefined length
    (a de-identification's code sequence, a private sequence), in both VR encodings."""
    out = {}
    for syntax in (pydicom.uid.ExplicitVRLittleEndian, pydicom.uid.ImplicitVRLittleEndian):
        ds = make_dataset(rows=8, columns=6, frames=2, transfer_syntax=syntax, seed=3,
                          extra={"RescaleSlope": "0.5", "RescaleIntercept": "-1024", "SliceThickness": "1.25",
                                 "EchoNumbers": "2"})
        code = Dataset()
        code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "113100", "DCM", "Basic Profile"
        inner = Dataset()
        inner.ReferencedSOPInstanceUID = "1.2.3.4"
        inner.ReferencedImageSequence = Sequence([Dataset(), code])
        ds.DeidentificationMethodCodeSequence = Sequence([code, inner])
        ds.DeidentificationMethodCodeSequence.is_undefined_length = True
        inner.ReferencedImageSequence.is_undefined_length = True
        block = ds.private_block(0x0029, "DICOMGW TEST", create=True)
        block.add_new(0x10, "SQ", Sequence([code]))
        out[f"nested-{syntax.keyword}"] = to_bytes(ds)
    return out


def compare(data: bytes) -> bool:
    """Whether rawread read the object; if so, that it gave pydicom's values, pixels and voxels."""
    fast = rawread.read(data)
    if fast is None:
        return False
    attributes, pixels = fast
    ds = pydicom.dcmread(io.BytesIO(data))
    for keyword, _ in rawread.WANTED.values():
        assert normalised(attributes.get(keyword)) == normalised(ds.get(keyword)), keyword
    assert attributes.transfer_syntax == ds.file_meta.TransferSyntaxUID
    assert bytes(pixels) == ds.PixelData
    assert volume.frames_of(attributes) == volume.frames_of(ds)
    view = volume.Pixels.of(attributes, pixels, attributes.transfer_syntax)
    if view is not None and view.rescale is not None:
        for index in range(view.frames):
            np.testing.assert_array_equal(volume.real_world(attributes, index, pixels=view),
                                          volume.real_world(ds, index))
    return True


def test_every_object_read_is_pydicom_s() -> None:
    files = corpus()
    assert len(files) > 150  # pydicom's test files and pydicom-data's
    read = [f.name for f in files if compare(f.read_bytes())]
    # most uncompressed little-endian images are read; the rest (compressed, big endian, enhanced...)
    # are pydicom's to parse
    assert len(read) > 40, read
    assert "CT_small.dcm" in read and "MR_small.dcm" in read


@pytest.mark.parametrize("name", ["nested-ExplicitVRLittleEndian", "nested-ImplicitVRLittleEndian"])
def test_nested_undefined_length_sequences_are_skipped(name: str) -> None:
    assert compare(made_objects()[name])


def test_what_it_declines() -> None:
    data = made_objects()["nested-ExplicitVRLittleEndian"]
    assert rawread.read(data[:128] + b"DICX" + data[132:]) is None  # not a Part 10 file
    enhanced = pydicom.dcmread(DATA_STORE / "eCT_Supplemental.dcm")
    assert rawread.read(to_bytes(enhanced)) is None  # functional groups: per-frame values
    compressed = make_dataset(rows=8, columns=6, seed=1)
    compressed.compress(pydicom.uid.RLELossless, encoding_plugin="pydicom")
    assert rawread.read(to_bytes(compressed)) is None
    odd = make_dataset(rows=8, columns=6, seed=1)
    odd["Rows"].VR = "SS"  # not the VR this reader expects
    assert rawread.read(to_bytes(odd)) is None


def test_damaged_bytes_never_raise() -> None:
    data = made_objects()["nested-ExplicitVRLittleEndian"]
    whole = rawread.read(data)
    assert whole is not None
    for end in range(0, len(data) - 1, 7):  # cut anywhere: declined (the pixels would be short)
        assert rawread.read(data[:end]) is None
    rng = np.random.default_rng(14)
    for _ in range(300):  # a byte changed anywhere before the pixels: declined or read
        damaged = bytearray(data)
        damaged[int(rng.integers(132, len(data) - 96))] = int(rng.integers(0, 256))
        rawread.read(bytes(damaged))
