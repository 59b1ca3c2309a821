"""The DIMSE front door with dcmtk's storescu (Debian package): byte-exact storage, refusals, C-ECHO."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import httpx
import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from tests.dicomdata import make_dataset, make_study, split_multipart
from tests.fixtures.gateway import Gateway, free_port

ANY_TS = 'multipart/related; type="application/dicom"; transfer-syntax=*'


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: run `make tools-dcmtk`")
    return path


@pytest.fixture
def dimse(make_gateway) -> tuple[Gateway, int]:  # type: ignore[no-untyped-def]
    port = free_port()
    gw = make_gateway(env={"DICOMGW_DIMSE_PORT": str(port), "DICOMGW_DIMSE_AE_TITLE": "DICOMGW",
                           "DICOMGW_DIMSE_ALLOWED_AES": '["STORESCU", "MODALITY1"]'})
    return gw, port


def _dataset_bytes(part10: bytes) -> bytes:
    """The dataset after the File Meta Information group of a PS3.10 file."""
    meta_length = pydicom.dcmread(io.BytesIO(part10), stop_before_pixels=True).file_meta
    group_length = int(meta_length.FileMetaInformationGroupLength)
    return part10[132 + 12 + group_length:]


def test_storescu_sends_a_study_stored_byte_exact(dimse, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    gw, port = dimse
    parts = make_study(1, 3)
    files = []
    for i, data in enumerate(parts):
        path = tmp_path / f"{i}.dcm"
        path.write_bytes(data)
        files.append(path)
    # -xe: propose the files' own syntax (Explicit VR Little Endian) first, so nothing is re-encoded
    done = subprocess.run([_tool("storescu"), "-xe", "-aet", "STORESCU", "-aec", "DICOMGW",
                           "127.0.0.1", str(port), *map(str, files)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    ds = pydicom.dcmread(io.BytesIO(parts[0]), stop_before_pixels=True)
    resp = httpx.get(f"{gw.url}/studies/{ds.StudyInstanceUID}", headers={"accept": ANY_TS})
    got = {pydicom.dcmread(io.BytesIO(p), stop_before_pixels=True).SOPInstanceUID: p
           for _, p in split_multipart(resp.content, resp.headers["content-type"])}
    assert len(got) == 3
    for data in parts:
        sop = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID
        assert _dataset_bytes(got[sop]) == _dataset_bytes(data)  # the dataset exactly as sent


def test_unknown_calling_ae_is_refused(dimse, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    gw, port = dimse
    path = tmp_path / "x.dcm"
    path.write_bytes(make_study(1, 1)[0])
    done = subprocess.run([_tool("storescu"), "-aet", "INTRUDER", "-aec", "DICOMGW", "127.0.0.1",
                           str(port), str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "reject" in (done.stdout + done.stderr).lower()
    assert httpx.get(f"{gw.url}/instances").json() == []


def test_malformed_dataset_gets_a_failure_status_and_nothing_is_stored(dimse) -> None:  # type: ignore[no-untyped-def]
    gw, port = dimse
    ae = AE(ae_title="MODALITY1")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMGW")
    assert assoc.is_established
    ds = make_dataset()
    del ds.StudyInstanceUID  # a CT image without its study: cannot be filed
    status = assoc.send_c_store(ds)
    good = make_dataset()
    ok = assoc.send_c_store(good)
    assoc.release()
    assert status.Status == 0xC000
    assert ok.Status == 0x0000
    found = httpx.get(f"{gw.url}/instances").json()
    assert [i["00080018"]["Value"][0] for i in found] == [good.SOPInstanceUID]


def test_c_echo_answers(dimse) -> None:  # type: ignore[no-untyped-def]
    _, port = dimse
    done = subprocess.run([_tool("echoscu"), "-aet", "STORESCU", "-aec", "DICOMGW", "127.0.0.1",
                           str(port)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def _certificates(folder: Path) -> dict[str, Path]:
    """A hospital CA, the archive's certificate and a modality's, and a stranger's self-signed one."""
    paths = {name: folder / name for name in ("ca.key", "ca.crt", "scp.key", "scp.crt", "scu.key",
                                               "scu.crt", "stranger.key", "stranger.crt")}
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=Hospital CA",
             "-keyout", str(paths["ca.key"]), "-out", str(paths["ca.crt"]))
    for name, cn in (("scp", "127.0.0.1"), ("scu", "MODALITY1")):
        csr = folder / f"{name}.csr"
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}",
                 "-keyout", str(paths[f"{name}.key"]), "-out", str(csr))
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(paths["ca.crt"]), "-CAkey", str(paths["ca.key"]),
                 "-CAcreateserial", "-days", "2", "-sha256", "-out", str(paths[f"{name}.crt"]))
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=MODALITY1",
             "-keyout", str(paths["stranger.key"]), "-out", str(paths["stranger.crt"]))
    return paths


