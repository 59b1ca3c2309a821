"""QIDO-RS matching, paging, includefield and computed attributes, on SQLite and on PostgreSQL.

One app per backend loads a small, known archive once; every test queries it with its own keys.
"""

from __future__ import annotations

import io
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
import pytest_asyncio

from tests.dicomdata import make_instance, multipart_related, uid

CHARSETS = Path(pydicom.data.__file__).parent / "charset_files"
STUDY_A, STUDY_B, STUDY_C, STUDY_D = uid(), uid(), uid(), uid()
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
                                   instance_number=i + 1, series_number=1,
                                   series_description="Thorax 1.0",
                                   extra={"ReferringPhysicianName": "Welby^Marcus",
                                          "BodyPartExamined": "CHEST", "SeriesDate": "20240115",
                                          "SeriesTime": "102000"}))
    for i in range(2):
        parts.append(make_instance(study_uid=STUDY_A, series_uid=SERIES_A2, modality="SR",
                                   sop_class_uid="1.2.840.10008.5.1.4.1.1.88.11",
                                   patient_name="Smith^John^J", patient_id="Q-PID-A",
                                   accession="Q-ACC-A", study_date="20240115", study_time="101500",
                                   instance_number=i + 1, series_number=2, rows=32, columns=32,
                                   series_description="Report",
                                   extra={"ReferringPhysicianName": "Welby^Marcus"}))
    parts.append(make_instance(study_uid=STUDY_B, modality="MR", patient_name="Smithers^Waylon",
                               patient_id="Q-PID-B", accession="Q-ACC-B", study_date="20230301",
                               study_time="083000", sop_class_uid="1.2.840.10008.5.1.4.1.1.4",
                               extra={"PatientSex": "M", "PatientBirthDate": "19800229"}))
    parts.append(make_instance(study_uid=STUDY_C, modality="PT", patient_name="O'Neil^Ann",
                               patient_id="Q-PID-C", accession="q-acc-c", study_date="20250620",
                               study_time="235959", study_description="100% wild_card"))
    parts.append(make_instance(study_uid=STUDY_D, modality="CT", patient_name="Müller^Jürgen",
                               patient_id="U-PID-D", charset="ISO_IR 192", study_date="20220202"))
    for name in ("chrFren.dcm", "chrKoreanMulti.dcm", "chrX1.dcm", "chrGerm.dcm", "chrI2.dcm",
                 "chrH31.dcm"):
        parts.append(_charset_file(name))
    return parts


def _settings(env: dict[str, str]) -> Any:
    """Settings read from the environment as a deployment gives them (DATA_DIR, DICOMGW_*)."""
    from dicomgw.config import Settings

    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        return Settings()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _backend_env(request: pytest.FixtureRequest, data: Path) -> dict[str, str]:
    """DATA_DIR in ``data``, and for PostgreSQL an empty database of its own (the app migrates it)."""
    env = {"DATA_DIR": str(data)}
    if request.param == "postgres":
        server = request.getfixturevalue("postgres_server")
        env["DICOMGW_INDEX_URL"] = server.create_database(migrate=False)
    return env


@asynccontextmanager
async def _running(settings: Any, parts: list[bytes]) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    """STOW-RS and QIDO-RS in-process with their lifespan, ``parts`` uploaded: (client, app)."""
    from dicomgw.web.app import build_app
    from dicomgw_ingest.routes import router as ingest_router
    from dicomgw_query.routes import router as query_router

    app = build_app(settings, [ingest_router, query_router], title="QIDO under test")
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
            body, ct = multipart_related(parts)
            resp = await c.post("/dicom-web/studies", content=body, headers={"content-type": ct})
            assert resp.status_code == 200, resp.text
            yield c, app


