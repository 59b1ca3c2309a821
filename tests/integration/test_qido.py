"""QIDO-RS matching, paging, includefield and computed attributes, on SQLite and on PostgreSQL.

One app per backend loads a small, known archive once; every test queries it with its own keys.
"""

from __future__ import annotations

import io
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
import pytest_asyncio

from tests.dicomdata import make_instance, multipart_related, uid

CHARSETS = Path(pydicom.data.__file__).parent / "charset_files"
STUDY_A, STUDY_B, STUDY_C = uid(), uid(), uid()
SERIES_A1, SERIES_A2 = uid(), uid()


def _charset_file(name: str) -> bytes:
    """A charset test file with UIDs of its own (pydicom's share a study)."""
    ds = pydicom.dcmread(CHARSETS / name)
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = uid(), uid(), uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientID = "CHARSET-" + name
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _archive() -> list[bytes]:
    parts = []
    for i in range(3):
        parts.append(make_instance(study_uid=STUDY_A, series_uid=SERIES_A1, modality="CT",
                                   patient_name="Smith^John^J", patient_id="Q-PID-A",
                                   accession="Q-ACC-A", study_date="20240115", study_time="101500",
                                   instance_number=i + 1, series_number=1))
    for i in range(2):
        parts.append(make_instance(study_uid=STUDY_A, series_uid=SERIES_A2, modality="SR",
                                   sop_class_uid="1.2.840.10008.5.1.4.1.1.88.11",
                                   patient_name="Smith^John^J", patient_id="Q-PID-A",
                                   accession="Q-ACC-A", study_date="20240115", study_time="101500",
                                   instance_number=i + 1, series_number=2))
    parts.append(make_instance(study_uid=STUDY_B, modality="MR", patient_name="Smithers^Waylon",
                               patient_id="Q-PID-B", accession="Q-ACC-B", study_date="20230301",
                               study_time="083000", sop_class_uid="1.2.840.10008.5.1.4.1.1.4"))
    parts.append(make_instance(study_uid=STUDY_C, modality="PT", patient_name="O'Neil^Ann",
                               patient_id="Q-PID-C", accession="q-acc-c", study_date="20250620",
                               study_time="235959", study_description="100% wild_card"))
    for name in ("chrFren.dcm", "chrKoreanMulti.dcm", "chrX1.dcm", "chrGerm.dcm"):
        parts.append(_charset_file(name))
    return parts


@pytest_asyncio.fixture(scope="module", params=["sqlite", "postgres", "stack"])
async def client(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
                 ) -> AsyncIterator[httpx.AsyncClient]:
    from dicomgw.config import Settings
    from dicomgw_gateway.app import create_app

    if request.param == "stack":
        # the split services behind nginx: QIDO answered by the query service, STOW by ingest
        stack = request.getfixturevalue("stack")
        root = stack.config.url.removesuffix("/dicom-web")
        async with httpx.AsyncClient(base_url=root, timeout=60) as c:
            body, ct = multipart_related(_archive())
            resp = await c.post("/dicom-web/studies", content=body, headers={"content-type": ct})
            assert resp.status_code == 200, resp.text
            yield c
        return
    data = tmp_path_factory.mktemp(f"qido-{request.param}")
    env = {"DATA_DIR": str(data)}
    if request.param == "postgres":
        server = request.getfixturevalue("postgres_server")
        name = f"qido_{os.getpid()}"
        server.psql(f"DROP DATABASE IF EXISTS {name}")
        server.psql(f"CREATE DATABASE {name}")
        env["DICOMGW_INDEX_URL"] = server.url(name)
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        app = create_app(Settings())
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
            body, ct = multipart_related(_archive())
            resp = await c.post("/dicom-web/studies", content=body, headers={"content-type": ct})
            assert resp.status_code == 200, resp.text
            yield c


async def qido(client: httpx.AsyncClient, path: str, **params: Any) -> list[dict[str, Any]]:
    resp = await client.get(f"/dicom-web{path}", params=params)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("application/dicom+json")
    return resp.json()


def values(results: list[dict[str, Any]], tag: str) -> list[Any]:
    return [r[tag]["Value"][0] if "Value" in r.get(tag, {}) else None for r in results]


def study_uids(results: list[dict[str, Any]]) -> set[str]:
    return set(values(results, "0020000D"))





async def test_single_value_matching_is_exact_and_case_sensitive(client: httpx.AsyncClient) -> None:
    assert study_uids(await qido(client, "/studies", PatientID="Q-PID-A")) == {STUDY_A}
    assert study_uids(await qido(client, "/studies", AccessionNumber="Q-ACC-A")) == {STUDY_A}
    assert await qido(client, "/studies", AccessionNumber="q-acc-a") == []
    assert study_uids(await qido(client, "/studies", AccessionNumber="q-acc-c")) == {STUDY_C}


