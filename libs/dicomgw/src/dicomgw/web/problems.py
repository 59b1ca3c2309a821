"""Maps the dicomgw error hierarchy (and Starlette's own HTTP errors) to application/problem+json."""

from __future__ import annotations

import json
import logging
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from dicomgw.errors import DicomgwError
from dicomgw.outages import as_outage

log = logging.getLogger("dicomgw.errors")

PROBLEM_JSON = "application/problem+json"


def problem(status: int, title: str, detail: str = "", **extra: object) -> Response:
    body: dict[str, object] = {"type": "about:blank", "title": title, "status": status}
    if detail:
        body["detail"] = detail
    body.update(extra)
    return Response(json.dumps(body), status_code=status, media_type=PROBLEM_JSON)


async def _dicomgw_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, DicomgwError)
    response = problem(int(exc.status), exc.title, exc.detail)
    response.headers.update(exc.headers)
    return response


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    from http import HTTPStatus

    try:
        title = HTTPStatus(exc.status_code).phrase
    except ValueError:
        title = "Error"
    detail = exc.detail if isinstance(exc.detail, str) and exc.detail != title else ""
    resp = problem(exc.status_code, title, detail)
    if exc.headers:
        resp.headers.update(exc.headers)
    return resp


async def _validation_error(request: Request, exc: Exception) -> Response:
    errors: list[dict[str, Any]] = getattr(exc, "errors", lambda: [])()
    msgs = []
    for err in errors:
        loc = ".".join(str(p) for p in err.get("loc", ()))
        msgs.append(f"{loc}: {err.get('msg', '')}")
    return problem(400, "Bad request", "; ".join(msgs))


async def _client_gone(request: Request, exc: Exception) -> Response:
    # Nobody reads this answer; it is for the access log. Parts spooled so far were removed and
    # nothing was acknowledged, so a client that comes back sends the request again.
    log.info("%s %s: the client closed the connection before its body ended",
             request.method, request.url.path)
    return problem(400, "Bad request", "the request body ended early: the client disconnected")


async def _unexpected(request: Request, exc: Exception) -> Response:
    outage = as_outage(exc)
    if outage is not None:
        # a back end is away: the client is told to come back, and the log says which, briefly
        log.warning("%s %s: %s: %s", request.method, request.url.path, outage.detail, exc)
        return await _dicomgw_error(request, outage)
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return problem(500, "Internal error", "the server could not complete the request")


def install_problem_handlers(app: Starlette) -> None:
    """Register the one mapping of errors to problem+json responses on an app."""
    app.add_exception_handler(DicomgwError, _dicomgw_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(ClientDisconnect, _client_gone)
    try:
        from fastapi.exceptions import RequestValidationError

        app.add_exception_handler(RequestValidationError, _validation_error)
    except ImportError:  # pragma: no cover - starlette-only apps
        pass
    # The failures a back end away raises, handled here rather than as any Exception: Starlette sends
    # the answer to those and then raises them again, which logs a second traceback and closes the
    # client's keep-alive connection; a 503 to retry should do neither.
    for kind in _backend_failures():
        app.add_exception_handler(kind, _unexpected)
    app.add_exception_handler(Exception, _unexpected)


def _backend_failures() -> list[type[Exception]]:
    import sqlite3

    from sqlalchemy.exc import SQLAlchemyError

    kinds: list[type[Exception]] = [OSError, TimeoutError, sqlite3.Error, SQLAlchemyError]
    try:
        from botocore.exceptions import BotoCoreError, ClientError

        kinds += [BotoCoreError, ClientError]
    except ImportError:  # pragma: no cover - botocore comes with aiobotocore
        pass
    return kinds
