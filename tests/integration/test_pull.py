"""`dicomgw-client pull` over a real gateway, as a research team runs it on a workstation: a collection of
four MR series with NIfTI volumes, pulled with a key that reads only the collection. Every file checked
against the manifest, a pull killed -9 midway that resumes without fetching anything twice, a layout
of the team's choosing, a manifest of the local files, a damaged file found and fetched again, and
version 1 pulled again after version 2 is published: the same bytes, the same manifest."""

from __future__ import annotations

import csv
import fcntl
import gzip
import hashlib
import io
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dicomgw_client import ClientError
from dicomgw_client.pull import STATE, PullResult, local_manifest, pull, retire_manifest
from tests.dicomdata import make_dataset, multipart_related, to_bytes, uid
from tests.fixtures.gateway import Gateway, create_key, start_gateway
from tests.polling import wait_for

pytestmark = pytest.mark.timeout(300)
BIN = Path(sys.executable).parent
ENV = {"DICOMGW_AUTH_MODE": "required", "DICOMGW_AUTH_KEY_SECRET": "pull-tests"}
NAME = "pull-study"
SLICES = 20
LAYOUT = "{patient_id}/{study_instance_uid}/{series_instance_uid}/{sop_instance_uid}.dcm"


def mr_series(study_uid: str, patient: str, series_number: int, slices: int = SLICES) -> list[bytes]:
    """A regular axial stack (dcm2niix makes a volume of it)."""
    series_uid, frame_of_reference = uid(), uid()
    return [to_bytes(make_dataset(
        study_uid=study_uid, series_uid=series_uid, modality="MR", sop_class_uid="1.2.840.10008.5.1.4.1.1.4",
        patient_name=f"{patient}^Research", patient_id=f"PID-{patient}", series_number=series_number,
        instance_number=i + 1, rows=32, columns=40, seed=i,
        extra={"ImagePositionPatient": [-20.0, -30.0, i * 2.0], "ImageOrientationPatient": [1, 0, 0, 0, 1, 0],
               "PixelSpacing": [0.9, 0.9], "SliceThickness": 2.0, "FrameOfReferenceUID": frame_of_reference}))
        for i in range(slices)]


@dataclass
class Archive:
    gateway: Gateway
    env: dict[str, str]
    admin: str
    reader: str  # dicom.read:NAME only

    def stow(self, parts: list[bytes]) -> None:
        body, content_type = multipart_related(parts)
        stored = httpx.post(f"{self.gateway.url}/studies", content=body, timeout=120,
                            headers={"Content-Type": content_type, "Authorization": f"Bearer {self.admin}"})
        assert stored.status_code == 200, stored.text

    def build(self) -> int:
        """The collection's next version, complete."""
        headers = {"Authorization": f"Bearer {self.admin}"}
        defined = httpx.post(f"{self.gateway.root}/admin/collections", headers=headers,
                             json={"name": NAME, "nifti": True})
        assert defined.status_code == 202, defined.text
        number = int(defined.json()["versions"][0]["version"])

        def complete() -> bool:
            described = httpx.get(f"{self.gateway.root}/admin/collections/{NAME}", headers=headers).json()
            state = described["versions"][number - 1]["state"]
            assert state != "failed", described
            return bool(state == "complete")

        wait_for(complete, 120, interval=0.2, log=self.gateway.log)
        return number

    def published(self, version: int, filename: str) -> bytes:
        got = httpx.get(f"{self.gateway.root}/collections/{NAME}/versions/{version}/{filename}",
                        headers={"Authorization": f"Bearer {self.reader}"})
        assert got.status_code == 200, got.text
        return got.content

    def rows(self, version: int = 1) -> list[dict[str, Any]]:
        return pq.read_table(io.BytesIO(self.published(version, "manifest.parquet"))).to_pylist()

    def pull(self, dest: Path, **kwargs: Any) -> PullResult:
        kwargs.setdefault("version", 1)
        return pull(self.gateway.url, NAME, dest, token=self.reader, concurrency=4, **kwargs)

    def command(self, *args: str) -> list[str]:
        return [*args, "--url", self.gateway.url, "--token", self.reader]



