"""Research collections over HTTP: the admin API that defines and builds them, and their files.

Admin (dicom.admin): ``POST /admin/collections`` defines a collection or starts its next version,
``GET /admin/collections[/{name}]`` reports progress, ``GET /admin/collections/{name}/lineage`` says which
original each instance came from. With Clean Pixel Data, ``GET
/admin/collections/{name}/versions/{n}/cleaned`` lists the images the cleaner passed with their redaction
boxes, ``.../cleaned/{SOPInstanceUID}`` is such an image (held for review, or as published), and ``POST
/admin/collections/{name}/versions/{n}/publish`` ``{"reject": [SOPInstanceUID...]}`` ends a review: the
rejected images are left out, the others stored. Readers of the collection's partition (``dicom.read`` or
``dicom.read:{name}``) list its complete versions at ``GET /collections/{name}/versions``, may get
presigned URLs to download its objects straight from the object store, where one is configured to be
reached from outside (``GET /collections/{name}/versions/{n|latest}/objects?offset=&limit=``, audited),
and fetch
``/collections/{name}/versions/{n|latest}/{manifest.csv, manifest.parquet, report.json,
exclusions.csv, volumes.csv, nifti/...}``; the instances themselves are DICOMweb at
``{root}/partitions/{name}``.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from dicomgw.auth import ADMIN, READ
from dicomgw.collections import builder
from dicomgw.errors import BadRequest, NotFound
from dicomgw.storage import ObjectNotFound
from dicomgw.web.admin import json_body
from dicomgw.web.deps import RuntimeDep
from dicomgw.web.security import partition_of, requires

router = APIRouter(include_in_schema=False)

_FILE = re.compile(r"^(manifest\.csv|manifest\.parquet|report\.json|exclusions\.csv|volumes\.csv|"
                   r"redactions\.csv|nifti/[0-9.]+\.(nii\.gz|json))$")
MEDIA = {".csv": "text/csv; charset=utf-8", ".parquet": "application/vnd.apache.parquet",
         ".json": "application/json", ".gz": "application/gzip"}


@router.post("/admin/collections", dependencies=[requires(ADMIN)])
async def define_collection(request: Request, runtime: RuntimeDep) -> JSONResponse:
    """Define a collection or start its next version (202: it is built in the background)."""
    definition = builder.Definition.from_json(await json_body(request))
    described = await builder.define(runtime, definition)
    return JSONResponse(described, status_code=202,
                        headers={"Location": f"/admin/collections/{definition.name}"})


@router.get("/admin/collections", dependencies=[requires(ADMIN)])
async def list_collections(runtime: RuntimeDep) -> dict[str, Any]:
    return {"collections": await builder.list_collections(runtime)}


@router.get("/admin/collections/{name}", dependencies=[requires(ADMIN)])
async def describe_collection(name: str, runtime: RuntimeDep) -> dict[str, Any]:
    return await builder.describe(runtime, name)


@router.get("/admin/collections/{name}/lineage", dependencies=[requires(ADMIN)])
async def collection_lineage(name: str, runtime: RuntimeDep) -> dict[str, Any]:
    """Each instance's original (UIDs and SHA-256): never part of what a collection shares."""
    return {"collection": name, "items": await builder.lineage(runtime, name)}


@router.get("/admin/collections/{name}/versions/{version}/cleaned", dependencies=[requires(ADMIN)])
async def collection_cleaned(name: str, version: int, runtime: RuntimeDep) -> dict[str, Any]:
    """The images Clean Pixel Data passed in a version, with the boxes redacted in each frame."""
    return {"collection": name, "version": version, "images": await builder.cleaned(runtime, name, version)}


@router.get("/admin/collections/{name}/versions/{version}/cleaned/{sop_instance_uid}",
            dependencies=[requires(ADMIN)])
async def collection_cleaned_file(name: str, version: int, sop_instance_uid: str,
                                  runtime: RuntimeDep) -> Response:
    data = await builder.cleaned_file(runtime, name, version, sop_instance_uid)
    return Response(data, media_type="application/dicom")


@router.post("/admin/collections/{name}/versions/{version}/publish", dependencies=[requires(ADMIN)])
async def collection_publish(name: str, version: int, request: Request, runtime: RuntimeDep) -> JSONResponse:
    """End a version's review: ``{"reject": [...]}`` left out, every other image held is stored."""
    body = await json_body(request)
    reject = body.get("reject", [])
    if not isinstance(reject, list) or not all(isinstance(u, str) for u in reject):
        raise BadRequest('send {"reject": ["<SOP Instance UID>", ...]} (an empty list approves all)')
    return JSONResponse(await builder.publish(runtime, name, version, reject), status_code=202)


def _collection(request: Request) -> str:
    partition = partition_of(request)
    if partition.kind != "collection":
        raise NotFound(f"{partition.name} is a partition, not a collection")
    return partition.name


@router.get("/collections/{partition}/versions", dependencies=[requires(READ)])
async def collection_versions(request: Request, runtime: RuntimeDep) -> dict[str, Any]:
    name = _collection(request)
    return {"collection": name, "dicomweb": f"partitions/{name}",
            "versions": await builder.published_versions(runtime, name)}


async def _complete(runtime: RuntimeDep, name: str, version: str) -> int:
    """The number of a complete version (``latest``: the last), from the index alone."""
    complete = [v["version"] for v in (await builder.describe(runtime, name))["versions"]
                if v["state"] == "complete"]
    if version == "latest" and complete:
        return int(complete[-1])
    if version.isdigit() and int(version) in complete:
        return int(version)
    raise NotFound(f"the collection {name} has no complete version {version}")


@router.get("/collections/{partition}/versions/{version}/objects", dependencies=[requires(READ)])
async def collection_objects(version: str, request: Request, runtime: RuntimeDep,
                             offset: int = 0, limit: int = 1000) -> dict[str, Any]:
    """Presigned GET URLs of a version's objects in the store (``url`` null: read it with WADO-RS); a
    reader checks each object against the manifest's SHA-256 as for any other read."""
    name = _collection(request)
    number = await _complete(runtime, name, version)
    if offset < 0 or not 1 <= limit <= 5000:
        raise BadRequest("offset is 0 or more, limit 1 to 5000")
    objects, total = await builder.direct_objects(runtime, name, number, offset=offset, limit=limit)
    # the audit middleware records the request with these (the URLs are as good as the objects)
    request.state.audit_studies = list(dict.fromkeys(o["study_instance_uid"] for o in objects))
    request.state.audit_detail = (f"{sum(o['url'] is not None for o in objects)} presigned URLs of "
                                  f"collection {name} version {number}")
    return {"collection": name, "version": number, "total": total, "offset": offset,
            "expiresIn": runtime.settings.storage.presign_seconds, "objects": objects}


@router.get("/collections/{partition}/versions/{version}/{filename:path}", dependencies=[requires(READ)])
async def collection_file(version: str, filename: str, request: Request,
                          runtime: RuntimeDep) -> StreamingResponse:
    name = _collection(request)
    number = await _complete(runtime, name, version)
    if not _FILE.match(filename):
        raise NotFound(f"a collection version has no file {filename}")
    key = builder.artifact_key(name, number, filename)
    try:
        info = await runtime.store.head(key)
    except ObjectNotFound:
        raise NotFound(f"version {number} of {name} has no {filename}") from None
    suffix = "." + filename.rsplit(".", 1)[-1]
    return StreamingResponse(runtime.store.open_stream(key), media_type=MEDIA.get(suffix),
                             headers={"Content-Length": str(info.size),
                                      "X-Collection-Version": str(number)})
