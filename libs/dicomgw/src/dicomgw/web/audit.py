"""The middleware that turns each DICOMweb request into an audit event once its status is known.

QIDO-RS searches are Query events, STOW-RS and WADO-RS DICOM Instances Transferred (C and R), a refused
credential User Authentication (failure), a missing scope a Security Alert; a research collection's
objects handed out by presigned URLs (``/collections/.../objects``) DICOM Instances Transferred (R). Routes
add the studies they touched that are not in the URL (STOW's stored studies, a search's results, the
objects a URL is handed out for) to ``request.state.audit_studies``, and what they did to
``request.state.audit_detail``. Health, readiness, metrics and CORS preflights are not audited.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dicomgw.audit import AuditEvent
from dicomgw.runtime import Runtime

QIDO_LAST_SEGMENTS = ("studies", "series", "instances")
# a search listing thousands of studies is audited with the first of them
MAX_STUDIES = 1000


def _event(request: Request, status: int, base_path: str) -> AuditEvent | None:
    template = getattr(request.scope.get("route"), "path", None)
    if request.method == "OPTIONS" or template is None:
        return None
    path = request.url.path
    if path.startswith(base_path + "/"):
        # a router's route keeps its own template; the base path is where it was mounted
        route = base_path + template
    elif path.startswith("/admin/") or (path.startswith("/collections/")
                                         and hasattr(request.state, "audit_detail")):
        route = template  # a collection's route is audited when it says what it handed out
    else:
        return None
    principal = getattr(request.state, "principal", None)
    who, kind = (principal.name, principal.kind) if principal else ("unknown", "unknown")
    client = request.client.host if request.client else ""
    studies = list(dict.fromkeys([*filter(None, [request.path_params.get("study")]),
                                  *getattr(request.state, "audit_studies", ())]))[:MAX_STUDIES]
    detail = getattr(request.state, "refusal", "") or getattr(request.state, "audit_detail", "")
    common = {"who": who, "who_kind": kind, "source": client, "method": request.method,
              "route": route, "studies": tuple(studies), "detail": detail}
    if status == 401:
        return AuditEvent(event="authentication", action="E", outcome=4, **common)
    if status == 403:
        return AuditEvent(event="security-alert", action="E", outcome=4, **common)
    if route.startswith("/admin/"):
        return None
    outcome = 0 if status < 400 else 4 if status < 500 else 8
    if request.method == "POST":
        return AuditEvent(event="transferred", action="C", outcome=outcome, **common)
    if route.rstrip("/").rsplit("/", 1)[-1] in QIDO_LAST_SEGMENTS:
        return AuditEvent(event="query", action="E", outcome=outcome,
                          query=request.url.query, **common)
    return AuditEvent(event="transferred", action="R", outcome=outcome, **common)


class AuditMiddleware:
    """Pure ASGI (responses stream through untouched): one audit event per request once it is answered."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            runtime: Runtime | None = getattr(scope["app"].state, "runtime", None)
            if runtime is not None and runtime.settings.audit.enabled:
                event = _event(Request(scope), status, runtime.settings.http.base_path)
                if event is not None:
                    runtime.audit.record(event)