@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    """Version 1 of a collection of 80 MR instances (2 patients, 4 series) with NIfTI volumes."""
    data = tmp_path_factory.mktemp("pull")
    gateway = start_gateway(data, ENV)
    try:
        env = {**os.environ, **ENV, "DATA_DIR": str(data),
               "DICOMGW_INDEX_URL": f"sqlite+aiosqlite:///{data.resolve() / 'index.sqlite3'}"}
        archive = Archive(gateway, env, create_key(env, "manager", "dicom.read,dicom.write,dicom.admin"), "")
        archive.reader = create_key(env, "researcher", f"dicom.read:{NAME}")
        for patient in ("Kilo", "Lima"):
            study = uid()
            archive.stow([d for s in (1, 2) for d in mr_series(study, patient, s)])
        assert archive.build() == 1
        yield archive
    finally:
        gateway.stop()


def _files(dest: Path) -> dict[str, bytes]:
    """Every file a pull left in ``dest``, but its own record."""
    return {str(p.relative_to(dest)): p.read_bytes() for p in sorted(dest.rglob("*"))
            if p.is_file() and STATE not in p.relative_to(dest).parts}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---- what a pull leaves ------------------------------------------------------------------------------
def test_a_pull_verifies_every_file_and_writes_a_manifest_of_the_local_files(archive: Archive,
                                                                               tmp_path: Path) -> None:
    dest = tmp_path / "pulled"
    done = subprocess.run(archive.command(str(BIN / "dicomgw-client"), "pull", NAME, str(dest), "--nifti",
                                          "--version", "1"),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = archive.rows()
    assert len(rows) == 80
    assert "80 instances and 8 NIfTI files" in done.stdout and "verified" in done.stdout, done.stdout
    assert "88/88 files" in done.stderr  # the progress line (a line per tenth, not on a terminal)
    # the manifest in dest: the published rows, in their order, with `path` the local file
    local = pq.read_table(dest / "manifest.parquet").to_pylist()
    assert [{**r, "path": ""} for r in local] == [{**r, "path": ""} for r in rows]
    for row in local:
        assert _sha256(dest / row["path"]) == row["sha256"]
    listed = list(csv.DictReader(io.StringIO((dest / "manifest.csv").read_text())))
    assert [r["path"] for r in listed] == [r["path"] for r in local]
    assert listed[0]["rows"] == "32" and listed[0]["sha256"] == local[0]["sha256"]
    # NIfTI volumes where volumes.csv says, whole
    volumes = list(csv.DictReader(io.StringIO((dest / "volumes.csv").read_text())))
    assert len(volumes) == 4 and not any(v["error"] for v in volumes)
    for volume in volumes:
        assert gzip.decompress((dest / volume["path"]).read_bytes())[:4] == (348).to_bytes(4, "little")
        assert (dest / volume["sidecar"]).read_bytes() == archive.published(1, volume["sidecar"])
        # each verified against the SHA-256 volumes.csv lists for it
        assert hashlib.sha256((dest / volume["path"]).read_bytes()).hexdigest() == volume["sha256"]
        assert hashlib.sha256((dest / volume["sidecar"]).read_bytes()).hexdigest() == volume["sidecar_sha256"]
    assert (dest / "report.json").read_bytes() == archive.published(1, "report.json")
    # nothing half-written anywhere, and nothing but what the manifests list
    assert not list((dest / STATE).glob("tmp/*"))
    expected = {r["path"] for r in local} | {v["path"] for v in volumes} | {v["sidecar"] for v in volumes}
    assert set(_files(dest)) == expected | {"manifest.csv", "manifest.parquet", "volumes.csv", "report.json",
                                             "exclusions.csv"}


def test_the_server_command_is_the_client_s_pull(archive: Archive, tmp_path: Path) -> None:
    """`dicomgw share pull` runs the same code: the same files, the same manifest."""
    by_client = archive.pull(tmp_path / "client", layout=LAYOUT)
    command = archive.command(str(BIN / "dicomgw"), "share", "pull", NAME, str(tmp_path / "server"),
                              "--version", "1", "--layout", LAYOUT, "--quiet")
    done = subprocess.run(command,
                          env=archive.env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"SHA-256 {by_client.manifest_sha256}" in done.stdout
    assert _files(tmp_path / "server") == _files(tmp_path / "client")


def test_a_layout_places_files_as_asked(archive: Archive, tmp_path: Path) -> None:
    dest = tmp_path / "by-patient"
    result = archive.pull(dest, layout=LAYOUT)
    assert (result.instances, result.fetched, result.present) == (80, 80, 0)
    local = pq.read_table(dest / "manifest.parquet").to_pylist()
    for row, published in zip(local, archive.rows(), strict=True):
        assert row["path"] == LAYOUT.format(**published) != published["path"]
        assert _sha256(dest / row["path"]) == published["sha256"]
    assert len({row["patient_id"] for row in local}) == len(list(dest.glob("P-*"))) == 2
    # what cannot be a layout is said before anything is fetched
    for layout, said in (("{PatientName}/{sop_instance_uid}.dcm", "no manifest column 'PatientName'"),
                         ("../{sop_instance_uid}.dcm", "not a relative path inside the folder"),
                         ("{patient_id}.dcm", "to two instances"),
                         ("manifest.csv/{sop_instance_uid}", "the pull's own")):
        with pytest.raises(ClientError, match=said):
            archive.pull(tmp_path / "refused", layout=layout)
    assert not (tmp_path / "refused").exists()


# ---- resuming ----------------------------------------------------------------------------------------
KILLED_AFTER = """
import os, signal, sys, threading
from dicomgw_client import cli, pull
fetch, lock, done = pull._Pull.fetch, threading.Lock(), [0]
def fetch_then_die(self, target):
    size = fetch(self, target)
    with lock:
        done[0] += 1
        if done[0] == int(sys.argv[1]):
            os.kill(os.getpid(), signal.SIGKILL)  # as a power cut or the OOM killer would
    return size
pull._Pull.fetch = fetch_then_die
sys.exit(cli.main(sys.argv[2:]))
"""


def test_a_pull_killed_midway_resumes_and_fetches_only_what_it_lacks(archive: Archive,
                                                                     tmp_path: Path) -> None:
    dest = tmp_path / "resumed"
    killed = subprocess.run([sys.executable, "-c", KILLED_AFTER, "30",
                             *archive.command("pull", NAME, str(dest), "--version", "1", "--quiet")],
                            capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    rows = archive.rows()
    # whole files or none where the instances go; no manifest yet (it lists only what is there)
    there = [row for row in rows if (dest / row["path"]).exists()]
    assert 30 <= len(there) < len(rows)
    assert all(_sha256(dest / row["path"]) == row["sha256"] for row in there)
    assert not (dest / "manifest.parquet").exists()
    result = archive.pull(dest)
    # nothing that was whole is fetched again: only what the killed pull had not finished
    assert (result.present, result.fetched, result.repaired) == (len(there), len(rows) - len(there), 0)
    # the versions, the manifest, report.json, exclusions.csv, the direct URLs (none: a local store),
    # and one request per missing instance
    assert result.requests == 5 + result.fetched
    assert all(_sha256(dest / row["path"]) == row["sha256"] for row in rows)
    assert not list((dest / STATE).glob("tmp/*"))
    again = archive.pull(dest)
    assert (again.fetched, again.present, again.requests) == (0, 80, 5)


def test_a_damaged_local_file_is_found_and_fetched_again(archive: Archive, tmp_path: Path) -> None:
    dest = tmp_path / "damaged"
    first = archive.pull(dest, nifti=True)
    rows = pq.read_table(dest / "manifest.parquet").to_pylist()
    # one bit of the last pixel, with the file's size and modification time put back as they were
    instance = dest / rows[7]["path"]
    before = instance.stat()
    data = bytearray(instance.read_bytes())
    data[-1] ^= 0x01
    instance.write_bytes(bytes(data))
    os.utime(instance, ns=(before.st_atime_ns, before.st_mtime_ns))
    volume = next((dest / "nifti").glob("*.nii.gz"))
    volume.write_bytes(volume.read_bytes()[:-100])
    (dest / rows[9]["path"]).unlink()
    again = archive.pull(dest, nifti=True)
    # the instance and the volume damaged in place are replaced; the one removed is fetched
    assert (again.repaired, again.fetched, again.present) == (2, 3, first.instances + first.volumes - 3)
    assert _sha256(instance) == rows[7]["sha256"] and _sha256(dest / rows[9]["path"]) == rows[9]["sha256"]
    assert gzip.decompress(volume.read_bytes())
    # --rehash trusts no record: every file is read again, and all of them are right
    checked = archive.pull(dest, nifti=True, rehash=True)
    assert (checked.fetched, checked.present) == (0, first.instances + first.volumes)


# ---- versions ----------------------------------------------------------------------------------------
def test_version_1_pulled_after_version_2_is_the_same_bytes(archive: Archive, tmp_path: Path) -> None:
    before = archive.pull(tmp_path / "v1-before", nifti=True)
    archive.stow(mr_series(uid(), "Mike", 1, slices=6))
    assert archive.build() == 2
    after = archive.pull(tmp_path / "v1-after", nifti=True)
    assert after.version == 1 and after.manifest_sha256 == before.manifest_sha256
    assert _files(tmp_path / "v1-after") == _files(tmp_path / "v1-before")
    # the folder of version 1 brought to version 2 fetches the new instances and the new series'
    # volume, and nothing else: the 4 volumes (and sidecars) version 2 made again came out the same
    # bytes, which volumes.csv's SHA-256 shows
    latest = archive.pull(tmp_path / "v1-before", version=None, nifti=True)
    assert (latest.version, latest.instances, latest.present) == (2, 86, 80 + 4 * 2)
    assert latest.fetched == 6 + latest.volumes - 4 * 2 == 6 + 2
    assert len(pq.read_table(tmp_path / "v1-before" / "manifest.parquet")) == 86
    # and any published version is there to pull; one that is not, is said
    with pytest.raises(ClientError, match=r"no complete version 3 \(complete: 1, 2\)"):
        archive.pull(tmp_path / "v3", version=3)


# ---- one folder, one pull ----------------------------------------------------------------------------
def test_a_folder_takes_one_pull_at_a_time(archive: Archive, tmp_path: Path) -> None:
    dest = tmp_path / "busy"
    (dest / STATE).mkdir(parents=True)
    with open(dest / STATE / "lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with pytest.raises(ClientError, match="another pull into"):
            archive.pull(dest)
    assert archive.pull(dest).fetched == 80


def test_a_manifest_that_a_pull_would_contradict_is_removed_first(tmp_path: Path) -> None:
    """Another layout may put other bytes where an earlier pull's manifest lists a file: that manifest
    goes before anything is fetched (the new one comes when every file is in place)."""
    table = pa.Table.from_pylist([{"path": "x", "sha256": "a" * 64}, {"path": "x", "sha256": "b" * 64}])
    parquet, text = local_manifest(table, ["one.dcm", "two.dcm"])
    (tmp_path / "manifest.parquet").write_bytes(parquet)
    (tmp_path / "manifest.csv").write_bytes(text)
    retire_manifest(tmp_path, ["two.dcm", "three.dcm"], [{"sha256": "b" * 64}, {"sha256": "c" * 64}])
    assert (tmp_path / "manifest.parquet").exists() and (tmp_path / "manifest.csv").exists()
    retire_manifest(tmp_path, ["one.dcm"], [{"sha256": "b" * 64}])
    assert not (tmp_path / "manifest.parquet").exists() and not (tmp_path / "manifest.csv").exists()


# ---- a series in one request -------------------------------------------------------------------------
def test_a_series_comes_in_one_request_split_and_verified_as_it_arrives(
        archive: Archive, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The series-level path (SERIES_REQUEST_MIN, 32 in use, lowered here to the test's 20-slice series):
    one WADO-RS request a series, each part checked against the manifest; what a folder lacks by less
    than that, one request an instance."""
    import dicomgw_client.pull as pull_module

    per_instance = archive.pull(tmp_path / "per-instance")  # 20-slice series: one request an instance
    overhead = per_instance.requests - per_instance.fetched  # the versions, the manifest...
    monkeypatch.setattr(pull_module, "SERIES_REQUEST_MIN", 8)
    dest = tmp_path / "series"
    first = archive.pull(dest)
    assert first.fetched == 80 and per_instance.fetched == 80
    assert first.requests == overhead + 4  # one a series
    rows = pq.read_table(dest / "manifest.parquet").to_pylist()
    assert all(_sha256(dest / r["path"]) == r["sha256"] for r in rows)
    assert _files(dest) == _files(tmp_path / "per-instance")
    # a few missing or damaged in one series: one request each
    by_series: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_series.setdefault(row["series_instance_uid"], []).append(row)
    series = sorted(by_series.values(), key=lambda members: members[0]["series_instance_uid"])
    for row in series[0][:3]:
        (dest / row["path"]).unlink()
    damaged = dest / series[0][3]["path"]
    damaged.write_bytes(damaged.read_bytes()[:-10] + bytes(10))
    again = archive.pull(dest, rehash=True)
    assert (again.fetched, again.repaired, again.present) == (4, 1, 76)  # fetched: the repaired too
    assert again.requests == overhead + 4
    # most of a series missing: one request for it again, and only its missing instances are written
    for row in series[1][:15]:
        (dest / row["path"]).unlink()
    third = archive.pull(dest)
    assert (third.fetched, third.present, third.requests) == (15, 65, overhead + 1)
    assert all(_sha256(dest / r["path"]) == r["sha256"] for r in rows)
