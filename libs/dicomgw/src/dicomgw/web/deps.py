"""FastAPI dependencies: the process Runtime, reached through ``Annotated`` aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from dicomgw.runtime import Runtime


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def base_url(request: Request) -> str:
    """Absolute URL of the DICOMweb root as the client sees it (honours X-Forwarded-* via proxy)."""
    root = str(request.base_url).rstrip("/")
    return root + request.app.state.runtime.settings.http.base_path
