"""QIDO-RS endpoints (PS3.18 10.6): search for studies, series and instances."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from dicomgw.dicom.parse import valid_uid
from dicomgw.errors import BadRequest, NotAcceptable
from dicomgw.index.qido import RETRIEVE_URL, Level, parse_query, search
from dicomgw.web.deps import RuntimeDep, base_url
from dicomgw.web.media import maybe_gzip

router = APIRouter(tags=["QIDO-RS"])

DICOM_JSON = "application/dicom+json"
_ACCEPTABLE = {"*/*", "application/*", DICOM_JSON, "application/json"}


def _negotiate(request: Request) -> str:
    accept = request.headers.get("accept", "")
    if not accept.strip():
        return DICOM_JSON
    for item in accept.split(","):
        media = item.split(";")[0].strip().lower()
        if media in _ACCEPTABLE:
            return "application/json" if media == "application/json" else DICOM_JSON
    raise NotAcceptable("QIDO-RS results are available as application/dicom+json")


def _check_uids(*uids: str | None) -> None:
    for uid in uids:
        if uid is not None and not valid_uid(uid):
            raise BadRequest("a UID in the path is not a valid UID")


def _retrieve_url(base: str, level: Level, obj: dict[str, Any]) -> str:
    study = obj["0020000D"]["Value"][0]
    if level == "study":
        return f"{base}/studies/{study}"
    series = obj["0020000E"]["Value"][0]
    if level == "series":
        return f"{base}/studies/{study}/series/{series}"
    return f"{base}/studies/{study}/series/{series}/instances/{obj['00080018']['Value'][0]}"


async def _search(request: Request, runtime: RuntimeDep, level: Level,
                  study: str | None = None, series: str | None = None) -> Response:
    _check_uids(study, series)
    media = _negotiate(request)
    http = runtime.settings.http
    query = parse_query(level, list(request.query_params.multi_items()),
                        default_limit=http.qido_default_limit, max_limit=http.qido_max_limit)
    if study is not None and level != "study":
        query.include.add("0020000D")
    async with runtime.index.sessions() as session:
        results = await search(session, query, study_uid=study, series_uid=series,
                               case_insensitive=runtime.settings.index.case_insensitive_names)
    base = base_url(request)
    for obj in results:
        obj[RETRIEVE_URL] = {"vr": "UR", "Value": [_retrieve_url(base, level, obj)]}
    headers = {}
    if query.warnings:
        headers["Warning"] = ", ".join(f'299 dicomgw "{w}"' for w in query.warnings)
    body = json.dumps([dict(sorted(o.items())) for o in results], ensure_ascii=False,
                      separators=(",", ":"))
    return maybe_gzip(request, body.encode(), media, headers=headers)


@router.get("/studies")
async def search_studies(request: Request, runtime: RuntimeDep) -> Response:
    return await _search(request, runtime, "study")


@router.get("/series")
async def search_all_series(request: Request, runtime: RuntimeDep) -> Response:
    return await _search(request, runtime, "series")


@router.get("/instances")
async def search_all_instances(request: Request, runtime: RuntimeDep) -> Response:
    return await _search(request, runtime, "instance")


@router.get("/studies/{study}/series")
async def search_study_series(study: str, request: Request, runtime: RuntimeDep) -> Response:
    return await _search(request, runtime, "series", study=study)


@router.get("/studies/{study}/instances")
async def search_study_instances(study: str, request: Request, runtime: RuntimeDep) -> Response:
    return await _search(request, runtime, "instance", study=study)


@router.get("/studies/{study}/series/{series}/instances")
async def search_series_instances(study: str, series: str, request: Request,
                                  runtime: RuntimeDep) -> Response:
    return await _search(request, runtime, "instance", study=study, series=series)
