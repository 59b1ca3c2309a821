"""WADO-RS endpoints (PS3.18 10.4): instances, metadata, frames, bulk data, rendered and thumbnails."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from dicomgw.dicom.parse import BULK_BASE, valid_uid
from dicomgw.dicom.render import parse_options, render
from dicomgw.errors import BadRequest, NotAcceptable, NotFound
from dicomgw.index.repository import InstanceRecord
from dicomgw.web.deps import RuntimeDep, base_url
from dicomgw.web.media import EXPLICIT_VR_LITTLE_ENDIAN, maybe_gzip, parse_accept
from dicomgw.web.multipart import Part, multipart_response, once
from dicomgw_retrieve import negotiate, reader

router = APIRouter(tags=["WADO-RS"])

_FRAME_LIST = re.compile(r"^\d+(,\d+)*$")
_TAG = re.compile(r"^[0-9A-Fa-f]{8}$")


async def _records(runtime: RuntimeDep, study: str, series: str | None = None,
                   instance: str | None = None) -> list[InstanceRecord]:
    for uid in (study, series, instance):
        if uid is not None and not valid_uid(uid):
            raise BadRequest("a UID in the path is not a valid UID")
    records = await runtime.index.instances(study, series, instance)
    if not records:
        raise NotFound("no such " + ("instance" if instance else "series" if series else "study"))
    return records


def _location(base: str, r: InstanceRecord) -> str:
    return (f"{base}/studies/{r.study_instance_uid}/series/{r.series_instance_uid}"
            f"/instances/{r.sop_instance_uid}")


# ---- instances --------------------------------------------------------------------------------
async def _retrieve(request: Request, runtime: RuntimeDep, records: list[InstanceRecord],
                    *, single_allowed: bool) -> Response:
    choice = negotiate.instances(parse_accept(request.headers.get("accept")),
                                 single_allowed=single_allowed)
    if not all(reader.can_serve(r, choice.transfer_syntax) for r in records):
        raise NotAcceptable(f"instances cannot be provided in transfer syntax {choice.transfer_syntax}")
    store = runtime.store
    if not choice.multipart:
        record = records[0]
        ts = record.transfer_syntax_uid if choice.transfer_syntax in ("*", record.transfer_syntax_uid) \
            else EXPLICIT_VR_LITTLE_ENDIAN
        return StreamingResponse(reader.instance_bytes(store, record, choice.transfer_syntax),
                                 media_type=f"application/dicom; transfer-syntax={ts}")
    base = base_url(request)

    def parts() -> list[Part]:
        out = []
        for r in records:
            ts = r.transfer_syntax_uid if choice.transfer_syntax in ("*", r.transfer_syntax_uid) \
                else EXPLICIT_VR_LITTLE_ENDIAN
            out.append(Part(f"application/dicom; transfer-syntax={ts}",
                            reader.instance_bytes(store, r, choice.transfer_syntax),
                            _location(base, r)))
        return out

    return multipart_response(parts(), "application/dicom")


@router.get("/studies/{study}")
async def retrieve_study(study: str, request: Request, runtime: RuntimeDep) -> Response:
    return await _retrieve(request, runtime, await _records(runtime, study), single_allowed=False)


@router.get("/studies/{study}/series/{series}")
async def retrieve_series(study: str, series: str, request: Request, runtime: RuntimeDep) -> Response:
    records = await _records(runtime, study, series)
    return await _retrieve(request, runtime, records, single_allowed=False)


@router.get("/studies/{study}/series/{series}/instances/{instance}")
async def retrieve_instance(study: str, series: str, instance: str, request: Request,
                            runtime: RuntimeDep) -> Response:
    records = await _records(runtime, study, series, instance)
    return await _retrieve(request, runtime, records, single_allowed=True)


# ---- metadata ---------------------------------------------------------------------------------
def _metadata(request: Request, records: list[InstanceRecord]) -> Response:
    media = negotiate.metadata(parse_accept(request.headers.get("accept")))
    body = "[" + ",".join(r.metadata_json for r in records) + "]"
    body = body.replace(BULK_BASE, base_url(request))
    return maybe_gzip(request, body.encode(), media)


@router.get("/studies/{study}/metadata")
async def study_metadata(study: str, request: Request, runtime: RuntimeDep) -> Response:
    return _metadata(request, await _records(runtime, study))


@router.get("/studies/{study}/series/{series}/metadata")
async def series_metadata(study: str, series: str, request: Request, runtime: RuntimeDep) -> Response:
    return _metadata(request, await _records(runtime, study, series))


@router.get("/studies/{study}/series/{series}/instances/{instance}/metadata")
async def instance_metadata(study: str, series: str, instance: str, request: Request,
                            runtime: RuntimeDep) -> Response:
    return _metadata(request, await _records(runtime, study, series, instance))


# ---- frames -----------------------------------------------------------------------------------
def _frame_numbers(frame_list: str) -> list[int]:
    if not _FRAME_LIST.match(frame_list):
        raise BadRequest("frame list must be comma-separated frame numbers")
    numbers = [int(n) for n in frame_list.split(",")]
    if any(n < 1 for n in numbers):
        raise BadRequest("frame numbers start at 1")
    return numbers


@router.get("/studies/{study}/series/{series}/instances/{instance}/frames/{frame_list}")
async def retrieve_frames(study: str, series: str, instance: str, frame_list: str, request: Request,
                          runtime: RuntimeDep) -> Response:
    numbers = _frame_numbers(frame_list)
    [record] = await _records(runtime, study, series, instance)
    choice = negotiate.frames(parse_accept(request.headers.get("accept")),
                              record.transfer_syntax_uid, count=len(numbers))
    data = await reader.frames(runtime.store, record, numbers, choice.transfer_syntax)
    ts = record.transfer_syntax_uid if choice.transfer_syntax == "*" else EXPLICIT_VR_LITTLE_ENDIAN
    part_type = choice.media_type
    if part_type == "application/octet-stream":
        part_type = f"application/octet-stream; transfer-syntax={ts}"
    else:
        part_type = f"{part_type}; transfer-syntax={ts}"
    if not choice.multipart:
        return Response(data[0], media_type=part_type)
    location = _location(base_url(request), record) + "/frames/"
    parts = [Part(part_type, once(frame), location + str(n)) for n, frame in zip(numbers, data,
                                                                                 strict=True)]
    return multipart_response(parts, choice.media_type)


# ---- bulk data --------------------------------------------------------------------------------
@router.get("/studies/{study}/series/{series}/instances/{instance}/bulkdata/{tag}")
async def retrieve_bulkdata(study: str, series: str, instance: str, tag: str, request: Request,
                            runtime: RuntimeDep) -> Response:
    if not _TAG.match(tag):
        raise BadRequest("bulk data is addressed by an 8-digit hexadecimal tag")
    [record] = await _records(runtime, study, series, instance)
    choice = negotiate.bulkdata(parse_accept(request.headers.get("accept")))
    tag = tag.upper()
    if tag not in record.layout.get("bulk", {}) and not record.layout.get("deflated"):
        raise NotFound("no bulk data at that tag")
    body = reader.bulk_value(runtime.store, record, tag)
    if not choice.multipart:
        return StreamingResponse(body, media_type="application/octet-stream")
    return multipart_response([Part("application/octet-stream", body)], "application/octet-stream")


# ---- rendered and thumbnails ------------------------------------------------------------------
async def _render_one(request: Request, runtime: RuntimeDep, record: InstanceRecord, frame: int,
                      *, thumbnail: bool = False) -> tuple[str, bytes]:
    media = negotiate.rendered(parse_accept(request.headers.get("accept")))
    params = request.query_params
    viewport = params.get("viewport") or ("128,128" if thumbnail else None)
    options = parse_options(media, params.get("window"), viewport, params.get("quality"))
    original = await reader.read_part10(runtime.store, record)
    return media, await asyncio.to_thread(render, original, frame, options)


def _representative(records: list[InstanceRecord]) -> InstanceRecord:
    images = [r for r in records if r.layout.get("pixel", {}).get("Rows")]
    if not images:
        raise NotFound("nothing to render")
    return images[len(images) // 2]


@router.get("/studies/{study}/series/{series}/instances/{instance}/rendered")
async def rendered_instance(study: str, series: str, instance: str, request: Request,
                            runtime: RuntimeDep) -> Response:
    [record] = await _records(runtime, study, series, instance)
    media, data = await _render_one(request, runtime, record, 0)
    return Response(data, media_type=media)


@router.get("/studies/{study}/series/{series}/instances/{instance}/frames/{frame_list}/rendered")
async def rendered_frame(study: str, series: str, instance: str, frame_list: str, request: Request,
                         runtime: RuntimeDep) -> Response:
    numbers = _frame_numbers(frame_list)
    [record] = await _records(runtime, study, series, instance)
    media, data = await _render_one(request, runtime, record, numbers[0] - 1)
    return Response(data, media_type=media)


async def _rendered_many(request: Request, runtime: RuntimeDep,
                         records: list[InstanceRecord]) -> Response:
    images = [r for r in records if r.layout.get("pixel", {}).get("Rows")]
    if not images:
        raise NotFound("nothing to render")
    media = negotiate.rendered(parse_accept(request.headers.get("accept")))

    async def part_body(record: InstanceRecord) -> AsyncIterator[bytes]:
        yield (await _render_one(request, runtime, record, 0))[1]

    base = base_url(request)
    parts = [Part(media, part_body(r), _location(base, r) + "/rendered") for r in images]
    return multipart_response(parts, media)


@router.get("/studies/{study}/rendered")
async def rendered_study(study: str, request: Request, runtime: RuntimeDep) -> Response:
    return await _rendered_many(request, runtime, await _records(runtime, study))


@router.get("/studies/{study}/series/{series}/rendered")
async def rendered_series(study: str, series: str, request: Request, runtime: RuntimeDep) -> Response:
    return await _rendered_many(request, runtime, await _records(runtime, study, series))


@router.get("/studies/{study}/thumbnail")
async def study_thumbnail(study: str, request: Request, runtime: RuntimeDep) -> Response:
    record = _representative(await _records(runtime, study))
    media, data = await _render_one(request, runtime, record, 0, thumbnail=True)
    return Response(data, media_type=media)


@router.get("/studies/{study}/series/{series}/thumbnail")
async def series_thumbnail(study: str, series: str, request: Request, runtime: RuntimeDep) -> Response:
    record = _representative(await _records(runtime, study, series))
    media, data = await _render_one(request, runtime, record, 0, thumbnail=True)
    return Response(data, media_type=media)


@router.get("/studies/{study}/series/{series}/instances/{instance}/thumbnail")
async def instance_thumbnail(study: str, series: str, instance: str, request: Request,
                             runtime: RuntimeDep) -> Response:
    [record] = await _records(runtime, study, series, instance)
    media, data = await _render_one(request, runtime, record, 0, thumbnail=True)
    return Response(data, media_type=media)


@router.get("/studies/{study}/series/{series}/instances/{instance}/frames/{frame_list}/thumbnail")
async def frame_thumbnail(study: str, series: str, instance: str, frame_list: str, request: Request,
                          runtime: RuntimeDep) -> Response:
    numbers = _frame_numbers(frame_list)
    [record] = await _records(runtime, study, series, instance)
    media, data = await _render_one(request, runtime, record, numbers[0] - 1, thumbnail=True)
    return Response(data, media_type=media)
