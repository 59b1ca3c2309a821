"""The audit trail after a scripted day (store, search, view, refused requests), read with `dicomgw audit`.

Against a real gateway requiring credentials (an API key for the forwarder, OIDC tokens of the test
provider for the radiologist). `dicomgw audit --study` must list exactly the day's events about that
study, in order, with who, from where and the outcome; `--xml` must print PS3.15 A.5.1 AuditMessages
(validated against the standard's schema, tests/schemas/audit-message.rng).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from lxml import etree

from tests.dicomdata import make_instance, multipart_related, uid
from tests.fixtures.gateway import Gateway, start_gateway
from tests.fixtures.issuer import Issuer
from tests.fixtures.rsyslog import Rsyslog
from tests.polling import wait_for

DICOMGW = Path(sys.executable).parent / "dicomgw"
SCHEMA = Path(__file__).resolve().parents[1] / "schemas" / "audit-message.rng"


@pytest.fixture(scope="module")
def day(issuer: Issuer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, dict[str, str]]]:
    data = tmp_path_factory.mktemp("audit")
    settings = {"DICOMGW_AUTH_MODE": "required", "DICOMGW_AUTH_ISSUER": issuer.url,
                "DICOMGW_AUDIT_FLUSH_SECONDS": "0.2"}
    gateway = start_gateway(data, settings)
    env = {**os.environ, **settings, "DATA_DIR": str(data),
           "DICOMGW_INDEX_URL": f"sqlite+aiosqlite:///{data.resolve() / 'index.sqlite3'}"}
    yield gateway, env
    gateway.stop()


def _cli(env: dict[str, str], *args: str) -> list[str]:
    done = subprocess.run([str(DICOMGW), *args], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()


def test_a_days_accesses_to_a_study_are_listed_with_who_where_and_outcome(
        issuer: Issuer, day: tuple[Gateway, dict[str, str]]) -> None:
    gateway, env = day
    forwarder = {"Authorization": "Bearer " + _cli(env, "keys", "create", "pacs-forwarder",
                                                   "--scopes", "dicom.write")[-1]}
    radiologist = {"Authorization": "Bearer " + issuer.token(sub="f81d4fae-7dec", scope="dicom.read",
                                                             preferred_username="dr.house")}
    study, series = uid(), uid()
    instance = make_instance(study_uid=study, series_uid=series, patient_name="Audit^Day")
    sop = pydicom.dcmread(io.BytesIO(instance)).SOPInstanceUID
    other = make_instance()  # another study, touched the same day: not in this study's trail

    # 07:00 the PACS forwards two studies; 08:00 the radiologist searches and views; a stranger
    # without a credential and the forwarder (no read scope) try to read
    body, content_type = multipart_related([instance, other])
    stored = httpx.post(f"{gateway.url}/studies", content=body, timeout=30,
                        headers={**forwarder, "Content-Type": content_type})
    assert stored.status_code == 200, stored.text
    assert httpx.get(f"{gateway.url}/studies", params={"PatientName": "Audit^Day"}, headers=radiologist,
                     timeout=30).status_code == 200
    metadata = f"{gateway.url}/studies/{study}/series/{series}/metadata"
    assert httpx.get(metadata, headers=radiologist, timeout=30).status_code == 200
    frame = f"{gateway.url}/studies/{study}/series/{series}/instances/{sop}/frames/1"
    for _ in range(3):  # a viewer fetches the same frame more than once: coalesced within a flush
        assert httpx.get(frame, headers={**radiologist, "Accept": "multipart/related; "
                         "type=application/octet-stream; transfer-syntax=*"}, timeout=30).status_code == 200
    assert httpx.get(metadata, timeout=30).status_code == 401
    unknown = {"Authorization": "Bearer dgw_not-a-key"}
    assert httpx.get(metadata, headers=unknown, timeout=30).status_code == 401
    assert httpx.get(metadata, headers=forwarder, timeout=30).status_code == 403

    def trail() -> list[str]:
        return _cli(env, "audit", "--study", study)

    def merged() -> list[dict[str, object]]:
        """The study's events, those split only by a flush boundary merged back (counts summed)."""
        out: list[dict[str, object]] = []
        for row in (json.loads(r) for r in _cli(env, "audit", "--study", study, "--json")):
            same = ("event", "action", "outcome", "who", "who_kind", "route", "detail")
            if out and all(out[-1][k] == row[k] for k in same):
                out[-1]["count"] = int(out[-1]["count"]) + row["count"]  # type: ignore[call-overload]
            else:
                out.append(row)
        return out

    wait_for(lambda: len(merged()) >= 7, 20)
    events = merged()
    summary = [(e["event"], e["action"], e["outcome"], e["who"], e["who_kind"], e["count"]) for e in events]
    assert summary == [
        ("transferred", "C", 0, "pacs-forwarder", "api-key", 1),
        ("query", "E", 0, "dr.house", "oidc", 1),
        ("transferred", "R", 0, "dr.house", "oidc", 1),
        ("transferred", "R", 0, "dr.house", "oidc", 3),
        ("authentication", "E", 4, "unknown", "unknown", 1),
        ("authentication", "E", 4, "unknown", "unknown", 1),
        ("security-alert", "E", 4, "pacs-forwarder", "api-key", 1),
    ], events
    assert all(e["source"] == "127.0.0.1" for e in events)
    assert events[1]["query"] == "PatientName=Audit%5EDay"
    assert events[3]["route"].endswith("/frames/{frame_list}")  # type: ignore[union-attr]
    assert events[5]["detail"] == "unknown API key" and "lacks dicom.read" in events[6]["detail"]  # type: ignore[operator]
    lines = trail()
    assert "dgw_not-a-key" not in "\n".join(lines)  # a refused credential is never written down
    assert lines[0].split("  ")[1:4] == ["transferred(C)", "success", "who=pacs-forwarder(api-key)"]

    # who looked at it: the radiologist's events, and nothing of another day
    mine = [json.loads(r) for r in _cli(env, "audit", "--who", "dr.house", "--study", study, "--json")]
    assert {r["who"] for r in mine} == {"dr.house"} and sum(r["count"] for r in mine) == 5
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).date().isoformat()
    assert _cli(env, "audit", "--study", study, "--since", tomorrow) == []
    assert len(_cli(env, "audit", "--study", study, "--since", "1h")) == len(lines)

    # each event as a PS3.15 A.5.1 AuditMessage
    schema = etree.RelaxNG(etree.parse(str(SCHEMA)))
    messages = _cli(env, "audit", "--study", study, "--xml")
    assert len(messages) == len(lines)
    for message in messages:
        document = etree.fromstring(message.encode())
        assert schema.validate(document), (message, schema.error_log)
    codes = [etree.fromstring(m.encode()).find("EventIdentification/EventID").get("csd-code")
             for m in messages]
    assert codes[0] == "110104" and codes[1] == "110112" and codes[-1] == "110113"
    assert codes.count("110114") == 2
    first = etree.fromstring(messages[0].encode())
    assert first.find("ParticipantObjectIdentification").get("ParticipantObjectID") == study
    login = etree.fromstring(messages[codes.index("110114")].encode())
    assert login.find("EventIdentification/EventTypeCode").get("csd-code") == "110122"

