"""WADO-RS endpoints (PS3.18 10.4): instances, metadata, frames, bulk data, rendered and thumbnails."""

from __future__ import annotations

import asyncio
import re
from collections import deque
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from dicomgw import originals
from dicomgw.auth import READ
from dicomgw.dicom.frames import PixelDataUndecodable
from dicomgw.dicom.parse import BULK_BASE, valid_uid
from dicomgw.dicom.render import RenderOptions, parse_options
from dicomgw.errors import BadRequest, NotAcceptable, NotFound
from dicomgw.index.repository import InstanceRecord
from dicomgw.web.deps import RuntimeDep, base_url
from dicomgw.web.media import (
    EXPLICIT_VR_LITTLE_ENDIAN,
    MediaRange,
    accepts_gzip,
    gzip_stream,
    parse_accept,
)
from dicomgw.web.multipart import Part, multipart_response, once, started
from dicomgw.web.security import partition_of, requires
from dicomgw_retrieve import negotiate, reader

router = APIRouter(tags=["WADO-RS"], dependencies=[requires(READ)])

_FRAME_LIST = re.compile(r"^\d{1,9}(,\d{1,9})*$")
_TAG = re.compile(r"^[0-9A-Fa-f]{8}$")
THUMBNAIL_VIEWPORT = "128,128"
METADATA_CHUNK = 64 * 1024


async def _records(request: Request, runtime: RuntimeDep, study: str, series: str | None = None,
                   instance: str | None = None) -> list[InstanceRecord]:
    for uid in (study, series, instance):
        if uid is not None and not valid_uid(uid):
            raise BadRequest("a UID in the path is not a valid UID")
    records = await runtime.index.instances(study, series, instance,
                                            partition=partition_of(request).name)
    if not records:
        raise NotFound("no such " + ("instance" if instance else "series" if series else "study"))
    return records


def _location(base: str, r: InstanceRecord) -> str:
    return (f"{base}/studies/{r.study_instance_uid}/series/{r.series_instance_uid}"
            f"/instances/{r.sop_instance_uid}")


def _accept(request: Request) -> list[MediaRange]:
    return parse_accept(request.headers.get("accept"))


# ---- instances --------------------------------------------------------------------------------
def _dicom_type(transfer_syntax: str) -> str:
    return f"application/dicom; transfer-syntax={transfer_syntax}"


async def _instance_part(runtime: RuntimeDep, record: InstanceRecord, transfer_syntax: str,
                         location: str, *, strict: bool) -> Part:
    """One instance as a part: the original streamed, or re-encoded when the request needs it.

    When re-encoding fails (pixel data no codec here can read) and not ``strict``, the original is
    sent instead, its part Content-Type saying its real transfer syntax.
    """
    store = runtime.store
    if not reader.serves_original(record, transfer_syntax):
        try:
            data = await reader.transcoded(store, record, transfer_syntax)
        except PixelDataUndecodable:
            if strict:
                raise
        else:
            target = transfer_syntax or EXPLICIT_VR_LITTLE_ENDIAN
            return Part(_dicom_type(target), once(data), location)
    return Part(_dicom_type(record.transfer_syntax_uid), reader.original_stream(store, record),
                location)


