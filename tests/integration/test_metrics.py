"""Prometheus metrics: RED per route template, STOW outcomes and integrity gauges, never a UID."""

from __future__ import annotations

import re
import time

import httpx

from tests.dicomdata import make_instance, make_study, multipart_related


def _scrape(root: str) -> str:
    resp = httpx.get(f"{root}/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    return resp.text


def _value(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_count_requests_outcomes_and_integrity(make_gateway) -> None:  # type: ignore[no-untyped-def]
    gw = make_gateway(env={"DICOMGW_WORKER_POLL_SECONDS": "0.1"})
    parts = make_study(1, 3)
    damaged = make_instance()[:-4000]  # identified, pixel data cut short: archived with 0xB007
    unreadable = make_instance()[:300]  # cut before its UIDs: refused with 0xC000
    body, ct = multipart_related([*parts, damaged, unreadable])
    resp = httpx.post(f"{gw.url}/studies", content=body, headers={"content-type": ct})
    assert resp.status_code == 202
    # two studies stored (the good one and the damaged instance's): the first instance's study
    study = resp.json()["00081199"]["Value"][0]["00081190"]["Value"][0].split("/series/")[0]
    httpx.get(f"{study}/metadata")
    httpx.get(f"{gw.url}/studies/1.2.3.4/metadata")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        text = _scrape(gw.root)
        # both gauges are sampled by the status loop, not always in the same scrape
        if _value(text, "dicomgw_originals", status="verified") == 4 and \
                _value(text, "dicomgw_outbox_depth", task="verify") == 0:
            break
        time.sleep(0.2)
    assert _value(text, "dicomgw_stow_instances_total", outcome="stored", reason="") == 3
    assert _value(text, "dicomgw_stow_instances_total", outcome="stored", reason="0xB007") == 1
    assert _value(text, "dicomgw_stow_instances_total", outcome="failed", reason="0xC000") == 1
    assert _value(text, "dicomgw_http_requests_total", route="/studies", method="POST",
                  status="202") == 1
    assert _value(text, "dicomgw_http_requests_total", route="/studies/{study}/metadata",
                  status="200") == 1
    assert _value(text, "dicomgw_http_requests_total", route="/studies/{study}/metadata",
                  status="404") == 1
    assert _value(text, "dicomgw_http_request_bytes_total", route="/studies") >= len(body)
    assert _value(text, "dicomgw_originals", status="verified") == 4
    assert _value(text, "dicomgw_outbox_depth", task="verify") == 0
    # no UID, and so no PHI-bearing header value, in any label
    assert not re.search(r'"[0-9]+(\.[0-9]+){4,}"', text)
