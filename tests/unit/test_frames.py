"""Frame decoding, whole-instance re-encoding and rendering (dicomgw.dicom.frames / render), pure."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.uid import JPEG2000Lossless, RLELossless

from dicomgw.dicom.frames import (
    PixelDataUndecodable,
    array_bytes,
    decode_frame,
    frames_from_whole,
    swap_to_little_endian,
    to_native,
)
from dicomgw.dicom.parse import parse_instance
from dicomgw.dicom.render import (
    RenderOptions,
    apply_window,
    header_from_metadata,
    parse_options,
    render_frame,
)
from dicomgw.errors import BadRequest, NotAcceptable, NotFound
from dicomgw_retrieve.reader import in_order
from tests.dicomdata import make_dataset, pydicom_files, to_bytes

EXPLICIT_LE = "1.2.840.10008.1.2.1"


def _pixel(ds: Dataset) -> dict[str, object]:
    return {k: ds.get(k) for k in ("Rows", "Columns", "SamplesPerPixel", "BitsAllocated", "BitsStored",
                                   "PixelRepresentation", "PhotometricInterpretation")}


def _corpus_file(name: str) -> bytes:
    return next(p for p in pydicom_files() if p.name == name).read_bytes()


# ---- frames -----------------------------------------------------------------------------------
def test_big_endian_samples_are_swapped_per_sample_width() -> None:
    values = np.array([1, 0x1234, 0xFFFE], dtype=">u2")
    assert swap_to_little_endian(values.tobytes(), 16) == values.astype("<u2").tobytes()
    wide = np.array([1, 0x12345678], dtype=">u4")
    assert swap_to_little_endian(wide.tobytes(), 32) == wide.astype("<u4").tobytes()
    assert swap_to_little_endian(b"\x01\x02\x03", 8) == b"\x01\x02\x03"


def test_native_frames_pass_through_and_big_endian_is_swapped() -> None:
    ds = make_dataset(rows=8, columns=4)
    pixel = _pixel(ds)
    assert decode_frame(ds.PixelData, EXPLICIT_LE, pixel) == ds.PixelData
    big = np.frombuffer(ds.PixelData, "<u2").astype(">u2").tobytes()
    assert decode_frame(big, "1.2.840.10008.1.2.2", pixel) == ds.PixelData


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless])
def test_compressed_frames_decode_to_the_original_samples(syntax: str) -> None:
    ds = make_dataset(rows=64, columns=48, frames=3)
    original = np.frombuffer(ds.PixelData, "<u2").reshape(3, 64, 48)
    ds.compress(syntax, encoding_plugin="pylibjpeg" if syntax == JPEG2000Lossless else "")
    fragments = list(generate_frames(ds.PixelData, number_of_frames=3))
    for i, fragment in enumerate(fragments):
        assert decode_frame(fragment, syntax, _pixel(ds)) == original[i].tobytes()


def test_undecodable_frame_is_a_406() -> None:
    ds = make_dataset(rows=8, columns=8)
    with pytest.raises(PixelDataUndecodable) as info:
        decode_frame(b"\xff\xd8 not a jpeg", "1.2.840.10008.1.2.4.70", _pixel(ds))
    assert isinstance(info.value, NotAcceptable) and info.value.status == 406


def test_one_bit_frames_are_packed_least_significant_bit_first() -> None:
    bits = np.array([[1, 0, 0, 0, 0, 0, 0, 0], [0, 1, 1, 0, 0, 0, 0, 1]], dtype=np.uint8)
    assert array_bytes(bits, 1) == bytes([0b00000001, 0b10000110])


def test_frames_from_whole_checks_range_and_pixels() -> None:
    data = to_bytes(make_dataset(rows=4, columns=4, frames=2))
    first, second = frames_from_whole(data, [0, 1])
    assert first + second == pydicom.dcmread(io.BytesIO(data)).PixelData
    with pytest.raises(NotFound):
        frames_from_whole(data, [2])
    ds = make_dataset()
    del ds.PixelData
    with pytest.raises(NotFound):
        frames_from_whole(to_bytes(ds), [0])


def test_deflated_instance_frames_are_decoded() -> None:
    data = _corpus_file("image_dfl.dcm")
    [frame] = frames_from_whole(data, [0])
    assert frame == pydicom.dcmread(io.BytesIO(data)).pixel_array.tobytes()


@pytest.mark.parametrize("name", ["MR_small_bigendian.dcm", "rtdose_expb.dcm", "ExplVR_BigEnd.dcm",
                                  "MR_small_RLE.dcm", "SC_rgb_jpeg_gdcm.dcm"])
def test_to_native_keeps_the_instance_and_its_pixels(name: str) -> None:
    data = _corpus_file(name)
    before = pydicom.dcmread(io.BytesIO(data))
    for syntax in (EXPLICIT_LE, "1.2.840.10008.1.2"):
        after = pydicom.dcmread(io.BytesIO(to_native(data, syntax)))
        assert after.file_meta.TransferSyntaxUID == syntax
        assert after.SOPInstanceUID == before.SOPInstanceUID
        assert after.file_meta.MediaStorageSOPInstanceUID == before.SOPInstanceUID
        assert np.array_equal(after.pixel_array, before.pixel_array)


def test_to_native_refuses_other_targets() -> None:
    with pytest.raises(NotAcceptable):
        to_native(to_bytes(make_dataset()), "1.2.840.10008.1.2.4.50")


# ---- rendering --------------------------------------------------------------------------------
def test_linear_window_follows_ps3_3_c11_2_1_2() -> None:
    center, width = 100.0, 21.0
    low = center - 0.5 - (width - 1) / 2
    high = center - 0.5 + (width - 1) / 2
    out = apply_window(np.array([low - 5, low, center, high, high + 5]), center, width, "linear")
    assert list(out) == [0, 0, 134, 255, 255]
    assert list(apply_window(np.array([99.0, 100.0]), 100, 1, "linear")) == [0, 255]
    sigmoid = apply_window(np.array([-1e6, 100.0, 1e6]), 100, 20, "sigmoid")
    assert list(sigmoid) == [0, 128, 255]


def _render(ds: Dataset, arr: np.ndarray, **options: object) -> np.ndarray:
    png = render_frame(arr, ds, 0, RenderOptions(media_type="image/png", **options))  # type: ignore[arg-type]
    return np.asarray(Image.open(io.BytesIO(png)))


def test_rescale_then_window_and_monochrome1_inverts() -> None:
    ds = make_dataset(rows=2, columns=2)
    ds.RescaleSlope, ds.RescaleIntercept = 2, -1000
    ds.WindowCenter, ds.WindowWidth = 0, 2
    arr = np.array([[0, 499], [500, 4000]], dtype=np.uint16)  # -1000, -2, 0, 7000 after rescale
    grey = _render(ds, arr)
    assert grey.tolist() == [[0, 0], [255, 255]]
    ds.PhotometricInterpretation = "MONOCHROME1"
    assert _render(ds, arr).tolist() == [[255, 255], [0, 0]]


def test_window_parameter_overrides_the_stored_window_and_defaults_to_min_max() -> None:
    ds = make_dataset(rows=1, columns=3)
    arr = np.array([[0, 50, 100]], dtype=np.uint16)
    assert _render(ds, arr, window=(50.0, 100.0, "linear_exact")).tolist() == [[0, 128, 255]]
    del ds.WindowCenter, ds.WindowWidth
    assert _render(ds, arr).tolist() == [[0, 128, 255]]


def test_per_frame_functional_groups_give_the_window() -> None:
    ds = make_dataset(rows=1, columns=2)
    del ds.WindowCenter, ds.WindowWidth
    voi = Dataset()
    voi.WindowCenter, voi.WindowWidth = 10, 2
    frame = Dataset()
    frame.FrameVOILUTSequence = [voi]
    ds.PerFrameFunctionalGroupsSequence = [frame]
    assert _render(ds, np.array([[0, 20]], dtype=np.uint16)).tolist() == [[0, 255]]


def test_viewport_fits_preserving_aspect_and_colour_renders() -> None:
    ds = make_dataset(rows=20, columns=40)
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.BitsStored = 3, "RGB", 8
    rgb = np.zeros((20, 40, 3), dtype=np.uint8)
    rgb[..., 0] = 200
    image = _render(ds, rgb, viewport=(10, 10))
    assert image.shape == (5, 10, 3)
    assert _render(ds, rgb, viewport=(80, 80)).shape == (40, 80, 3)
    assert _render(ds, rgb, viewport=(80, 80), enlarge=False).shape == (20, 40, 3)
    assert image[..., 0].min() > 190 and image[..., 1].max() < 10


@pytest.mark.parametrize(
    ("window", "viewport", "quality"),
    [("1", None, None), ("a,b", None, None), ("40,400,cubic", None, None), ("40,0", None, None),
     (None, "0,5", None), (None, "10", None), (None, None, "0"), (None, None, "best")],
)
def test_bad_rendering_parameters_are_400(window: str | None, viewport: str | None,
                                          quality: str | None) -> None:
    with pytest.raises(BadRequest):
        parse_options("image/jpeg", window, viewport, quality)


def test_rendering_parameters_parse() -> None:
    options = parse_options("image/png", "40,400,LINEAR-EXACT", "64,32", "75")
    assert options == RenderOptions("image/png", (40.0, 400.0, "linear_exact"), (64, 32), 75)
    assert not parse_options("image/jpeg", None, "8,8", None, enlarge=False).enlarge


def test_header_from_metadata_reads_the_stored_json(tmp_path: Path) -> None:
    path = tmp_path / "ct.dcm"
    path.write_bytes(to_bytes(make_dataset(rows=8, columns=8)))
    header = header_from_metadata(parse_instance(path).metadata_json)
    assert header.Rows == 8 and float(header.WindowWidth) == 4096
    assert "PixelData" not in header or not header.PixelData


# ---- ordered prefetch -------------------------------------------------------------------------
async def test_in_order_yields_in_order_with_bounded_concurrency() -> None:
    running = 0
    peak = 0

    async def work(n: int) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.001 * (10 - n))  # later items finish first
        running -= 1
        return n * n

    got = [pair async for pair in in_order(work, list(range(10)), window=3)]
    assert got == [(n, n * n) for n in range(10)]
    assert peak <= 3
