"""NIfTI volumes of a (de-identified) series with dcm2niix: the volume has the series' shape and spacing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dicomgw.collections.nifti import ConversionFailed, series_to_nifti
from dicomgw.deid import deidentify
from tests.dicomdata import make_dataset, uid

ROWS, COLUMNS, SLICES, PIXEL, THICKNESS = 48, 40, 12, 0.7, 2.5


def _series(folder: Path, patient_name: str = "Volume^Vera") -> Path:
    folder.mkdir(parents=True)
    study, series, frame_of_reference = uid(), uid(), uid()
    for k in range(SLICES):
        ds = make_dataset(study_uid=study, series_uid=series, rows=ROWS, columns=COLUMNS,
                          instance_number=k + 1, seed=k, patient_name=patient_name)
        ds.FrameOfReferenceUID = frame_of_reference
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-10.0, -20.0, k * THICKNESS]
        ds.PixelSpacing = [PIXEL, PIXEL]
        ds.SliceThickness = THICKNESS
        deidentify(ds, b"nifti-test").save_as(folder / f"{k:03d}.dcm", enforce_file_format=True)
    return folder


def test_a_deidentified_series_becomes_one_volume_with_its_shape_and_spacing(tmp_path: Path) -> None:
    volume = series_to_nifti(_series(tmp_path / "dicom"), tmp_path / "nifti", "series-1")
    assert volume.path.name == "series-1.nii.gz" and volume.path.stat().st_size > 0
    assert volume.shape == (COLUMNS, ROWS, SLICES)
    assert volume.spacing == pytest.approx((PIXEL, PIXEL, THICKNESS), abs=1e-4)
    sidecar = json.loads(volume.sidecar.read_text())
    assert sidecar["SliceThickness"] == THICKNESS
    assert "Volume" not in volume.sidecar.read_text()  # nothing of the patient's name


def test_a_folder_without_dicom_fails_clearly(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConversionFailed):
        series_to_nifti(tmp_path / "empty", tmp_path / "out", "nothing")
