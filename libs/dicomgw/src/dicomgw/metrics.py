"""Prometheus metrics shared by every service: RED per route, bytes, STOW outcomes, integrity gauges.
Integrity gauges are snapshots of the index: with several server processes the most recent one counts.

Labels carry route templates (``/studies/{study}/series``), methods, statuses and outcome names only:
never a UID or anything else from a DICOM header (DESIGN invariant 6).
"""

from __future__ import annotations

import logging
import os
import re
import time
import uuid
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dicomgw.logs import request_id

access_log = logging.getLogger("dicomgw.access")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")

REQUESTS = Counter("dicomgw_http_requests_total", "HTTP requests by route, method and status",
                   ["service", "route", "method", "status"])
LATENCY = Histogram("dicomgw_http_request_duration_seconds", "Time to the end of the response body",
                    ["service", "route", "method"],
                    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300))
BYTES_IN = Counter("dicomgw_http_request_bytes_total", "Request body bytes received", ["service", "route"])
BYTES_OUT = Counter("dicomgw_http_response_bytes_total", "Response body bytes sent", ["service", "route"])
STOW_INSTANCES = Counter("dicomgw_stow_instances_total",
                         "Instances received by STOW-RS by outcome (stored, present, failed) and reason",
                         ["outcome", "reason"])
STOW_BYTES = Counter("dicomgw_stow_stored_bytes_total", "Bytes of originals newly stored")

ORIGINALS = Gauge("dicomgw_originals", "Originals in the index by verification status", ["status"],
                  multiprocess_mode="mostrecent")
REPLICAS = Gauge("dicomgw_replicas", "Originals by replica status", ["status"],
                 multiprocess_mode="mostrecent")
OLDEST_UNVERIFIED = Gauge("dicomgw_oldest_unverified_seconds",
                          "Age of the oldest original never verified (0 when none)",
                          multiprocess_mode="mostrecent")
OUTBOX = Gauge("dicomgw_outbox_depth", "Background work waiting in the outbox", ["task"],
               multiprocess_mode="mostrecent")
REPAIRED = Gauge("dicomgw_originals_repaired", "Copies repaired since the archive began",
                  multiprocess_mode="mostrecent")
RECEIVED_BYTES = Gauge("dicomgw_original_bytes",
                       "Bytes of the originals as received (what is kept byte for byte)",
                       multiprocess_mode="mostrecent")
PRICES = Gauge("dicomgw_storage_price_per_tb_month", "Price per TB-month of each store (DICOMGW_COST_*)",
               ["store"], multiprocess_mode="mostrecent")
STORED_BYTES = Gauge("dicomgw_stored_bytes",
                     "Bytes each store keeps for the originals, by form (verbatim, compact)",
                     ["store", "form"], multiprocess_mode="mostrecent")


def exposition() -> bytes:
    """The text exposition of this process, or of every process of the server (``dicomgw serve`` with
    several workers sets PROMETHEUS_MULTIPROC_DIR, where each process keeps its values)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest()


def set_prices(primary: float, replica: float, cold: float) -> None:
    for store, price in (("primary", primary), ("replica", replica), ("cold", cold)):
        PRICES.labels(store=store).set(price)


def set_integrity(status: dict[str, Any]) -> None:
    """Publish an integrity_status() snapshot as gauges."""
    for name in ("verified", "pending", "mismatched", "missing", "lost"):
        ORIGINALS.labels(status=name).set(status[name])
    replica = status["replica"]
    for name in ("replicated", "pending", "missing"):
        REPLICAS.labels(status=name).set(replica[name])
    OLDEST_UNVERIFIED.set(status["oldest_unverified_seconds"])
    REPAIRED.set(status["repaired"])
    for task in ("verify", "replicate", "repair", "compact"):
        OUTBOX.labels(task=task).set(status["outbox"].get(task, 0))
    storage = status["storage"]
    RECEIVED_BYTES.set(storage["received_bytes"])
    for store in ("primary", "cold", "replica"):
        for form in ("verbatim", "compact"):
            STORED_BYTES.labels(store=store, form=form).set(storage[store].get(form, {"bytes": 0})["bytes"])


def _request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", []):
        if name == b"x-request-id":
            candidate = value.decode("latin-1")
            if _REQUEST_ID.match(candidate):
                return candidate
    return uuid.uuid4().hex


class MetricsMiddleware:
    """Pure ASGI middleware (streams stay streams): counts requests, bytes and time per route, and
    writes one access-log line per request with its id (taken from X-Request-ID or made up, and sent
    back in the response)."""

    def __init__(self, app: ASGIApp, service: str) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        received = sent = 0
        rid = _request_id(scope)
        token = request_id.set(rid)

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
            return message

        async def counting_send(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, counting_receive, counting_send)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "GET")
            REQUESTS.labels(self.service, template, method, str(status)).inc()
            LATENCY.labels(self.service, template, method).observe(time.perf_counter() - started)
            BYTES_IN.labels(self.service, template).inc(received)
            BYTES_OUT.labels(self.service, template).inc(sent)
            duration = time.perf_counter() - started
            access_log.info("request", extra={
                "service": self.service, "route": template, "method": method, "status": status,
                "duration_ms": round(duration * 1000, 2), "bytes_in": received, "bytes_out": sent,
            })
            request_id.reset(token)
