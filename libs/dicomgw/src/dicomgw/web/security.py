"""Each route declares the scope it needs; this dependency checks the request's credential for it.

    router = APIRouter(dependencies=[requires(READ)])

No credential or an invalid one: 401 with a Bearer challenge; a valid one without the scope: 403;
both application/problem+json (``dicomgw.errors``). DICOMweb routes are in a partition (the ``partition``
path parameter of ``/partitions/{partition}/...``, else ``default``): a credential with no scope at all
for that partition gets 404, as for a partition that does not exist, so that names do not leak.
CORS preflights never get here: the CORS middleware answers them before routing. The Principal is left
on ``request.state.principal``.
"""

from __future__ import annotations

from typing import Any

from fastapi import Depends, Request

from dicomgw.auth import ADMIN, Principal
from dicomgw.errors import Forbidden, NotFound, Unauthorized
from dicomgw.partitions import DEFAULT, PartitionInfo
from dicomgw.runtime import Runtime


async def authorize(request: Request, scope: str) -> Principal:
    """The request's Principal if its credential grants ``scope``; Unauthorized or Forbidden if not.

    For the partitioned scopes, the partition's PartitionInfo is left on ``request.state.partition``.
    """
    runtime: Runtime = request.app.state.runtime
    try:
        principal = await runtime.auth.authenticate(request.headers.get("authorization"))
    except Unauthorized as exc:
        # for the audit trail: why the credential was refused (never the credential itself)
        request.state.refusal = exc.detail
        raise
    request.state.principal = principal
    if scope == ADMIN:
        if not principal.may(scope):
            request.state.refusal = f"{principal.name} lacks {scope}"
            raise Forbidden(scope)
        return principal
    name = request.path_params.get("partition", DEFAULT)
    info = await runtime.partitions.get(name) if principal.sees(name) else None
    if info is None:
        request.state.refusal = f"{principal.name} sees no partition {name}"
        raise NotFound(f"no partition named {name}")
    request.state.partition = info
    if not principal.may(scope, name):
        needed = scope if name == DEFAULT else f"{scope}:{name}"
        request.state.refusal = f"{principal.name} lacks {needed}"
        raise Forbidden(needed)
    return principal


def requires(scope: str) -> Any:
    """A route dependency admitting requests whose credential grants ``scope``."""

    async def check(request: Request) -> Principal:
        return await authorize(request, scope)

    check.__name__ = f"requires_{scope.replace('.', '_')}"
    return Depends(check)


def principal_of(request: Request) -> Principal | None:
    return getattr(request.state, "principal", None)


def partition_of(request: Request) -> PartitionInfo:
    """The partition of a DICOMweb request, resolved by ``requires``."""
    info: PartitionInfo = request.state.partition
    return info


