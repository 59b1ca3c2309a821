"""Audit events and their PS3.15 A.5 (ATNA) XML form.

The event and code values are those of PS3.15 A.5.3 and PS3.16 (coding scheme DCM):

    query           EV (110112, DCM, "Query")                          QIDO-RS, action E
    transferred     EV (110104, DCM, "DICOM Instances Transferred")    WADO-RS (R), STOW-RS (C)
    authentication  EV (110114, DCM, "User Authentication")            refused credential, type Login
    security-alert  EV (110113, DCM, "Security Alert")                 valid credential, missing scope,
                                                                       type Use of Restricted Function
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from datetime import UTC, datetime
from xml.etree import ElementTree as ET

# event name: (EventID code, display name, EventTypeCode or None)
EVENTS: dict[str, tuple[str, str, tuple[str, str] | None]] = {
    "query": ("110112", "Query", None),
    "transferred": ("110104", "DICOM Instances Transferred", None),
    "authentication": ("110114", "User Authentication", ("110122", "Login")),
    "security-alert": ("110113", "Security Alert", ("110132", "Use of Restricted Function")),
}
# Study Root Query/Retrieve Information Model - FIND: the SOP class a QIDO-RS search stands for
QUERY_SOP_CLASS = "1.2.840.10008.5.1.4.1.2.2.1"


@dataclass(frozen=True)
class AuditEvent:
    event: str  # a key of EVENTS
    action: str  # C R U D E
    outcome: int  # 0 success, 4 minor failure, 8 serious failure
    who: str  # the principal's name, or "unknown" when no credential was accepted
    who_kind: str  # oidc | api-key | anonymous | unknown
    source: str  # the client's address
    method: str
    route: str  # the route template, e.g. /dicom-web/studies/{study}/metadata
    studies: tuple[str, ...] = ()
    query: str = ""  # the QIDO query string
    detail: str = ""  # outcome description
    at: datetime = field(default_factory=lambda: datetime.now(UTC))
    count: int = 1  # identical events coalesced within one flush

    def coalescing_key(self) -> tuple[object, ...]:
        return (self.event, self.action, self.outcome, self.who, self.who_kind, self.source,
                self.method, self.route, self.studies, self.query, self.detail)


def _code(parent: ET.Element, tag: str, code: str, meaning: str, system: str = "DCM") -> ET.Element:
    return ET.SubElement(parent, tag, {"csd-code": code, "codeSystemName": system,
                                       "originalText": meaning})


def to_xml(event: AuditEvent, audit_source: str = "dicomgw") -> str:
    """The event as a PS3.15 A.5.1 AuditMessage (one line, no XML declaration)."""
    code, meaning, event_type = EVENTS[event.event]
    root = ET.Element("AuditMessage")
    ident = ET.SubElement(root, "EventIdentification", {
        "EventActionCode": event.action,
        "EventDateTime": event.at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "EventOutcomeIndicator": str(event.outcome)})
    _code(ident, "EventID", code, meaning)
    if event_type:
        _code(ident, "EventTypeCode", *event_type)
    if event.detail:
        ET.SubElement(ident, "EventOutcomeDescription").text = event.detail
    # the person or machine asking: the requestor
    requestor = ET.SubElement(root, "ActiveParticipant", {
        "UserID": event.who, "AlternativeUserID": event.who_kind, "UserIsRequestor": "true",
        "NetworkAccessPointID": event.source or "unknown", "NetworkAccessPointTypeCode": "2"})
    if event.event == "transferred":
        # STOW: the client is where the instances come from; WADO: where they go
        role = ("110153", "Source Role ID") if event.action == "C" else ("110152", "Destination Role ID")
        _code(requestor, "RoleIDCode", *role)
    # the archive: the other end of the transfer, or the system that answered
    archive = ET.SubElement(root, "ActiveParticipant", {
        "UserID": audit_source, "UserIsRequestor": "false", "NetworkAccessPointID": audit_source,
        "NetworkAccessPointTypeCode": "1"})
    _code(archive, "RoleIDCode", *(
        ("110152", "Destination Role ID") if event.action == "C" else ("110153", "Source Role ID")))
    ET.SubElement(ET.SubElement(root, "AuditSourceIdentification", {"AuditSourceID": audit_source}),
                  "AuditSourceTypeCode", {"csd-code": "3"})  # web server process
    for study in event.studies:
        obj = ET.SubElement(root, "ParticipantObjectIdentification", {
            "ParticipantObjectID": study, "ParticipantObjectTypeCode": "2",
            "ParticipantObjectTypeCodeRole": "3"})
        _code(obj, "ParticipantObjectIDTypeCode", "110180", "Study Instance UID")
        ET.SubElement(obj, "ParticipantObjectName").text = study
    if event.event == "query":
        obj = ET.SubElement(root, "ParticipantObjectIdentification", {
            "ParticipantObjectID": QUERY_SOP_CLASS, "ParticipantObjectTypeCode": "2",
            "ParticipantObjectTypeCodeRole": "24"})
        _code(obj, "ParticipantObjectIDTypeCode", "110181", "SOP Class UID")
        ET.SubElement(obj, "ParticipantObjectQuery").text = base64.b64encode(
            f"{event.method} {event.route}?{event.query}".encode()).decode()
        ET.SubElement(obj, "ParticipantObjectDetail", {
            "type": "TransferSyntax", "value": base64.b64encode(b"1.2.840.10008.1.2.1").decode()})
    return ET.tostring(root, encoding="unicode")
