"""STOW-RS endpoints: POST /studies and POST /studies/{study} (PS3.18 10.5)."""

from __future__ import annotations

import json

from fastapi import APIRouter, Request
from fastapi.responses import Response

from dicomgw.auth import WRITE
from dicomgw.dicom.parse import valid_uid
from dicomgw.errors import (
    RETRY_AFTER_SECONDS,
    BadRequest,
    MethodNotAllowed,
    NotAcceptable,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from dicomgw.ingest import StowOutcome, count_outcomes, store_parts
from dicomgw.multipart import idle_limited, parse_media_type, spool_parts, spool_single
from dicomgw.web.deps import RuntimeDep, base_url
from dicomgw.web.security import partition_of, requires
from dicomgw_ingest.stow import response_dataset

router = APIRouter(tags=["STOW-RS"], dependencies=[requires(WRITE)])

DICOM_JSON = "application/dicom+json"


def _check_accept(request: Request) -> None:
    accept = request.headers.get("accept", "").lower()
    if not accept or any(
        m.split(";")[0].strip() in ("*/*", "application/*", DICOM_JSON, "application/json")
        for m in accept.split(",")
    ):
        return
    raise NotAcceptable("STOW-RS responses are available as application/dicom+json")


async def _stow(request: Request, runtime: RuntimeDep, study_uid: str | None) -> Response:
    if study_uid is not None and not valid_uid(study_uid):
        raise BadRequest("the Study Instance UID in the URL is not a valid UID")
    _check_accept(request)
    partition = partition_of(request)
    if partition.read_only:
        raise MethodNotAllowed(f"the partition {partition.name} is read-only: it is a {partition.kind}, "
                               "written by the archive itself")
    settings = runtime.settings
    max_bytes = settings.http.max_request_bytes
    length = request.headers.get("content-length")
    if max_bytes and length and length.isdigit() and int(length) > max_bytes:
        raise PayloadTooLarge(f"request body exceeds {max_bytes} bytes")
    coding = request.headers.get("content-encoding", "identity").strip().lower()
    if coding not in ("", "identity"):
        # RFC 9110 15.5.16: a content coding the server does not take is a 415
        raise UnsupportedMediaType(f"Content-Encoding {coding} is not accepted: send the parts as they are")
    media, params = parse_media_type(request.headers.get("content-type", ""))
    body = idle_limited(request.stream(), settings.http.body_idle_seconds)
    if media == "multipart/related":
        part_type = params.get("type", "application/dicom").lower()
        if part_type != "application/dicom":
            raise UnsupportedMediaType(
                f"multipart/related parts of type {part_type} are not supported; "
                "send type=\"application/dicom\""
            )
        boundary = params.get("boundary")
        if not boundary:
            raise BadRequest("multipart/related Content-Type without a boundary parameter")
        parts = spool_parts(body, boundary, settings.spool_path, max_bytes=max_bytes)
    elif media == "application/dicom":
        single = await spool_single(body, settings.spool_path, max_bytes=max_bytes)

        async def _one():  # type: ignore[no-untyped-def]
            yield single

        parts = _one()
    else:
        raise UnsupportedMediaType(
            'send multipart/related; type="application/dicom" (or a single application/dicom body)'
        )
    outcome: StowOutcome = await store_parts(runtime, parts, study_uid, partition.name)
    if not outcome.results:
        raise BadRequest("the request contained no parts")
    count_outcomes(outcome)
    request.state.audit_studies = [r.study_instance_uid for r in outcome.results if r.study_instance_uid]
    dataset = response_dataset(outcome, base_url(request), study_uid)
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if outcome.status_code == 503 else None
    return Response(json.dumps(dataset), status_code=outcome.status_code, media_type=DICOM_JSON,
                    headers=headers)


@router.post("/studies")
async def store_instances(request: Request, runtime: RuntimeDep) -> Response:
    """Store instances of any studies."""
    return await _stow(request, runtime, None)


@router.post("/studies/{study}")
async def store_study_instances(study: str, request: Request, runtime: RuntimeDep) -> Response:
    """Store instances that must belong to the study in the URL (0xA900 otherwise)."""
    return await _stow(request, runtime, study)