async def test_wildcards_star_and_question_mark(client: httpx.AsyncClient) -> None:
    assert study_uids(await qido(client, "/studies", PatientID="Q-PID-*")) == {STUDY_A, STUDY_B, STUDY_C}
    assert study_uids(await qido(client, "/studies", PatientID="Q-PID-?")) == {STUDY_A, STUDY_B, STUDY_C}
    assert study_uids(await qido(client, "/studies", PatientID="Q-P?D-B")) == {STUDY_B}
    # SQL LIKE specials in the value are literals, not wildcards
    assert study_uids(await qido(client, "/studies", StudyDescription="100% wild_card")) == {STUDY_C}
    assert await qido(client, "/studies", StudyDescription="100_ wild%card") == []
    assert study_uids(await qido(client, "/studies", StudyDescription="*wild_c*")) == {STUDY_C}


async def test_uid_list_matching(client: httpx.AsyncClient) -> None:
    got = await qido(client, "/studies", StudyInstanceUID=f"{STUDY_A}\\{STUDY_C}")
    assert study_uids(got) == {STUDY_A, STUDY_C}


async def test_date_and_time_ranges(client: httpx.AsyncClient) -> None:
    ours = {"PatientID": "Q-PID-*"}
    assert study_uids(await qido(client, "/studies", StudyDate="20240115", **ours)) == {STUDY_A}
    assert study_uids(await qido(client, "/studies", StudyDate="20240101-20241231", **ours)) == {STUDY_A}
    assert study_uids(await qido(client, "/studies", StudyDate="20240101-", **ours)) == {STUDY_A, STUDY_C}
    assert study_uids(await qido(client, "/studies", StudyDate="-20240115", **ours)) == {STUDY_A, STUDY_B}
    assert study_uids(await qido(client, "/studies", StudyTime="0800-1030", **ours)) == {STUDY_A, STUDY_B}
    assert study_uids(await qido(client, "/studies", StudyTime="2300-", **ours)) == {STUDY_C}


async def test_person_names_match_case_insensitively_per_component_group(client: httpx.AsyncClient) -> None:
    assert study_uids(await qido(client, "/studies", PatientName="smith^john^j")) == {STUDY_A}
    assert len(await qido(client, "/studies", PatientName="SMITH*")) == 2
    assert study_uids(await qido(client, "/studies", PatientName="o'neil*")) == {STUDY_C}


@pytest.mark.parametrize(
    ("query", "patient_id"),
    [
        ("Buc^Jérôme", "CHARSET-chrFren.dcm"),
        ("BUC^JÉRÔME", "CHARSET-chrFren.dcm"),
        ("äneas*", "CHARSET-chrGerm.dcm"),
        ("김희중", "CHARSET-chrKoreanMulti.dcm"),
        ("王^小東", "CHARSET-chrX1.dcm"),
        ("wang^xiaodong", "CHARSET-chrX1.dcm"),
    ],
)
async def test_names_in_other_character_sets_match(client: httpx.AsyncClient, query: str,
                                                   patient_id: str) -> None:
    got = await qido(client, "/studies", PatientName=query)
    assert values(got, "00100020") == [patient_id]


async def test_returned_names_keep_their_component_groups(client: httpx.AsyncClient) -> None:
    [study] = await qido(client, "/studies", PatientID="CHARSET-chrX1.dcm")
    assert study["00100010"]["Value"][0] == {"Alphabetic": "Wang^XiaoDong", "Ideographic": "王^小東"}
    assert study["00080005"]["Value"] == ["ISO_IR 192"]


async def test_fuzzy_matching_finds_any_name_component_by_prefix(client: httpx.AsyncClient) -> None:
    assert await qido(client, "/studies", PatientName="joh", PatientID="Q-*") == []
    got = await qido(client, "/studies", PatientName="joh", fuzzymatching="true", PatientID="Q-*")
    assert study_uids(got) == {STUDY_A}
    got = await qido(client, "/studies", PatientName="way smi", fuzzymatching="true")
    assert study_uids(got) == {STUDY_B}


async def test_computed_attributes(client: httpx.AsyncClient) -> None:
    [study] = await qido(client, "/studies", StudyInstanceUID=STUDY_A, includefield="SOPClassesInStudy")
    assert study["00080061"]["Value"] == ["CT", "SR"]
    assert study["00201206"]["Value"] == [2]
    assert study["00201208"]["Value"] == [5]
    assert set(study["00080062"]["Value"]) == {"1.2.840.10008.5.1.4.1.1.2",
                                               "1.2.840.10008.5.1.4.1.1.88.11"}
    series = await qido(client, f"/studies/{STUDY_A}/series")
    assert values(series, "00201209") == [3, 2]
    assert values(series, "00080060") == ["CT", "SR"]


