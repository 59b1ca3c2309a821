"""FastAPI dependencies: the process Runtime, reached through ``Annotated`` aliases, and URL building."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from dicomgw.runtime import Runtime


async def get_runtime(request: Request) -> Runtime:
    # async: FastAPI runs a plain function dependency in a thread, a hop on every request
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def base_url(request: Request) -> str:
    """Absolute URL of the DICOMweb root of the request's partition as the client reaches it.

    That is the root itself for the default partition and ``{root}/partitions/{name}`` for another,
    so RetrieveURLs and BulkDataURIs stay in the partition the client asked.
    """
    partition = request.path_params.get("partition")
    root = dicomweb_root(request)
    return f"{root}/partitions/{partition}" if partition else root


def dicomweb_root(request: Request) -> str:
    """Absolute URL of the DICOMweb root as the client reaches it (RetrieveURL, BulkDataURI).

    In order: the configured public URL; X-Forwarded-Proto/Host from a proxy; the Host header. A Host
    header without a port on a connection to a non-default port (dicomweb-client sends its host name
    alone) gets the port the connection came in on.
    """
    http = request.app.state.runtime.settings.http
    if http.public_url:
        return http.public_url.rstrip("/")
    headers = request.headers
    forwarded_host = headers.get("x-forwarded-host")
    if forwarded_host:
        proto = headers.get("x-forwarded-proto", request.url.scheme).split(",")[0].strip()
        return f"{proto}://{forwarded_host.split(',')[0].strip()}{http.base_path}"
    host = headers.get("host", "")
    server = request.scope.get("server")
    scheme = request.url.scheme
    if host and ":" not in host.rsplit("]", 1)[-1] and server and server[1] not in (None, 80, 443):
        host = f"{host}:{server[1]}"
    if not host:
        return str(request.base_url).rstrip("/") + http.base_path
    return f"{scheme}://{host}{http.base_path}"