@pytest.fixture(scope="module", params=["sqlite", "postgres", "stack"])
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The environment of an in-process app (SQLite or PostgreSQL index), or the running stack.

    Synchronous, so that servers start outside the event loop (their set-up runs migrations)."""
    if request.param == "stack":
        return request.getfixturevalue("stack")
    return _backend_env(request, tmp_path_factory.mktemp(f"qido-{request.param}"))


@pytest_asyncio.fixture(scope="module")
async def client(backend: Any) -> AsyncIterator[httpx.AsyncClient]:
    if not isinstance(backend, dict):
        # the split services behind nginx: QIDO answered by the query service, STOW by ingest
        root = backend.config.url.removesuffix("/dicom-web")
        async with httpx.AsyncClient(base_url=root, timeout=60, headers=backend.headers) as c:
            body, ct = multipart_related(_archive())
            resp = await c.post("/dicom-web/studies", content=body, headers={"content-type": ct})
            assert resp.status_code == 200, resp.text
            yield c
        return
    async with _running(_settings(backend), _archive()) as (c, _):
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
        ("홍^길동", "CHARSET-chrI2.dcm"),  # ISO 2022 IR 149, phonetic group
        ("洪^吉洞", "CHARSET-chrI2.dcm"),  # ideographic group
        ("HONG^gildong", "CHARSET-chrI2.dcm"),
        ("やまだ^たろう", "CHARSET-chrH31.dcm"),  # ISO 2022 IR 87, phonetic group
        ("山田*", "CHARSET-chrH31.dcm"),
        ("Müller^Jürgen", "U-PID-D"),  # UTF-8 (ISO_IR 192)
        ("MÜLLER^jürgen", "U-PID-D"),
        ("müll*", "U-PID-D"),
    ],
)
async def test_names_in_other_character_sets_match(client: httpx.AsyncClient, query: str,
                                                   patient_id: str) -> None:
    got = await qido(client, "/studies", PatientName=query)
    # the stack is shared with other test modules that store the same charset names: judge ours only
    ours = [v for v in values(got, "00100020") if v.startswith(("CHARSET-", "U-PID-", "Q-PID-"))]
    assert ours == [patient_id]


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


async def test_a_long_answer_streams_page_by_page_with_the_same_results(
        client: httpx.AsyncClient, backend: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Answers longer than a page of rows stream (10,000 instances never sit in memory at once);
    here a page is 2 rows, so that this archive's few studies and instances span several pages."""
    if not isinstance(backend, dict):
        pytest.skip("the page size is patched in-process")
    import dicomgw_query.routes

    whole = {path: await client.get(f"/dicom-web{path}") for path in (
        "/studies?PatientID=Q-PID-*", f"/studies/{STUDY_A}/instances?includefield=all", "/series")}
    monkeypatch.setattr(dicomgw_query.routes, "PAGE_ROWS", 2)
    for path, buffered in whole.items():
        streamed = await client.get(f"/dicom-web{path}")
        assert streamed.status_code == buffered.status_code == 200
        assert len(buffered.json()) >= 2
        assert streamed.json() == buffered.json(), path
        assert "content-length" in buffered.headers
        assert "content-length" not in streamed.headers  # sent as it was produced
        assert streamed.headers["content-encoding"] == "gzip"  # httpx asks for it
    # one row fewer than a page is answered whole
    one = await client.get("/dicom-web/studies", params={"StudyInstanceUID": STUDY_B})
    assert len(one.json()) == 1 and "content-length" in one.headers
    # and a stream is cut at the limit, as a whole answer is
    limited = await client.get("/dicom-web/studies", params={"PatientID": "Q-PID-*", "limit": 3})
    assert limited.json() == whole["/studies?PatientID=Q-PID-*"].json()[:3]


async def test_retrieve_url_points_at_the_resource(client: httpx.AsyncClient) -> None:
    [study] = await qido(client, "/studies", StudyInstanceUID=STUDY_B)
    root = str(client.base_url).rstrip("/")
    assert study["00081190"]["Value"] == [f"{root}/dicom-web/studies/{STUDY_B}"]
    [series] = await qido(client, f"/studies/{STUDY_A}/series", SeriesInstanceUID=SERIES_A1)
    assert series["00081190"]["Value"] == [f"{root}/dicom-web/studies/{STUDY_A}/series/{SERIES_A1}"]


@pytest.mark.parametrize(
    ("path", "params"),
    [("/studies", {"StudyDate": "2024-01-15"}), ("/studies", {"StudyDate": "20240230"}),
     ("/studies", {"StudyDate": "20241231-20240101"}), ("/studies", {"StudyDate": "-"}),
     ("/studies", {"StudyTime": "10:15"}), ("/studies", {"StudyInstanceUID": "1.2.abc"}),
     ("/studies", {"StudyInstanceUID": "1.2.3,1.02"}), ("/studies", {"limit": "ten"}),
     ("/studies", {"limit": "-1"}), ("/studies", {"offset": "1.5"}), ("/studies", {"limit": "\u00b2"}),
     ("/series", {"SeriesNumber": "one"}), ("/studies", {"fuzzymatching": "maybe"}),
     ("/studies", {"SOPClassesInStudy": "not-a-uid"}), ("/studies/1.2.x/series", {})],
)
async def test_malformed_queries_are_400_problems(client: httpx.AsyncClient, path: str,
                                                  params: dict[str, str]) -> None:
    resp = await client.get(f"/dicom-web{path}", params=params)
    assert resp.status_code == 400, resp.text
    assert resp.headers["content-type"] == "application/problem+json"
    assert resp.json()["status"] == 400


