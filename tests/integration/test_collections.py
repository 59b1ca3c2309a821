"""Research collections built by the archive, end to end, as a research data manager runs them:
`dicomgw share create` over a query of a few hundred instances, the collection's partition served by
DICOMweb, `dicomgw share pull` with a key that reads only the collection, NIfTI volumes, versions that
never change, pseudonyms per collection key, the standard's Table E.1-1 walked over real-world files,
burned-in candidates left out and reported, and a worker killed halfway through a build."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydicom
import pytest

from dicomgw.collections.nifti import read_header
from tests import deidcheck
from tests.deidcheck import assert_deidentified
from tests.dicomdata import deid_data_files, make_dataset, multipart_related, round_trip_corpus, to_bytes, uid
from tests.fixtures.gateway import Gateway, create_key, start_gateway
from tests.polling import wait_for

pytestmark = pytest.mark.timeout(900)
DICOMGW = Path(sys.executable).parent / "dicomgw"
QUERY = "ModalitiesInStudy=MR&StudyDate=20240101-20241231"
SLICES, SPACING, THICKNESS = 25, 0.8, 2.5
ENV = {"DICOMGW_AUTH_MODE": "required", "DICOMGW_AUTH_KEY_SECRET": "collection-tests"}


def mr_volume(study_uid: str, patient: str, study_date: str, series_number: int,
              slices: int = SLICES, modality: str = "MR") -> list[bytes]:
    """A regular axial stack with its geometry (what dcm2niix makes a volume of)."""
    series_uid, frame_of_reference = uid(), uid()
    out = []
    for i in range(slices):
        ds = make_dataset(study_uid=study_uid, series_uid=series_uid, modality=modality,
                          sop_class_uid="1.2.840.10008.5.1.4.1.1.4" if modality == "MR" else
                          "1.2.840.10008.5.1.4.1.1.2",
                          patient_name=f"{patient}^Research", patient_id=f"PID-{patient}",
                          study_date=study_date, series_number=series_number, instance_number=i + 1,
                          rows=48, columns=56, seed=i,
                          extra={"ImagePositionPatient": [-20.0, -30.0, i * THICKNESS],
                                 "ImageOrientationPatient": [1, 0, 0, 0, 1, 0],
                                 "PixelSpacing": [SPACING, SPACING], "SliceThickness": THICKNESS,
                                 "FrameOfReferenceUID": frame_of_reference,
                                 "InstitutionName": "St Elsewhere", "OperatorsName": "Tech^Nician"})
        out.append(to_bytes(ds))
    return out


@dataclass
class Archive:
    gateway: Gateway
    env: dict[str, str]
    admin: str  # an API key with every scope

    def key(self, name: str, scopes: str) -> str:
        done = subprocess.run([str(DICOMGW), "keys", "create", name, "--scopes", scopes], env=self.env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip().splitlines()[-1]

    def cli(self, *args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(DICOMGW), *args, "--url", self.gateway.url,
                               "--token", token or self.admin],
                              env=self.env, capture_output=True, text=True, timeout=600)

    def stow(self, parts: list[bytes], partition: str | None = None) -> httpx.Response:
        root = self.gateway.url + (f"/partitions/{partition}" if partition else "")
        body, content_type = multipart_related(parts)
        return httpx.post(f"{root}/studies", content=body, timeout=120,
                          headers={"Content-Type": content_type, "Authorization": f"Bearer {self.admin}"})

    def get(self, url: str, token: str | None = None, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token or self.admin}", **kw.pop("headers", {})}
        return httpx.get(url, headers=headers, timeout=120, **kw)


def _archive(data: Path) -> Archive:
    gateway = start_gateway(data, ENV)
    cli_env = {**os.environ, **ENV, "DATA_DIR": str(data),
               "DICOMGW_INDEX_URL": f"sqlite+aiosqlite:///{data.resolve() / 'index.sqlite3'}"}
    archive = Archive(gateway, cli_env, "")
    archive.admin = archive.key("data-manager", "dicom.read,dicom.write,dicom.admin")
    return archive


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    """An archive holding 300 MR instances of 2024 (4 patients, 12 series) and a 2023 MR and a 2024 CT
    study that the query must leave out."""
    archive = _archive(tmp_path_factory.mktemp("collections"))
    for p, patient in enumerate(("Alpha", "Bravo", "Charlie", "Delta")):
        study = uid()
        parts = [d for s in range(3) for d in mr_volume(study, patient, f"2024030{p + 1}", s + 1)]
        assert archive.stow(parts).status_code == 200
    assert archive.stow(mr_volume(uid(), "Echo", "20231201", 1, slices=5)).status_code == 200
    ct = mr_volume(uid(), "Foxtrot", "20240601", 1, slices=5, modality="CT")
    assert archive.stow(ct).status_code == 200
    yield archive
    archive.gateway.stop()


def _manifest(archive: Archive, name: str, version: int | str,
              token: str | None = None) -> list[dict[str, str]]:
    got = archive.get(f"{archive.gateway.root}/collections/{name}/versions/{version}/manifest.csv", token)
    assert got.status_code == 200, got.text
    return list(csv.DictReader(io.StringIO(got.text)))


@pytest.fixture(scope="module")
def mr_2024(archive: Archive) -> dict[str, Any]:
    created = archive.cli("share", "create", "mr-2024", "--query", QUERY, "--profile",
                          "basic,retain-longitudinal", "--nifti", "--wait", "--quiet")
    assert created.returncode == 0, created.stderr + created.stdout
    assert "version 1: complete, 300 instances, 0 excluded" in created.stdout, created.stdout
    return {"manifest": _manifest(archive, "mr-2024", 1)}


def test_the_collection_partition_serves_what_the_manifest_lists(archive: Archive,
                                                                 mr_2024: dict[str, Any]) -> None:
    rows = mr_2024["manifest"]
    assert len(rows) == 300 and {r["modality"] for r in rows} == {"MR"}
    root = f"{archive.gateway.url}/partitions/mr-2024"
    studies = archive.get(f"{root}/studies").json()
    assert len(studies) == 4 == len({r["study_instance_uid"] for r in rows})
    assert sum(s["00201208"]["Value"][0] for s in studies) == len(rows)
    found = archive.get(f"{root}/instances", params={"limit": 1000}).json()
    assert sorted(i["00080018"]["Value"][0] for i in found) == sorted(r["sop_instance_uid"] for r in rows)
    # nothing of the originals' identity is in the shared copy
    names = {s["00100010"]["Value"][0]["Alphabetic"] for s in studies}
    assert all(n.startswith("P-") for n in names) and not any("Research" in n for n in names)
    for row in rows:
        assert row["patient_id"].startswith("P-") and row["study_instance_uid"].startswith("2.25.")
        assert row["pixel_spacing"] == f"{SPACING}\\{SPACING}" and row["rows"] == "48"
    # retain-longitudinal: dates shifted per patient, kept within a patient
    assert all(s["00080020"].get("Value") and s["00080020"]["Value"][0] != "20240301" for s in studies)


def test_a_researcher_pulls_the_collection_and_every_file_is_verified(
        archive: Archive, mr_2024: dict[str, Any], tmp_path: Path) -> None:
    researcher = archive.key("researcher-mr-2024", "dicom.read:mr-2024")
    dest = tmp_path / "mr-2024"
    pulled = archive.cli("share", "pull", "mr-2024", str(dest), "--quiet", token=researcher)
    assert pulled.returncode == 0, pulled.stderr
    assert "300 instances" in pulled.stdout and "verified" in pulled.stdout
    rows = mr_2024["manifest"]
    for row in rows[:20]:
        assert hashlib.sha256((dest / row["path"]).read_bytes()).hexdigest() == row["sha256"]
    assert (dest / "manifest.parquet").exists() and (dest / "report.json").exists()
    # pulling again keeps what is right and replaces what is not
    damaged = dest / rows[0]["path"]
    damaged.write_bytes(b"not the file")
    again = archive.cli("share", "pull", "mr-2024", str(dest), "--quiet", token=researcher)
    assert again.returncode == 0, again.stderr
    assert hashlib.sha256(damaged.read_bytes()).hexdigest() == rows[0]["sha256"]
    # the researcher's key reads the collection and nothing else: not the archive, not the lineage
    assert archive.get(f"{archive.gateway.url}/studies", researcher).status_code == 404
    lineage = f"{archive.gateway.root}/admin/collections/mr-2024/lineage"
    assert archive.get(lineage, researcher).status_code == 403


def test_nifti_volumes_have_the_series_shape_and_spacing(
        archive: Archive, mr_2024: dict[str, Any], tmp_path: Path) -> None:
    base = f"{archive.gateway.root}/collections/mr-2024/versions/1"
    volumes = list(csv.DictReader(io.StringIO(archive.get(f"{base}/volumes.csv").text)))
    assert len(volumes) == 12 and not any(v["error"] for v in volumes)
    for volume in volumes[:3]:
        path = tmp_path / "v.nii.gz"
        path.write_bytes(archive.get(f"{base}/{volume['path']}").content)
        shape, spacing = read_header(path)
        assert shape == (56, 48, SLICES), volume
        assert spacing == pytest.approx((SPACING, SPACING, THICKNESS)), volume
        sidecar = archive.get(f"{base}/{volume['sidecar']}").json()
        assert "PatientName" not in sidecar and "PatientID" not in sidecar


def test_the_lineage_names_each_original_for_the_admin_only(archive: Archive,
                                                            mr_2024: dict[str, Any]) -> None:
    items = archive.get(f"{archive.gateway.root}/admin/collections/mr-2024/lineage").json()["items"]
    assert len(items) == 300 and all(i["state"] == "done" for i in items)
    item = items[0]
    original = archive.get(f"{archive.gateway.url}/studies/{item['sourceStudyInstanceUID']}/series/"
                           f"{item['sourceSeriesInstanceUID']}/instances/{item['sourceSOPInstanceUID']}",
                           headers={"Accept": "application/dicom; transfer-syntax=*"})
    assert hashlib.sha256(original.content).hexdigest() == item["originalSHA256"]
    columns = ",".join(mr_2024["manifest"][0])
    assert "original" not in columns.lower() and item["originalSHA256"] not in str(mr_2024["manifest"])


def test_a_new_version_adds_what_is_new_and_never_changes_an_earlier_one(
        archive: Archive, mr_2024: dict[str, Any]) -> None:
    before = archive.get(f"{archive.gateway.root}/collections/mr-2024/versions/1/manifest.csv").content
    assert archive.stow(mr_volume(uid(), "Golf", "20241105", 1, slices=6)).status_code == 200
    created = archive.cli("share", "create", "mr-2024", "--query", QUERY, "--profile",
                          "basic,retain-longitudinal", "--nifti", "--wait", "--quiet")
    assert created.returncode == 0, created.stderr
    assert "version 2: complete, 6 instances" in created.stdout, created.stdout
    after = archive.get(f"{archive.gateway.root}/collections/mr-2024/versions/1/manifest.csv").content
    assert after == before
    v1, v2 = mr_2024["manifest"], _manifest(archive, "mr-2024", 2)
    assert len(v2) == 306
    # every instance of version 1 is in version 2 unchanged: same pseudonyms, same bytes
    assert {tuple(r.values()) for r in v1} <= {tuple(r.values()) for r in v2}
    # another definition under the same name is refused
    other = archive.cli("share", "create", "mr-2024", "--query", "ModalitiesInStudy=CT")
    assert other.returncode == 1 and "409" in other.stderr


def test_another_collection_key_gives_other_pseudonyms(archive: Archive, mr_2024: dict[str, Any]) -> None:
    """One patient's study in a second collection: the same originals, other pseudonyms."""
    created = archive.cli("share", "create", "mr-2024-b", "--query", QUERY + "&PatientID=PID-Alpha",
                          "--wait", "--quiet")
    assert created.returncode == 0, created.stderr
    other = _manifest(archive, "mr-2024-b", 1)
    first = mr_2024["manifest"]
    assert len(other) == 75
    assert not {r["study_instance_uid"] for r in other} & {r["study_instance_uid"] for r in first}
    assert not {r["sop_instance_uid"] for r in other} & {r["sop_instance_uid"] for r in first}
    assert not {r["patient_id"] for r in other} & {r["patient_id"] for r in first}