async def test_modalities_in_study_is_a_matching_key(client: httpx.AsyncClient) -> None:
    assert study_uids(await qido(client, "/studies", ModalitiesInStudy="SR")) == {STUDY_A}
    got = await qido(client, "/studies", ModalitiesInStudy="MR\\PT")
    assert {STUDY_B, STUDY_C} <= study_uids(got)
    assert STUDY_A not in study_uids(got)


async def test_includefield_by_keyword_tag_and_all(client: httpx.AsyncClient) -> None:
    [plain] = await qido(client, f"/studies/{STUDY_A}/series/{SERIES_A1}/instances", InstanceNumber="1")
    assert "00280100" in plain and "00280030" not in plain
    [more] = await qido(client, f"/studies/{STUDY_A}/series/{SERIES_A1}/instances", InstanceNumber="1",
                        includefield="PatientSex,00280004")
    assert more["00280004"]["Value"] == ["MONOCHROME2"] and more["00100040"]["Value"] == ["O"]
    [everything] = await qido(client, f"/studies/{STUDY_A}/series/{SERIES_A1}/instances",
                              InstanceNumber="1", includefield="all")
    assert "00281050" in everything  # WindowCenter
    assert "7FE00010" not in everything


async def test_series_and_instance_levels_and_paths(client: httpx.AsyncClient) -> None:
    assert len(await qido(client, f"/studies/{STUDY_A}/series")) == 2
    assert len(await qido(client, f"/studies/{STUDY_A}/instances")) == 5
    assert len(await qido(client, f"/studies/{STUDY_A}/series/{SERIES_A2}/instances")) == 2
    got = await qido(client, "/series", Modality="SR", PatientID="Q-PID-A")
    assert values(got, "0020000E") == [SERIES_A2]
    got = await qido(client, "/instances", SOPClassUID="1.2.840.10008.5.1.4.1.1.4", PatientID="Q-PID-B")
    assert len(got) == 1
    assert await qido(client, f"/studies/{uid()}/series") == []


async def test_limit_and_offset_page_through_results(client: httpx.AsyncClient) -> None:
    pages = []
    for offset in range(0, 6, 2):
        pages.append(await qido(client, "/studies", PatientID="Q-PID-*", limit=2, offset=offset))
    assert [len(p) for p in pages] == [2, 1, 0]
    assert study_uids(pages[0] + pages[1]) == {STUDY_A, STUDY_B, STUDY_C}


async def test_retrieve_url_points_at_the_resource(client: httpx.AsyncClient) -> None:
    [study] = await qido(client, "/studies", StudyInstanceUID=STUDY_B)
    root = str(client.base_url).rstrip("/")
    assert study["00081190"]["Value"] == [f"{root}/dicom-web/studies/{STUDY_B}"]
    [series] = await qido(client, f"/studies/{STUDY_A}/series", SeriesInstanceUID=SERIES_A1)
    assert series["00081190"]["Value"] == [f"{root}/dicom-web/studies/{STUDY_A}/series/{SERIES_A1}"]


@pytest.mark.parametrize(
    "params",
    [{"StudyDate": "2024-01-15"}, {"StudyInstanceUID": "1.2.abc"}, {"limit": "ten"},
     {"NoSuchKeyword": "x"}, {"SeriesNumber": "one"}, {"fuzzymatching": "maybe"}],
)
async def test_malformed_queries_are_400_problems(client: httpx.AsyncClient, params: dict[str, str]) -> None:
    level = "/series" if "SeriesNumber" in params else "/studies"
    resp = await client.get(f"/dicom-web{level}", params=params)
    assert resp.status_code == 400
    assert resp.headers["content-type"] == "application/problem+json"


async def test_unsupported_keys_are_ignored_with_a_warning(client: httpx.AsyncClient) -> None:
    resp = await client.get("/dicom-web/studies", params={"OperatorsName": "x", "PatientID": "Q-PID-B"})
    assert resp.status_code == 200
    assert resp.headers["warning"].startswith("299 dicomgw")
    assert study_uids(resp.json()) == {STUDY_B}


async def test_large_results_are_gzipped_when_accepted(client: httpx.AsyncClient) -> None:
    resp = await client.get("/dicom-web/instances", params={"includefield": "all"},
                            headers={"accept-encoding": "gzip"})
    assert resp.headers["content-encoding"] == "gzip"
    assert len(resp.json()) >= 9


async def test_xml_only_accept_is_406(client: httpx.AsyncClient) -> None:
    xml = "multipart/related; type=application/dicom+xml"
    resp = await client.get("/dicom-web/studies", headers={"accept": xml})
    assert resp.status_code == 406
    resp = await client.get("/dicom-web/studies", headers={"accept": "application/json"})
    assert resp.status_code == 200