async def test_an_offset_beyond_any_database_integer_is_an_empty_page(client: httpx.AsyncClient) -> None:
    # 10**23 overflowed the database's 64-bit integer: a 500 (issue 11's hostile queries)
    for level in ("/studies", "/series", "/instances"):
        resp = await client.get(f"/dicom-web{level}", params={"offset": "9" * 23, "limit": "5000"})
        assert resp.status_code == 200, resp.text
        assert resp.json() == []


async def test_unsupported_and_unknown_keys_are_ignored_with_a_warning(client: httpx.AsyncClient) -> None:
    for key in ("OperatorsName", "NoSuchKeyword", "00081110.00081150", "Ünknown\"Key"):
        resp = await client.get("/dicom-web/studies", params={key: "x", "PatientID": "Q-PID-B"})
        assert resp.status_code == 200, resp.text
        assert resp.headers["warning"].startswith('299 dicomgw "')
        assert resp.headers["warning"].isascii()
        assert study_uids(resp.json()) == {STUDY_B}
    resp = await client.get("/dicom-web/studies", params={"NoSuchKeyword": "x", "PatientID": "Q-PID-B"})
    assert "NoSuchKeyword" in resp.headers["warning"]
    resp = await client.get("/dicom-web/studies", params={"PatientID": "Q-PID-B"})
    assert "warning" not in resp.headers


async def test_a_key_of_a_lower_level_is_ignored_and_said_so(client: httpx.AsyncClient) -> None:
    resp = await client.get("/dicom-web/studies", params={"Modality": "XA", "PatientID": "Q-PID-A"})
    assert resp.status_code == 200
    assert "Modality" in resp.headers["warning"]
    assert study_uids(resp.json()) == {STUDY_A}


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


async def test_accept_negotiation(client: httpx.AsyncClient) -> None:
    cases = {
        "application/dicom+json": "application/dicom+json",
        "application/*": "application/dicom+json",
        "*/*;q=0.1": "application/dicom+json",
        'multipart/related; type="application/dicom+xml", application/dicom+json;q=0.5':
            "application/dicom+json",
        "application/json, text/html": "application/json",
    }
    for accept, media in cases.items():
        resp = await client.get("/dicom-web/studies", params={"PatientID": "Q-PID-B"},
                                headers={"accept": accept})
        assert resp.status_code == 200, accept
        assert resp.headers["content-type"].startswith(media), accept
    for accept in ("text/html", "application/dicom+json;q=0, text/html", "image/*"):
        resp = await client.get("/dicom-web/studies", headers={"accept": accept})
        assert resp.status_code == 406, accept
        assert resp.headers["content-type"] == "application/problem+json"


async def test_uid_lists_may_be_comma_separated(client: httpx.AsyncClient) -> None:
    got = await qido(client, "/studies", StudyInstanceUID=f"{STUDY_A},{STUDY_B}")
    assert study_uids(got) == {STUDY_A, STUDY_B}
    got = await qido(client, f"/studies/{STUDY_A}/series", SeriesInstanceUID=f"{SERIES_A2},{uid()}")
    assert values(got, "0020000E") == [SERIES_A2]


async def test_modalities_in_study_at_series_level_keeps_every_series_of_the_study(
        client: httpx.AsyncClient) -> None:
    got = await qido(client, "/series", ModalitiesInStudy="CT", PatientID="Q-PID-A")
    assert set(values(got, "0020000E")) == {SERIES_A1, SERIES_A2}
    got = await qido(client, "/studies", ModalitiesInStudy="C?,MR", PatientID="Q-PID-*")
    assert study_uids(got) == {STUDY_A, STUDY_B}


async def test_sop_classes_in_study_is_a_matching_key(client: httpx.AsyncClient) -> None:
    got = await qido(client, "/studies", SOPClassesInStudy="1.2.840.10008.5.1.4.1.1.88.11")
    assert study_uids(got) == {STUDY_A}
    assert "00080062" in got[0]  # a matching key is returned


