"""Partitions, on the embedded gateway (SQLite, local folder) and on the stack (nginx, split services,
PostgreSQL, MinIO): the same instance in two partitions, QIDO and WADO of one never showing the other,
credentials scoped to one partition getting 404 for every other, read-only collection partitions,
and `dicomgw partitions create|list`."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pydicom
import pytest

from tests.dicomdata import make_dataset, multipart_related, to_bytes, uid
from tests.fixtures.gateway import start_gateway
from tests.polling import wait_for

pytestmark = pytest.mark.timeout(600)
DICOMGW = Path(sys.executable).parent / "dicomgw"
WILDCARD = {"accept": "application/dicom; transfer-syntax=*"}


@dataclass
class Target:
    name: str
    origin: str  # http://host:port
    url: str  # the DICOMweb root of the default partition
    cli_env: dict[str, str]
    admin: dict[str, str]
    objects: Path | None  # the local object folder (embedded only)

    def create_key(self, name: str, scopes: str) -> dict[str, str]:
        done = subprocess.run([str(DICOMGW), "keys", "create", f"{self.name}-{name}", "--scopes", scopes],
                              env=self.cli_env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return {"Authorization": f"Bearer {done.stdout.strip().splitlines()[-1]}"}

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(DICOMGW), *args, "--url", self.url,
                               "--token", self.admin["Authorization"].split()[1]],
                              env=self.cli_env, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module", params=["embedded", "stack"])
def target(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    if request.param == "embedded":
        data = tmp_path_factory.mktemp("partitions")
        env = {"DICOMGW_AUTH_MODE": "required", "DICOMGW_AUTH_KEY_SECRET": "partition-tests"}
        gateway = start_gateway(data, env)
        cli_env = {**os.environ, **env, "DATA_DIR": str(data),
                   "DICOMGW_INDEX_URL": f"sqlite+aiosqlite:///{data.resolve() / 'index.sqlite3'}"}
        t = Target("embedded", gateway.root, gateway.url, cli_env, {}, data / "objects")
        t.admin = t.create_key("admin", "dicom.admin,dicom.read,dicom.write")
        yield t
        gateway.stop()
        return
    stack = request.getfixturevalue("stack")
    origin = stack.config.url.rsplit("/", 1)[0]
    t = Target("stack", origin, stack.config.url, {**os.environ, **stack.config.service_env()},
               stack.headers, None)
    yield t


def _stow(url: str, parts: list[bytes], headers: dict[str, str]) -> httpx.Response:
    body, content_type = multipart_related(parts)
    return httpx.post(f"{url}/studies", content=body, timeout=60,
                      headers={**headers, "Content-Type": content_type})


def _name(target: Target, base: str) -> str:
    """A partition name of its own for each run (the stack lives for the whole session)."""
    return f"{base}-{target.name}-{int(time.time() * 1000) % 10**8}"


@pytest.fixture(scope="module")
def hospitals(target: Target) -> tuple[str, str]:
    a, b = _name(target, "hospital-a"), _name(target, "hospital-b")
    for name in (a, b):
        done = target.cli("partitions", "create", name, "--description", f"{name} PACS")
        assert done.returncode == 0, done.stderr
        assert f"{target.url}/partitions/{name}" in done.stdout
    return a, b


def test_partitions_are_created_once_and_listed(target: Target, hospitals: tuple[str, str]) -> None:
    listed = target.cli("partitions", "list")
    assert listed.returncode == 0, listed.stderr
    for name in ("default", *hospitals):
        assert any(line.split()[0] == name for line in listed.stdout.splitlines()[1:]), listed.stdout
    again = target.cli("partitions", "create", hospitals[0])
    assert again.returncode == 1 and "409" in again.stderr and "exists already" in again.stderr
    bad = target.cli("partitions", "create", "Hospital_A")
    assert bad.returncode == 1 and "400" in bad.stderr and "lower-case" in bad.stderr


def test_the_same_instance_lives_in_two_partitions_and_each_serves_only_its_own(
        target: Target, hospitals: tuple[str, str]) -> None:
    a, b = hospitals
    ds = make_dataset(patient_id="SHARED-PID", patient_name="Partition^A", study_description="in A")
    in_a = to_bytes(ds)
    ds.PatientName, ds.StudyDescription = "Partition^B", "in B"
    in_b = to_bytes(ds)  # the same SOP Instance UID, other content: no conflict across partitions
    study, series, sop = ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
    for name, data in ((a, in_a), (b, in_b)):
        stored = _stow(f"{target.url}/partitions/{name}", [data], target.admin)
        assert stored.status_code == 200, stored.text
        [ref] = stored.json()["00081199"]["Value"]
        assert ref["00081190"]["Value"][0] == (f"{target.url}/partitions/{name}/studies/{study}/series/"
                                              f"{series}/instances/{sop}")
    for name, data, patient in ((a, in_a, "Partition^A"), (b, in_b, "Partition^B")):
        root = f"{target.url}/partitions/{name}"
        found = httpx.get(f"{root}/studies", params={"PatientID": "SHARED-PID"}, headers=target.admin)
        assert found.status_code == 200
        [study_json] = found.json()
        assert study_json["00100010"]["Value"][0]["Alphabetic"] == patient
        assert study_json["00081190"]["Value"][0] == f"{root}/studies/{study}"
        instances = httpx.get(f"{root}/instances", params={"SOPInstanceUID": sop}, headers=target.admin)
        assert len(instances.json()) == 1
        got = httpx.get(f"{root}/studies/{study}/series/{series}/instances/{sop}",
                        headers={**target.admin, **WILDCARD})
        assert got.status_code == 200 and got.content == data
        metadata = httpx.get(f"{root}/studies/{study}/metadata", headers=target.admin).json()
        assert metadata[0]["00100010"]["Value"][0]["Alphabetic"] == patient
    # the default partition has neither
    assert httpx.get(f"{target.url}/studies", params={"PatientID": "SHARED-PID"},
                     headers=target.admin).json() == []
    assert httpx.get(f"{target.url}/studies/{study}/metadata", headers=target.admin).status_code == 404
    if target.objects is not None:
        keys = sorted(str(p.relative_to(target.objects)).split("/originals/")[0]
                      for p in target.objects.rglob(f"{sop}/*.dcm"))
        assert keys == [f"partitions/{a}", f"partitions/{b}"]


def _states(index_url: str, partition: str) -> list[tuple[str, str]]:
    """(verify_status, replica_status) of every instance of the partition, from the index itself."""
    import asyncio

    from sqlalchemy import text

    from dicomgw.index.db import create_engine

    async def go() -> list[tuple[str, str]]:
        engine = create_engine(index_url)
        try:
            async with engine.connect() as conn:
                rows = await conn.execute(text("SELECT verify_status, replica_status FROM instances "
                                               "WHERE partition_name = :p"), {"p": partition})
                return [(r[0], r[1]) for r in rows]
        finally:
            await engine.dispose()

    return asyncio.run(go())


def test_every_copy_in_a_partition_is_verified_and_replicated(
        target: Target, hospitals: tuple[str, str]) -> None:
    """Verification (and, on the stack, replication to the second MinIO) works per partition."""
    a, _ = hospitals
    ds = make_dataset(patient_id="VERIFY-PID")
    assert _stow(f"{target.url}/partitions/{a}", [to_bytes(ds)], target.admin).status_code == 200
    replicated = target.name == "stack"

    def done() -> bool:
        states = _states(target.cli_env["DICOMGW_INDEX_URL"], a)
        return bool(states) and all(v == "verified" and (r == "replicated" or not replicated)
                                    for v, r in states)

    wait_for(done, 90)


def test_a_credential_for_one_partition_finds_nothing_anywhere_else(
        target: Target, hospitals: tuple[str, str]) -> None:
    a, b = hospitals
    only_a = target.create_key(f"only-{a}", f"dicom.read:{a},dicom.write:{a}")
    read_a = target.create_key(f"read-{a}", f"dicom.read:{a}")
    ds = make_dataset(patient_id="SCOPED-PID")
    data = to_bytes(ds)
    study, series, sop = ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
    assert _stow(f"{target.url}/partitions/{a}", [data], only_a).status_code == 200
    assert _stow(f"{target.url}/partitions/{b}", [data], target.admin).status_code == 200
    assert _stow(target.url, [data], target.admin).status_code == 200
    ok = httpx.get(f"{target.url}/partitions/{a}/studies/{study}/series/{series}/instances/{sop}",
                   headers={**only_a, **WILDCARD})
    assert ok.status_code == 200 and ok.content == data
    never = f"nowhere-{uid()[-6:]}"
    answers = {}
    for root in (f"{target.url}/partitions/{b}", target.url, f"{target.url}/partitions/{never}"):
        for method, path in (("GET", "/studies"), ("GET", f"/studies/{study}/metadata"),
                             ("GET", f"/studies/{study}/series/{series}/instances/{sop}"),
                             ("POST", "/studies")):
            if method == "POST":
                response = _stow(root, [to_bytes(make_dataset())], only_a)
            else:
                response = httpx.get(root + path, headers=only_a)
            assert response.status_code == 404, (root, path, response.status_code, response.text)
            assert response.headers["content-type"] == "application/problem+json"
            # the answer for an existing partition is the one for a partition that does not exist
            answers[(root, path)] = response.json()["title"]
    assert set(answers.values()) == {"Not found"}
    # a credential that sees the partition but lacks the scope is told so (403, not 404)
    refused = _stow(f"{target.url}/partitions/{a}", [to_bytes(make_dataset())], read_a)
    assert refused.status_code == 403
    assert f'scope="dicom.write:{a}"' in refused.headers["www-authenticate"]


def test_a_collection_partition_is_read_only(target: Target) -> None:
    name = _name(target, "readonly")
    defined = httpx.post(f"{target.origin}/admin/collections", headers=target.admin,
                         json={"name": name, "query": "PatientID=NOBODY-AT-ALL"})
    assert defined.status_code == 202, defined.text
    refused = _stow(f"{target.url}/partitions/{name}", [to_bytes(make_dataset())], target.admin)
    assert refused.status_code == 405
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.headers["allow"] == "GET, HEAD"
    assert httpx.get(f"{target.url}/partitions/{name}/studies", headers=target.admin).json() == []


def test_a_partition_is_what_dicomweb_client_is_given(target: Target, hospitals: tuple[str, str]) -> None:
    """dicomweb-client, given a partition's root as its URL, stores, searches and retrieves in it."""
    from dicomweb_client.api import DICOMwebClient

    _, b = hospitals
    client = DICOMwebClient(url=f"{target.url}/partitions/{b}", headers=target.admin)
    ds = make_dataset(patient_id="DWC-PID")
    client.store_instances([pydicom.dcmread(io.BytesIO(to_bytes(ds)))])
    [found] = client.search_for_studies(search_filters={"PatientID": "DWC-PID"})
    assert found["0020000D"]["Value"][0] == ds.StudyInstanceUID
    [instance] = client.retrieve_study(ds.StudyInstanceUID)
    assert instance.SOPInstanceUID == ds.SOPInstanceUID
    assert client.search_for_studies(search_filters={"PatientID": "DWC-PID"}, get_remaining=True)
    assert httpx.get(f"{target.url}/studies", params={"PatientID": "DWC-PID"},
                     headers=target.admin).json() == []
