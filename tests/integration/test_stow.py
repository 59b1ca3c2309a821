"""STOW-RS against a real embedded gateway: statuses, failure reasons, byte-exact storage, duplicates."""

from __future__ import annotations

import concurrent.futures
import hashlib
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian

from tests.dicomdata import (
    make_dataset,
    make_instance,
    make_study,
    multipart_related,
    to_bytes,
    uid,
)
from tests.fixtures.gateway import Gateway

FAILED = "00081198"
REFERENCED = "00081199"
REASON = "00081197"
SOP_UID = "00081155"


def stow(gw: Gateway, parts: list[bytes], study: str | None = None, **kw: object) -> httpx.Response:
    body, ct = multipart_related(parts, **kw)  # type: ignore[arg-type]
    url = f"{gw.url}/studies" + (f"/{study}" if study else "")
    return httpx.post(url, content=body, headers={"content-type": ct}, timeout=60)


def reasons(resp: httpx.Response) -> list[int]:
    return [item[REASON]["Value"][0] for item in resp.json().get(FAILED, {}).get("Value", [])]


def referenced(resp: httpx.Response) -> list[str]:
    return [item[SOP_UID]["Value"][0] for item in resp.json().get(REFERENCED, {}).get("Value", [])]


def stored_originals(gw: Gateway) -> dict[str, bytes]:
    """SOP Instance UID -> bytes of every original file in the gateway's object folder."""
    out = {}
    for path in (gw.data_dir / "objects" / "originals").rglob("*.dcm"):
        out.setdefault(path.parent.name, b"")
        out[path.parent.name] += path.read_bytes()
    return out


def sop_uid_of(data: bytes) -> str:
    import io

    return str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID)


def test_study_is_stored_byte_exact_and_acknowledged(gateway: Gateway) -> None:
    parts = make_study(2, 3)
    resp = stow(gateway, parts)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("application/dicom+json")
    assert sorted(referenced(resp)) == sorted(sop_uid_of(p) for p in parts)
    on_disk = stored_originals(gateway)
    for part in parts:
        assert on_disk[sop_uid_of(part)] == part
    item = resp.json()[REFERENCED]["Value"][0]
    assert item["00081190"]["Value"][0].startswith(gateway.url + "/studies/")
    assert resp.json()["00081190"]["Value"][0].startswith(gateway.url + "/studies/")


def test_partial_stow_returns_202_and_keeps_good_parts(gateway: Gateway) -> None:
    good = make_study(1, 2)
    not_dicom = b"%PDF-1.4 this is not a DICOM file" * 10
    no_sop_uid = make_dataset()
    del no_sop_uid.SOPInstanceUID
    missing = to_bytes(no_sop_uid)
    cut_in_header = make_instance()[:300]  # its UIDs cannot be read
    resp = stow(gateway, [good[0], not_dicom, missing, cut_in_header, good[1]])
    assert resp.status_code == 202, resp.text
    assert sorted(referenced(resp)) == sorted(sop_uid_of(p) for p in good)
    assert reasons(resp) == [0xC000, 0xC000, 0xC000]


def test_an_identified_but_damaged_instance_is_archived_as_received_with_a_warning(
        gateway: Gateway) -> None:
    """Issue 11: keep what can be identified. Its UIDs read, the rest not (Pixel Data cut short, a
    value that does not decode): stored byte for byte, acknowledged with WarningReason 0xB007, served
    as stored; frames are not located in it."""
    import pydicom.data

    folder = Path(pydicom.data.__file__).parent / "test_files"
    truncated = make_instance()[:-5000]
    damaged = [truncated, *((folder / n).read_bytes() for n in ("SC_rgb_jpeg.dcm", "MR_truncated.dcm",
                                                                 "badVR.dcm"))]
    resp = stow(gateway, damaged)
    assert resp.status_code == 200, resp.text
    items = resp.json()[REFERENCED]["Value"]
    assert [item["00081196"]["Value"] for item in items] == [[0xB007]] * len(damaged)
    for data, item in zip(damaged, items, strict=True):
        assert item[SOP_UID]["Value"][0] == sop_uid_of(data)
        url = item["00081190"]["Value"][0]
        served = httpx.get(url, headers={"accept": "application/dicom; transfer-syntax=*"}, timeout=60)
        assert served.status_code == 200
        assert hashlib.sha256(served.content).digest() == hashlib.sha256(data).digest()
        assert httpx.get(f"{url}/metadata", timeout=60).status_code == 200
        frame = httpx.get(f"{url}/frames/1", headers={"accept": "application/octet-stream"}, timeout=60)
        assert frame.status_code in (404, 406), frame.text[:200]


def test_all_parts_failing_returns_409(gateway: Gateway) -> None:
    resp = stow(gateway, [b"not dicom at all" * 20, make_instance()[:300]])
    assert resp.status_code == 409
    assert reasons(resp) == [0xC000, 0xC000]


def test_identical_resend_is_success_without_a_new_copy(gateway: Gateway) -> None:
    parts = make_study(1, 2)
    assert stow(gateway, parts).status_code == 200
    files_before = sorted((gateway.data_dir / "objects").rglob("*.dcm"))
    again = stow(gateway, parts)
    assert again.status_code == 200
    assert sorted(referenced(again)) == sorted(sop_uid_of(p) for p in parts)
    assert sorted((gateway.data_dir / "objects").rglob("*.dcm")) == files_before