async def _retrieve(request: Request, runtime: RuntimeDep, records: list[InstanceRecord],
                    *, single_allowed: bool) -> Response:
    """Instances in the negotiated syntax. A syntax asked for by name that one instance cannot be
    re-encoded into is a 406 when that instance is alone (the status line has not gone out yet);
    within a series or study, and when no syntax was named, that instance comes as stored.
    """
    choice = negotiate.instances(_accept(request), {r.transfer_syntax_uid for r in records},
                                 single_allowed=single_allowed)
    base = base_url(request)
    syntax = choice.transfer_syntax
    if len(records) == 1:
        part = await _instance_part(runtime, records[0], syntax, _location(base, records[0]),
                                    strict=syntax != negotiate.DEFAULT)
        part.body = await started(part.body)
        if not choice.multipart:
            return StreamingResponse(part.body, media_type=part.content_type)
        return multipart_response([part], "application/dicom")

    async def parts() -> AsyncIterator[Part]:
        # Read ahead: the next originals are read (small ones whole) while this one is being sent,
        # up to READ_AHEAD_BYTES, so that the network never waits for the disk or the object store.
        ahead: deque[tuple[int, asyncio.Task[Part]]] = deque()
        queued = 0
        pending = iter(records)
        try:
            while True:
                for record in pending:
                    task = asyncio.create_task(_read_ahead(runtime, record, syntax, base))
                    ahead.append((record.size, task))
                    queued += record.size
                    if queued >= READ_AHEAD_BYTES:
                        break
                if not ahead:
                    return
                size, task = ahead.popleft()
                queued -= size
                yield await task
        finally:
            for _, task in ahead:
                task.cancel()

    sizes = None
    if all(reader.serves_original(r, syntax) for r in records):
        sizes = [(_dicom_type(r.transfer_syntax_uid), _location(base, r), reader.served_size(r))
                 for r in records]
    return multipart_response(await started(parts()), "application/dicom", sizes=sizes)


READ_AHEAD_BYTES = 16 << 20
# originals up to this size are read whole ahead of sending; larger ones stream
WHOLE_READ_BYTES = 4 << 20


async def _read_ahead(runtime: RuntimeDep, record: InstanceRecord, syntax: str, base: str) -> Part:
    part = await _instance_part(runtime, record, syntax, _location(base, record), strict=False)
    if record.size <= WHOLE_READ_BYTES:
        part.body = once(b"".join([chunk async for chunk in part.body]))
    else:
        part.body = await started(part.body)
    return part


@router.get("/studies/{study}")
async def retrieve_study(study: str, request: Request, runtime: RuntimeDep) -> Response:
    return await _retrieve(request, runtime, await _records(request, runtime, study), single_allowed=False)


@router.get("/studies/{study}/series/{series}")
async def retrieve_series(study: str, series: str, request: Request, runtime: RuntimeDep) -> Response:
    records = await _records(request, runtime, study, series)
    return await _retrieve(request, runtime, records, single_allowed=False)


@router.get("/studies/{study}/series/{series}/instances/{instance}")
async def retrieve_instance(study: str, series: str, instance: str, request: Request,
                            runtime: RuntimeDep) -> Response:
    records = await _records(request, runtime, study, series, instance)
    return await _retrieve(request, runtime, records, single_allowed=True)


# ---- metadata ---------------------------------------------------------------------------------
async def _metadata_chunks(records: list[InstanceRecord], base: str) -> AsyncIterator[bytes]:
    """The JSON array, joined from the stored per-instance JSON, in chunks of ~64 KiB."""
    buffer = ["["]
    size = 1
    for i, record in enumerate(records):
        text = record.metadata_json.replace(BULK_BASE, base)
        buffer.append(("," if i else "") + text)
        size += len(text)
        if size >= METADATA_CHUNK:
            yield "".join(buffer).encode()
            buffer, size = [], 0
    buffer.append("]")
    yield "".join(buffer).encode()


def _metadata(request: Request, records: list[InstanceRecord]) -> Response:
    media = negotiate.metadata(_accept(request))
    chunks = _metadata_chunks(records, base_url(request))
    headers = {"Vary": "Accept-Encoding"}
    if accepts_gzip(request):
        headers["Content-Encoding"] = "gzip"
        chunks = gzip_stream(chunks)
    return StreamingResponse(chunks, media_type=media, headers=headers)


@router.get("/studies/{study}/metadata")
async def study_metadata(study: str, request: Request, runtime: RuntimeDep) -> Response:
    return _metadata(request, await _records(request, runtime, study))


@router.get("/studies/{study}/series/{series}/metadata")
async def series_metadata(study: str, series: str, request: Request, runtime: RuntimeDep) -> Response:
    return _metadata(request, await _records(request, runtime, study, series))


@router.get("/studies/{study}/series/{series}/instances/{instance}/metadata")
async def instance_metadata(study: str, series: str, instance: str, request: Request,
                            runtime: RuntimeDep) -> Response:
    return _metadata(request, await _records(request, runtime, study, series, instance))


