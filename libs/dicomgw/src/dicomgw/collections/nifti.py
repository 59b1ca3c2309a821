"""NIfTI volumes of a series, for pipelines that want volumes rather than DICOM (dcm2niix from PyPI).

dcm2niix is the converter the neuroimaging community trusts (slice ordering, oblique geometry,
mosaics); it writes a compressed NIfTI-1 file and a BIDS-style JSON sidecar per series. The header is
read back here so that a collection's manifest can state the volume's shape and voxel spacing.
"""

from __future__ import annotations

import gzip
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

import dcm2niix


@dataclass(frozen=True)
class NiftiVolume:
    path: Path
    sidecar: Path
    # voxels along x, y, z (and more dimensions when the series has them)
    shape: tuple[int, ...]
    # millimetres along x, y, z
    spacing: tuple[float, ...]


class ConversionFailed(RuntimeError):
    pass


def read_header(path: Path) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """Shape and voxel spacing from a NIfTI-1 header (.nii or .nii.gz)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        header = f.read(348)
    if len(header) < 348:
        raise ConversionFailed(f"{path.name} is not a NIfTI-1 file")
    endian = "<" if struct.unpack("<i", header[:4])[0] == 348 else ">"
    dims = struct.unpack(endian + "8h", header[40:56])
    pixdim = struct.unpack(endian + "8f", header[76:108])
    n = dims[0]
    return tuple(int(d) for d in dims[1 : n + 1]), tuple(round(float(p), 6) for p in pixdim[1 : n + 1])


def series_to_nifti(dicom_dir: Path, out_dir: Path, name: str, timeout: float = 600) -> NiftiVolume:
    """Convert the one series in ``dicom_dir`` to ``out_dir/name.nii.gz`` with ``name.json``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([dcm2niix.bin, "-z", "y", "-b", "y", "-ba", "y", "-f", name, "-o", str(out_dir),
                           str(dicom_dir)], capture_output=True, text=True, timeout=timeout)
    volume, sidecar = out_dir / f"{name}.nii.gz", out_dir / f"{name}.json"
    if done.returncode != 0 or not volume.exists():
        raise ConversionFailed("dcm2niix could not convert the series: "
                               f"{done.stdout[-500:]} {done.stderr[-500:]}")
    shape, spacing = read_header(volume)
    return NiftiVolume(volume, sidecar, shape, spacing)
