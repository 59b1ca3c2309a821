"""Operational endpoints outside the DICOMweb root: liveness, readiness and integrity status.

/healthz and /readyz answer anybody (kubelets and load balancers carry no credentials); /metrics too,
unless ``auth.protect_metrics``; /admin/* needs dicom.admin.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text

from dicomgw.auth import ADMIN
from dicomgw.errors import BadRequest
from dicomgw.metrics import exposition, set_integrity, set_prices
from dicomgw.partitions import check_name, parse_policy
from dicomgw.status import integrity_status
from dicomgw.web.deps import RuntimeDep, dicomweb_root
from dicomgw.web.security import authorize, requires

router = APIRouter(include_in_schema=False)

# a probe that takes longer than this counts as a back end away (kubelet probes time out at 1-10 s)
READY_PROBE_SECONDS = 3


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(runtime: RuntimeDep) -> JSONResponse:
    """Readiness: the index answers and the object store is reachable, each within a few seconds.

    While either is away the process stays alive (``/healthz``) but takes no traffic from a load
    balancer or Kubernetes Service.
    """

    async def index() -> None:
        async with runtime.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def store() -> None:
        await runtime.store.exists("readyz-probe")

    checks: dict[str, str] = {}
    for name, probe in (("index", index), ("store", store)):
        try:
            await asyncio.wait_for(probe(), READY_PROBE_SECONDS)
            checks[name] = "ok"
        except Exception as exc:
            checks[name] = type(exc).__name__
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)


@router.get("/metrics")
async def metrics(runtime: RuntimeDep, request: Request) -> Response:
    """Prometheus exposition; integrity gauges are refreshed from the index on each scrape."""
    if runtime.settings.auth.protect_metrics:
        await authorize(request, ADMIN)
    if runtime.settings.metrics_integrity:
        set_integrity(await integrity_status(runtime.index, replica_enabled=runtime.replica is not None))
        cost = runtime.settings.cost
        set_prices(cost.primary_per_tb_month, cost.replica_per_tb_month, cost.cold_per_tb_month)
    return Response(exposition(), media_type=CONTENT_TYPE_LATEST)


@router.get("/admin/status", dependencies=[requires(ADMIN)])
async def status(runtime: RuntimeDep) -> dict[str, Any]:
    """Counts of verified, pending, damaged and replicated originals, and the oldest unverified age."""
    return await integrity_status(runtime.index, replica_enabled=runtime.replica is not None)


@router.get("/admin/partitions", dependencies=[requires(ADMIN)])
async def list_partitions(runtime: RuntimeDep) -> dict[str, Any]:
    """Every partition: name, kind (archive or collection), read-only, description, created."""
    return {"partitions": [p.as_json() for p in await runtime.partitions.list()]}


@router.post("/admin/partitions", dependencies=[requires(ADMIN)], status_code=201)
async def create_partition(request: Request, runtime: RuntimeDep) -> JSONResponse:
    """Create an archive partition: ``{"name": "hospital-a", "description": "..."}``.

    409 when the name is taken, 400 when it is not a valid name (lower-case letters, digits and
    inner hyphens, at most 63). Collections make their own (read-only) partitions.
    """
    body = await json_body(request)
    name, description = body.get("name"), body.get("description", "")
    if not isinstance(name, str) or not isinstance(description, str):
        raise BadRequest('send {"name": "...", "description": "..."}')
    info = await runtime.partitions.create(check_name(name), description=description,
                                           policy=parse_policy(body))
    return JSONResponse(info.as_json(), status_code=201,
                        headers={"Location": f"{dicomweb_root(request)}/partitions/{info.name}"})


@router.patch("/admin/partitions/{name}", dependencies=[requires(ADMIN)])
async def change_partition(name: str, request: Request, runtime: RuntimeDep) -> dict[str, Any]:
    """Change a partition's storage lifecycle: ``{"compactAfterSeconds": 0, "coldAfterSeconds":
    31536000}`` (seconds after ingest; negative: never; null: the deployment's setting). 404 for no
    such partition, 400 for anything but numbers or null."""
    policy = parse_policy(await json_body(request))
    if not policy:
        raise BadRequest("send compactAfterSeconds and/or coldAfterSeconds")
    return (await runtime.partitions.set_policy(name, policy)).as_json()


async def json_body(request: Request) -> dict[str, Any]:
    """The request's JSON object, or a 400 problem."""
    try:
        body = await request.json()
    except ValueError:
        raise BadRequest("the body is not JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("the body is not a JSON object")
    return body