def test_different_content_under_a_stored_uid_is_refused_and_original_kept(gateway: Gateway) -> None:
    ds = make_dataset(seed=1)
    original = to_bytes(ds)
    assert stow(gateway, [original]).status_code == 200
    ds.PatientName = "Changed^Name"
    changed = to_bytes(ds)
    resp = stow(gateway, [changed])
    assert resp.status_code == 409
    assert reasons(resp) == [0x0111]
    assert stored_originals(gateway)[str(ds.SOPInstanceUID)] == original


def test_one_uid_twice_in_one_request_keeps_the_first_and_its_object(gateway: Gateway) -> None:
    """Two parts with one SOP Instance UID and other content in the same request (real-world files
    do this): the first is stored and stays readable, the second is refused with 0x0111.

    A regression test: outcomes were once matched to parts by UID, so the second part's conflict was
    applied to the first as well, and the indexed original's object was deleted under its row.
    """
    ds = make_dataset(seed=2)
    first = to_bytes(ds)
    ds.PatientName = "Other^Content"
    second = to_bytes(ds)
    resp = stow(gateway, [first, second])
    assert resp.status_code == 202
    assert reasons(resp) == [0x0111] and referenced(resp) == [str(ds.SOPInstanceUID)]
    assert stored_originals(gateway)[str(ds.SOPInstanceUID)] == first
    got = httpx.get(f"{gateway.url}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
                    f"/instances/{ds.SOPInstanceUID}",
                    headers={"accept": "application/dicom; transfer-syntax=*"}, timeout=30)
    assert got.status_code == 200 and got.content == first


def test_study_scoped_post_refuses_other_studies_with_a900(gateway: Gateway) -> None:
    study = uid()
    mine = make_instance(study_uid=study)
    other = make_instance()
    resp = stow(gateway, [mine, other], study=study)
    assert resp.status_code == 202
    assert reasons(resp) == [0xA900]
    assert referenced(resp) == [sop_uid_of(mine)]


def test_malformed_study_uid_in_url_is_400_problem(gateway: Gateway) -> None:
    resp = stow(gateway, [make_instance()], study="not-a-uid")
    assert resp.status_code == 400
    assert resp.headers["content-type"] == "application/problem+json"


def test_non_storage_sop_class_is_refused_with_0122(gateway: Gateway) -> None:
    verification = "1.2.840.10008.1.1"
    resp = stow(gateway, [make_instance(sop_class_uid=verification)])
    assert resp.status_code == 409
    assert reasons(resp) == [0x0122]


def test_unknown_transfer_syntax_is_refused_with_c122(gateway: Gateway) -> None:
    ds = make_dataset()
    ds.file_meta.TransferSyntaxUID = "1.2.3.4.5.6.7"
    data = bytearray(to_bytes(ds))
    resp = stow(gateway, [bytes(data)])
    assert resp.status_code == 409
    assert reasons(resp) == [0xC122]


@pytest.mark.parametrize(
    ("content_type", "status"),
    [
        ("text/plain", 415),
        ('multipart/related; type="application/dicom+json"; boundary=x', 415),
        ('multipart/related; type="application/dicom"', 400),
    ],
)
def test_bad_requests_get_problem_json(gateway: Gateway, content_type: str, status: int) -> None:
    resp = httpx.post(f"{gateway.url}/studies", content=b"--x\r\n\r\nabc\r\n--x--\r\n",
                      headers={"content-type": content_type})
    assert resp.status_code == status
    assert resp.headers["content-type"] == "application/problem+json"
    assert resp.json()["status"] == status


def test_unquoted_type_and_single_part_body_are_accepted(gateway: Gateway) -> None:
    part = make_instance()
    body, _ = multipart_related([part], boundary="b0undary")
    unquoted = "multipart/related; type=application/dicom; boundary=b0undary"
    resp = httpx.post(f"{gateway.url}/studies", content=body, headers={"content-type": unquoted})
    assert resp.status_code == 200
    single = make_instance()
    resp = httpx.post(f"{gateway.url}/studies", content=single,
                      headers={"content-type": "application/dicom"})
    assert resp.status_code == 200
    assert referenced(resp) == [sop_uid_of(single)]


def test_concurrent_stow_of_one_instance_keeps_one_copy(gateway: Gateway) -> None:
    part = make_instance(seed=7)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(lambda _: stow(gateway, [part]), range(4)))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    copies = list((gateway.data_dir / "objects" / "originals").rglob(f"{sop_uid_of(part)}/*.dcm"))
    assert len(copies) == 1
    assert copies[0].read_bytes() == part


def test_pydicom_test_files_are_stored_byte_exact(gateway: Gateway) -> None:
    from tests.dicomdata import round_trip_corpus

    parts = round_trip_corpus()
    assert len(parts) > 30
    resp = stow(gateway, parts)
    on_disk = stored_originals(gateway)
    failed = reasons(resp)
    assert not failed, f"rejected: {resp.json().get(FAILED)}"
    assert resp.status_code == 200
    for part in parts:
        assert hashlib.sha256(on_disk[sop_uid_of(part)]).digest() == hashlib.sha256(part).digest()


def test_background_loop_verifies_new_instances(gateway: Gateway) -> None:
    import sqlite3
    import time

    part = make_instance(transfer_syntax=ExplicitVRLittleEndian)
    assert stow(gateway, [part]).status_code == 200
    deadline = time.monotonic() + 30
    status = None
    while time.monotonic() < deadline:
        with sqlite3.connect(gateway.data_dir / "index.sqlite3") as db:
            status = db.execute("select verify_status from instances where sop_instance_uid=?",
                                (sop_uid_of(part),)).fetchone()[0]
        if status == "verified":
            break
        time.sleep(0.2)
    assert status == "verified"