# ---- frames -----------------------------------------------------------------------------------
def _frame_numbers(frame_list: str) -> list[int]:
    if not _FRAME_LIST.match(frame_list):
        raise BadRequest("the frame list must be comma-separated frame numbers")
    numbers = [int(n) for n in frame_list.split(",")]
    if any(n < 1 for n in numbers):
        raise BadRequest("frame numbers start at 1")
    return numbers


def _frame_type(media_type: str, frame: reader.Frame) -> str:
    return f"{media_type}; transfer-syntax={frame.transfer_syntax}"


@router.get("/studies/{study}/series/{series}/instances/{instance}/frames/{frame_list}")
async def retrieve_frames(study: str, series: str, instance: str, frame_list: str, request: Request,
                          runtime: RuntimeDep) -> Response:
    numbers = _frame_numbers(frame_list)
    [record] = await _records(request, runtime, study, series, instance)
    compact = await reader.compact_syntax(runtime.store, record)
    choice = negotiate.frames(_accept(request), record.transfer_syntax_uid, count=len(numbers),
                              compact=compact)
    count = reader.frame_count(record)
    if max(numbers) > count:
        raise NotFound(f"the instance has {count} frame(s)")
    if choice.media_type != "application/octet-stream" and not reader.ranges_usable(record):
        raise NotAcceptable("the stored fragments of this instance do not map to frames: frames "
                            "are available as uncompressed application/octet-stream only")
    store, syntax = runtime.store, choice.transfer_syntax
    # the first frame before the status line, so that a frame that cannot be decoded is a 406
    first = await reader.frame(store, record, numbers[0], syntax)
    if not choice.multipart:
        return Response(first.data, media_type=_frame_type(choice.media_type, first))
    location = _location(base_url(request), record) + "/frames/"

    async def parts() -> AsyncIterator[Part]:
        yield Part(_frame_type(choice.media_type, first), once(first.data), location + str(numbers[0]))
        rest = reader.in_order(lambda n: reader.frame(store, record, n, syntax), numbers[1:])
        async for n, frame in rest:
            yield Part(_frame_type(choice.media_type, frame), once(frame.data), location + str(n))

    return multipart_response(parts(), choice.media_type)


# ---- bulk data --------------------------------------------------------------------------------
@router.get("/studies/{study}/series/{series}/instances/{instance}/bulkdata/{tag}")
async def retrieve_bulkdata(study: str, series: str, instance: str, tag: str, request: Request,
                            runtime: RuntimeDep) -> Response:
    if not _TAG.match(tag):
        raise BadRequest("bulk data is addressed by an 8-digit hexadecimal tag")
    [record] = await _records(request, runtime, study, series, instance)
    choice = negotiate.bulkdata(_accept(request))
    tag = tag.upper()
    located = reader.bulk_location(record, tag)
    headers: dict[str, str] = {}
    if located is not None:
        offset, length = located
        body = await started(originals.stream(runtime.store, record.copy, start=offset, length=length))
        headers["Content-Length"] = str(length)
    else:
        value = None
        if record.layout.get("deflated") or tag in record.layout.get("bulk", {}):
            value = await reader.bulk_value(runtime.store, record, tag)
        if value is None:
            raise NotFound("no bulk data at that tag")
        body = once(value)
        headers["Content-Length"] = str(len(value))
    if not choice.multipart:
        return StreamingResponse(body, media_type="application/octet-stream", headers=headers)
    return multipart_response([Part("application/octet-stream", body)], "application/octet-stream")


# ---- rendered and thumbnails ------------------------------------------------------------------
def _options(request: Request, *, thumbnail: bool) -> RenderOptions:
    media = negotiate.rendered(_accept(request))
    params = request.query_params
    viewport = params.get("viewport") or (THUMBNAIL_VIEWPORT if thumbnail else None)
    return parse_options(media, params.get("window"), viewport, params.get("quality"),
                         enlarge=not thumbnail)


async def _render_response(request: Request, runtime: RuntimeDep, record: InstanceRecord,
                           frame_number: int = 1, *, thumbnail: bool = False) -> Response:
    options = _options(request, thumbnail=thumbnail)
    data = await reader.rendered(runtime.store, record, frame_number - 1, options)
    return Response(data, media_type=options.media_type)


