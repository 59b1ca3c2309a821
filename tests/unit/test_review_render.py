"""`share review` (the client's, dicomgw_client.review) renders a frame as the pixel cleaner's reader sees
it (dicomgw.deid.pixels.views): grey stretched, MONOCHROME1 inverted, palette through its table, YBR as
RGB, in every transfer syntax the cleaner writes; the client decodes with pydicom's plugins only."""

from __future__ import annotations

import warnings

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from dicomgw.deid.pixels import codecs
from dicomgw.deid.pixels.views import palette_table, view
from dicomgw_client import ClientError
from dicomgw_client.review import draw, render

FILES = ["MR_small.dcm", "CT_small.dcm", "rtdose.dcm", "OBXXXX1A.dcm", "OBXXXX1A_rle.dcm",
         "SC_ybr_full_uncompressed.dcm", "SC_ybr_full_422_uncompressed.dcm", "SC_rgb_16bit.dcm",
         "SC_rgb_jpeg_dcmtk.dcm", "SC_jpeg_no_color_transform.dcm", "color3d_jpeg_baseline.dcm",
         "US1_UNCR.dcm", "US1_J2KR.dcm", "JPGLosslessP14SV1_1s_1f_8b.dcm", "emri_small_jpeg_ls_lossless.dcm",
         "SC_rgb_jls_lossy_line.dcm", "MR_small_RLE.dcm", "SC_rgb_rle_16bit.dcm", "MR_small_jp2klossless.dcm",
         "ExplVR_BigEnd.dcm"]


def _read(name: str) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(get_testdata_file(name))


def _reader_view(ds: Dataset, frame: int) -> np.ndarray:
    decoded = codecs.decode(ds)
    return view(decoded.values[frame], decoded.photometric, palette_table(ds) if decoded.indices else None)


@pytest.mark.parametrize("name", FILES)
def test_a_frame_is_rendered_as_the_cleaner_s_reader_sees_it(name: str) -> None:
    ds = _read(name)
    frame = int(ds.get("NumberOfFrames", 1) or 1) - 1  # the last: frames are decoded one by one
    got = render(ds, frame)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, _reader_view(ds, frame))


def test_monochrome1_is_inverted() -> None:
    ds = _read("MR_small.dcm")
    plain = render(ds, 0)
    ds.PhotometricInterpretation = "MONOCHROME1"
    np.testing.assert_array_equal(render(ds, 0), 255 - plain)
    np.testing.assert_array_equal(render(ds, 0), _reader_view(ds, 0))


def test_boxes_are_drawn_on_a_thumbnail_and_undecodable_pixels_said_in_one_line() -> None:
    image = np.zeros((1024, 768), dtype=np.uint8)
    picture = draw(image, [[10, 20, 110, 220]], whole=False)
    assert picture.size == (384, 512) and picture.mode == "RGB"
    assert picture.getpixel((60, 5))[0] > 200  # the box's top edge, red, at half the size
    ds = _read("SC_rgb_jpeg_dcmtk.dcm")
    ds.PixelData = ds.PixelData[:200]
    with pytest.raises(ClientError, match="could not be decoded"):
        render(ds, 0)
