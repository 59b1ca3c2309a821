"""QIDO-RS endpoints (PS3.18 10.6): search for studies, series and instances.

A search that matches nothing answers 200 with an empty array (PS3.18 10.6.3.2 allows 204 as well; OHIF
and dicomweb-client handle an empty array best). A study or series named in the path that does not exist
is such a search: it is a filter on the path scope, not a resource look-up, so it is not a 404.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from dicomgw.auth import READ
from dicomgw.dicom.parse import BULK_BASE
from dicomgw.errors import NotAcceptable
from dicomgw.index.qido import (
    PAGE_ROWS,
    RETRIEVE_URL,
    TRUNCATED,
    Level,
    more_results,
    parse_query,
    search_pages,
)
from dicomgw.web.deps import RuntimeDep, base_url
from dicomgw.web.media import maybe_gzip, parse_accept, streamed_json
from dicomgw.web.security import partition_of, requires

router = APIRouter(tags=["QIDO-RS"], dependencies=[requires(READ)])

DICOM_JSON = "application/dicom+json"
_UNSAFE = re.compile(r'[^\x20-\x7e]|["\\]')


def negotiate(accept: str | None) -> str:
    """The media type of the answer: DICOM JSON (or plain JSON when that is what was asked), or 406."""
    for media_range in parse_accept(accept):
        if media_range.media == "application/json":
            return "application/json"
        if media_range.matches(DICOM_JSON):
            return DICOM_JSON
    raise NotAcceptable("QIDO-RS results are available as application/dicom+json")


def warning_header(warnings: list[str]) -> str:
    """RFC 7234 Warning values (code 299), reduced to printable ASCII without quotes."""
    return ", ".join(f'299 dicomgw "{_UNSAFE.sub("?", w)}"' for w in warnings)


def _retrieve_url(base: str, level: Level, obj: dict[str, Any]) -> str:
    url = f"{base}/studies/{obj['0020000D']['Value'][0]}"
    if level != "study":
        url += f"/series/{obj['0020000E']['Value'][0]}"
    if level == "instance":
        url += f"/instances/{obj['00080018']['Value'][0]}"
    return url


async def _search(request: Request, runtime: RuntimeDep, level: Level,
                  study: str | None = None, series: str | None = None) -> Response:
    """One page of results. An answer that fits in one page of rows (``PAGE_ROWS``) is sent whole;
    a longer one (up to the 10,000 results ``limit`` allows) streams, a page of rows at a time."""
    media = negotiate(request.headers.get("accept"))
    http = runtime.settings.http
    query = parse_query(level, request.query_params.multi_items(),
                        default_limit=http.qido_default_limit, max_limit=http.qido_max_limit,
                        study_uid=study, series_uid=series, partition=partition_of(request).name)
    case_insensitive = runtime.settings.index.case_insensitive_names
    base = base_url(request)
    # the audit trail's "who looked at this study" includes the searches that listed it
    audited: list[str] = []
    request.state.audit_studies = audited

    def encoded(page: list[dict[str, Any]]) -> bytes:
        for obj in page:
            audited.extend(obj["0020000D"]["Value"][:1] if obj.get("0020000D", {}).get("Value") else ())
            obj[RETRIEVE_URL] = {"vr": "UR", "Value": [_retrieve_url(base, level, obj)]}
        # orjson: compact UTF-8, as json.dumps(ensure_ascii=False) gave, in a fifth of the time
        body = b",".join(orjson.dumps(dict(sorted(o.items()))) for o in page)
        # BulkDataURIs nested in sequences of instance metadata carry a placeholder for the DICOMweb root
        return body.replace(BULK_BASE.encode(), orjson.dumps(base)[1:-1])

    session = runtime.index.sessions()
    pages = search_pages(session, query, case_insensitive=case_insensitive, page_rows=PAGE_ROWS)
    streaming = False
    try:
        first: list[dict[str, Any]] = await anext(pages, [])
        if len(first) < PAGE_ROWS or query.limit <= PAGE_ROWS:  # the whole answer
            headers = {"Warning": warning_header(query.warnings)} if query.warnings else {}
            return maybe_gzip(request, b"[" + encoded(first) + b"]", media, headers=headers)
        if query.limit_capped and await more_results(session, query, case_insensitive=case_insensitive):
            query.warnings.append(TRUNCATED)
        headers = {"Warning": warning_header(query.warnings)} if query.warnings else {}

        async def body() -> AsyncIterator[bytes]:
            try:
                yield b"[" + encoded(first)
                async for page in pages:
                    yield b"," + encoded(page)
                yield b"]"
            finally:
                await pages.aclose()
                await session.close()

        streaming = True
        return streamed_json(request, body(), media, headers)
    finally:
        if not streaming:
            await pages.aclose()
            await session.close()


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