def _images(records: list[InstanceRecord]) -> list[InstanceRecord]:
    images = [r for r in records if r.layout.get("pixel", {}).get("Rows")]
    if not images:
        raise NotFound("nothing to render: no instance with an image")
    return images


def _representative(records: list[InstanceRecord]) -> InstanceRecord:
    """The middle image of a series or study (in series, then instance-number order)."""
    images = _images(records)
    return images[len(images) // 2]


async def _rendered_many(request: Request, runtime: RuntimeDep,
                         records: list[InstanceRecord]) -> Response:
    """Every image rendered, one part each; images that cannot be decoded are left out."""
    options = _options(request, thumbnail=False)
    base = base_url(request)
    images = _images(records)
    store = runtime.store

    async def render(record: InstanceRecord) -> bytes | None:
        try:
            return await reader.rendered(store, record, 0, options)
        except (PixelDataUndecodable, NotFound):
            return None

    first = await reader.rendered(store, images[0], 0, options)

    async def parts() -> AsyncIterator[Part]:
        yield Part(options.media_type, once(first), _location(base, images[0]) + "/rendered")
        results = reader.in_order(lambda i: render(images[i]), list(range(1, len(images))), window=2)
        async for i, data in results:
            if data is not None:
                yield Part(options.media_type, once(data), _location(base, images[i]) + "/rendered")

    return multipart_response(parts(), options.media_type)


@router.get("/studies/{study}/series/{series}/instances/{instance}/rendered")
async def rendered_instance(study: str, series: str, instance: str, request: Request,
                            runtime: RuntimeDep) -> Response:
    [record] = await _records(request, runtime, study, series, instance)
    return await _render_response(request, runtime, record)


@router.get("/studies/{study}/series/{series}/instances/{instance}/frames/{frame_list}/rendered")
async def rendered_frame(study: str, series: str, instance: str, frame_list: str, request: Request,
                         runtime: RuntimeDep) -> Response:
    numbers = _frame_numbers(frame_list)
    if len(numbers) != 1:
        raise BadRequest("a rendered frame is addressed by one frame number")
    [record] = await _records(request, runtime, study, series, instance)
    return await _render_response(request, runtime, record, numbers[0])


@router.get("/studies/{study}/rendered")
async def rendered_study(study: str, request: Request, runtime: RuntimeDep) -> Response:
    return await _rendered_many(request, runtime, await _records(request, runtime, study))


@router.get("/studies/{study}/series/{series}/rendered")
async def rendered_series(study: str, series: str, request: Request, runtime: RuntimeDep) -> Response:
    return await _rendered_many(request, runtime, await _records(request, runtime, study, series))


@router.get("/studies/{study}/thumbnail")
async def study_thumbnail(study: str, request: Request, runtime: RuntimeDep) -> Response:
    record = _representative(await _records(request, runtime, study))
    return await _render_response(request, runtime, record, thumbnail=True)


@router.get("/studies/{study}/series/{series}/thumbnail")
async def series_thumbnail(study: str, series: str, request: Request, runtime: RuntimeDep) -> Response:
    record = _representative(await _records(request, runtime, study, series))
    return await _render_response(request, runtime, record, thumbnail=True)


@router.get("/studies/{study}/series/{series}/instances/{instance}/thumbnail")
async def instance_thumbnail(study: str, series: str, instance: str, request: Request,
                             runtime: RuntimeDep) -> Response:
    [record] = await _records(request, runtime, study, series, instance)
    return await _render_response(request, runtime, record, thumbnail=True)


@router.get("/studies/{study}/series/{series}/instances/{instance}/frames/{frame_list}/thumbnail")
async def frame_thumbnail(study: str, series: str, instance: str, frame_list: str, request: Request,
                          runtime: RuntimeDep) -> Response:
    numbers = _frame_numbers(frame_list)
    [record] = await _records(request, runtime, study, series, instance)
    return await _render_response(request, runtime, record, numbers[0], thumbnail=True)