def test_the_client_package_has_the_same_share_and_upload(archive: Archive, mr_2024: dict[str, Any],
                                                         tmp_path: Path) -> None:
    """`dicomgw-client share` and `dicomgw-client upload`, what a workstation with only the client
    package runs: the server's `dicomgw share` and `dicomgw upload` are these commands."""
    client = str(DICOMGW.parent / "dicomgw-client")
    env = {k: v for k, v in archive.env.items() if k not in ("DICOMGW_URL", "DICOMGW_TOKEN")}

    def run(*args: str, **more: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([client, *args], env={**env, **more}, capture_output=True, text=True,
                              timeout=300)

    status = run("share", "status", "mr-2024", "--url", archive.gateway.url, "--token", archive.admin)
    assert status.returncode == 0, status.stderr
    assert f"collection mr-2024 from default: {QUERY}" in status.stdout
    assert "  version 1: complete, 300 instances, 0 excluded" in status.stdout.splitlines()
    assert status.stdout == archive.cli("share", "status", "mr-2024").stdout
    missing = run("share", "status", "no-such-collection", "--url", archive.gateway.url,
                  "--token", archive.admin)
    assert missing.returncode == 1 and missing.stderr.startswith("dicomgw-client: HTTP 404"), missing.stderr

    assert archive.cli("partitions", "create", "workstation").returncode == 0
    study = uid()
    folder = tmp_path / "exported"
    folder.mkdir()
    for i, data in enumerate(mr_volume(study, "Kilo", "20240909", 1, slices=4)):
        (folder / f"{i}.dcm").write_bytes(data)
    root = f"{archive.gateway.url}/partitions/workstation"
    refused = run("upload", str(folder), "--url", root, "--quiet")
    assert refused.returncode == 1 and "failed: 4 x HTTP 401" in refused.stdout, refused.stdout
    done = run("upload", str(folder), DICOMGW_URL=root, DICOMGW_TOKEN=archive.admin)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("stored 4, already present 0, failed 0 (4 DICOM file(s)"), done.stdout
    assert "upload  4/4 instances" in done.stderr  # the progress line (a line per tenth, not a terminal)
    found = archive.get(f"{root}/instances", params={"StudyInstanceUID": study}).json()
    assert len(found) == 4
    again = run("upload", str(folder), "--url", root, "--token", archive.admin, "--quiet")
    assert again.stdout.startswith("stored 0, already present 4, failed 0"), again.stdout


@pytest.fixture(scope="module")
def real_world(archive: Archive) -> dict[str, Any]:
    """pydicom's and deid-data's files in a partition of their own, and a collection of all of it."""
    done = archive.cli("partitions", "create", "real-world")
    assert done.returncode == 0, done.stderr
    files = [*round_trip_corpus(), *(p.read_bytes() for p in deid_data_files())]
    for start in range(0, len(files), 16):
        stored = archive.stow(files[start:start + 16], "real-world")
        # 202/409: real-world files that reuse another one's SOP Instance UID are refused (0x0111)
        assert stored.status_code in (200, 202, 409), stored.text
    created = archive.cli("share", "create", "real-world-deid", "--from", "real-world", "--wait", "--quiet")
    assert created.returncode == 0, created.stderr + created.stdout
    items = archive.get(f"{archive.gateway.root}/admin/collections/real-world-deid/lineage").json()["items"]
    return {"items": items}


def test_real_world_files_keep_nothing_annex_e_removes(archive: Archive, real_world: dict[str, Any]) -> None:
    table = deidcheck.table()
    done = [i for i in real_world["items"] if i["state"] == "done"]
    checked = 0
    for item in done:
        original = archive.get(
            f"{archive.gateway.url}/partitions/real-world/studies/{item['sourceStudyInstanceUID']}/series/"
            f"{item['sourceSeriesInstanceUID']}/instances/{item['sourceSOPInstanceUID']}",
            headers={"Accept": "application/dicom; transfer-syntax=*"}).content
        source = pydicom.dcmread(io.BytesIO(original), force=True)
        found = archive.get(f"{archive.gateway.url}/partitions/real-world-deid/instances",
                            params={"SOPInstanceUID": item["SOPInstanceUID"]}).json()
        [entry] = found
        shared = archive.get(entry["00081190"]["Value"][0],
                             headers={"Accept": "application/dicom; transfer-syntax=*"}).content
        assert hashlib.sha256(shared).hexdigest() == item["sha256"]
        out = pydicom.dcmread(io.BytesIO(shared))
        if "PixelData" in source:
            assert_deidentified(source, out, table)
            checked += 1
    assert checked >= 20


def test_burned_in_candidates_are_left_out_and_reported(archive: Archive, real_world: dict[str, Any]) -> None:
    items = real_world["items"]
    excluded = [i for i in items if i["state"] == "excluded"]
    assert excluded and all(i["reason"].startswith("burned-in text possible") for i in excluded)
    for item in excluded:
        original = archive.get(
            f"{archive.gateway.url}/partitions/real-world/studies/{item['sourceStudyInstanceUID']}/series/"
            f"{item['sourceSeriesInstanceUID']}/instances/{item['sourceSOPInstanceUID']}",
            headers={"Accept": "application/dicom; transfer-syntax=*"}).content
        ds = pydicom.dcmread(io.BytesIO(original), stop_before_pixels=True, force=True)
        said = str(ds.get("BurnedInAnnotation", "")).upper()
        # BurnedInAnnotation YES, or not said on a modality or SOP class that often carries text
        secondary_capture = str(ds.SOPClassUID).startswith("1.2.840.10008.5.1.4.1.1.7")
        often = ds.get("Modality") in ("US", "SC", "XA", "RF", "ES", "OT", "DOC", "ECG")
        assert said == "YES" or (not said and (often or secondary_capture)), item
    # the ultrasound of deid-data is among them, and nothing excluded reached the partition
    assert any("US" in i["reason"] or "YES" in i["reason"] for i in excluded)
    base = f"{archive.gateway.root}/collections/real-world-deid/versions/1"
    report = archive.get(f"{base}/report.json").json()
    assert report["excluded"] == len(excluded)
    assert report["excludedBy"] == {"burned-in text possible": len(excluded)}
    listed = list(csv.DictReader(io.StringIO(archive.get(f"{base}/exclusions.csv").text)))
    assert len(listed) == len(excluded)
    originals = {i["sourceSOPInstanceUID"] for i in excluded}
    assert not originals & {r["sop_instance_uid"] for r in listed}  # pseudonymous there too


def test_a_worker_killed_halfway_leaves_a_collection_that_completes(tmp_path: Path) -> None:
    """The embedded gateway (its worker loop in-process) killed -9 in the middle of a build, then
    started again on the same folder: the build resumes and completes, nothing twice, nothing lost."""
    archive = _archive(tmp_path / "crash")
    try:
        study = uid()
        parts = [d for s in range(5) for d in mr_volume(study, "Hotel", "20240707", s + 1)]
        assert archive.stow(parts).status_code == 200
        defined = httpx.post(f"{archive.gateway.root}/admin/collections", json={"name": "crash-test"},
                             headers={"Authorization": f"Bearer {archive.admin}"})
        assert defined.status_code == 202

        def halfway() -> bool:
            status = archive.get(f"{archive.gateway.root}/admin/collections/crash-test").json()
            [v] = status["versions"]
            return bool(0 < v["instances"] < len(parts))

        wait_for(halfway, 120, interval=0.2)
        archive.gateway.process.send_signal(signal.SIGKILL)
        archive.gateway.process.wait()
        archive.gateway = start_gateway(archive.gateway.data_dir, ENV)

        def complete() -> dict[str, Any] | None:
            [v] = archive.get(f"{archive.gateway.root}/admin/collections/crash-test").json()["versions"]
            return v if v["state"] == "complete" else None

        version = wait_for(complete, 300, interval=0.5)
        assert version["instances"] == len(parts) and version["excluded"] == 0
        rows = _manifest(archive, "crash-test", 1)
        assert len(rows) == len({r["sop_instance_uid"] for r in rows}) == len(parts)
        found = archive.get(f"{archive.gateway.url}/partitions/crash-test/instances",
                            params={"limit": 1000}).json()
        assert len(found) == len(parts)
        pulled = archive.cli("share", "pull", "crash-test", str(tmp_path / "pulled"), "--quiet")
        assert pulled.returncode == 0, pulled.stderr
    finally:
        archive.gateway.stop()


def test_a_collection_on_the_stack_is_built_by_the_celery_tier(stack: Any, tmp_path: Path) -> None:
    """The same on the local stack (PostgreSQL, MinIO, nginx, Celery workers), from a partition."""
    env = {**os.environ, **stack.config.service_env()}
    name = f"stack-src-{uid()[-6:]}"
    token = stack.key

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(DICOMGW), *args, "--url", stack.config.url, "--token", token], env=env,
                              capture_output=True, text=True, timeout=600)

    assert cli("partitions", "create", name).returncode == 0
    parts = mr_volume(uid(), "India", "20240808", 1, slices=12)
    body, content_type = multipart_related(parts)
    stored = stack.http.post(f"{stack.config.url}/partitions/{name}/studies", content=body,
                             headers={"Content-Type": content_type})
    assert stored.status_code == 200, stored.text
    collection = f"{name}-deid"
    created = cli("share", "create", collection, "--from", name, "--nifti", "--wait", "--quiet")
    assert created.returncode == 0, created.stderr + created.stdout
    assert "12 instances" in created.stdout
    # NIfTI volumes (and volumes.csv, which lists them) are pulled when asked for
    pulled = cli("share", "pull", collection, str(tmp_path / "pulled"), "--nifti", "--quiet")
    assert pulled.returncode == 0, pulled.stderr
    volumes = (tmp_path / "pulled" / "volumes.csv").read_text()
    assert "56x48x12" in volumes
    report = json.loads((tmp_path / "pulled" / "report.json").read_text())
    assert report["instances"] == 12 and report["source"] == name
    # the de-identified pixels are the originals' pixels
    first = pydicom.dcmread(next((tmp_path / "pulled").rglob("*.dcm")))
    assert np.frombuffer(first.PixelData, dtype=np.uint16).size == 48 * 56
    # on MinIO the archive hands its readers presigned URLs: the instances came straight from the store,
    # every one checked against the manifest, with no WADO-RS request for any of them
    from dicomgw_client.pull import pull

    root = f"http://{stack.config.host}:{stack.config.port}"
    reader = create_key(env, f"{collection}-reader", f"dicom.read:{collection}")
    direct = pull(stack.config.url, collection, tmp_path / "direct", token=reader)
    assert (direct.instances, direct.fetched) == (12, 12)
    assert direct.requests == 5 + 12  # versions, manifest, report, exclusions, URLs; one GET each from MinIO
    listed = httpx.get(f"{root}/collections/{collection}/versions/1/objects",
                       headers={"Authorization": f"Bearer {reader}"}, timeout=30)
    assert listed.status_code == 200, listed.text
    objects = listed.json()["objects"]
    minio = f"http://127.0.0.1:{stack.config.minio_port}/"
    assert len(objects) == 12 and all(o["url"].startswith(minio) for o in objects)
    got = httpx.get(objects[0]["url"], timeout=30)  # the URL is the credential: no token sent
    assert got.status_code == 200 and hashlib.sha256(got.content).hexdigest() == objects[0]["sha256"]
    # handing out the URLs is audited: who, which (pseudonymous) study, how many
    study = objects[0]["study_instance_uid"]

    def handed_out() -> list[dict[str, Any]]:
        done = subprocess.run([str(DICOMGW), "audit", "--study", study, "--json"], env=env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return [e for e in map(json.loads, done.stdout.splitlines())
                if e["route"] == "/collections/{partition}/versions/{version}/objects"
                and e["who"] == f"{collection}-reader"]

    wait_for(lambda: bool(handed_out()), 30)
    event = handed_out()[0]
    assert (event["event"], event["action"], event["outcome"]) == ("transferred", "R", 0)
    assert event["detail"] == f"12 presigned URLs of collection {collection} version 1"
    tampered = objects[0]["url"].replace("X-Amz-Signature=", "X-Amz-Signature=0")
    assert httpx.get(tampered, timeout=30).status_code == 403
    # and a training loop's dataset reads them from there too: no WADO-RS read of an instance at all
    from dicomgw_client import CollectionDataset
    from dicomgw_client.api import Archive as ClientArchive

    def no_wado(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("an instance was read through the archive")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ClientArchive, "instance", no_wado)
        patch.setattr(ClientArchive, "series_parts", no_wado)
        dataset = CollectionDataset(stack.config.url, collection, level="instance", token=reader,
                                    cache_dir=tmp_path / "cache")
        items = list(dataset)
    assert len(items) == 12
    pulled_pixels = {pydicom.dcmread(p).SOPInstanceUID: pydicom.dcmread(p).pixel_array
                     for p in (tmp_path / "direct").rglob("*.dcm")}
    for item in items:
        np.testing.assert_array_equal(item["image"], pulled_pixels[item["meta"]["sop_instance_uid"]])
    # a credential for another collection gets no URL of this one
    other = create_key(env, f"{collection}-other", "dicom.read:somewhere-else")
    refused = httpx.get(f"{root}/collections/{collection}/versions/1/objects",
                        headers={"Authorization": f"Bearer {other}"}, timeout=30)
    assert refused.status_code == 404