async def test_referring_physician_name_case_insensitive_and_fuzzy(client: httpx.AsyncClient) -> None:
    assert study_uids(await qido(client, "/studies", ReferringPhysicianName="WELBY^marcus")) == {STUDY_A}
    assert await qido(client, "/studies", ReferringPhysicianName="marc") == []
    got = await qido(client, "/studies", ReferringPhysicianName="marc", fuzzymatching="true")
    assert study_uids(got) == {STUDY_A}


async def test_universal_matching_returns_the_attribute_and_filters_nothing(
        client: httpx.AsyncClient) -> None:
    everything = await qido(client, "/studies", PatientID="CHARSET-*")
    assert len(everything) == 6
    for value in ("", "*", "**"):
        got = await qido(client, "/studies", PatientID="CHARSET-*", ReferringPhysicianName=value)
        assert study_uids(got) == study_uids(everything)
    [study] = await qido(client, "/studies", PatientID="Q-PID-C", IssuerOfPatientID="")
    assert "00100021" not in study  # asked for, but the archive does not hold it


async def test_series_level_keys(client: httpx.AsyncClient) -> None:
    scope = f"/studies/{STUDY_A}/series"
    assert values(await qido(client, scope, SeriesDescription="Thorax*"), "0020000E") == [SERIES_A1]
    assert values(await qido(client, scope, BodyPartExamined="CHEST"), "0020000E") == [SERIES_A1]
    assert values(await qido(client, scope, SeriesNumber="2"), "0020000E") == [SERIES_A2]
    assert len(await qido(client, scope, SeriesNumber="1\\2")) == 2
    assert values(await qido(client, scope, SeriesDate="20240101-20240131"), "0020000E") == [SERIES_A1]
    assert values(await qido(client, scope, SeriesTime="1020"), "0020000E") == [SERIES_A1]
    assert await qido(client, scope, Modality="MR") == []


async def test_instance_level_keys(client: httpx.AsyncClient) -> None:
    scope = f"/studies/{STUDY_A}/instances"
    assert len(await qido(client, scope, Rows="32")) == 2
    assert len(await qido(client, scope, InstanceNumber="1\\3")) == 3
    got = await qido(client, scope, SOPClassUID="1.2.840.10008.5.1.4.1.1.88.11", InstanceNumber="2")
    assert len(got) == 1 and got[0]["00200013"]["Value"] == [2]


async def test_patient_keys(client: httpx.AsyncClient) -> None:
    assert study_uids(await qido(client, "/studies", PatientSex="M", PatientID="Q-PID-*")) == {STUDY_B}
    got = await qido(client, "/studies", PatientBirthDate="19800101-19801231")
    assert study_uids(got) == {STUDY_B}


async def test_levels_above_the_path_return_their_default_attributes(client: httpx.AsyncClient) -> None:
    # PS3.18 10.6.3.3: without the study in the path, series results carry the study attributes
    [series] = await qido(client, "/series", SeriesInstanceUID=SERIES_A2)
    assert series["00100010"]["Value"] == [{"Alphabetic": "Smith^John^J"}]
    assert series["00201208"]["Value"] == [5] and series["00201209"]["Value"] == [2]
    [scoped] = await qido(client, f"/studies/{STUDY_A}/series", SeriesInstanceUID=SERIES_A2)
    assert "00100010" not in scoped and "00201208" not in scoped
    # instances without series in the path: series attributes; without study: study attributes
    [instance] = await qido(client, "/instances", SeriesInstanceUID=SERIES_A2, InstanceNumber="1")
    assert instance["00080060"]["Value"] == ["SR"] and instance["00100020"]["Value"] == ["Q-PID-A"]
    [in_study] = await qido(client, f"/studies/{STUDY_A}/instances", SeriesInstanceUID=SERIES_A2,
                            InstanceNumber="1")
    assert in_study["00080060"]["Value"] == ["SR"] and "00100020" not in in_study
    [in_series] = await qido(client, f"/studies/{STUDY_A}/series/{SERIES_A2}/instances",
                             InstanceNumber="1")
    assert "00080060" not in in_series and in_series["00280010"]["Value"] == [32]


async def test_includefield_repeated_and_unknown_names(client: httpx.AsyncClient) -> None:
    resp = await client.get("/dicom-web/studies",
                            params=[("StudyInstanceUID", STUDY_A), ("includefield", "00081030"),
                                    ("includefield", "SOPClassesInStudy,NoSuchThing")])
    assert resp.status_code == 200
    assert "NoSuchThing" in resp.headers["warning"]
    [study] = resp.json()
    assert "00080062" in study and study["00081030"]["Value"] == ["Test study"]