def test_storescu_over_dicom_tls_with_mutual_certificates(make_gateway, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """PS3.15 B.1: both ends authenticate with certificates; plain TCP and unknown certificates fail."""
    certs = _certificates(tmp_path)
    port = free_port()
    gw = make_gateway(env={"DICOMGW_DIMSE_PORT": str(port), "DICOMGW_DIMSE_AE_TITLE": "DICOMGW",
                           "DICOMGW_DIMSE_TLS_CERT_FILE": str(certs["scp.crt"]),
                           "DICOMGW_DIMSE_TLS_KEY_FILE": str(certs["scp.key"]),
                           "DICOMGW_DIMSE_TLS_CA_FILE": str(certs["ca.crt"])})
    parts = make_study(1, 2)
    files = []
    for i, data in enumerate(parts):
        files.append(tmp_path / f"{i}.dcm")
        files[-1].write_bytes(data)

    def storescu(*tls: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([_tool("storescu"), "-xe", *tls, "-aet", "MODALITY1", "-aec", "DICOMGW",
                               "127.0.0.1", str(port), *map(str, files)],
                              capture_output=True, text=True, timeout=120)

    trusted = ["+cf", str(certs["ca.crt"])]
    assert storescu().returncode != 0  # plain TCP to a TLS port
    stranger = storescu("+tls", str(certs["stranger.key"]), str(certs["stranger.crt"]), *trusted)
    assert stranger.returncode != 0, stranger.stdout + stranger.stderr
    study = pydicom.dcmread(io.BytesIO(parts[0]), stop_before_pixels=True).StudyInstanceUID
    assert httpx.get(f"{gw.url}/instances", params={"StudyInstanceUID": study}).json() == []
    done = storescu("+tls", str(certs["scu.key"]), str(certs["scu.crt"]), *trusted)
    assert done.returncode == 0, done.stdout + done.stderr
    held = httpx.get(f"{gw.url}/studies/{study}/instances").json()
    assert len(held) == 2


def test_c_stores_and_refused_associations_are_in_the_audit_trail(dimse, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import json
    import os
    import sys

    from tests.polling import wait_for

    gw, port = dimse
    data = make_study(1, 1)[0]
    (tmp_path / "a.dcm").write_bytes(data)
    study = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).StudyInstanceUID
    for calling in ("MODALITY1", "INTRUDER"):
        subprocess.run([_tool("storescu"), "-aet", calling, "-aec", "DICOMGW", "127.0.0.1", str(port),
                        str(tmp_path / "a.dcm")], capture_output=True, text=True, timeout=120)
    env = {**os.environ, "DATA_DIR": str(gw.data_dir),
           "DICOMGW_INDEX_URL": f"sqlite+aiosqlite:///{gw.data_dir.resolve() / 'index.sqlite3'}"}

    def events() -> list[dict[str, object]]:
        done = subprocess.run([str(Path(sys.executable).parent / "dicomgw"), "audit", "--json"],
                              capture_output=True, text=True, env=env, timeout=60, check=True)
        return [json.loads(line) for line in done.stdout.splitlines()]

    wait_for(lambda: len([e for e in events() if e["route"] == "DIMSE"]) >= 2, 20)
    dimse_events = [e for e in events() if e["route"] == "DIMSE"]
    stored = [e for e in dimse_events if e["event"] == "transferred"]
    refused = [e for e in dimse_events if e["event"] == "authentication"]
    assert [(e["who"], e["who_kind"], e["outcome"], e["studies"]) for e in stored] == [
        ("MODALITY1", "dicom-ae", 0, [study])]
    assert [(e["who"], e["outcome"], e["source"]) for e in refused] == [("INTRUDER", 4, "127.0.0.1")]
