"""The client's geometry (dicomgw_client.volume) against dcm2niix read back by nibabel, the references a
neuroimaging pipeline trusts: the same voxels and the same RAS affine, for oblique stacks in shuffled
order, an enhanced CT whose geometry is per frame, single slices; and irregular series never made into
a volume."""

from __future__ import annotations

import io
import subprocess
import tempfile
from pathlib import Path

import dcm2niix
import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from dicomgw_client import volume
from tests.dicomdata import make_dataset, to_bytes, uid

ENHANCED_CT = Path(__import__("data_store").__file__).parent / "data" / "eCT_Supplemental.dcm"


def dcm2niix_volume(files: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """What dcm2niix makes of ``files`` (one series), as nibabel reads it: voxels (scaled) and affine."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "dicom"
        folder.mkdir()
        for n, data in enumerate(files):
            (folder / f"{n}.dcm").write_bytes(data)
        done = subprocess.run([dcm2niix.bin, "-z", "n", "-b", "n", "-f", "volume", "-o", tmp, str(folder)],
                              capture_output=True, text=True, timeout=120)
        outputs = sorted(Path(tmp).glob("volume*.nii"))
        assert done.returncode == 0 and len(outputs) == 1, done.stdout + done.stderr
        image = nib.load(outputs[0])
        return np.asarray(image.get_fdata(), dtype=np.float64), np.asarray(image.affine, dtype=np.float64)


def reference_volume(datasets: list[Dataset]) -> np.ndarray:
    """Independently of the client: slices sorted by position along the normal, rescale applied, in
    dcm2niix's layout (column, last row first, slice)."""
    iop = np.asarray(datasets[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    ordered = sorted(datasets,
                     key=lambda ds: float(np.dot(normal, np.asarray(ds.ImagePositionPatient, float))))
    planes = [ds.pixel_array * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))
              for ds in ordered]
    return np.stack([p[::-1].T for p in planes], axis=2)


def rotation(a: float, b: float) -> tuple[list[float], list[float]]:
    ca, sa, cb, sb = np.cos(a), np.sin(a), np.cos(b), np.sin(b)
    around_z = np.array([[ca, -sa, 0], [sa, ca, 0], [0, 0, 1]])
    matrix = around_z @ np.array([[1, 0, 0], [0, cb, -sb], [0, sb, cb]])
    return matrix[:, 0].tolist(), matrix[:, 1].tolist()


def oblique_series(n: int = 7, *, step: float = 2.0, rows: int = 20, columns: int = 24,
                   positions: list[float] | None = None,
                   orientation: tuple[list[float], list[float]] | None = None,
                   between: float | None = None) -> list[Dataset]:
    """An oblique MR stack with a rescale, its InstanceNumbers in no order of position."""
    row, column = orientation or rotation(0.3, 0.4)
    normal = np.cross(row, column)
    study, series, frame_of_reference = uid(), uid(), uid()
    offsets = positions if positions is not None else [i * step for i in range(n)]
    numbers = np.random.default_rng(7).permutation(len(offsets)) + 1
    out = []
    for i, offset in enumerate(offsets):
        extra: dict[str, object] = {
            "ImagePositionPatient": (np.array([-40.0, -55.5, 12.25]) + offset * normal).round(6).tolist(),
            "ImageOrientationPatient": [round(v, 8) for v in [*row, *column]],
            "PixelSpacing": [0.7, 0.9], "SliceThickness": step, "FrameOfReferenceUID": frame_of_reference,
            "RescaleSlope": 2.5, "RescaleIntercept": -100, "Manufacturer": "dicomgw-test",
            "PatientPosition": "HFS"}
        if between is not None:
            extra["SpacingBetweenSlices"] = between
        out.append(make_dataset(study_uid=study, series_uid=series, modality="MR",
                                sop_class_uid="1.2.840.10008.5.1.4.1.1.4", instance_number=int(numbers[i]),
                                rows=rows, columns=columns, seed=i, extra=extra))
    return out


def _stack(datasets: list[Dataset]) -> tuple[list[volume.Stack], list[volume.Irregular]]:
    return volume.plan([f for ds in datasets for f in volume.frames_of(ds)])


def test_an_oblique_stack_in_shuffled_order_is_dcm2niix_s_volume() -> None:
    datasets = [pydicom.dcmread(io.BytesIO(to_bytes(ds))) for ds in oblique_series()]
    stacks, irregular = _stack(datasets)
    assert not irregular and len(stacks) == 1
    image = volume.assemble(stacks[0], {str(ds.SOPInstanceUID): ds for ds in datasets})
    assert image.dtype == np.float32 and image.shape == (24, 20, 7)
    np.testing.assert_array_equal(image, reference_volume(datasets))
    voxels, affine = dcm2niix_volume([to_bytes(ds) for ds in datasets])
    np.testing.assert_allclose(image, voxels, atol=1e-3)
    np.testing.assert_allclose(stacks[0].affine, affine, atol=1e-4)


def test_an_enhanced_ct_is_placed_by_its_per_frame_functional_groups() -> None:
    ds = pydicom.dcmread(ENHANCED_CT)
    frames = volume.frames_of(ds)
    assert [f.position for f in frames] == [(99.5, -301.5, -159.0), (99.5, -301.5, -149.0)]
    stacks, irregular = volume.plan(frames)
    assert not irregular and len(stacks) == 1
    image = volume.assemble(stacks[0], {str(ds.SOPInstanceUID): ds})
    # along the normal (0, 0, -1): the second frame first; the shared Pixel Value Transformation's
    # intercept (-1024) applied, not a top-level rescale the object lacks
    assert [f.index for f in stacks[0].frames] == [1, 0] and "RescaleIntercept" not in ds
    np.testing.assert_array_equal(image[:, :, 0], ds.pixel_array[1][::-1].T.astype(np.float32) - 1024)
    voxels, affine = dcm2niix_volume([ENHANCED_CT.read_bytes()])
    np.testing.assert_allclose(image, voxels, atol=1e-3)
    np.testing.assert_allclose(stacks[0].affine, affine, atol=1e-4)


def test_a_single_slice_takes_its_spacing_between_slices_as_dcm2niix_does() -> None:
    [ds] = oblique_series(1, between=4.0)
    stacks, _ = _stack([ds])
    _, affine = dcm2niix_volume([to_bytes(ds)])
    np.testing.assert_allclose(stacks[0].affine, affine, atol=1e-4)


def test_a_frame_affine_maps_row_and_column_as_the_standard_says() -> None:
    [ds] = oblique_series(1)
    [frame] = volume.frames_of(ds)
    affine = volume.frame_affine(frame)
    iop, ipp = np.asarray(ds.ImageOrientationPatient, float), np.asarray(ds.ImagePositionPatient, float)
    row_spacing, column_spacing = (float(v) for v in ds.PixelSpacing)
    for r, c in [(0, 0), (5, 0), (0, 7), (19, 23)]:
        # PS3.3 C.7.6.2.1.1: P = S + c * column spacing * X + r * row spacing * Y (LPS)
        lps = ipp + c * column_spacing * iop[:3] + r * row_spacing * iop[3:]
        np.testing.assert_allclose(affine @ [r, c, 0, 1], [-lps[0], -lps[1], lps[2], 1], atol=1e-9)
    np.testing.assert_array_equal(volume.real_world(ds, 0), ds.pixel_array.astype(np.float32) * 2.5 - 100)
    assert np.isnan(volume.frame_affine(volume.frames_of(make_dataset())[0])).all()


@pytest.mark.parametrize(("positions", "reason"), [
    ([0.0, 2.0, 4.0, 8.0, 10.0], "unequal slice spacing"),
    ([0.0, 2.0, 2.0, 4.0], "frames at one position"),
])
def test_an_irregular_stack_is_never_a_volume(positions: list[float], reason: str) -> None:
    stacks, irregular = _stack(oblique_series(positions=positions))
    assert stacks == [] and len(irregular) == 1 and reason in irregular[0].reason
    assert len(irregular[0].frames) == len(positions)


def test_a_series_in_three_planes_is_three_stacks_and_frames_without_place_are_left_out() -> None:
    axial = oblique_series(4, orientation=([1, 0, 0], [0, 1, 0]))
    sagittal = oblique_series(3, orientation=([0, 1, 0], [0, 0, -1]))
    for ds in sagittal:  # the same series and frame of reference
        ds.SeriesInstanceUID = axial[0].SeriesInstanceUID
        ds.FrameOfReferenceUID = axial[0].FrameOfReferenceUID
    unplaced = make_dataset(frames=3)
    stacks, irregular = _stack([*axial, *sagittal, unplaced])
    assert sorted(len(s.frames) for s in stacks) == [3, 4]
    assert len(irregular) == 1 and "no position" in irregular[0].reason and len(irregular[0].frames) == 3


@pytest.mark.parametrize(("bits", "stored", "signed", "frames", "syntax"), [
    (16, 16, 0, 1, "1.2.840.10008.1.2.1"), (16, 12, 0, 1, "1.2.840.10008.1.2.1"),
    (16, 12, 1, 1, "1.2.840.10008.1.2.1"), (16, 16, 1, 3, "1.2.840.10008.1.2"),
    (8, 8, 0, 2, "1.2.840.10008.1.2.1"), (8, 6, 1, 1, "1.2.840.10008.1.2"),
    (32, 32, 1, 1, "1.2.840.10008.1.2.1"), (32, 24, 0, 2, "1.2.840.10008.1.2.1"),
])
def test_the_native_reader_gives_pydicom_s_values(bits: int, stored: int, signed: int, frames: int,
                                                  syntax: str) -> None:
    """Uncompressed grey frames are read straight from Pixel Data: the values pydicom's pixel_array
    gives, whatever the unused high bits hold (random bytes here: cleared, or the sign extended)."""
    from pydicom.pixels.utils import pixel_array

    rows, columns = 5, 7
    ds = Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.update({"Rows": rows, "Columns": columns, "BitsAllocated": bits, "BitsStored": stored,
               "HighBit": stored - 1, "PixelRepresentation": signed, "SamplesPerPixel": 1,
               "PhotometricInterpretation": "MONOCHROME2"})
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = np.random.default_rng(bits + stored + signed).bytes(rows * columns * bits // 8 * frames)
    for index in range(frames):
        fast = volume._native_frame(ds, index)
        assert fast is not None
        expected = pixel_array(ds, index=index)
        assert fast.dtype == expected.dtype and np.array_equal(fast, expected)
    # what it does not read is left to pydicom
    ds.PhotometricInterpretation = "RGB"
    assert volume._native_frame(ds, 0) is None


def _object(case: str) -> Dataset:
    ds = make_dataset(rows=6, columns=5, frames=3, seed=7,
                      extra={"RescaleSlope": "2", "RescaleIntercept": "-5"})
    if case == "implicit":
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    elif case == "8-bit":
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit = 7
        ds.PixelRepresentation = 0
        ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    elif case == "trailing":  # an element after the pixels (Data Set Trailing Padding)
        ds.add_new(0xFFFCFFFC, "OB", b"\0" * 8)
    elif case == "rle":
        ds.compress(pydicom.uid.RLELossless, encoding_plugin="pydicom")
    elif case == "rgb":
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit, ds.PixelRepresentation = 7, 0
        ds.PixelData = np.random.default_rng(1).bytes(6 * 5 * 3 * 3)
    return ds


@pytest.mark.parametrize(("case", "direct"), [("explicit", True), ("implicit", True), ("8-bit", True),
                                              ("trailing", True), ("rle", False), ("rgb", False)])
def test_read_views_uncompressed_pixels_and_parses_the_rest_whole(case: str, direct: bool) -> None:
    """volume.read: an uncompressed grey image is parsed up to its Pixel Data, whose value is a view
    of the bytes (no copy), and gives the frames of the whole parse; anything else is parsed whole."""
    data = to_bytes(_object(case))
    ds, pixels = volume.read(data)
    whole = pydicom.dcmread(io.BytesIO(data))
    assert (pixels is not None) == direct
    if pixels is not None:
        assert isinstance(pixels.data, memoryview) and pixels.data.obj is data and "PixelData" not in ds
        assert bytes(pixels.data) == whole.PixelData
    else:
        assert ds.PixelData == whole.PixelData
    for index in range(3):
        np.testing.assert_array_equal(volume.real_world(ds, index, pixels=pixels),
                                      volume.real_world(whole, index))
    if case == "explicit":
        assert volume.real_world(ds, 0, pixels=pixels)[0, 0] == whole.pixel_array[0, 0, 0] * 2 - 5
