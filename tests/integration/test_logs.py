"""Logs: one JSON object per line, a request id on each request line, no UIDs or names at INFO."""

from __future__ import annotations

import json
import time

import httpx

from tests.dicomdata import make_study, multipart_related


def test_every_request_is_one_json_line_with_its_id_and_no_phi(make_gateway) -> None:  # type: ignore[no-untyped-def]
    gw = make_gateway()
    parts = make_study(1, 2, patient_name="Secret^Patient")
    body, ct = multipart_related([*parts, b"not dicom" * 40])
    resp = httpx.post(f"{gw.url}/studies", content=body,
                      headers={"content-type": ct, "x-request-id": "trace-123"})
    assert resp.headers["x-request-id"] == "trace-123"
    study_uid = resp.json()["00081190"]["Value"][0].rsplit("/", 1)[1]
    generated = httpx.get(f"{gw.url}/studies/{study_uid}/metadata").headers["x-request-id"]
    time.sleep(0.5)
    gw.stop()
    lines = [line for line in gw.log.read_text().splitlines() if line.startswith("{")]
    entries = [json.loads(line) for line in lines]
    requests = [e for e in entries if e.get("logger") == "dicomgw.access"]
    stow = next(e for e in requests if e["request_id"] == "trace-123")
    assert stow["route"] == "/studies" and stow["status"] == 202 and stow["duration_ms"] > 0
    assert stow["bytes_in"] == len(body)
    assert any(e["request_id"] == generated and e["route"] == "/studies/{study}/metadata"
               for e in requests)
    refused = [e for e in entries if "refused" in e.get("msg", "")]
    assert refused and refused[0]["request_id"] == "trace-123"
    text = gw.log.read_text()
    assert "Secret" not in text
    assert study_uid not in text