async def test_includefield_all_at_every_level(client: httpx.AsyncClient) -> None:
    [study] = await qido(client, "/studies", StudyInstanceUID=STUDY_A, includefield="all")
    assert {"00080062", "00080090", "00100030"} <= study.keys()
    [series] = await qido(client, f"/studies/{STUDY_A}/series", SeriesInstanceUID=SERIES_A1,
                          includefield="all")
    assert {"00180015", "00080021", "0008103E"} <= series.keys()
    resp = await client.get("/dicom-web/instances", params={"includefield": "all",
                                                            "PatientID": "Q-PID-*"})
    assert "@@BASE@@" not in resp.text and "BulkDataURI" not in resp.text


async def test_study_list_is_ordered_newest_first(client: httpx.AsyncClient) -> None:
    got = await qido(client, "/studies", PatientID="Q-PID-*")
    assert values(got, "00080020") == ["20250620", "20240115", "20230301"]


async def test_paging_edges(client: httpx.AsyncClient) -> None:
    assert await qido(client, "/studies", PatientID="Q-PID-*", offset=3) == []
    assert len(await qido(client, "/studies", PatientID="Q-PID-*", limit=0)) == 3  # server's page size
    resp = await client.get("/dicom-web/studies", params={"PatientID": "Q-PID-*", "limit": 1})
    assert len(resp.json()) == 1 and "warning" not in resp.headers  # the client chose the page size


# ---- settings other than the defaults -------------------------------------------------------
@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def tuned_env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    env = _backend_env(request, tmp_path_factory.mktemp(f"qido-tuned-{request.param}"))
    return env | {"DICOMGW_INDEX_CASE_INSENSITIVE_NAMES": "false",
                  "DICOMGW_HTTP_QIDO_DEFAULT_LIMIT": "2", "DICOMGW_HTTP_QIDO_MAX_LIMIT": "3"}


@pytest_asyncio.fixture(scope="module")
async def tuned(tuned_env: dict[str, str]) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    """An app with exact person-name matching and a small page size (2, at most 3): (client, app)."""
    parts = [make_instance(patient_name=f"Case^Sensitive{i}", patient_id=f"T-{i}", modality=m,
                           study_date=f"2020010{i + 1}")
             for i, m in enumerate(["CT", "MR", "CT", "PT", "US"])]
    async with _running(_settings(tuned_env), parts) as running:
        yield running


async def test_names_are_exact_when_case_insensitive_matching_is_off(
        tuned: tuple[httpx.AsyncClient, Any]) -> None:
    client, _ = tuned
    assert values(await qido(client, "/studies", PatientName="Case^Sensitive1"), "00100020") == ["T-1"]
    assert await qido(client, "/studies", PatientName="case^sensitive1") == []
    assert len(await qido(client, "/studies", PatientName="Case^*", limit=3)) == 3


async def test_more_results_than_the_page_carry_a_warning(tuned: tuple[httpx.AsyncClient, Any]) -> None:
    client, _ = tuned
    resp = await client.get("/dicom-web/studies")
    assert len(resp.json()) == 2
    assert "exceeded the maximum" in resp.headers["warning"]
    resp = await client.get("/dicom-web/studies", params={"limit": 100})
    assert len(resp.json()) == 3
    assert "exceeded the maximum" in resp.headers["warning"]
    resp = await client.get("/dicom-web/studies", params={"limit": 100, "offset": 3})
    assert len(resp.json()) == 2 and "warning" not in resp.headers


async def test_study_list_with_computed_attributes_is_not_n_plus_one(
        tuned: tuple[httpx.AsyncClient, Any]) -> None:
    from sqlalchemy import event

    client, app = tuned
    engine = app.state.runtime.engine.sync_engine
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            statements.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        per_page: dict[int, int] = {}
        for limit in (1, 3):
            statements.clear()
            got = await qido(client, "/studies", limit=limit, includefield="SOPClassesInStudy")
            assert len(got) == limit and all("00201208" in s for s in got)
            per_page[limit] = len(statements)
        statements.clear()
        await qido(client, "/series", limit=3)
        per_page[0] = len(statements)
    finally:
        event.remove(engine, "before_cursor_execute", count)
    # one page query, one for the counts, one per multi-valued computed attribute, whatever the size
    assert per_page[1] == per_page[3] <= 4
    assert per_page[0] <= 5