def test_the_schema_refuses_what_the_standard_does(day: tuple[Gateway, dict[str, str]]) -> None:
    """The validation can fail: a message without its requestor, or with an unknown outcome."""
    schema = etree.RelaxNG(etree.parse(str(SCHEMA)))
    gateway, env = day
    assert httpx.get(f"{gateway.url}/studies", timeout=30).status_code == 401
    wait_for(lambda: _cli(env, "audit", "--xml"), 20)
    message = etree.fromstring(_cli(env, "audit", "--xml")[-1].encode())
    assert schema.validate(message)
    message.find("EventIdentification").set("EventOutcomeIndicator", "3")
    assert not schema.validate(message)
    message.find("EventIdentification").set("EventOutcomeIndicator", "4")
    for participant in message.findall("ActiveParticipant"):
        message.remove(participant)
    assert not schema.validate(message)


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_audit_events_reach_a_syslog_receiver_as_rfc_5424(rsyslog: Rsyslog, make_gateway: Any,
                                                          transport: str) -> None:
    """IHE ATNA's transport: each event an RFC 5424 message (PRI 85, MSGID IHE+RFC-3881) carrying the
    PS3.15 AuditMessage, received by rsyslog over UDP (RFC 5426) or TCP (RFC 6587 octet counting)."""
    port = rsyslog.udp_port if transport == "udp" else rsyslog.tcp_port
    gw = make_gateway({"DICOMGW_AUDIT_SYSLOG_URL": f"{transport}://127.0.0.1:{port}",
                       "DICOMGW_AUDIT_FLUSH_SECONDS": "0.2"})
    study = uid()
    body, content_type = multipart_related([make_instance(study_uid=study)])
    assert httpx.post(f"{gw.url}/studies", content=body, headers={"Content-Type": content_type},
                      timeout=30).status_code == 200
    assert httpx.get(f"{gw.url}/studies/{study}/metadata", timeout=30).status_code == 200

    def ours() -> list[dict[str, str]]:
        return [m for m in rsyslog.messages() if study in m["msg"]]

    received = wait_for(lambda: len(ours()) >= 2 and ours(), 30)
    schema = etree.RelaxNG(etree.parse(str(SCHEMA)))
    codes = []
    for message in received:
        assert (message["pri"], message["version"], message["app"], message["msgid"]) == (
            "85", "1", "dicomgw", "IHE+RFC-3881"), message
        document = etree.fromstring(message["msg"].lstrip("\ufeff").encode())
        assert schema.validate(document), schema.error_log
        codes.append((document.find("EventIdentification/EventID").get("csd-code"),
                      document.find("EventIdentification").get("EventActionCode")))
    assert codes == [("110104", "C"), ("110104", "R")]
